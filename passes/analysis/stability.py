"""``milp``: prove the remaining neurons stable, or find the inputs that show they are not.

Methods (``--stability-method``):

* ``isa`` (ISA, Algorithm 1): ONE MILP over the whole network whose objective counts the ReLU states
  not yet witnessed (indicators ``p``/``q``, formulation (7)-(12)); every solution and every node-LP input
  is pushed through a float64 forward pass, the states it witnesses leave the objective, and when the
  solver proves the optimum is 0 the neurons still in P are stably inactive and those in Q stably
  active.  Big-M constants are the sound bounds of the ``bounds`` pass (or intervals).
* ``split``: branch and bound over the input box (as alpha-beta-CROWN and nnenum do): the box is bisected
  and CROWN bounds are recomputed on the pieces until every open neuron is settled on every piece (a
  proof) or witnessed.  Strong when the input has few dimensions (ACAS Xu has 5).
* ``per-neuron``: the baseline of the paper, two MILPs per neuron (max and min of its pre-activation),
  layer by layer, each layer's new exact bounds tightening the next layer's formulation.
* ``auto``: for inputs of at most 8 dimensions, a short ``split`` (a quarter of the time, at most 30 s),
  then ``isa`` on what is left (half the remaining time), then ``split`` goes on from its unfinished
  pieces with the rest; for larger inputs, ``isa``.

Numerics (the epsilon policy).  Witnesses count any pre-activation beyond rounding noise
(``stability_state.witness_floor``).  The MILP indicators carry a margin ``eps_i = 1e-5 * max(1, S_i)``
(``stability_state.epsilons``; ``S_i`` is the magnitude of the terms the pre-activation sums, so eps is
ten times the solvers' feasibility tolerance on the scale of that row): ``p = 1`` needs ``y >= eps_i``,
``q = 1`` needs ``y <= -eps_i``.  A MILP solution is trusted only if the float64 forward pass of its
input confirms the claimed state; an unconfirmed claim never counts and never lets the neuron be removed
(it is kept, as "ambiguous").  A MILP certificate therefore states "no input of the domain reaches
``y >= eps_i``" (or ``y <= -eps_i``); a neuron removed on one may reach ``(0, eps_i)`` somewhere, and the
``fold`` pass reports the resulting worst-case output error bound (``stable.epsilon_error_bound``).
Bounds proofs are exact (epsilon 0); so are split proofs where every piece's bound shows the sign.  A
piece whose bound is only within the margin (``0 < upper < eps_i``: the pre-activation is 0 in exact
arithmetic on part of the box, as in models/external/tll's min/max banks), or whose neuron a piece MILP
settled, gives the MILP kind of certificate; such neurons are reported as ``split-epsilon`` with the
largest slack used.  Time limits and solver failures leave neurons undecided, and undecided neurons
are kept.
"""

from __future__ import annotations

import time

import numpy as np

from onnxcomp.errors import UsageError
from onnxcomp.ir import Network
from onnxcomp.milp import IsaOutcome, select
from onnxcomp.milp.formulation import build, solution_from_input, violations
from onnxcomp.pipeline import ANALYSIS, Context, register

from onnxcomp.bounds import crown_bounds, interval_bounds
from .stability_state import Findings, StabilityState, epsilons, merge, witness_floor

DEFAULT_TIME_LIMIT = 600.0
SPLIT_MAX_DIMS = 8
DEGENERATE = 1e-7
SPLIT_FIRST_SECONDS = 30.0


