"""HiGHS backend (highspy) for the sparse formulations of ``formulation.SparseMilp``.

One ``HighsProblem`` holds one model; between solves the caller changes column bounds and costs (the
per-side feasibility problems of a layer share one model and differ only in which target column is
bounded away from 0).  Every solve reports what the solver established, never more:

* ``status`` as HiGHS says it (``optimal``, ``infeasible``, ``time limit``, ``interrupted``, ...);
* ``candidates``: the input part of every improving solution HiGHS found, in order (the caller confirms
  them with a float64 forward pass; a solution is only a candidate);
* ``dual_bound``: the MIP dual bound (sound up to HiGHS's tolerances) or the LP objective.

``on_solution(x_inputs) -> bool`` is called for every improving solution; returning True stops the
solve (status ``interrupted``): the caller found what it was looking for.

For LPs, ``lp_dual_bound`` turns HiGHS's row duals into a bound that holds whatever the solver's
tolerances were: by weak duality, for ANY multipliers ``lam`` of the rows,
``max c.x <= sum_r max(lam_r L_r, lam_r U_r) + sum_j max(d_j lb_j, d_j ub_j)`` with ``d = c - A' lam``
(all columns bounded), computed in float64 and widened by a margin that dominates its rounding error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .formulation import SparseMilp

NAME = "highs"
REL_MARGIN = 1e-9
ABS_MARGIN = 1e-12


@dataclass
class SolveOutcome:
    """What one solve established (see the module docstring)."""

    status: str
    seconds: float
    dual_bound: float | None = None
    primal: float | None = None
    candidates: list = field(default_factory=list)
    nodes: int = 0
    solver: str = NAME
    note: str = ""


def _status_name(h) -> str:
    import highspy

    s = h.getModelStatus()
    names = {
        highspy.HighsModelStatus.kOptimal: "optimal",
        highspy.HighsModelStatus.kInfeasible: "infeasible",
        highspy.HighsModelStatus.kTimeLimit: "time limit",
        highspy.HighsModelStatus.kInterrupt: "interrupted",
        highspy.HighsModelStatus.kUnbounded: "unbounded",
        highspy.HighsModelStatus.kUnboundedOrInfeasible: "unbounded or infeasible",
        highspy.HighsModelStatus.kSolutionLimit: "solution limit",
        highspy.HighsModelStatus.kIterationLimit: "iteration limit",
        highspy.HighsModelStatus.kObjectiveBound: "objective bound",
        highspy.HighsModelStatus.kObjectiveTarget: "objective target",
    }
    return names.get(s, h.modelStatusToString(s).lower())


def new_highs():
    """A quiet ``highspy.Highs`` (one thread, no log).  The first one in a process prints HiGHS's
    copyright banner on file descriptor 1 before any option can silence it; that would corrupt the
    output of commands that print JSON or Markdown to stdout, so it is sent to /dev/null."""
    import os
    import sys

    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    return h


class HighsProblem:
    """A ``SparseMilp`` loaded into HiGHS (one thread, quiet)."""

    def __init__(self, milp: SparseMilp, options: dict | None = None):
        import highspy

        self.milp = milp
        h = new_highs()
        for key, value in (options or {}).items():
            h.setOptionValue(key, value)
        inf = highspy.kHighsInf
        lp = highspy.HighsLp()
        lp.num_col_ = milp.n_cols
        lp.num_row_ = milp.n_rows
        lp.col_cost_ = np.asarray(milp.obj, dtype=np.float64)
        lp.col_lower_ = np.where(np.isfinite(milp.lb), milp.lb, -inf)
        lp.col_upper_ = np.where(np.isfinite(milp.ub), milp.ub, inf)
        lp.row_lower_ = np.where(np.isfinite(milp.row_lo), milp.row_lo, -inf)
        lp.row_upper_ = np.where(np.isfinite(milp.row_hi), milp.row_hi, inf)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.start_ = milp.indptr.astype(np.int32)
        lp.a_matrix_.index_ = milp.indices.astype(np.int32)
        lp.a_matrix_.value_ = milp.data
        lp.a_matrix_.num_col_ = milp.n_cols
        lp.a_matrix_.num_row_ = milp.n_rows
        if milp.integer.any():
            lp.integrality_ = [highspy.HighsVarType.kInteger if b else highspy.HighsVarType.kContinuous
                               for b in milp.integer]
        lp.sense_ = highspy.ObjSense.kMaximize if milp.maximize else highspy.ObjSense.kMinimize
        h.passModel(lp)
        self.h = h
        self._stop = False
        self._on_solution = None
        self._candidates: list = []
        self._cb_on = False
        self.integer = bool(milp.integer.any())

    # ---- edits between solves ---------------------------------------------------------------------
    def set_bounds(self, col: int, lb: float, ub: float) -> None:
        import highspy

        inf = highspy.kHighsInf
        self.h.changeColBounds(int(col), float(lb) if np.isfinite(lb) else -inf, float(ub) if np.isfinite(ub) else inf)

    def set_objective(self, coef: dict, maximize: bool) -> None:
        """Objective ``sum coef[j] x_j`` (every other cost 0)."""
        import highspy

        cost = np.zeros(self.milp.n_cols)
        for j, c in coef.items():
            cost[int(j)] = float(c)
        self.h.changeColsCost(self.milp.n_cols, np.arange(self.milp.n_cols, dtype=np.int32), cost)
        self.h.changeObjectiveSense(highspy.ObjSense.kMaximize if maximize else highspy.ObjSense.kMinimize)
        self.maximize = maximize

    def set_integrality(self, integer: bool) -> None:
        """Solve as the MILP (True) or its LP relaxation (False)."""
        import highspy

        cols = np.flatnonzero(self.milp.integer).astype(np.int32)
        if cols.size:
            kind = highspy.HighsVarType.kInteger if integer else highspy.HighsVarType.kContinuous
            self.h.changeColsIntegrality(cols.size, cols, np.array([kind] * cols.size))
        self.integer = bool(integer and cols.size)

    # ---- solving -----------------------------------------------------------------------------------
    def _improving(self, event) -> None:
        sol = np.asarray(event.data_out.mip_solution)
        if sol.size < self.milp.n_cols:
            return
        x = np.array(sol[self.milp.inputs], dtype=np.float64)
        self._candidates.append(x)
        if self._on_solution is not None and self._on_solution(x):
            self._stop = True
        event.interrupt(bool(self._stop))

    def _interrupt(self, event) -> None:
        # the callback input persists between solves: always write the flag
        event.interrupt(bool(self._stop))

    def solve(self, time_limit: float, on_solution=None) -> SolveOutcome:
        t0 = time.perf_counter()
        self._stop = False
        self._candidates = []
        self._on_solution = on_solution
        if not self._cb_on:
            self.h.cbMipImprovingSolution.subscribe(self._improving)
            self.h.cbMipInterrupt.subscribe(self._interrupt)
            self._cb_on = True
        # HiGHS compares time_limit with the run time of the Highs object, which adds up over solves
        self.h.setOptionValue("time_limit", float(self.h.getRunTime()) + max(float(time_limit), 0.01))
        self.h.run()
        status = _status_name(self.h)
        info = self.h.getInfo()
        dual = primal = None
        nodes = 0
        if self.integer:
            nodes = int(getattr(info, "mip_node_count", 0) or 0)
            if status in ("optimal", "time limit", "interrupted", "solution limit"):
                d = float(info.mip_dual_bound)
                dual = d if np.isfinite(d) else None
            if info.primal_solution_status == 2:  # feasible
                primal = float(info.objective_function_value)
        elif status == "optimal":
            dual = primal = float(info.objective_function_value)
            x = np.asarray(self.h.getSolution().col_value, dtype=np.float64)
            if x.size == self.milp.n_cols:  # an LP solves without the MIP callbacks: its point is the candidate
                self._candidates.append(x[self.milp.inputs])
                if self._on_solution is not None:
                    self._on_solution(self._candidates[-1])
        return SolveOutcome(status, time.perf_counter() - t0, dual, primal, list(self._candidates), nodes)

    def lp_dual_bound(self, coef: dict, maximize: bool) -> float:
        """A rigorous bound on ``coef . x`` over the LP relaxation (upper for ``maximize``, lower otherwise),
        from the row duals of the last LP solve (any multipliers give a valid bound; good ones a tight one)."""
        sol = self.h.getSolution()
        lam = np.asarray(sol.row_dual, dtype=np.float64)
        if lam.size != self.milp.n_rows or not np.all(np.isfinite(lam)):
            return np.inf if maximize else -np.inf
        return safe_lp_bound(self.milp, coef, maximize, lam)


def safe_lp_bound(milp: SparseMilp, coef: dict, maximize: bool, lam: np.ndarray) -> float:
    """Weak-duality bound on ``max`` (or ``min``) of ``coef . x`` over the LP relaxation of ``milp`` for
    the row multipliers ``lam`` (either sign convention: both ``lam`` and ``-lam`` are tried), widened
    by a margin dominating float64 rounding.  Infinite when a needed row or column side is infinite."""
    c = np.zeros(milp.n_cols)
    for j, v in coef.items():
        c[int(j)] = float(v)
    if not maximize:
        c = -c
    rows = np.repeat(np.arange(milp.n_rows), np.diff(milp.indptr))
    best = np.inf
    for sign in (1.0, -1.0):
        mu = sign * lam
        at = np.zeros(milp.n_cols)
        np.add.at(at, milp.indices, milp.data * mu[rows])
        at_abs = np.zeros(milp.n_cols)
        np.add.at(at_abs, milp.indices, np.abs(milp.data * mu[rows]))
        d = c - at
        with np.errstate(invalid="ignore"):
            row_terms = np.where(mu > 0, mu * milp.row_hi, np.where(mu < 0, mu * milp.row_lo, 0.0))
            col_terms = np.where(d > 0, d * milp.ub, np.where(d < 0, d * milp.lb, 0.0))
        if np.any(np.isnan(row_terms)) or np.any(np.isnan(col_terms)):
            continue
        total = float(row_terms.sum() + col_terms.sum())
        if not np.isfinite(total):
            continue
        mag_x = np.maximum(np.abs(milp.lb), np.abs(milp.ub))
        mag_r = np.maximum(np.where(np.isfinite(milp.row_lo), np.abs(milp.row_lo), 0.0),
                           np.where(np.isfinite(milp.row_hi), np.abs(milp.row_hi), 0.0))
        margin = REL_MARGIN * float(np.abs(row_terms).sum() + np.abs(col_terms).sum()
                                    + ((np.abs(c) + at_abs) * mag_x).sum() + (np.abs(mu) * mag_r).sum()) + ABS_MARGIN
        best = min(best, total + margin)
    return best if maximize else -best
