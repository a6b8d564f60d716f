"""Certificate replay: ``verify --formal`` for files onnxcomp wrote, without trusting the run that wrote them.

An exact output carries its certificate (``onnxcomp.certificate``): every neuron it claims stably inactive
or active over the domain, how that was proven, and the margin epsilon it holds up to.  Replay checks it:

1. **structure** — the LEO++ rewrite of the reference under exactly those claims (``onnxcomp.leo``),
   computed here in float64, must be the candidate: same layers and shapes, weights equal up to the
   rounding of the file's dtype.  A candidate with changed weights, or a certificate that claims other
   neurons than the ones the candidate lacks, fails here;
2. **claims** — every claim is proven again, independently of the run and by other means than the ones
   that found it: sound bounds recomputed on the reference (claims a bound shows exactly, or within its
   epsilon); on networks of at most two inputs, by the ranges of the network's linear regions, read off
   forward passes at the regions' vertices; every other claim (MILP, input splitting) by a *per-side feasibility MILP* on HiGHS ("is there
   an input of the box with ``y >= eps``?" must be infeasible), layer by layer, with the claims of earlier
   layers already re-proven entering as bounds; these MILPs are independent units on the worker pool;
3. **bound** — the certified ``max |f_ref - f_cand|`` is the worst-case effect of the epsilon claims
   (``leo.epsilon_error_bound`` with the epsilons re-proven) plus the effect of the stored weights'
   rounding (:func:`rounding_bound`); when that worst case (pushed through ``|W|``) exceeds the tolerance,
   differential bounds on the difference itself (``onnxcomp.formal``), with the re-proven claims entered
   as bounds of the reference and the neurons matched through the certificate's numbering.

A claim that a forward pass refutes, one that cannot be re-proven in time, or a structural mismatch ends
replay without a certificate; ``verify --formal`` then falls back to differential bounds.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import bab
from .bounds import REL_MARGIN, crown_bounds, magnitudes
from .certificate import claimed_state
from .errors import InputError
from .conv import is_conv
from .ir import Box, Network
from .leo import epsilon_error_bound, fold
from .stability.regions import allowances, vertex_ranges
from .stability.regions import supports as regions_supported
from .stability.state import epsilons
from .timing import Deadline

DTYPE_REL = {"float32": 2.0 ** -23, "float64": 2.0 ** -51}
"""Largest relative difference between a float64 weight and the same weight stored in the file's dtype
(twice the unit roundoff, to be safe)."""


@dataclass
class ReplayResult:
    """The outcome.  ``certified``: structure and every claim re-established; ``bound``: then the certified
    ``max |f_ref - f_cand|`` (inf otherwise); ``reason``: why not; ``failed``: the claims not re-proven."""

    certified: bool
    bound: float = float("inf")
    reason: str = ""
    claims: int = 0
    reproven: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)
    epsilon_error_bound: float = 0.0
    rounding_bound: float = 0.0
    difference_bound: float | None = None
    difference_method: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def matching_by_ids(reference: Network, expected: Network):
    """The neuron correspondence the fold itself defines: each layer of the folded network keeps the layer
    id and the neuron ids (original numbering) of the reference's neurons it kept."""
    from .diffbounds import LayerMatch, Matching

    index = {layer.layer_id: k for k, layer in enumerate(reference.layers)}
    layers = []
    for k2, layer in enumerate(expected.layers):
        k1 = index.get(layer.layer_id)
        if k1 is None or (layers and k1 <= layers[-1].k1) or (k2 == len(expected.layers) - 1) != (k1 == len(reference.layers) - 1):
            continue
        position = {nid: i for i, nid in enumerate(reference.layers[k1].neuron_ids)}
        pairs = np.array([position.get(nid, -1) for nid in layer.neuron_ids], dtype=np.int64)
        layers.append(LayerMatch(k1, k2, pairs, np.zeros(pairs.size)))
    m = reference.output_size
    return Matching(list(reference.widths) + [m], list(expected.widths) + [m], layers)


