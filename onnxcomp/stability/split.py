"""Input splitting: branch and bound over the input box, CROWN bounds on the pieces, ISA MILPs on small ones.

Strong when the input has few dimensions (ACAS Xu has 5).  The search is a :class:`SplitSearch` run by
the one branch-and-bound driver (``onnxcomp.bab``); the piece MILPs are independent units
(:func:`solve_leaf`) that the driver hands to the worker pool.  See :func:`split`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .. import bab
from ..bounds import crown_bounds
from ..ir import Network
from ..milp import select
from ..milp.formulation import build
from ..timing import Deadline
from .common import DEGENERATE, ProofSetup, WitnessOracle, checked_start, masks, solve_isa_safely
from .state import Findings, StabilityState


@dataclass
class LeafUnit:
    """One piece MILP, as plain data: the network's layers, the piece, its bounds (flat, per neuron), the
    open neuron sides, the witnesses known when the batch started, margins and solver settings."""

    layers: tuple
    input_size: int
    lo: np.ndarray
    hi: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    open_p: np.ndarray
    open_q: np.ndarray
    offsets: np.ndarray
    last: int
    seen_active: list
    seen_inactive: list
    eps: list
    solver: str
    threads: int | None
    time_limit: float
    until: float = float("inf")
    """Wall-clock time (``time.time()``) after which the unit must not run: units of one batch run one
    after another when there are fewer workers than units, and the search's deadline holds for all."""


@dataclass
class LeafResult:
    """What a piece MILP established: the sides it proved on the piece (flat masks), the sides whose MILP
    claims a forward pass did not confirm, every input it looked at (to learn witnesses from, in order),
    and any sign that the bounds it trusted were wrong."""

    settled_p: np.ndarray
    settled_q: np.ndarray
    rejected: list
    points: list
    bound_violation: str = ""
    status: str = ""


class _Seen:
    """The witness sets a leaf starts from (what ``WitnessOracle`` reads of a ``StabilityState``)."""

    def __init__(self, seen_active: list, seen_inactive: list):
        self.seen_active, self.seen_inactive = seen_active, seen_inactive


class _RecordingOracle(WitnessOracle):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.points: list = []

    def observe(self, x0: np.ndarray) -> None:
        self.points.append(np.asarray(x0, dtype=np.float64).reshape(-1).copy())
        super().observe(x0)


def solve_leaf(unit: LeafUnit) -> LeafResult:
    """ISA on one piece of the box (a pure function of ``unit``: usable by a process pool)."""
    seconds = min(unit.time_limit, unit.until - time.time())
    if seconds <= 0.01:  # the search's time is up: this piece stays open
        empty = np.zeros_like(unit.open_p)
        return LeafResult(empty, empty.copy(), [], [], status="not started (time limit)")
    net = Network(unit.layers, unit.input_size)
    offsets, n_layers = unit.offsets, len(unit.offsets) - 1
    lows = [unit.lower[offsets[k]:offsets[k + 1]] for k in range(n_layers)]
    ups = [unit.upper[offsets[k]:offsets[k + 1]] for k in range(n_layers)]
    p_masks = [unit.open_p[offsets[k]:offsets[k + 1]] for k in range(n_layers)]
    q_masks = [unit.open_q[offsets[k]:offsets[k + 1]] for k in range(n_layers)]
    stable_in = [u <= 0 for u in ups]
    stable_act = [l >= 0 for l in lows]
    milp = build(net.layers, unit.lo, unit.hi, lows, ups, stable_in, stable_act, unit.last, p_masks, q_masks, unit.eps)
    start = checked_start(milp, net, (unit.lo + unit.hi) / 2, lows, ups)
    seen = _Seen([a.copy() for a in unit.seen_active], [a.copy() for a in unit.seen_inactive])
    oracle = _RecordingOracle(net, unit.lo, unit.hi, seen, n_layers, p_masks, q_masks, unit.eps)
    oracle.trust(lows, ups)
    outcome = solve_isa_safely(select(unit.solver, milp).backend, milp, oracle, seconds, unit.threads, start,
                               piece=True)
    rejected = sorted(oracle.rejected_p | oracle.rejected_q)
    settled_p = np.zeros_like(unit.open_p)
    settled_q = np.zeros_like(unit.open_q)
    if outcome.proven:
        for k, i in oracle.p_keys:
            settled_p[offsets[k] + i] = oracle.p_open((k, i))
        for k, i in oracle.q_keys:
            settled_q[offsets[k] + i] = oracle.q_open((k, i))
    return LeafResult(settled_p, settled_q, rejected, oracle.points, oracle.bound_violation, outcome.status)


