"""Gurobi backend (gurobipy), used when it imports and its licence admits the model.

The ISA loop uses Gurobi's callbacks: at every new incumbent candidate (MIPSOL) and every node LP
(MIPNODE, ISA §5.2) the input goes to the oracle's forward pass; indicators of witnessed (or
unconfirmed) states get the lazy constraint ``indicator <= 0``, which also rejects the candidate.

Licences: the pip licence is size-limited (2000 variables and 2000 constraints).  ``admits`` probes
the licence once (a 2001-variable model) and compares the model's size with the limit; a licence error
at solve time is reported as ``error: licence`` and the caller falls back to SCIP.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from . import IsaOutcome, OptOutcome
from .formulation import BIN, ReluMilp

NAME = "gurobi"
SIZE_LIMITED = 2000
LICENCE_ERRORS = {10009, 10010}  # no licence, size-limited licence exceeded


@functools.lru_cache(maxsize=1)
def licence() -> tuple[bool, int | None, str]:
    """(usable, size limit or None, note)."""
    try:
        import gurobipy as gp
    except Exception:
        return False, None, "gurobipy is not installed"
    try:
        env = gp.Env(empty=True)
        env.setParam("OutputFlag", 0)
        env.start()
        probe = gp.Model(env=env)
        probe.addVars(SIZE_LIMITED + 1)
        probe.optimize()
        return True, None, "full licence"
    except gp.GurobiError as exc:
        if exc.errno == 10010:
            return True, SIZE_LIMITED, f"size-limited licence ({SIZE_LIMITED} variables/constraints)"
        return False, None, f"no usable licence (error {exc.errno})"
    except Exception as exc:  # pragma: no cover - depends on the machine
        return False, None, f"gurobipy failed to start ({type(exc).__name__})"


def admits(milp: ReluMilp) -> tuple[bool, str]:
    usable, limit, note = licence()
    if not usable:
        return False, note
    size = max(milp.n_vars, len(milp.rows))
    if limit is not None and size > limit:
        return False, f"{note}; the model has {milp.n_vars} variables and {len(milp.rows)} constraints"
    return True, note


def _build(milp: ReluMilp, time_limit: float | None, threads: int | None):
    import gurobipy as gp

    env = gp.Env(empty=True)
    env.setParam("OutputFlag", 0)
    env.start()
    model = gp.Model(env=env)
    if time_limit is not None:
        model.Params.TimeLimit = max(float(time_limit), 0.01)
    if threads:
        model.Params.Threads = int(threads)
    vt = [gp.GRB.BINARY if t == BIN else gp.GRB.CONTINUOUS for t in milp.vtype]
    lb = [l if np.isfinite(l) else -gp.GRB.INFINITY for l in milp.lb]
    ub = [u if np.isfinite(u) else gp.GRB.INFINITY for u in milp.ub]
    xs = model.addVars(milp.n_vars, lb=lb, ub=ub, vtype=vt)
    for r in milp.rows:
        expr = gp.LinExpr([float(c) for c in r.coef], [xs[int(i)] for i in r.idx])
        if np.isfinite(r.lhs) and np.isfinite(r.rhs) and r.lhs == r.rhs:
            model.addLConstr(expr, gp.GRB.EQUAL, r.rhs)
        else:
            if np.isfinite(r.lhs):
                model.addLConstr(expr, gp.GRB.GREATER_EQUAL, r.lhs)
            if np.isfinite(r.rhs):
                model.addLConstr(expr, gp.GRB.LESS_EQUAL, r.rhs)
    obj = gp.LinExpr([float(c) for c in milp.objective.values()], [xs[int(i)] for i in milp.objective])
    model.setObjective(obj + milp.constant, gp.GRB.MAXIMIZE if milp.maximize else gp.GRB.MINIMIZE)
    return model, xs


_STATUS = {2: "optimal", 3: "infeasible", 9: "timelimit", 11: "userinterrupt", 4: "inf_or_unbd", 5: "unbounded"}


class GurobiBackend:
    """gurobipy / Gurobi."""

    name = NAME

    def __init__(self):
        self.threads = 0

    def solve_isa(self, milp: ReluMilp, oracle, time_limit: float | None = None, threads: int | None = None,
                  start: np.ndarray | None = None, piece: bool = False) -> IsaOutcome:
        import gurobipy as gp

        t0 = time.perf_counter()
        if oracle.finished() or not (milp.p_vars or milp.q_vars):
            return IsaOutcome(True, "nothing to prove", 0.0, solver=NAME)
        try:
            model, xs = _build(milp, time_limit, threads)
        except gp.GurobiError as exc:
            return IsaOutcome(False, f"error: {exc.errno}", time.perf_counter() - t0, solver=NAME, note=str(exc))
        model.Params.LazyConstraints = 1
        if start is not None:
            for j, value in enumerate(start):
                xs[j].Start = float(value)
        inputs = [xs[int(i)] for i in milp.inputs]
        indicators = [(key, "p", xs[v], oracle.p_open) for key, v in milp.p_vars.items()]
        indicators += [(key, "q", xs[v], oracle.q_open) for key, v in milp.q_vars.items()]
        cut: set = set()
        counters = {"sol": 0, "lp": 0}

        def callback(m, where):
            if where == gp.GRB.Callback.MIPSOL:
                counters["sol"] += 1
                oracle.observe(np.array(m.cbGetSolution(inputs)))
                values = m.cbGetSolution([v for _, _, v, _ in indicators])
                for (key, kind, var, is_open), val in zip(indicators, values):
                    if val > 0.5:
                        if is_open(key):
                            oracle.reject(key, kind)  # claimed but not confirmed by the forward pass
                        # Gurobi may return solutions violating earlier lazy constraints: cut again.
                        cut.add((kind, key))
                        m.cbLazy(var <= 0)
            elif where == gp.GRB.Callback.MIPNODE and m.cbGet(gp.GRB.Callback.MIPNODE_STATUS) == gp.GRB.OPTIMAL:
                counters["lp"] += 1
                oracle.observe(np.array(m.cbGetNodeRel(inputs)))
            else:
                return
            for key, kind, var, is_open in indicators:
                if (kind, key) not in cut and not is_open(key):
                    cut.add((kind, key))
                    m.cbLazy(var <= 0)
            if oracle.finished():
                m.terminate()

        try:
            model.optimize(callback)
        except gp.GurobiError as exc:
            return IsaOutcome(False, f"error: {exc.errno}", time.perf_counter() - t0, solver=NAME, note=str(exc))
        status = _STATUS.get(model.Status, f"status {model.Status}")
        self.threads = int(model.Params.Threads) or 0
        # With a feasible start (all indicators 0) only "optimal" is a proof; "infeasible" would be
        # numerical trouble, never a certificate.
        # An accepted incumbent with a positive objective claims states the callbacks should have cut:
        # that is not a proof.
        clean = model.SolCount == 0 or model.ObjVal < 0.5
        proven = (status == "optimal" and clean) or oracle.finished()
        if status == "optimal" and not clean:
            status = "optimal with a claiming incumbent (not a proof)"
        return IsaOutcome(proven, status, time.perf_counter() - t0, int(model.NodeCount), counters["sol"],
                          counters["lp"], NAME)

    def optimize(self, milp: ReluMilp, time_limit: float | None = None, threads: int | None = None) -> OptOutcome:
        import gurobipy as gp

        t0 = time.perf_counter()
        try:
            model, xs = _build(milp, time_limit, threads)
            model.optimize()
        except gp.GurobiError as exc:
            return OptOutcome(f"error: {exc.errno}", None, None, time.perf_counter() - t0, NAME)
        status = _STATUS.get(model.Status, f"status {model.Status}")
        bound = value = x0 = None
        if model.SolCount > 0:
            value = float(model.ObjVal)
            x0 = np.array([xs[int(i)].X for i in milp.inputs])
        if status in ("optimal", "timelimit"):
            bound = float(model.ObjBound)
        elif status == "infeasible":
            bound = -np.inf if milp.maximize else np.inf
        return OptOutcome(status, bound, value, time.perf_counter() - t0, NAME, x0)