def compare_structure(expected: Network, candidate: Network, rel: float) -> str:
    """'' when ``candidate`` is ``expected`` up to weight rounding ``rel``; otherwise what differs."""
    if len(expected.layers) != len(candidate.layers):
        return f"the candidate has {len(candidate.layers)} layers, the certified rewrite {len(expected.layers)}"
    for k, (e, c) in enumerate(zip(expected.layers, candidate.layers)):
        if type(e) is not type(c):
            return f"layer {k}: the candidate's is a {type(c).__name__} layer, the certified rewrite's a {type(e).__name__}"
        if e.weight.shape != c.weight.shape:
            return f"layer {k}: the candidate's weight is {c.weight.shape}, the certified rewrite's {e.weight.shape}"
        if e.activation != c.activation:
            return f"layer {k}: the candidate's activation is {c.activation}, the certified rewrite's {e.activation}"
        if is_conv(e):
            for what in ("in_shape", "strides", "pads", "dilations", "group", "in_perm", "pool"):
                if getattr(e, what) != getattr(c, what):
                    return (f"layer {k}: the candidate's convolution {what} is {getattr(c, what)}, the certified "
                            f"rewrite's {getattr(e, what)}")
            if not np.array_equal(e.emitted, c.emitted) or e.kernel.shape != c.kernel.shape:
                return f"layer {k}: the candidate's convolution computes or emits other units than the certified rewrite"
            arrays = (("kernel", e.kernel, c.kernel), ("bias", e.unit_bias, c.unit_bias))
        else:
            arrays = (("weight", e.weight, c.weight), ("bias", e.bias, c.bias))
        for what, a, b in arrays:
            tol = rel * np.abs(a) + 1e-300
            bad = np.abs(a - b) > tol
            if bad.any():
                i = tuple(int(v) for v in np.unravel_index(int(np.argmax(np.abs(a - b) - tol)), a.shape))
                return (f"layer {k}: {what}{list(i)} is {float(b[i]):.9g} in the candidate but {float(a[i]):.9g} in "
                        f"the certified rewrite")
    return ""


def rounding_bound(expected: Network, candidate: Network, box: Box) -> float:
    """Sound bound on ``max |expected(x) - candidate(x)|`` over ``box`` for two networks of the same shape
    (the candidate's weights are the expected ones rounded): ``D_k <= |W_c| D_{k-1} + |W_c - W_e| X_{k-1}
    + |b_c - b_e|`` with ``X`` the magnitude bound of the expected network's activations (ReLU is
    1-Lipschitz), widened like every bound here."""
    lo, hi = box.lo[None, :], box.hi[None, :]
    b = crown_bounds(expected, lo, hi)
    mags = magnitudes(candidate, lo, hi)
    x = np.maximum(np.abs(box.lo), np.abs(box.hi))
    d = np.zeros(expected.input_size)
    for k, (e, c) in enumerate(zip(expected.layers, candidate.layers)):
        d = (np.asarray(c.weight_abs @ d).reshape(-1) + np.asarray(abs(c.weight - e.weight) @ x).reshape(-1)
             + np.abs(c.bias - e.bias))
        d = d + REL_MARGIN * mags[k][0] * 4
        lk, uk = b.lower[k][0], b.upper[k][0]
        x = np.maximum(np.abs(lk), np.abs(uk))
        if e.is_relu:
            x = np.maximum(np.maximum(lk, 0), np.maximum(uk, 0))
    return float(d.max(initial=0.0))