class WitnessOracle:
    """Float64 forward passes of candidate inputs (clipped into the box); records witnessed states."""

    def __init__(self, net: Network, lo: np.ndarray, hi: np.ndarray, state: StabilityState, n_layers: int,
                 p_set: list, q_set: list, eps: list):
        self.net, self.lo, self.hi, self.n_layers, self.eps = net, lo, hi, n_layers, eps
        self.floor = witness_floor(eps)
        self.seen_active = [a.copy() for a in state.seen_active]
        self.seen_inactive = [a.copy() for a in state.seen_inactive]
        self.p_keys = {(k, int(i)) for k in range(n_layers) for i in np.flatnonzero(p_set[k])}
        self.q_keys = {(k, int(i)) for k in range(n_layers) for i in np.flatnonzero(q_set[k])}
        self.rejected_p: set = set()
        self.rejected_q: set = set()
        self.observed = 0
        self.lower = self.upper = None
        self.bound_violation = ""

    def trust(self, lower: list | None, upper: list | None) -> None:
        """Bounds the MILP relies on: every observed point is checked against them."""
        self.lower, self.upper = lower, upper

    def observe(self, x0: np.ndarray) -> None:
        x = np.clip(np.asarray(x0, dtype=np.float64).reshape(1, -1), self.lo, self.hi)
        _, pres = self.net.forward(x, preactivations=True)
        self.observed += 1
        for k in range(self.n_layers):
            y = pres[k][0]
            self.seen_active[k] |= y > self.floor[k]
            self.seen_inactive[k] |= y < -self.floor[k]
            if self.lower is not None and k < len(self.lower):
                tol = 1e-9 * (1 + np.abs(y))
                if np.any((y < self.lower[k] - tol) | (y > self.upper[k] + tol)):
                    self.bound_violation = f"layer {k}: a forward pass leaves the bounds used as big-M"

    def p_open(self, key) -> bool:
        return key not in self.rejected_p and not self.seen_active[key[0]][key[1]]

    def q_open(self, key) -> bool:
        return key not in self.rejected_q and not self.seen_inactive[key[0]][key[1]]

    def reject(self, key, kind: str) -> None:
        (self.rejected_p if kind == "p" else self.rejected_q).add(key)

    def finished(self) -> bool:
        return not any(self.p_open(k) for k in self.p_keys) and not any(self.q_open(k) for k in self.q_keys)

    def restrict(self, lo: np.ndarray, hi: np.ndarray, p_set: list, q_set: list) -> None:
        """Work on a piece of the box with its own open neurons until ``release``."""
        self._saved = (self.lo, self.hi, self.p_keys, self.q_keys)
        self.lo, self.hi = lo, hi
        self.p_keys = {(k, int(i)) for k in range(len(p_set)) for i in np.flatnonzero(p_set[k])}
        self.q_keys = {(k, int(i)) for k in range(len(q_set)) for i in np.flatnonzero(q_set[k])}
        self.last_p_keys, self.last_q_keys = self.p_keys, self.q_keys
        self.rejected_p, self.rejected_q = set(), set()

    def release(self) -> set:
        """Back to the whole box; returns the neurons whose MILP claims were not confirmed on the piece."""
        rejected = self.rejected_p | self.rejected_q
        self.lo, self.hi, self.p_keys, self.q_keys = self._saved
        self.rejected_p, self.rejected_q = set(), set()
        return rejected


def _masks(net: Network, n_layers: int, fn) -> list:
    return [fn(k) if net.layers[k].is_relu else np.zeros(net.layers[k].n_out, bool) for k in range(n_layers)]


def _ensure_bounds(net: Network, ctx: Context, state: StabilityState) -> tuple[list, list]:
    if state.lower is not None:
        return state.lower, state.upper
    lo, hi = ctx.box.lo[None, :], ctx.box.hi[None, :]
    b = interval_bounds(net, lo, hi) if ctx.opt("bounds_method", "crown") == "interval" else crown_bounds(net, lo, hi)
    return [x[0] for x in b.lower], [x[0] for x in b.upper]


def isa(net: Network, ctx: Context, state: StabilityState, time_limit: float, entry: dict) -> Findings:
    """ISA: one MILP for all remaining neurons (see module docstring).

    Its proof is all or nothing: one hard neuron keeps the optimum from being proven, and then nothing
    is proven.  So when the single MILP does not finish in a third of the time, the rest goes to
    one ISA MILP per layer (first layer first, each formulation truncated after its layer and using what
    the earlier layers proved), so that the neurons that can be settled are."""
    start = time.perf_counter()
    found = _isa_once(net, ctx, state, time_limit / 3, entry)
    if found.proven_inactive is not None or entry.get("status") == "nothing to prove":
        return found
    parts = [found]
    annotations = {"isa": found}
    layered = []
    n_layers = len(net.layers) - 1
    todo = [k for k in range(n_layers) if net.layers[k].is_relu]
    for j, k in enumerate(todo):
        remaining = time_limit - (time.perf_counter() - start)
        if remaining <= 0.05:
            break
        st = merge(net, {**ctx.annotations, **annotations})
        sub: dict = {}
        part = _isa_once(net, ctx, st, remaining / (len(todo) - j), sub, only_layer=k)
        if sub.get("status") == "nothing to prove":
            continue
        parts.append(part)
        annotations[f"isa-layer-{k}"] = part
        layered.append({"layer": net.layers[k].layer_id, "status": sub.get("status"),
                        "seconds": sub.get("milp_seconds"), "proven": part.proven_inactive is not None})
    entry["layered"] = layered
    return Findings(source="milp", fingerprint=net.fingerprint(), parts=parts)