class SplitSearch:
    """The stability search over pieces (see :func:`split`): what is open on a piece, when it is settled,
    where to bisect, when a MILP should take over."""

    leaf_fn = staticmethod(solve_leaf)

    def __init__(self, setup: ProofSetup, state: StabilityState, deadline: Deadline, resume: dict | None):
        net, n_layers = setup.net, setup.n_layers
        self.setup, self.net, self.n_layers, self.deadline = setup, net, n_layers, deadline
        self.p_set = masks(net, n_layers, state.need_active_witness)
        self.q_set = masks(net, n_layers, state.need_inactive_witness)
        self.oracle = WitnessOracle(net, setup.lo, setup.hi, state, n_layers, self.p_set, self.q_set, setup.eps)
        self.sizes = [net.layers[k].n_out for k in range(n_layers)]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.relu_flat = self.flat([np.full(n, net.layers[k].is_relu) for k, n in enumerate(self.sizes)])
        self.layer_of = self.flat([np.full(n, k) for k, n in enumerate(self.sizes)], int)
        self.p_flat, self.q_flat = self.flat(self.p_set), self.flat(self.q_set)
        self.eps_flat = self.flat(setup.eps[:n_layers], float)
        self.width0 = np.where(setup.hi > setup.lo, setup.hi - setup.lo, 1.0)
        if resume is None:
            self.slack_p = np.zeros(self.p_flat.shape)  # largest upper bound in (0, eps) a piece settled with
            self.slack_q = np.zeros(self.q_flat.shape)
            self.abandoned = np.zeros_like(self.p_flat)  # unconfirmed MILP claims: never proven
            self.deferred_p = np.zeros_like(self.p_flat)  # flat pre-activations on some piece: left to ISA
            self.deferred_q = np.zeros_like(self.q_flat)
            self.roots = [bab.Piece(setup.lo.copy(), setup.hi.copy(), (self.p_flat.copy(), self.q_flat.copy()))]
        else:
            # Go on where an earlier split stopped: its unfinished pieces, less what was settled since.
            for key in ("slack_p", "slack_q", "abandoned", "deferred_p", "deferred_q"):
                setattr(self, key, resume[key].copy())
            self.roots = [bab.Piece(p.lo, p.hi, (p.data[0] & self.p_flat, p.data[1] & self.q_flat))
                          for p in resume["stack"]]
            self.roots = [p for p in self.roots if p.data[0].any() or p.data[1].any()]
        self._context: dict = {}

    def flat(self, per_layer: list, dtype=bool) -> np.ndarray:
        return np.concatenate(per_layer) if per_layer else np.zeros(0, dtype)

    def seen(self) -> tuple[np.ndarray, np.ndarray]:
        return (self.flat(self.oracle.seen_active[:self.n_layers]), self.flat(self.oracle.seen_inactive[:self.n_layers]))

    def _split_dim(self, piece: bab.Piece, open_p, open_q, up_coef, lo_coef) -> int:
        sens = np.abs(up_coef[open_p]).sum(axis=0) + np.abs(lo_coef[open_q]).sum(axis=0)
        return bab.split_dimension(piece.hi - piece.lo, sens, self.width0)

    def assess(self, pieces: list) -> list:
        setup, n_layers = self.setup, self.n_layers
        lo = np.stack([p.lo for p in pieces])
        hi = np.stack([p.hi for p in pieces])
        b = crown_bounds(self.net, lo, hi, upto=n_layers, with_coef=True)
        upper = np.concatenate(b.upper, axis=1)
        lower = np.concatenate(b.lower, axis=1)
        up_coef = np.concatenate([c[:, : self.sizes[k]] for k, c in enumerate(b.coef)], axis=1)
        lo_coef = np.concatenate([c[:, self.sizes[k]:] for k, c in enumerate(b.coef)], axis=1)
        for x in (lo + hi) / 2:
            self.oracle.observe(x)
        decisions = []
        for r, piece in enumerate(pieces):
            cp, cq = piece.data
            sa, si = self.seen()
            # A pre-activation that is 0 up to rounding on a piece (two equal terms subtracted) keeps its
            # bounds at +-margin however small the piece: leave it to the MILP instead of splitting on it.
            # Such a bound within the MILP margin of 0 settles the neuron on the piece with the same
            # certificate a MILP gives ("no input of the piece reaches y >= eps"), its slack reported.
            near_p = cp & ~sa & ~self.abandoned & (upper[r] > 0) & (upper[r] < self.eps_flat)
            near_q = cq & ~si & ~self.abandoned & (lower[r] < 0) & (lower[r] > -self.eps_flat)
            self.slack_p[near_p] = np.maximum(self.slack_p[near_p], upper[r][near_p])
            self.slack_q[near_q] = np.maximum(self.slack_q[near_q], -lower[r][near_q])
            flat_range = (upper[r] - lower[r]) <= DEGENERATE * (1.0 + np.abs(upper[r]) + np.abs(lower[r]))
            self.deferred_p |= cp & flat_range & (upper[r] > 0) & ~near_p
            self.deferred_q |= cq & flat_range & (lower[r] < 0) & ~near_q
            open_p = cp & ~sa & ~self.abandoned & (upper[r] > 0) & ~flat_range & ~near_p
            open_q = cq & ~si & ~self.abandoned & (lower[r] < 0) & ~flat_range & ~near_q
            if not (open_p.any() or open_q.any()):
                decisions.append(bab.Decision(bab.DONE))
                continue
            last = int(self.layer_of[open_p | open_q].max()) + 1
            unstable = self.relu_flat & (lower[r] < 0) & (upper[r] > 0) & (self.layer_of < last)
            # Pieces that stay open after many bisections straddle a ReLU boundary that the linear bounds
            # relax independently for neurons that are equal in fact (duplicates); the MILP is exact there.
            tiny = np.max((piece.hi - piece.lo) / self.width0) <= setup.split_min_width
            self._context[id(piece)] = (open_p, open_q, up_coef[r], lo_coef[r])
            left = self.deadline.remaining()
            if setup.split_leaf_binaries > 0 and (unstable.sum() <= setup.split_leaf_binaries or tiny) and left > 0:
                unit = LeafUnit(tuple(self.net.layers), self.net.input_size, piece.lo, piece.hi, lower[r], upper[r],
                                open_p, open_q, self.offsets, last, [a.copy() for a in self.oracle.seen_active],
                                [a.copy() for a in self.oracle.seen_inactive], list(setup.eps), setup.solver,
                                setup.threads, min(setup.split_leaf_seconds, left), time.time() + left)
                decisions.append(bab.Decision(bab.LEAF, unit=unit))
                continue
            decisions.append(bab.Decision(bab.SPLIT, self._split_dim(piece, open_p, open_q, up_coef[r], lo_coef[r]),
                                          (open_p, open_q)))
        return decisions

    def after_leaf(self, piece: bab.Piece, decision: bab.Decision, result: LeafResult) -> bab.Decision:
        if result.bound_violation:
            raise RuntimeError(f"unsound bounds detected on a piece of the box ({result.bound_violation}); "
                               f"nothing proven")
        for x in result.points:  # what the MILP looked at teaches witnesses to the whole search, in order
            self.oracle.observe(x)
        for k, i in result.rejected:
            self.abandoned[self.offsets[k] + i] = True
        open_p, open_q, up_coef, lo_coef = self._context.pop(id(piece))
        # a MILP certificate holds up to the margin: "no input of the piece reaches y >= eps"
        sp, sq = result.settled_p, result.settled_q
        self.slack_p[sp] = np.maximum(self.slack_p[sp], self.eps_flat[sp])
        self.slack_q[sq] = np.maximum(self.slack_q[sq], self.eps_flat[sq])
        sa, si = self.seen()
        open_p = open_p & ~sp & ~sa & ~self.abandoned
        open_q = open_q & ~sq & ~si & ~self.abandoned
        if not (open_p.any() or open_q.any()):
            return bab.Decision(bab.DONE)
        return bab.Decision(bab.SPLIT, self._split_dim(piece, open_p, open_q, up_coef, lo_coef), (open_p, open_q))