def replay(reference: Network, candidate: Network, box: Box, cert: dict, *, deadline: Deadline | None = None,
           workers=None, solver: str = "highs", candidate_dtype: str = "float32", tolerance: float = 0.0) -> ReplayResult:
    """Check ``candidate`` against ``reference`` over ``box`` with the certificate ``cert`` (see the module
    docstring).  ``workers``: an ``onnxcomp.workers.Workers`` for the re-proof MILPs (inline when None)."""
    start = time.perf_counter()
    deadline = deadline or Deadline(60.0)
    out = ReplayResult(False)

    def done(reason: str = "") -> ReplayResult:
        out.reason, out.seconds = reason, time.perf_counter() - start
        return out

    if cert.get("network") != reference.fingerprint():
        return done("the certificate was issued for another network than the reference (fingerprints differ)")
    try:
        claimed = claimed_state(reference, cert)
    except InputError as exc:
        return done(f"certificate refused: {exc}")
    expected, _ = fold(reference, claimed)
    mismatch = compare_structure(expected, candidate, DTYPE_REL.get(candidate_dtype, DTYPE_REL["float32"]))
    if mismatch:
        return done(f"the candidate is not the reference folded under its certificate: {mismatch}")
    reproven, failed, clip = reprove(reference, box, claimed, deadline, workers=workers, solver=solver)
    out.claims = sum(int((a | b).sum()) for a, b in zip(claimed.proven_inactive, claimed.proven_active))
    counts: dict = {}
    for k in range(len(reference.layers)):
        for i in np.flatnonzero(reproven.proven_inactive[k] | reproven.proven_active[k]):
            counts[str(reproven.proof[k][i])] = counts.get(str(reproven.proof[k][i]), 0) + 1
    out.reproven, out.failed = counts, failed
    if failed:
        return done(f"{len(failed)} of {out.claims} claims not re-proven (first: layer {failed[0]['layer']} neuron "
                    f"{failed[0]['neuron']}: {failed[0]['why']})")
    out.epsilon_error_bound = epsilon_error_bound(reference, reproven)
    out.rounding_bound = rounding_bound(expected, candidate, box)
    out.bound = out.epsilon_error_bound + out.rounding_bound
    out.certified = True
    if out.bound > tolerance and not deadline.expired():
        # The margins' worst case through |W| is loose on deep networks: bound the difference itself, with
        # the re-proven claims as facts about the reference and its neurons matched to the candidate's.
        from .formal import max_difference

        diff = max_difference(reference, candidate, box, tolerance=tolerance, deadline=deadline, workers=workers,
                              matching=matching_by_ids(reference, expected), clip1=clip)
        out.difference_bound, out.difference_method = diff.certified_max_abs_diff, diff.method
        out.bound = min(out.bound, diff.certified_max_abs_diff)
    return done()