def _isa_once(net: Network, ctx: Context, state: StabilityState, time_limit: float, entry: dict,
              only_layer: int | None = None) -> Findings:
    """One ISA MILP over every open neuron (or only those of ``only_layer``, the formulation ending there)."""
    n_layers = len(net.layers) - 1
    lower, upper = _ensure_bounds(net, ctx, state)
    p_set = _masks(net, n_layers, state.need_active_witness)
    q_set = _masks(net, n_layers, state.need_inactive_witness)
    if only_layer is not None:
        p_set = [m if k == only_layer else np.zeros_like(m) for k, m in enumerate(p_set)]
        q_set = [m if k == only_layer else np.zeros_like(m) for k, m in enumerate(q_set)]
    last = max([k + 1 for k in range(n_layers) if p_set[k].any() or q_set[k].any()], default=0)
    eps = epsilons(net, ctx.box.lo, ctx.box.hi)
    oracle = WitnessOracle(net, ctx.box.lo, ctx.box.hi, state, n_layers, p_set, q_set, eps)
    findings = Findings(source="milp", seen_active=oracle.seen_active, seen_inactive=oracle.seen_inactive,
                        fingerprint=net.fingerprint())
    if last == 0:
        entry.update({"status": "nothing to prove", "solver": None})
        return findings
    milp = build(net.layers, ctx.box.lo, ctx.box.hi, lower, upper, state.proven_inactive, state.proven_active,
                 last, p_set, q_set, eps)
    start = _checked_start(milp, net, ctx, lower, upper)
    oracle.trust(lower, upper)
    sel = select(ctx.opt("solver", "auto"), milp)
    outcome = solve_isa_safely(sel.backend, milp, oracle, time_limit, ctx.opt("threads"), start)
    if outcome.status.startswith("error") and sel.name != "scip":
        from onnxcomp.milp.scip import ScipBackend

        sel.note = (sel.note + "; " if sel.note else "") + f"{sel.name} failed ({outcome.note}); reran with SCIP"
        outcome = solve_isa_safely(ScipBackend(), milp, oracle, time_limit, ctx.opt("threads"), start)
    if outcome.status.startswith("error"):
        ctx.warn(f"milp: the solver failed ({outcome.note}); its neurons stay undecided and are kept")
    if oracle.bound_violation:
        raise RuntimeError(f"unsound bounds detected ({oracle.bound_violation}); nothing proven")
    entry.update({
        "solver": outcome.solver, "status": outcome.status, "milp_seconds": round(outcome.seconds, 3),
        "nodes": outcome.nodes, "solutions_checked": outcome.solutions_seen, "lp_inputs": outcome.lp_inputs_seen,
        "variables": milp.n_vars, "binaries": milp.n_binary, "rows": len(milp.rows), "threads": outcome_threads(sel),
    })
    if sel.note:
        entry["solver_note"] = sel.note
        ctx.warn(f"milp: {sel.note}")
    if outcome.proven:
        findings.proven_inactive = [np.array([oracle.p_open((k, i)) and p_set[k][i] for i in range(net.layers[k].n_out)])
                                    for k in range(n_layers)] + [np.zeros(net.layers[-1].n_out, bool)]
        findings.proven_active = [np.array([oracle.q_open((k, i)) and q_set[k][i] for i in range(net.layers[k].n_out)])
                                  for k in range(n_layers)] + [np.zeros(net.layers[-1].n_out, bool)]
        findings.epsilon = eps
    ambiguous = sorted(oracle.rejected_p | oracle.rejected_q)
    if ambiguous:
        entry["ambiguous"] = [{"layer": net.layers[k].layer_id, "neuron": net.layers[k].neuron_ids[i]} for k, i in ambiguous]
    return findings


