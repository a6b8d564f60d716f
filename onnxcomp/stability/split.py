"""Input splitting: branch and bound over the input box, CROWN bounds on the pieces, ISA MILPs on small ones.

Strong when the input has few dimensions (ACAS Xu has 5).  See :func:`split`.
"""

from __future__ import annotations

import time

import numpy as np

from ..bounds import crown_bounds
from ..milp import select
from ..milp.formulation import build
from .common import DEGENERATE, ProofSetup, WitnessOracle, checked_start, masks, solve_isa_safely
from .state import Findings, StabilityState


def split(setup: ProofSetup, state: StabilityState, time_limit: float, entry: dict,
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
    net, n_layers = setup.net, setup.n_layers
    lo0, hi0 = setup.lo, setup.hi
    p_set = masks(net, n_layers, state.need_active_witness)
    q_set = masks(net, n_layers, state.need_inactive_witness)
    eps = setup.eps
    oracle = WitnessOracle(net, lo0, hi0, state, n_layers, p_set, q_set, eps)
    sizes = [net.layers[k].n_out for k in range(n_layers)]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    relu_flat = np.concatenate([np.full(n, net.layers[k].is_relu) for k, n in enumerate(sizes)]) if sizes else np.zeros(0, bool)
    layer_of = np.concatenate([np.full(n, k) for k, n in enumerate(sizes)]) if sizes else np.zeros(0, int)

    def flat(per_layer):
        return np.concatenate(per_layer) if per_layer else np.zeros(0, bool)

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
    batch = setup.split_batch
    leaf_binaries = setup.split_leaf_binaries
    leaf_time = setup.split_leaf_seconds
    min_width = setup.split_min_width
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
                settled_p, settled_q = _leaf_milp(setup, oracle, clo, chi, lower[r], upper[r], open_p, open_q,
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


def _leaf_milp(setup: ProofSetup, oracle: WitnessOracle, lo: np.ndarray, hi: np.ndarray, lower: np.ndarray,
               upper: np.ndarray, open_p: np.ndarray, open_q: np.ndarray, offsets: np.ndarray, last: int,
               time_limit: float, abandoned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ISA on one piece of the box; returns the open neurons it proved on that piece (flat masks)."""
    net, n_layers = setup.net, len(offsets) - 1
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
        outcome = solve_isa_safely(select(setup.solver, milp).backend, milp, oracle,
                                   max(time_limit, 0.01), setup.threads, start, piece=True)
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


