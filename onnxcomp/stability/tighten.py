"""Bound tightening of one layer's neurons by LP and by MILP (tighter big-M constants for later layers).

* ``lp_bounds``: the max and min of each chosen pre-activation over the triangle LP relaxation of the
  layers before it (HiGHS, dual simplex, one model per layer, warm-started from one objective to the
  next).  The bound is not the solver's objective value: it is recomputed from the solver's row duals
  by weak duality (``milp.highs.safe_lp_bound``), which holds for any multipliers whatever the
  solver's tolerances, in float64 with an outward margin.  So an LP bound is as exact as a CROWN bound
  (epsilon 0).  With the same intermediate bounds it is never looser than alpha-CROWN (whose optimised
  slopes are one dual solution of this LP), and it is much slower; it pays where alpha-CROWN has not
  converged.
* ``milp_bounds``: the max and min by MILP with a time limit per neuron; the bound is the solver's dual
  bound plus the neuron's margin ``eps`` (the epsilon policy: sound up to the solver's tolerances, the
  same trust as a MILP stability certificate).  Much tighter than LP bounds on deep layers and far more
  expensive; a timed-out solve still gives its dual bound.

Both are pure functions of the network, the box, the bounds so far (``lower``/``upper``: per layer, 1-D
arrays, sound) and a deadline (absolute ``time.monotonic()``); neurons not reached before it keep the
bounds they had.
"""

from __future__ import annotations

import time

import numpy as np

from ..ir import Network
from ..milp.formulation import build_prefix


def _prefix(net: Network, lo, hi, lower: list, upper: list, layer: int, neurons, binary):
    return build_prefix([l.weight for l in net.layers[:layer + 1]], [l.bias for l in net.layers[:layer + 1]],
                        [l.is_relu for l in net.layers[:layer + 1]], lo, hi, lower, upper, layer, neurons, binary)


def _sides(neurons) -> dict:
    """``neurons``: an iterable of indices (both sides) or a dict index -> sides ("active": the max,
    "inactive": the min)."""
    if isinstance(neurons, dict):
        return {int(i): list(s) for i, s in neurons.items()}
    return {int(i): ["active", "inactive"] for i in neurons}


def _each_side(prob, milp, sides: dict, deadline: float | None):
    """Set the objective of each (neuron, side) in turn (max for ``active``, min for ``inactive``) and
    yield ``(neuron, maximize, column)``; stops at the deadline."""
    for i, which in sides.items():
        for side in which:
            if deadline is not None and time.monotonic() >= deadline:
                return
            maximize = side == "active"
            col = milp.targets[i]
            prob.set_objective({col: 1.0}, maximize)
            yield i, maximize, col


def lp_bounds(net: Network, lo: np.ndarray, hi: np.ndarray, lower: list, upper: list, layer: int, neurons, *,
              deadline: float | None = None, stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rigorous LP-relaxation bounds of the pre-activations of ``neurons`` of ``layer`` (see the module
    docstring).  Returns full-width ``(lower, upper)`` arrays of that layer: the given bounds, tightened
    where the LP did better.  ``stats`` (a dict) receives the number of LPs and their seconds."""
    from ..milp.highs import HighsProblem

    lo = np.asarray(lo, dtype=np.float64).reshape(-1)
    hi = np.asarray(hi, dtype=np.float64).reshape(-1)
    low = np.array(lower[layer], dtype=np.float64).copy()
    up = np.array(upper[layer], dtype=np.float64).copy()
    sides = _sides(neurons)
    if not sides or layer == 0:
        return low, up  # layer 0: interval bounds are already exact (up to their margin)
    binary = [np.zeros(len(lower[j]), bool) for j in range(layer)]
    milp = _prefix(net, lo, hi, lower, upper, layer, sorted(sides), binary)
    prob = HighsProblem(milp, {"solver": "simplex"})
    n_lp = 0
    t0 = time.perf_counter()
    for i, maximize, col in _each_side(prob, milp, sides, deadline):
        remaining = 1e6 if deadline is None else deadline - time.monotonic()
        out = prob.solve(max(remaining, 0.01))
        n_lp += 1
        if out.status not in ("optimal", "time limit", "iteration limit", "interrupted"):
            continue
        b = prob.lp_dual_bound({col: 1.0}, maximize)
        if maximize and np.isfinite(b):
            up[i] = min(up[i], b)
        elif not maximize and np.isfinite(b):
            low[i] = max(low[i], b)
    if stats is not None:
        stats["lps"] = stats.get("lps", 0) + n_lp
        stats["lp_seconds"] = stats.get("lp_seconds", 0.0) + time.perf_counter() - t0
    return low, up


def milp_bounds(net: Network, lo: np.ndarray, hi: np.ndarray, lower: list, upper: list, layer: int, neurons,
                eps: np.ndarray, *, time_limit: float = 10.0, deadline: float | None = None, solver: str = "highs",
                stats: dict | None = None) -> tuple[np.ndarray, np.ndarray, list]:
    """MILP bounds (epsilon policy, see the module docstring) of ``neurons`` of ``layer``: each max/min
    runs at most ``time_limit`` seconds.  Returns full-width ``(lower, upper)`` of the layer and the
    inputs of every solution found (candidates for witnesses; the caller confirms them)."""
    lo = np.asarray(lo, dtype=np.float64).reshape(-1)
    hi = np.asarray(hi, dtype=np.float64).reshape(-1)
    low = np.array(lower[layer], dtype=np.float64).copy()
    up = np.array(upper[layer], dtype=np.float64).copy()
    sides = _sides(neurons)
    candidates: list = []
    if not sides or layer == 0:
        return low, up, candidates
    milp = _prefix(net, lo, hi, lower, upper, layer, sorted(sides), None)
    if solver == "highs":
        from ..milp.highs import HighsProblem

        prob = HighsProblem(milp)
    else:
        from ..milp.scip import ScipProblem

        prob = ScipProblem(milp)
    t0 = time.perf_counter()
    n = 0
    for i, maximize, _ in _each_side(prob, milp, sides, deadline):
        limit = time_limit if deadline is None else min(time_limit, deadline - time.monotonic())
        try:
            out = prob.solve(max(limit, 0.01))
        except Exception:  # noqa: BLE001 - a failed solve tightens nothing
            continue
        n += 1
        candidates.extend(out.candidates)
        if out.dual_bound is None:
            continue
        e = float(eps[i])
        if maximize:
            up[i] = min(up[i], out.dual_bound + e)
        else:
            low[i] = max(low[i], out.dual_bound - e)
    if stats is not None:
        stats["milps"] = stats.get("milps", 0) + n
        stats["milp_seconds"] = stats.get("milp_seconds", 0.0) + time.perf_counter() - t0
    return low, up, candidates