def solve_isa_safely(backend, milp, oracle, time_limit: float, threads, start, piece: bool = False) -> IsaOutcome:
    """``backend.solve_isa``, with a solver that raises (a crash inside pyscipopt or gurobipy) turned
    into an "error" outcome that proves nothing: the run goes on and those neurons stay undecided.
    An interrupt (Ctrl-C) still stops the run."""
    t0 = time.perf_counter()
    try:
        return backend.solve_isa(milp, oracle, time_limit, threads, start, piece=piece)
    except Exception as exc:  # noqa: BLE001 - any solver failure must leave the neurons undecided
        return IsaOutcome(False, f"error: {type(exc).__name__}", time.perf_counter() - t0,
                          solver=getattr(backend, "name", ""), note=f"{type(exc).__name__}: {exc}")


def _checked_start(milp, net: Network, ctx: Context, lower: list, upper: list) -> np.ndarray:
    """The forward-pass point of the box centre; it must satisfy the formulation, else the formulation
    (or its bounds) is wrong and nothing may be proven with it."""
    centre = (ctx.box.lo + ctx.box.hi) / 2
    return checked_start(milp, net, centre, lower, upper)


def checked_start(milp, net: Network, x0: np.ndarray, lower: list, upper: list) -> np.ndarray:
    """The MILP point of input ``x0``; refuses (RuntimeError) when it violates a row or when a
    pre-activation at ``x0`` lies outside the bounds the formulation trusts (a neuron claimed stable by
    wrong bounds has no row that could show it)."""
    start = solution_from_input(milp, net.layers, x0)
    bad = violations(milp, start)
    _, pres = net.forward(np.asarray(x0)[None, :], preactivations=True)
    outside = sum(int(np.sum((pres[k][0] < lower[k] - 1e-9 * (1 + np.abs(lower[k]))) |
                             (pres[k][0] > upper[k] + 1e-9 * (1 + np.abs(upper[k])))))
                  for k in range(len(milp.post)))
    if bad or outside:
        raise RuntimeError(f"MILP formulation inconsistent with the network ({bad} rows violated, {outside} "
                           f"pre-activations outside their bounds at a forward pass)")
    return start


def outcome_threads(sel) -> int:
    return int(getattr(sel.backend, "threads", 1) or 1)