class _LayerSearch:
    """Input splitting that re-proves the claims of one layer ``k``, with the claims of earlier layers
    (already re-proven) entering the bounds: a claim is settled on a piece when the piece's CROWN bound
    shows it within the allowed margin; the centre of every piece is checked for a counterexample.  A piece narrower than
    ``leaf_width`` of the box in every input, or with at most ``leaf_binaries`` unstable neurons before the
    layer, gets a per-side feasibility MILP (HiGHS) for what is still open on it (a unit of the worker
    pool)."""

    def __init__(self, net, box, k, want_in, want_act, allow, clip, deadline: Deadline, solver: str = "highs",
                 leaf_width: float = 1 / 64, leaf_seconds: float = 10.0, leaf_binaries: int = 24):
        from .stability.feasibility import solve_sides

        self.leaf_fn = solve_sides
        self.net, self.k, self.clip, self.allow, self.deadline = net, k, clip, allow, deadline
        self.want_in, self.want_act = want_in, want_act
        self.slack = np.zeros(net.layers[k].n_out)
        self.refuted = np.zeros(net.layers[k].n_out, bool)
        self.gave_up = np.zeros(net.layers[k].n_out, bool)
        self.width0 = np.where(box.hi > box.lo, box.hi - box.lo, 1.0)
        self.solver, self.leaf_width, self.leaf_seconds, self.leaf_binaries = solver, leaf_width, leaf_seconds, leaf_binaries

    def _leaf(self, piece, b, r, open_in, open_act):
        from .stability.feasibility import ACTIVE, INACTIVE, SideTask, SideUnit

        k, net = self.k, self.net
        lower = [b.lower[j][r] for j in range(k + 1)]
        upper = [b.upper[j][r] for j in range(k + 1)]
        tasks = ([SideTask(int(i), ACTIVE, float(self.allow[i]), WITNESS_FRACTION * float(self.allow[i]))
                  for i in np.flatnonzero(open_in)]
                 + [SideTask(int(i), INACTIVE, float(self.allow[i]), WITNESS_FRACTION * float(self.allow[i]))
                    for i in np.flatnonzero(open_act)])
        seconds = max(min(self.leaf_seconds, self.deadline.remaining()), 0.01)
        return SideUnit([l.weight for l in net.layers[:k + 1]], [l.bias for l in net.layers[:k + 1]],
                        [l.is_relu for l in net.layers[:k + 1]], piece.lo, piece.hi, lower, upper, k, tasks, seconds,
                        self.solver, budget=seconds, bounds_exact=False)

    def assess(self, pieces):
        lo = np.stack([p.lo for p in pieces])
        hi = np.stack([p.hi for p in pieces])
        b = crown_bounds(self.net, lo, hi, upto=self.k + 1, with_coef=True, clip=self.clip)
        up, low = b.upper[self.k], b.lower[self.k]
        n = self.net.layers[self.k].n_out
        coef_up, coef_lo = b.coef[self.k][:, :n], b.coef[self.k][:, n:]
        _, pres = self.net.forward((lo + hi) / 2, preactivations=True)
        centre = pres[self.k]
        unstable = sum(((b.lower[j] < 0) & (b.upper[j] > 0)).sum(axis=1)
                       for j in range(self.k) if self.net.layers[j].is_relu)
        self.refuted |= self.want_in & (centre >= self.allow).any(axis=0)
        self.refuted |= self.want_act & (centre <= -self.allow).any(axis=0)
        decisions = []
        for r, piece in enumerate(pieces):
            open_in, open_act = piece.data
            shown_in = open_in & (up[r] < self.allow) & ~self.refuted
            shown_act = open_act & (low[r] > -self.allow) & ~self.refuted
            self.slack[shown_in] = np.maximum(self.slack[shown_in], np.maximum(up[r][shown_in], 0.0))
            self.slack[shown_act] = np.maximum(self.slack[shown_act], np.maximum(-low[r][shown_act], 0.0))
            open_in, open_act = open_in & ~shown_in & ~self.refuted, open_act & ~shown_act & ~self.refuted
            if not (open_in.any() or open_act.any()):
                decisions.append(bab.Decision(bab.DONE))
            elif (unstable[r] <= self.leaf_binaries or np.max((piece.hi - piece.lo) / self.width0) <= self.leaf_width) \
                    and self.deadline.remaining() > 0:
                decisions.append(bab.Decision(bab.LEAF, data=(open_in, open_act),
                                              unit=self._leaf(piece, b, r, open_in, open_act)))
            else:
                sens = np.abs(coef_up[r][open_in]).sum(axis=0) + np.abs(coef_lo[r][open_act]).sum(axis=0)
                dim = bab.split_dimension(piece.hi - piece.lo, sens, self.width0)
                decisions.append(bab.Decision(bab.SPLIT, dim, (open_in, open_act)))
        return decisions

    def after_leaf(self, piece, decision, results):
        for res in results:
            if res.verdict == "proven":
                self.slack[res.neuron] = max(self.slack[res.neuron], float(res.epsilon))
            elif res.verdict == "witness":
                self.refuted[res.neuron] = True
            else:
                self.gave_up[res.neuron] = True  # a MILP on a small piece that did not finish: not re-proven
        return bab.Decision(bab.DONE)


WITNESS_FRACTION = 1e-4
"""A MILP solution counts as a counterexample only beyond this share of the margin (as witnesses do)."""
SPLIT_MAX_DIMS = 8
REGIONS_SHARE = 0.5
"""At most this share of the time goes to re-proving claims through the network's linear regions."""


