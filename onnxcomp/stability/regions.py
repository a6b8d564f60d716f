"""Exact linear regions of a network with at most two inputs: the complete input-splitting answer.

On a piece of the input where the phase of every ReLU before layer ``k`` is fixed, layer ``k``'s
pre-activations are affine in the input, and their extreme values over the piece are at its vertices.
This search keeps the pieces as convex polygons (their vertices, in order) and goes through the layers:
on a piece it computes layer ``k``'s affine map, evaluates it at the vertices, and when a ReLU of the layer
changes sign on the piece it cuts the polygon along that neuron's line into two pieces where its phase is
fixed (the children share the computed cut points, so together they are exactly the parent).  Once no
neuron of layer ``k`` changes sign, the extremes at the vertices are the neuron's exact range on the piece,
and the search goes on to layer ``k + 1`` with the ReLUs applied.  A neuron whose computed pre-activation
is within rounding noise of 0 on a whole piece (a *tie*: two equal terms subtracted, as in the min/max banks
of two-level lattice networks) is not cut: it is 0 there, so either phase gives the same map, and the
noise is part of the error allowance below.  Pieces are taken layer by layer (the shallowest first), so at a
time limit every layer above the shallowest unfinished piece is finished.

The search converges: the pieces are cells of the arrangement of the network's own ReLU boundaries.  The
boxes of ``split`` never stop straddling a boundary, so a neuron whose maximum is exactly 0 along a
boundary, or whose pre-activation is 0 in exact arithmetic while its bounds relax each term on its own,
stays open there however small the boxes get; here it is decided.

Soundness in floating point.  Every computed affine map differs from the network's exact pre-activation
by at most ``allowance`` (per neuron): the project's outward-rounding margin ``REL_MARGIN * R_k +
ABS_MARGIN`` per layer (``R_k``: ``bounds.magnitudes``), plus the error of the layer below pushed through
``|W_k|``, plus the tie tolerance of the layer below (a neuron within it of 0 taken as inactive).  That
covers the rounding of the compositions and of the evaluations at the vertices, the slivers between
pieces (within rounding of a cut point) and a phase taken on the wrong side of a cut by rounding.  A
side is then *proven* when every piece was taken through its layer and the largest value any piece
reached, plus the allowance, is below the neuron's margin ``eps``: exactly (``split``) when that is at most
0, up to the margin (``split-epsilon``, with that value as the slack) otherwise.  Vertices where an open
side is reached are candidate witnesses, confirmed by a float64 forward pass of the network.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

import numpy as np

from ..bounds import ABS_MARGIN, REL_MARGIN, magnitudes
from ..ir import Network
from ..timing import Deadline
from .common import ProofSetup, masks
from .state import Findings, StabilityState, witness_floor

REGION_MAX_DIMS = 2
"""The regions search runs on networks with at most this many inputs."""
WITNESS_BATCH = 256
"""Candidate witnesses confirmed by one batched forward pass."""
MAX_PENDING_BYTES = 512 * 2 ** 20
"""The search stops (unfinished, nothing claimed beyond the layers it finished) when the pieces waiting to be
taken would hold more than this (each keeps the affine map of its layer's input)."""


def supports(net: Network) -> bool:
    """Whether the regions search applies: at most two inputs and dense layers."""
    return net.input_size <= REGION_MAX_DIMS and not net.has_conv


def allowances(net: Network, lo: np.ndarray, hi: np.ndarray) -> tuple[list, list]:
    """Per layer and neuron: ``tol``, the noise level under which a computed pre-activation counts as 0 (a
    tie), and ``allowance``, the bound on the difference between a computed affine map and the exact
    pre-activation on a piece (see the module docstring)."""
    mags = magnitudes(net, np.asarray(lo, np.float64), np.asarray(hi, np.float64))
    tols, allow = [], []
    below = None
    for k, layer in enumerate(net.layers):
        rho = REL_MARGIN * mags[k] + ABS_MARGIN
        err = rho if below is None else layer.weight_abs @ below + rho
        tols.append(rho)
        allow.append(err)
        below = err + rho if layer.is_relu else err
    return tols, allow


def _split(verts: np.ndarray, s: np.ndarray) -> tuple[list, list, list]:
    """The two parts of the convex polygon ``verts`` (in order) where ``s`` (the cutting function's values
    at the vertices) is ``<= 0`` and ``>= 0``, as vertex references: ``j >= 0`` is vertex ``j``, ``-m`` the
    ``m``-th new cut point of the returned list (both parts share the same computed cut points)."""
    left, right, new = [], [], []
    n = len(verts)
    for j in range(n):
        a, b = verts[j], verts[(j + 1) % n]
        sa, sb = s[j], s[(j + 1) % n]
        if sa <= 0:
            left.append(j)
        if sa >= 0:
            right.append(j)
        if (sa < 0 < sb) or (sb < 0 < sa):
            new.append(a + (sa / (sa - sb)) * (b - a))
            left.append(-len(new))
            right.append(-len(new))
    return left, right, new


def _pick(rows: np.ndarray, fresh: np.ndarray, refs: list) -> np.ndarray:
    """The rows ``_split``'s references name: ``rows[j]`` for a vertex, ``fresh[m - 1]`` for cut point ``-m``."""
    return np.array([rows[j] if j >= 0 else fresh[-j - 1] for j in refs])


def cut(verts: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The convex polygon ``verts`` (in order) split where ``s`` (the cutting function's values at the
    vertices) changes sign: the part with ``s <= 0`` and the part with ``s >= 0``; both get the same
    computed cut points, so their union is the polygon."""
    left, right, new = _split(verts, s)
    fresh = np.array(new)
    return _pick(verts, fresh, left), _pick(verts, fresh, right)


@dataclass
class RegionOutcome:
    """What the search established.  ``upper``/``lower``: per layer, the largest / smallest computed
    pre-activation over the pieces taken through that layer; ``finished``: the layers every piece was taken
    through; ``seen_active``/``seen_inactive``: witnesses (forward-pass confirmed)."""

    upper: list
    lower: list
    finished: int
    seen_active: list
    seen_inactive: list
    pieces: int = 0
    cuts: int = 0
    ties: int = 0
    seconds: float = 0.0
    complete: bool = True


def explore(net: Network, lo: np.ndarray, hi: np.ndarray, open_p: list, open_q: list, floor: list,
            seen_active: list, seen_inactive: list, deadline: Deadline) -> RegionOutcome:
    """The regions search over the box ``[lo, hi]`` for the open sides ``open_p`` (never seen active) and
    ``open_q`` (never seen inactive), per hidden layer; see the module docstring."""
    start = time.perf_counter()
    lo, hi = np.asarray(lo, np.float64).reshape(-1), np.asarray(hi, np.float64).reshape(-1)
    d = lo.size
    n_layers = len(open_p)
    layers = net.layers
    weights = [np.asarray(layer.weight, np.float64) for layer in layers[:n_layers]]
    biases = [np.asarray(layer.bias, np.float64) for layer in layers[:n_layers]]
    relu = [layer.is_relu for layer in layers[:n_layers]]
    tols, _ = allowances(net, lo, hi)
    seen_a = [a.copy() for a in seen_active[:n_layers]]
    seen_i = [a.copy() for a in seen_inactive[:n_layers]]
    upper = [np.full(w.shape[0], -np.inf) for w in weights]
    lower = [np.full(w.shape[0], np.inf) for w in weights]
    if d == 1:  # a segment as a polygon: a second input of width 0 that no weight reads
        weights[0] = np.hstack([weights[0], np.zeros((weights[0].shape[0], 1))])
        lo, hi = np.append(lo, 0.0), np.append(hi, 0.0)
    root = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
    out = RegionOutcome(upper, lower, -1, seen_a, seen_i)

    def wanted() -> tuple[list, list, int]:
        p = [open_p[k] & ~seen_a[k] for k in range(n_layers)]
        q = [open_q[k] & ~seen_i[k] for k in range(n_layers)]
        last = max((k for k in range(n_layers) if p[k].any() or q[k].any()), default=-1)
        return p, q, last

    want_p, want_q, last = wanted()
    candidates: list = []
    pending_p = [np.zeros_like(a) for a in want_p]
    pending_q = [np.zeros_like(a) for a in want_q]

    def confirm() -> None:
        nonlocal want_p, want_q, last
        if not candidates:
            return
        x = np.clip(np.array(candidates)[:, :d], lo[:d], hi[:d])
        _, pres = net.forward(x, preactivations=True)
        for k in range(n_layers):
            if relu[k]:
                seen_a[k] |= (pres[k] > floor[k]).any(axis=0)
                seen_i[k] |= (pres[k] < -floor[k]).any(axis=0)
            pending_p[k][:] = False
            pending_q[k][:] = False
        candidates.clear()
        want_p, want_q, last = wanted()

    seq = 0
    heap = [(0, seq, root, np.eye(2), np.zeros(2), {})]
    pending = 0  # bytes held by the pieces in the heap
    while heap:
        if deadline.expired() or pending > MAX_PENDING_BYTES:
            out.complete = False
            break
        k, _, verts, mat, off, forced = heapq.heappop(heap)
        pending -= verts.nbytes + mat.nbytes + off.nbytes
        out.pieces += 1
        while k <= last:
            a = weights[k] @ mat
            c = weights[k] @ off + biases[k]
            vals = verts @ a.T + c
            zmax, zmin = vals.max(axis=0), vals.min(axis=0)
            if relu[k]:
                tol = tols[k]
                unstable = (zmin < -tol) & (zmax > tol)
                for i in forced:
                    unstable[i] = False
                if unstable.any():
                    i = int(np.flatnonzero(unstable)[0])
                    left, right = cut(verts, vals[:, i])
                    out.cuts += 1
                    for side, part in ((-1, left), (1, right)):
                        if len(part) >= 3:  # (a child of two points lies in the other one)
                            seq += 1
                            heapq.heappush(heap, (k, seq, part, mat, off, {**forced, i: side}))
                            pending += part.nbytes + mat.nbytes + off.nbytes
                    break
                np.maximum(upper[k], zmax, out=upper[k])
                np.minimum(lower[k], zmin, out=lower[k])
                reach_p = want_p[k] & ~pending_p[k] & (zmax > floor[k])
                reach_q = want_q[k] & ~pending_q[k] & (zmin < -floor[k])
                for i in np.flatnonzero(reach_p):
                    candidates.append(verts[int(np.argmax(vals[:, i]))])
                for i in np.flatnonzero(reach_q):
                    candidates.append(verts[int(np.argmin(vals[:, i]))])
                pending_p[k] |= reach_p
                pending_q[k] |= reach_q
                inactive = zmax <= tol
                for i, side in forced.items():
                    inactive[i] = side < 0
                out.ties += int((inactive & (zmin >= -tol)).sum())
                act = ~inactive
                mat, off = a * act[:, None], c * act
            else:
                np.maximum(upper[k], zmax, out=upper[k])
                np.minimum(lower[k], zmin, out=lower[k])
                mat, off = a, c
            k, forced = k + 1, {}
        if len(candidates) >= WITNESS_BATCH:
            confirm()
    confirm()
    out.finished = (heap[0][0] - 1) if heap else n_layers - 1
    out.seconds = time.perf_counter() - start
    return out


def regions(setup: ProofSetup, state: StabilityState, time_limit: float, entry: dict) -> Findings:
    """The regions search (:func:`explore`) for every open side, within ``time_limit`` seconds; findings of
    source ``split`` (exact proofs) with a part ``split-epsilon`` (proofs up to the margin)."""
    net, n_layers = setup.net, setup.n_layers
    open_p = masks(net, n_layers, state.need_active_witness)
    open_q = masks(net, n_layers, state.need_inactive_witness)
    floor = witness_floor(setup.eps)
    found = explore(net, setup.lo, setup.hi, open_p, open_q, floor[:n_layers], state.seen_active,
                    state.seen_inactive, Deadline(time_limit))
    _, allow = allowances(net, setup.lo, setup.hi)
    zero = [np.zeros(layer.n_out, bool) for layer in net.layers]
    exact_in, exact_act = [z.copy() for z in zero], [z.copy() for z in zero]
    near_in, near_act = [z.copy() for z in zero], [z.copy() for z in zero]
    slack = [np.zeros(layer.n_out) for layer in net.layers]
    for k in range(min(found.finished + 1, n_layers)):
        if not net.layers[k].is_relu:
            continue
        top = found.upper[k] + allow[k]  # no input of the box reaches more than this
        bottom = found.lower[k] - allow[k]
        eps = setup.eps[k]
        p = open_p[k] & ~found.seen_active[k] & (top < eps)
        q = open_q[k] & ~found.seen_inactive[k] & (bottom > -eps) & ~p
        exact_in[k], exact_act[k] = p & (top <= 0), q & (bottom >= 0)
        near_in[k], near_act[k] = p & ~exact_in[k], q & ~exact_act[k]
        slack[k] = np.where(near_in[k], np.maximum(top, 0.0), 0.0) + np.where(near_act[k], np.maximum(-bottom, 0.0), 0.0)
    entry.update({"regions_pieces": found.pieces, "regions_cuts": found.cuts, "regions_seconds": round(found.seconds, 3),
                  "regions_complete": found.complete})
    fp = net.fingerprint()
    seen_a = list(found.seen_active) + [a.copy() for a in state.seen_active[n_layers:]]
    seen_i = list(found.seen_inactive) + [a.copy() for a in state.seen_inactive[n_layers:]]
    margin = Findings(source="split-epsilon", proven_inactive=near_in, proven_active=near_act, epsilon=slack,
                      fingerprint=fp)
    return Findings(source="split", seen_active=seen_a, seen_inactive=seen_i, proven_inactive=exact_in,
                    proven_active=exact_act, fingerprint=fp, parts=[margin],
                    details={"regions": found.pieces, "complete": found.complete})


def vertex_ranges(net: Network, lo: np.ndarray, hi: np.ndarray, upto: int, deadline: Deadline) -> tuple:
    """The same regions found another way, for re-proving claims (``replay``): nothing is composed; every
    vertex is pushed through the network's own float64 forward pass, a neuron's cut points are
    interpolated between the forward values at the ends of an edge (exact where the neuron is affine), and a
    layer's range on a region is read off the forward values at its vertices.  Depth first, one region at a
    time.  Returns per layer ``0..upto - 1`` the largest and smallest value reached (``None`` for both when
    ``deadline`` passed first), with the same error allowance as :func:`explore`."""
    lo, hi = np.asarray(lo, np.float64).reshape(-1), np.asarray(hi, np.float64).reshape(-1)
    d = lo.size
    tols, _ = allowances(net, lo, hi)
    relu = [layer.is_relu for layer in net.layers[:upto]]
    upper = [np.full(layer.n_out, -np.inf) for layer in net.layers[:upto]]
    lower = [np.full(layer.n_out, np.inf) for layer in net.layers[:upto]]
    if d == 1:
        corners = np.array([[lo[0], 0.0], [hi[0], 0.0], [hi[0], 0.0], [lo[0], 0.0]])
    else:
        corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])

    def forward(points: np.ndarray) -> np.ndarray:
        x = np.clip(points[:, :d], lo, hi)
        _, pres = net.forward(x, preactivations=True)
        return np.hstack(pres[:upto])

    offsets = np.concatenate([[0], np.cumsum([layer.n_out for layer in net.layers[:upto]])]).astype(int)
    stack = [(0, corners, forward(corners), {})]
    while stack:
        if deadline.expired():
            return None, None
        k, verts, vals, forced = stack.pop()
        while k < upto:
            zs = vals[:, offsets[k]:offsets[k + 1]]
            zmax, zmin = zs.max(axis=0), zs.min(axis=0)
            if relu[k]:
                unstable = (zmin < -tols[k]) & (zmax > tols[k])
                for i in forced:
                    unstable[i] = False
                if unstable.any():
                    i = int(np.flatnonzero(unstable)[0])
                    left, right = _cut_with_values(verts, vals, zs[:, i], forward)
                    stack.extend((k, v, w, {**forced, i: side}) for side, (v, w) in ((1, right), (-1, left))
                                 if len(v) >= 3)
                    break
            np.maximum(upper[k], zmax, out=upper[k])
            np.minimum(lower[k], zmin, out=lower[k])
            k, forced = k + 1, {}
    return upper, lower


def _cut_with_values(verts: np.ndarray, vals: np.ndarray, s: np.ndarray, forward) -> tuple:
    """``cut`` that carries the forward values of the vertices: the cut points' come from ``forward``."""
    left, right, new = _split(verts, s)
    points = np.array(new)
    fresh = forward(points) if new else np.zeros((0, vals.shape[1]))
    return ((_pick(verts, points, left), _pick(vals, fresh, left)),
            (_pick(verts, points, right), _pick(vals, fresh, right)))