def split(net: Network, ctx: Context, state: StabilityState, time_limit: float, entry: dict,
          resume: dict | None = None) -> Findings:
    """Input-space branch and bound with CROWN bounds on the pieces, and ISA MILPs on small pieces.

    A piece is done when every open neuron is settled on it (its bound shows the sign) or witnessed
    anywhere.  When a piece has few unstable neurons left (``split_leaf_binaries``, default 24) its open
    neurons go to an ISA MILP over that piece, with the piece's tight bounds as big-M (so do pieces
    already bisected below ``split_min_width`` of the box in every input); what the MILP proves
    holds on the piece, what it does not prove in ``split_leaf_seconds`` is split further.  Otherwise the
    piece is bisected along the input with the largest ``width * sum |coefficient|`` of the open neurons'
    linear bounds.  A neuron is proven when no unfinished piece has it open; exactly (``split``) when
    every piece showed the sign, up to the margin (``split-epsilon``) when some piece's bound was within
    ``eps`` of 0 or a piece MILP settled it.

    ``resume``: the ``resume`` attribute of an earlier split's findings on the same network; the search
    continues from its unfinished pieces (what was settled since is dropped from them) instead of
    starting again from the whole box.
    """
    start = time.perf_counter()
    n_layers = len(net.layers) - 1
    lo0, hi0 = ctx.box.lo, ctx.box.hi
    p_set = _masks(net, n_layers, state.need_active_witness)
    q_set = _masks(net, n_layers, state.need_inactive_witness)
    eps = epsilons(net, lo0, hi0)
    oracle = WitnessOracle(net, lo0, hi0, state, n_layers, p_set, q_set, eps)
    sizes = [net.layers[k].n_out for k in range(n_layers)]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    relu_flat = np.concatenate([np.full(n, net.layers[k].is_relu) for k, n in enumerate(sizes)]) if sizes else np.zeros(0, bool)
    layer_of = np.concatenate([np.full(n, k) for k, n in enumerate(sizes)]) if sizes else np.zeros(0, int)

    def flat(masks):
        return np.concatenate(masks) if masks else np.zeros(0, bool)

    p_flat, q_flat = flat(p_set), flat(q_set)
    eps_flat = flat(eps[:n_layers])
    if resume is None:
        slack_p = np.zeros(p_flat.shape)  # largest upper bound in (0, eps) a piece settled a neuron with
        slack_q = np.zeros(q_flat.shape)
        abandoned = np.zeros_like(p_flat)  # unconfirmed MILP claims: never proven
        deferred_p = np.zeros_like(p_flat)  # flat pre-activations on some piece: left to ISA
        deferred_q = np.zeros_like(q_flat)
        stack = [(lo0.copy(), hi0.copy(), p_flat.copy(), q_flat.copy())]
    else:
        # Go on where an earlier split stopped: its unfinished pieces, less what was settled since.
        slack_p, slack_q, abandoned, deferred_p, deferred_q = (resume[k].copy() for k in
                                                               ("slack_p", "slack_q", "abandoned", "deferred_p", "deferred_q"))
        stack = [(lo, hi, cp & p_flat, cq & q_flat) for lo, hi, cp, cq in resume["stack"]]
        stack = [piece for piece in stack if piece[2].any() or piece[3].any()]
    boxes = leaves = 0
    leaf_seconds = 0.0
    batch = int(ctx.opt("split_batch", 128))
    leaf_binaries = int(ctx.opt("split_leaf_binaries", 24))
    leaf_time = float(ctx.opt("split_leaf_seconds", 10.0))
    min_width = float(ctx.opt("split_min_width", 1 / 64))
    width0 = np.where(hi0 > lo0, hi0 - lo0, 1.0)
    timed_out = False
    while stack:
        if time.perf_counter() - start > time_limit:
            timed_out = True
            break
        chunk, stack = stack[-batch:], stack[:-batch]
        lo = np.stack([c[0] for c in chunk])
        hi = np.stack([c[1] for c in chunk])
        b = crown_bounds(net, lo, hi, upto=n_layers, with_coef=True)
        upper = np.concatenate(b.upper, axis=1)
        lower = np.concatenate(b.lower, axis=1)
        up_coef = np.concatenate([c[:, : sizes[k]] for k, c in enumerate(b.coef)], axis=1)
        lo_coef = np.concatenate([c[:, sizes[k]:] for k, c in enumerate(b.coef)], axis=1)
        for x in (lo + hi) / 2:
            oracle.observe(x)
        boxes += len(chunk)
        for r, (clo, chi, cp, cq) in enumerate(chunk):
            sa, si = flat(oracle.seen_active[:n_layers]), flat(oracle.seen_inactive[:n_layers])
            # A pre-activation that is 0 up to rounding on a piece (two equal terms subtracted) keeps its
            # bounds at +-margin however small the piece: leave it to the MILP instead of splitting on it.
            # Such a bound within the MILP margin of 0 settles the neuron on the piece with the same
            # certificate a MILP gives ("no input of the piece reaches y >= eps"), its slack reported.
            near_p = cp & ~sa & ~abandoned & (upper[r] > 0) & (upper[r] < eps_flat)
            near_q = cq & ~si & ~abandoned & (lower[r] < 0) & (lower[r] > -eps_flat)
            slack_p[near_p] = np.maximum(slack_p[near_p], upper[r][near_p])
            slack_q[near_q] = np.maximum(slack_q[near_q], -lower[r][near_q])
            flat_range = (upper[r] - lower[r]) <= DEGENERATE * (1.0 + np.abs(upper[r]) + np.abs(lower[r]))
            deferred_p |= cp & flat_range & (upper[r] > 0) & ~near_p
            deferred_q |= cq & flat_range & (lower[r] < 0) & ~near_q
            open_p = cp & ~sa & ~abandoned & (upper[r] > 0) & ~flat_range & ~near_p
            open_q = cq & ~si & ~abandoned & (lower[r] < 0) & ~flat_range & ~near_q
            if not (open_p.any() or open_q.any()):
                continue
            last = int(layer_of[open_p | open_q].max()) + 1
            unstable = relu_flat & (lower[r] < 0) & (upper[r] > 0) & (layer_of < last)
            # Pieces that stay open after many bisections straddle a ReLU boundary that the linear bounds
            # relax independently for neurons that are equal in fact (duplicates); the MILP is exact there.
            tiny = np.max((chi - clo) / width0) <= min_width
            if leaf_binaries > 0 and (unstable.sum() <= leaf_binaries or tiny) and time.perf_counter() - start < time_limit:
                leaves += 1
                t_leaf = time.perf_counter()
                settled_p, settled_q = _leaf_milp(net, ctx, oracle, clo, chi, lower[r], upper[r], open_p, open_q,
                                                  offsets, last, min(leaf_time, time_limit - (time.perf_counter() - start)),
                                                  abandoned)
                leaf_seconds += time.perf_counter() - t_leaf
                # a MILP certificate holds up to the margin: "no input of the piece reaches y >= eps"
                slack_p[settled_p] = np.maximum(slack_p[settled_p], eps_flat[settled_p])
                slack_q[settled_q] = np.maximum(slack_q[settled_q], eps_flat[settled_q])
                sa, si = flat(oracle.seen_active[:n_layers]), flat(oracle.seen_inactive[:n_layers])
                open_p &= ~settled_p & ~sa & ~abandoned
                open_q &= ~settled_q & ~si & ~abandoned
                if not (open_p.any() or open_q.any()):
                    continue
            width = chi - clo
            score = width * (np.abs(up_coef[r][open_p]).sum(axis=0) + np.abs(lo_coef[r][open_q]).sum(axis=0))
            if not np.any(score > 0):
                score = width / width0
            d = int(np.argmax(score))
            mid = (clo[d] + chi[d]) / 2
            left_hi, right_lo = chi.copy(), clo.copy()
            left_hi[d], right_lo[d] = mid, mid
            stack.append((clo, left_hi, open_p, open_q))
            stack.append((right_lo, chi, open_p, open_q))
    sa, si = flat(oracle.seen_active[:n_layers]), flat(oracle.seen_inactive[:n_layers])
    still_p = np.zeros_like(p_flat)
    still_q = np.zeros_like(q_flat)
    for _, _, cp, cq in stack:
        still_p |= cp
        still_q |= cq
    proven_in = p_flat & ~sa & ~still_p & ~abandoned & ~deferred_p
    proven_act = q_flat & ~si & ~still_q & ~abandoned & ~deferred_q

    def unflat(v):
        return [v[offsets[k]:offsets[k + 1]] for k in range(n_layers)] + [np.zeros(net.layers[-1].n_out, v.dtype)]

    entry.update({"split_boxes": boxes, "split_leaf_milps": leaves, "split_leaf_seconds": round(leaf_seconds, 3),
                  "split_seconds": round(time.perf_counter() - start, 3), "split_complete": not timed_out})
    if abandoned.any():
        entry.setdefault("ambiguous", []).extend(
            {"layer": net.layers[int(layer_of[i])].layer_id, "neuron": net.layers[int(layer_of[i])].neuron_ids[i - offsets[layer_of[i]]]}
            for i in np.flatnonzero(abandoned))
    near_in, near_act = proven_in & (slack_p > 0), proven_act & (slack_q > 0)
    if near_in.any() or near_act.any():
        entry["split_within_epsilon"] = int(near_in.sum() + near_act.sum())
    margin = Findings(source="split-epsilon", proven_inactive=unflat(near_in), proven_active=unflat(near_act),
                      epsilon=unflat(np.where(near_in, slack_p, 0.0) + np.where(near_act, slack_q, 0.0)),
                      fingerprint=net.fingerprint())
    found = Findings(source="split", seen_active=oracle.seen_active, seen_inactive=oracle.seen_inactive,
                     proven_inactive=unflat(proven_in & ~near_in), proven_active=unflat(proven_act & ~near_act),
                     fingerprint=net.fingerprint(), details={"boxes": boxes, "complete": not timed_out},
                     parts=[margin])
    found.resume = {"stack": stack, "slack_p": slack_p, "slack_q": slack_q, "abandoned": abandoned,
                    "deferred_p": deferred_p, "deferred_q": deferred_q}
    return found