def reprove(net: Network, box: Box, claimed, deadline: Deadline, *, workers=None, solver: str = "highs"):
    """Prove every claim of ``claimed`` again on ``net`` itself, layer by layer: a claim of layer ``k`` that
    neuron ``i`` is stably inactive up to ``eps`` is re-proven as "no input of the box reaches
    ``y_i >= eps``" on the real network (active: ``y_i <= -eps``), where ``eps`` is the claim's own margin or
    the policy's, whichever is larger.  The claims of earlier layers, once re-proven, are facts about
    the network and enter the bounds (``upper = eps``, ``lower = -eps``: ``crown_bounds(clip=...)``) and the
    MILPs' big-M constants.  Per layer: CROWN bounds first; then input splitting with those bounds (and a
    per-side feasibility MILP on small pieces) for inputs of at most 8 dimensions, per-side feasibility
    MILPs (HiGHS) on the whole box otherwise; before both, for networks of at most two inputs, the linear
    regions found with the network's own forward passes at their vertices (``regions.vertex_ranges``: a
    region's range is at its vertices), which settle the claims whose range plus the rounding allowance
    stays within their margin.  Returns the re-proven state (proof kinds, and the margins
    the re-proof showed) and the claims that failed, with why."""
    from .stability.state import empty_state

    lo, hi = box.lo[None, :], box.hi[None, :]
    policy = epsilons(net, box.lo, box.hi)
    st = empty_state(net)
    failed: list = []
    clip = ([np.full(l.n_out, -np.inf) for l in net.layers], [np.full(l.n_out, np.inf) for l in net.layers])
    hidden = [k for k in range(len(net.layers) - 1) if net.layers[k].is_relu]
    ranges = region_error = None  # the regions re-proof (at most two inputs), computed once when needed
    for n_done, k in enumerate(hidden):
        want_in, want_act = claimed.proven_inactive[k], claimed.proven_active[k]
        if not (want_in.any() or want_act.any()):
            continue
        # the margin a re-proof may use: the claim's own, but never below the policy's (a bound's slack of
        # 1e-9 is below what a solver can decide); the bound computed below uses the margins re-proven
        allow = np.maximum(claimed.epsilon[k], policy[k])
        b = crown_bounds(net, lo, hi, upto=k + 1, clip=clip)
        upper, lower = b.upper[k][0], b.lower[k][0]
        exact_in, exact_act = want_in & (upper <= 0), want_act & (lower >= 0)
        near_in = want_in & ~exact_in & (upper < allow)
        near_act = want_act & ~exact_act & (lower > -allow)
        _record(st, k, exact_in | exact_act, exact_in, "bounds", 0.0)
        _record(st, k, near_in | near_act, near_in, "bounds-epsilon",
                np.where(near_in, np.maximum(upper, 0), np.maximum(-lower, 0)))
        rest_in, rest_act = want_in & ~exact_in & ~near_in, want_act & ~exact_act & ~near_act
        if k == 0 and (rest_in.any() or rest_act.any()):
            # the first layer is linear in the input: its extreme over the box is at a vertex, and the bound
            # not showing a claim means that vertex refutes it
            for i in np.flatnonzero(rest_in | rest_act):
                up = rest_in[i]
                x = np.where((net.layers[0].rows([i])[0] > 0) == up, box.hi, box.lo)
                y = float(net.layers[0].preactivation(x[None, :])[0, i])
                if (y >= allow[i]) if up else (y <= -allow[i]):
                    failed.append({"layer": net.layers[0].layer_id, "neuron": net.layers[0].neuron_ids[i],
                                   "state": "stably_inactive" if up else "stably_active",
                                   "proof": str(claimed.proof[0][i]),
                                   "why": f"refuted: y = {y:.6g} at a vertex of the box"})
                    rest_in[i] = rest_act[i] = False
        if (rest_in.any() or rest_act.any()) and regions_supported(net):
            if ranges is None:
                last = max(j for j in hidden if claimed.proven_inactive[j].any() or claimed.proven_active[j].any())
                ranges = vertex_ranges(net, box.lo, box.hi, last + 1, deadline.share(REGIONS_SHARE))
                region_error = allowances(net, box.lo, box.hi)[1]
            if ranges[0] is not None:
                top, bottom = ranges[0][k] + region_error[k], ranges[1][k] - region_error[k]
                shown_in, shown_act = rest_in & (top < allow), rest_act & (bottom > -allow)
                _record(st, k, shown_in | shown_act, shown_in, "replay-regions",
                        np.where(shown_in, np.maximum(top, 0.0), np.maximum(-bottom, 0.0)))
                rest_in, rest_act = rest_in & ~shown_in, rest_act & ~shown_act
        if rest_in.any() or rest_act.any():
            share = deadline.share(1.0 / (len(hidden) - n_done))
            if box.size <= SPLIT_MAX_DIMS:
                settled, eps_used, why = _split_layer(net, box, k, rest_in, rest_act, allow, clip, share, workers,
                                                      solver)
            else:
                settled, eps_used, why = _milp_layer(net, box, k, rest_in, rest_act, allow, b, share, workers, solver)
            _record(st, k, settled & (rest_in | rest_act), settled & rest_in, "replay-" + why["method"], eps_used)
            for i in np.flatnonzero((rest_in | rest_act) & ~settled):
                failed.append({"layer": net.layers[k].layer_id, "neuron": net.layers[k].neuron_ids[i],
                               "state": "stably_inactive" if rest_in[i] else "stably_active",
                               "proof": str(claimed.proof[k][i]), "why": why.get(int(i), "not re-proven in time")})
        # re-proven claims are facts about the network: they bound the later layers
        clip[1][k] = np.where(st.proven_inactive[k], np.minimum(clip[1][k], st.epsilon[k]), clip[1][k])
        clip[0][k] = np.where(st.proven_active[k], np.maximum(clip[0][k], -st.epsilon[k]), clip[0][k])
    return st, failed, clip