def split(setup: ProofSetup, state: StabilityState, time_limit: float, entry: dict,
          resume: dict | None = None, workers=None) -> Findings:
    """Input-space branch and bound with CROWN bounds on the pieces, and ISA MILPs on small pieces.

    A piece is done when every open neuron is settled on it (its bound shows the sign) or witnessed
    anywhere.  When a piece has few unstable neurons left (``split_leaf_binaries``, default 24) its open
    neurons go to an ISA MILP over that piece, with the piece's tight bounds as big-M (so do pieces
    already bisected below ``split_min_width`` of the box in every input); what the MILP proves
    holds on the piece, what it does not prove in ``split_leaf_seconds`` is split further.  Otherwise the
    piece is bisected along the input with the largest ``width * sum |coefficient|`` of the open neurons'
    linear bounds.  A neuron is proven when no unfinished piece has it open; exactly (``split``) when
    every piece showed the sign, up to the margin (``split-epsilon``) when some piece's bound was within
    ``eps`` of 0 or a piece MILP settled it.  The piece MILPs of a batch run on ``workers`` (any
    ``onnxcomp.workers.Workers``; inline when ``None``), each from the witnesses known when the batch
    started, so the outcome does not depend on the number of workers.

    ``resume``: the ``resume`` attribute of an earlier split's findings on the same network; the search
    continues from its unfinished pieces (what was settled since is dropped from them) instead of
    starting again from the whole box.
    """
    net, n_layers = setup.net, setup.n_layers
    search = SplitSearch(setup, state, Deadline(time_limit), resume)
    outcome = bab.run(search, search.roots, search.deadline, batch=setup.split_batch, workers=workers)
    sa, si = search.seen()
    still_p = np.zeros_like(search.p_flat)
    still_q = np.zeros_like(search.q_flat)
    for piece in outcome.open:
        still_p |= piece.data[0]
        still_q |= piece.data[1]
    proven_in = search.p_flat & ~sa & ~still_p & ~search.abandoned & ~search.deferred_p
    proven_act = search.q_flat & ~si & ~still_q & ~search.abandoned & ~search.deferred_q
    offsets, layer_of = search.offsets, search.layer_of

    def unflat(v):
        return [v[offsets[k]:offsets[k + 1]] for k in range(n_layers)] + [np.zeros(net.layers[-1].n_out, v.dtype)]

    entry.update({"split_boxes": outcome.pieces, "split_leaf_milps": outcome.leaves,
                  "split_leaf_seconds": round(outcome.leaf_seconds, 3), "split_seconds": round(outcome.seconds, 3),
                  "split_complete": outcome.complete})
    if search.abandoned.any():
        entry.setdefault("ambiguous", []).extend(
            {"layer": net.layers[int(layer_of[i])].layer_id,
             "neuron": net.layers[int(layer_of[i])].neuron_ids[i - offsets[layer_of[i]]]}
            for i in np.flatnonzero(search.abandoned))
    near_in, near_act = proven_in & (search.slack_p > 0), proven_act & (search.slack_q > 0)
    if near_in.any() or near_act.any():
        entry["split_within_epsilon"] = int(near_in.sum() + near_act.sum())
    margin = Findings(source="split-epsilon", proven_inactive=unflat(near_in), proven_active=unflat(near_act),
                      epsilon=unflat(np.where(near_in, search.slack_p, 0.0) + np.where(near_act, search.slack_q, 0.0)),
                      fingerprint=net.fingerprint())
    found = Findings(source="split", seen_active=search.oracle.seen_active, seen_inactive=search.oracle.seen_inactive,
                     proven_inactive=unflat(proven_in & ~near_in), proven_active=unflat(proven_act & ~near_act),
                     fingerprint=net.fingerprint(), details={"boxes": outcome.pieces, "complete": outcome.complete},
                     parts=[margin])
    found.resume = {"stack": outcome.open, "slack_p": search.slack_p, "slack_q": search.slack_q,
                    "abandoned": search.abandoned, "deferred_p": search.deferred_p, "deferred_q": search.deferred_q}
    return found