def _leaf_milp(net: Network, ctx: Context, oracle: "WitnessOracle", lo: np.ndarray, hi: np.ndarray, lower: np.ndarray,
               upper: np.ndarray, open_p: np.ndarray, open_q: np.ndarray, offsets: np.ndarray, last: int,
               time_limit: float, abandoned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ISA on one piece of the box; returns the open neurons it proved on that piece (flat masks)."""
    n_layers = len(offsets) - 1
    lows = [lower[offsets[k]:offsets[k + 1]] for k in range(n_layers)]
    ups = [upper[offsets[k]:offsets[k + 1]] for k in range(n_layers)]
    p_masks = [open_p[offsets[k]:offsets[k + 1]] for k in range(n_layers)]
    q_masks = [open_q[offsets[k]:offsets[k + 1]] for k in range(n_layers)]
    stable_in = [u <= 0 for u in ups]
    stable_act = [l >= 0 for l in lows]
    milp = build(net.layers, lo, hi, lows, ups, stable_in, stable_act, last, p_masks, q_masks, oracle.eps)
    start = checked_start(milp, net, (lo + hi) / 2, lows, ups)
    oracle.restrict(lo, hi, p_masks, q_masks)
    oracle.trust(lows, ups)
    try:
        outcome = solve_isa_safely(select(ctx.opt("solver", "auto"), milp).backend, milp, oracle,
                                   max(time_limit, 0.01), ctx.opt("threads"), start, piece=True)
    finally:
        rejected = oracle.release()
        oracle.trust(None, None)
    if oracle.bound_violation:
        raise RuntimeError(f"unsound bounds detected on a piece of the box ({oracle.bound_violation}); nothing proven")
    for k, i in rejected:
        abandoned[offsets[k] + i] = True
    settled_p = np.zeros_like(open_p)
    settled_q = np.zeros_like(open_q)
    if outcome.proven:
        for k, i in oracle.last_p_keys:
            settled_p[offsets[k] + i] = oracle.p_open((k, i))
        for k, i in oracle.last_q_keys:
            settled_q[offsets[k] + i] = oracle.q_open((k, i))
    return settled_p, settled_q


def per_neuron(net: Network, ctx: Context, state: StabilityState, time_limit: float, entry: dict) -> Findings:
    """The baseline: max and min of every open neuron's pre-activation by MILP, layer by layer, with the
    exact bounds of earlier layers feeding the big-M of later ones."""
    start = time.perf_counter()
    n_layers = len(net.layers) - 1
    lower, upper = _ensure_bounds(net, ctx, state)
    lower = [l.copy() for l in lower]
    upper = [u.copy() for u in upper]
    inactive = [a.copy() for a in state.proven_inactive]
    active = [a.copy() for a in state.proven_active]
    eps = epsilons(net, ctx.box.lo, ctx.box.hi)
    floor = witness_floor(eps)
    proven_in = [np.zeros(l.n_out, bool) for l in net.layers]
    proven_act = [np.zeros(l.n_out, bool) for l in net.layers]
    seen_a = [a.copy() for a in state.seen_active]
    seen_i = [a.copy() for a in state.seen_inactive]
    solves = 0
    complete = True
    solver = None
    for k in range(n_layers):
        if not net.layers[k].is_relu:
            continue
        milp = build(net.layers, ctx.box.lo, ctx.box.hi, lower, upper, inactive, active, k + 1)
        sel = select(ctx.opt("solver", "auto"), milp)
        solver = sel.name
        for i in range(net.layers[k].n_out):
            if inactive[k][i] or active[k][i]:
                continue
            idx, coef, const = milp.pre[k][i]
            for sense in ("max", "min"):
                if (sense == "max" and seen_a[k][i]) or (sense == "min" and seen_i[k][i]):
                    continue
                remaining = time_limit - (time.perf_counter() - start)
                if remaining <= 0:
                    complete = False
                    break
                milp.objective = {int(j): float(c) for j, c in zip(idx, coef)}
                milp.constant = const
                milp.maximize = sense == "max"
                out = sel.backend.optimize(milp, remaining, ctx.opt("threads"))
                solves += 1
                if out.x0 is not None:
                    x = np.clip(out.x0, ctx.box.lo, ctx.box.hi)[None, :]
                    _, pres = net.forward(x, preactivations=True)
                    for j in range(n_layers):
                        seen_a[j] |= pres[j][0] > floor[j]
                        seen_i[j] |= pres[j][0] < -floor[j]
                if out.bound is None or out.status not in ("optimal", "infeasible"):
                    complete = False
                    continue
                if sense == "max":
                    upper[k][i] = min(upper[k][i], out.bound)
                    if out.bound < eps[k][i] and not seen_a[k][i]:
                        proven_in[k][i] = True
                else:
                    lower[k][i] = max(lower[k][i], out.bound)
                    if out.bound > -eps[k][i] and not seen_i[k][i]:
                        proven_act[k][i] = True
        inactive[k] |= proven_in[k]
        active[k] |= proven_act[k] & ~proven_in[k]
    entry.update({"solver": solver, "milp_solves": solves, "status": "complete" if complete else "timelimit",
                  "milp_seconds": round(time.perf_counter() - start, 3)})
    return Findings(source="milp", seen_active=seen_a, seen_inactive=seen_i, proven_inactive=proven_in,
                    proven_active=proven_act, lower=lower, upper=upper, epsilon=eps, fingerprint=net.fingerprint())


METHODS = ("auto", "isa", "split", "per-neuron")


@register("milp", ANALYSIS, "prove the remaining neurons stable with one MILP (ISA; or input splitting / per-neuron MILPs)",
          paper="ISA Algorithm 1, formulation (7)-(12)")
def run(net: Network, ctx: Context) -> Findings:
    ctx.need_box()
    method = ctx.opt("stability_method", "auto")
    if method not in METHODS:
        raise UsageError(f"--stability-method {method!r}: expected one of {', '.join(METHODS)}")
    time_limit = float(ctx.opt("time_limit", DEFAULT_TIME_LIMIT))
    start = time.perf_counter()
    entry: dict = {"method": method, "time_limit": time_limit}
    annotations = dict(ctx.annotations)
    state = merge(net, annotations)
    results: list[Findings] = []
    def elapsed() -> float:
        return time.perf_counter() - start

    def record(name: str, found: Findings) -> StabilityState:
        results.append(found)
        annotations[f"milp:{name}"] = found
        return merge(net, annotations)

    low_dim = ctx.box.size <= SPLIT_MAX_DIMS
    if method == "split":
        state = record("split", split(net, ctx, state, time_limit, entry))
    elif method == "per-neuron":
        state = record("per-neuron", per_neuron(net, ctx, state, time_limit, entry))
    elif method == "isa" or not low_dim:
        state = record("isa", isa(net, ctx, state, max(time_limit, 0.01), entry))
    else:
        # auto on a low-dimensional input: a short split (often all it takes), then ISA on what is left
        # with half the remaining time, then the split goes on (from its unfinished pieces) with the rest.
        first_split = split(net, ctx, state, min(time_limit / 4, SPLIT_FIRST_SECONDS), entry)
        state = record("split", first_split)
        if _open_count(net, state):
            state = record("isa", isa(net, ctx, state, max((time_limit - elapsed()) / 2, 0.01), entry))
        if _open_count(net, state) and time_limit - elapsed() > 0.5:
            first = {k: entry[k] for k in ("split_boxes", "split_leaf_milps", "split_seconds")}
            state = record("split-2", split(net, ctx, state, time_limit - elapsed(), entry, resume=first_split.resume))
            for k, v in first.items():
                entry[k] = round(entry[k] + v, 3) if isinstance(v, float) else entry[k] + v
    combined = _combine(net, results)
    counts = state.counts(net)
    entry.update(counts)
    entry["seconds_total"] = round(time.perf_counter() - start, 3)
    how = []
    if "split_boxes" in entry:
        how.append(f"split: {entry['split_boxes']} pieces, {entry['split_leaf_milps']} piece MILPs, "
                   + ("complete" if entry["split_complete"] else "time limit"))
    if entry.get("solver"):
        how.append(f"{entry['solver']}: {entry.get('status')}")
    elif entry.get("status"):
        how.append(str(entry["status"]))
    entry["message"] = (f"{counts['stably_inactive']} stably inactive, {counts['stably_active']} stably active, "
                        f"{counts['unstable']} unstable, {counts['undecided']} undecided"
                        + (f" ({'; '.join(how)})" if how else ""))
    ctx.entry.update(entry)
    return combined


def _open_count(net: Network, state: StabilityState) -> int:
    n_layers = len(net.layers) - 1
    return sum(int((state.need_active_witness(k) | state.need_inactive_witness(k)).sum())
               for k in range(n_layers) if net.layers[k].is_relu)


def _combine(net: Network, results: list) -> Findings:
    """One annotation holding the findings of every method this pass ran (proof sources kept)."""
    if len(results) == 1:
        return results[0]
    return Findings(source="milp", fingerprint=net.fingerprint(), parts=list(results))