def _record(st, k: int, mask: np.ndarray, inactive: np.ndarray, proof: str, eps) -> None:
    if not mask.any():
        return
    st.proven_inactive[k] |= mask & inactive
    st.proven_active[k] |= mask & ~inactive
    st.proof[k][mask] = proof
    st.epsilon[k][mask] = np.broadcast_to(np.asarray(eps, dtype=np.float64), mask.shape)[mask]


def _split_layer(net, box, k, rest_in, rest_act, allow, clip, deadline: Deadline, workers, solver: str = "highs"):
    search = _LayerSearch(net, box, k, rest_in, rest_act, allow, clip, deadline, solver)
    outcome = bab.run(search, [bab.Piece(box.lo.copy(), box.hi.copy(), (rest_in.copy(), rest_act.copy()))], deadline,
                      workers=workers)
    still = np.zeros_like(rest_in)
    for piece in outcome.open:
        still |= piece.data[0] | piece.data[1]
    settled = (rest_in | rest_act) & ~still & ~search.refuted & ~search.gave_up
    why = {"method": "split"}
    for i in np.flatnonzero(search.refuted):
        why[int(i)] = "refuted: an input of the box passes the claimed margin"
    for i in np.flatnonzero(search.gave_up & ~search.refuted):
        why[int(i)] = "a feasibility MILP on a small piece did not settle it in time"
    return settled, search.slack, why


def _milp_layer(net, box, k, rest_in, rest_act, allow, b, deadline: Deadline, workers, solver):
    from .stability.feasibility import ACTIVE, INACTIVE, SideTask, SideUnit, solve_sides

    weights = [layer.weight.toarray() if is_conv(layer) else layer.weight for layer in net.layers[:k + 1]]
    biases = [layer.bias for layer in net.layers[:k + 1]]
    relu = [layer.is_relu for layer in net.layers[:k + 1]]
    # big-M from the bounds with the earlier claims entered (an exact claim fixes the state: u = 0 or l = 0)
    lower = [b.lower[j][0] for j in range(k + 1)]
    upper = [b.upper[j][0] for j in range(k + 1)]
    tasks = ([SideTask(int(i), ACTIVE, float(allow[i]), WITNESS_FRACTION * float(allow[i])) for i in np.flatnonzero(rest_in)]
             + [SideTask(int(i), INACTIVE, float(allow[i]), WITNESS_FRACTION * float(allow[i]))
                for i in np.flatnonzero(rest_act)])
    size = workers.size if workers is not None else 1
    chunks = [tasks[j::size] for j in range(min(size, len(tasks)))]
    seconds = max(deadline.remaining(), 0.01)
    units = [SideUnit(weights, biases, relu, box.lo, box.hi, lower, upper, k, chunk, seconds, solver, budget=seconds,
                      bounds_exact=False) for chunk in chunks]
    results = workers.map(solve_sides, units) if workers is not None and len(units) > 1 else [solve_sides(u) for u in units]
    settled = np.zeros_like(rest_in)
    eps_used = np.zeros(rest_in.shape)
    why: dict = {"method": "milp"}
    for r in (r for rs in results for r in rs):
        if r.verdict == "proven":
            settled[r.neuron] = True
            eps_used[r.neuron] = max(float(r.epsilon), 0.0)
        elif r.verdict == "witness":
            why[r.neuron] = "refuted: an input of the box passes the claimed margin"
        else:
            why[r.neuron] = f"not re-proven ({r.status or r.verdict})"
    return settled, eps_used, why
