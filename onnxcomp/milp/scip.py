"""SCIP backend (pyscipopt): the default, open-source solver.

The ISA loop runs inside one SCIP solve (ISA Algorithm 1, §5.1-5.2):

* a constraint handler checks every candidate solution: its input goes to the oracle (a real forward
  pass); a solution whose indicators still claim a state that is now witnessed (or that the forward
  pass does not confirm) is rejected, and during enforcement the indicator's upper bound is set to 0
  globally (lazy-constraint style).  Only solutions with every indicator 0 are ever accepted, so the
  solver's final optimality/infeasibility proof certifies that no remaining indicator can be 1;
* a heuristic after every node LP hands the LP solution's input to the oracle (ISA §5.2): the forward
  pass turns it into a real point whose states are recorded;
* a propagator applies the pending bound changes and stops the solve once nothing is left to prove.

Restarts and dual reductions are disabled so that the plugins see one consistent search and no
reduction assumes the problem is fixed.  SCIP runs single-threaded.
"""

from __future__ import annotations

import time

import numpy as np
from pyscipopt import SCIP_HEURTIMING, SCIP_PARAMSETTING, SCIP_PROPTIMING, SCIP_RESULT, Conshdlr, Heur, Model, Prop, quicksum

from . import IsaOutcome, OptOutcome
from .formulation import BIN, ReluMilp

NAME = "scip"


def _build(milp: ReluMilp, time_limit: float | None) -> tuple[Model, list]:
    model = Model("onnxcomp")
    model.hideOutput()
    model.setParam("presolving/maxrestarts", 0)
    # The ISA plugins change the problem during the search (indicators of witnessed states are forced
    # to 0), so reductions that reason about optimal solutions of the original problem are unsafe.
    model.setParam("misc/allowstrongdualreds", False)
    model.setParam("misc/allowweakdualreds", False)
    if time_limit is not None:
        model.setParam("limits/time", max(float(time_limit), 0.01))
    inf = model.infinity()
    xs = []
    for j in range(milp.n_vars):
        vt = "B" if milp.vtype[j] == BIN else "C"
        lb = -inf if not np.isfinite(milp.lb[j]) else milp.lb[j]
        ub = inf if not np.isfinite(milp.ub[j]) else milp.ub[j]
        xs.append(model.addVar(name=milp.names[j], vtype=vt, lb=lb, ub=ub))
    for r in milp.rows:
        expr = quicksum(float(c) * xs[int(i)] for i, c in zip(r.idx, r.coef))
        if np.isfinite(r.lhs) and np.isfinite(r.rhs) and r.lhs == r.rhs:
            model.addCons(expr == r.rhs)
        else:
            if np.isfinite(r.lhs):
                model.addCons(expr >= r.lhs)
            if np.isfinite(r.rhs):
                model.addCons(expr <= r.rhs)
    obj = quicksum(float(c) * xs[int(i)] for i, c in milp.objective.items()) + milp.constant
    model.setObjective(obj, "maximize" if milp.maximize else "minimize")
    return model, xs


class _Shared:
    """State shared by the plugins of one ISA solve."""

    def __init__(self, milp: ReluMilp, xs: list, oracle):
        self.oracle = oracle
        self.inputs = [xs[int(i)] for i in milp.inputs]
        self.p = {key: xs[v] for key, v in milp.p_vars.items()}
        self.q = {key: xs[v] for key, v in milp.q_vars.items()}
        self.tightened: set = set()
        self.solutions = 0
        self.lp_inputs = 0
        self._transformed: dict = {}
        self.exhausted = False

    def transformed(self, model: Model, var):
        """The solving-stage twin of an original variable: bounds changed during the search must be
        changed on it (changing the original variable's bound does not reach the search)."""
        t = self._transformed.get(var.name)
        if t is None:
            t = self._transformed[var.name] = model.getTransformedVar(var)
        return t

    def x0(self, model: Model, sol) -> np.ndarray:
        return np.array([model.getSolVal(sol, v) for v in self.inputs])

    def examine(self, model: Model, sol) -> list:
        """Observe the solution's input; return the indicator variables it wrongly sets to 1."""
        self.oracle.observe(self.x0(model, sol))
        bad = []
        for table, is_open, kind in ((self.p, self.oracle.p_open, "p"), (self.q, self.oracle.q_open, "q")):
            for key, var in table.items():
                if model.getSolVal(sol, var) > 0.5:
                    if is_open(key):  # the forward pass does not confirm the claimed state
                        self.oracle.reject(key, kind)
                    bad.append((key, kind, var))
        return bad

    def pending(self) -> list:
        out = []
        for table, is_open, kind in ((self.p, self.oracle.p_open, "p"), (self.q, self.oracle.q_open, "q")):
            for key, var in table.items():
                if (kind, key) not in self.tightened and not is_open(key):
                    out.append((key, kind, var))
        return out

    def tighten(self, model: Model, items: list) -> bool:
        changed = False
        for key, kind, var in items:
            if (kind, key) in self.tightened:
                continue
            self.tightened.add((kind, key))
            infeasible, tightened = model.tightenVarUbGlobal(self.transformed(model, var), 0.0)
            if infeasible:
                # The search had already fixed this indicator to 1 for good: with dual reductions off
                # SCIP only removes solutions that cannot beat the incumbent (objective 0), so every
                # improving solution needed it.  It is witnessed now, so no remaining indicator can be
                # 1 anywhere: the proof is complete.
                self.exhausted = True
                model.interruptSolve()
            changed = changed or tightened or infeasible
        return changed


class _IsaConshdlr(Conshdlr):
    def __init__(self, shared: _Shared):
        self.s = shared

    def conscheck(self, constraints, solution, checkintegrality, checklprows, printreason, completely):
        self.s.solutions += 1
        bad = self.s.examine(self.model, solution)
        return {"result": SCIP_RESULT.INFEASIBLE if bad else SCIP_RESULT.FEASIBLE}

    def _enforce(self):
        bad = self.s.examine(self.model, None)
        if not bad:
            return {"result": SCIP_RESULT.FEASIBLE}
        changed = self.s.tighten(self.model, bad + self.s.pending())
        for _, _, var in bad:
            tvar = self.s.transformed(self.model, var)
            # Branching may have fixed the indicator to 1 in this subtree: nothing acceptable is left here.
            if tvar.getLbLocal() > 0.5:
                return {"result": SCIP_RESULT.CUTOFF}
            infeasible, tightened = self.model.tightenVarUb(tvar, 0.0)
            if infeasible:
                return {"result": SCIP_RESULT.CUTOFF}
            changed = changed or tightened
        return {"result": SCIP_RESULT.REDUCEDDOM if changed else SCIP_RESULT.CUTOFF}

    def consenfolp(self, constraints, nusefulconss, solinfeasible):
        return self._enforce()

    def consenfops(self, constraints, nusefulconss, solinfeasible, objinfeasible):
        return self._enforce()

    def conslock(self, constraint, locktype, nlockspos, nlocksneg):
        for var in list(self.s.p.values()) + list(self.s.q.values()):
            self.model.addVarLocksType(var, locktype, nlocksneg, nlockspos)


class _LpInputHeur(Heur):
    """ISA §5.2: the node LP's input, pushed through the network, is a real point to learn from."""

    def __init__(self, shared: _Shared):
        self.s = shared

    def heurexec(self, heurtiming, nodeinfeasible):
        if self.model.getLPSolstat() == 1:  # optimal LP
            self.s.lp_inputs += 1
            self.s.oracle.observe(self.s.x0(self.model, None))
            if self.s.oracle.finished():
                self.model.interruptSolve()
        return {"result": SCIP_RESULT.DIDNOTFIND}


class _TightenProp(Prop):
    def __init__(self, shared: _Shared):
        self.s = shared

    def propexec(self, proptiming):
        if self.s.oracle.finished():
            self.model.interruptSolve()
            return {"result": SCIP_RESULT.DIDNOTFIND}
        items = self.s.pending()
        if items and self.s.tighten(self.model, items):
            return {"result": SCIP_RESULT.REDUCEDDOM}
        return {"result": SCIP_RESULT.DIDNOTFIND}


class ScipBackend:
    """pyscipopt / SCIP."""

    name = NAME
    threads = 1

    def solve_isa(self, milp: ReluMilp, oracle, time_limit: float | None = None, threads: int | None = None,
                  start: np.ndarray | None = None, piece: bool = False) -> IsaOutcome:
        t0 = time.perf_counter()
        if oracle.finished() or not (milp.p_vars or milp.q_vars):
            return IsaOutcome(True, "nothing to prove", 0.0, solver=NAME)
        model, xs = _build(milp, time_limit)
        if piece:
            # Thousands of small MILPs on pieces of the input box: without presolving the hard ones
            # (models/external/tll, ~100 binaries) need ~5x fewer nodes and the whole split ~2x less
            # time; on whole networks presolving helps as often as not, so it stays on there.
            model.setPresolve(SCIP_PARAMSETTING.OFF)
        model.setObjIntegral()
        shared = _Shared(milp, xs, oracle)
        model.includeConshdlr(_IsaConshdlr(shared), "onnxcomp_isa", "ISA witness bookkeeping",
                              enfopriority=-1_000_000, chckpriority=-1_000_000, needscons=False)
        model.includeHeur(_LpInputHeur(shared), "onnxcomp_lpinput", "forward pass of LP inputs", "I",
                          priority=1_000_000, freq=1, timingmask=SCIP_HEURTIMING.AFTERLPNODE)
        model.includeProp(_TightenProp(shared), "onnxcomp_tighten", "fix indicators of witnessed states",
                          presolpriority=0, presolmaxrounds=0, proptiming=SCIP_PROPTIMING.BEFORELP,
                          priority=1_000_000, freq=1)
        if start is not None:
            sol = model.createSol()
            for var, value in zip(xs, start):
                model.setSolVal(sol, var, float(value))
            model.addSol(sol)
        model.optimize()
        status = model.getStatus()
        nodes = int(model.getNNodes())
        # With a feasible start (all indicators 0) only "optimal" is a proof; "infeasible" would be
        # numerical trouble, never a certificate.
        clean = model.getNSols() == 0 or model.getSolObjVal(model.getBestSol()) < 0.5
        proven = (status == "optimal" and clean) or oracle.finished() or (shared.exhausted and clean)
        if shared.exhausted and clean:
            status = "optimal (remaining indicators excluded)"
        if status == "optimal" and not clean:
            status = "optimal with a claiming incumbent (not a proof)"
        return IsaOutcome(proven, status, time.perf_counter() - t0, nodes, shared.solutions, shared.lp_inputs, NAME)

    def optimize(self, milp: ReluMilp, time_limit: float | None = None, threads: int | None = None) -> OptOutcome:
        t0 = time.perf_counter()
        model, xs = _build(milp, time_limit)
        model.optimize()
        status = model.getStatus()
        bound = value = None
        x0 = None
        if status in ("optimal", "timelimit", "gaplimit", "nodelimit", "userinterrupt"):
            try:
                bound = float(model.getDualbound())
            except Exception:
                bound = None
            if model.getNSols() > 0:
                sol = model.getBestSol()
                value = float(model.getSolObjVal(sol))
                x0 = np.array([model.getSolVal(sol, xs[int(i)]) for i in milp.inputs])
        elif status == "infeasible":
            bound = -np.inf if milp.maximize else np.inf
        return OptOutcome(status, bound, value, time.perf_counter() - t0, NAME, x0)


# ---- sparse formulations (formulation.SparseMilp): per-side feasibility problems, bound tightening ----
from pyscipopt import SCIP_EVENTTYPE, Eventhdlr  # noqa: E402


class _SolutionEvents(Eventhdlr):
    """Hands the input of every new best solution to the problem's callback; stops when it says so."""

    def __init__(self, problem: "ScipProblem"):
        self.p = problem

    def eventinit(self):
        self.model.catchEvent(SCIP_EVENTTYPE.BESTSOLFOUND, self)

    def eventexit(self):
        self.model.dropEvent(SCIP_EVENTTYPE.BESTSOLFOUND, self)

    def eventexec(self, event):
        sol = self.model.getBestSol()
        x = np.array([self.model.getSolVal(sol, self.p.vars[int(j)]) for j in self.p.milp.inputs])
        self.p.candidates.append(x)
        if self.p.on_solution is not None and self.p.on_solution(x):
            self.model.interruptSolve()


class ScipProblem:
    """A ``formulation.SparseMilp`` as a SCIP model; the same interface as ``highs.HighsProblem``
    (``set_bounds``, ``set_objective``, ``set_integrality``, ``solve`` -> ``highs.SolveOutcome``).
    ``params``: SCIP parameters to set (default settings otherwise); single-threaded."""

    def __init__(self, milp, params: dict | None = None):
        self.milp = milp
        model = Model("onnxcomp-sparse")
        model.hideOutput()
        for key, value in (params or {}).items():
            model.setParam(key, value)
        inf = model.infinity()
        self.vars = [model.addVar(name=f"c{j}", vtype="B" if milp.integer[j] and milp.lb[j] >= 0 and milp.ub[j] <= 1 else
                                  ("I" if milp.integer[j] else "C"),
                                  lb=milp.lb[j] if np.isfinite(milp.lb[j]) else -inf,
                                  ub=milp.ub[j] if np.isfinite(milp.ub[j]) else inf) for j in range(milp.n_cols)]
        for r in range(milp.n_rows):
            s, e = milp.indptr[r], milp.indptr[r + 1]
            expr = quicksum(float(c) * self.vars[int(j)] for j, c in zip(milp.indices[s:e], milp.data[s:e]))
            lo, hi = milp.row_lo[r], milp.row_hi[r]
            if np.isfinite(lo) and np.isfinite(hi) and lo == hi:
                model.addCons(expr == float(hi))
            else:
                if np.isfinite(lo):
                    model.addCons(expr >= float(lo))
                if np.isfinite(hi):
                    model.addCons(expr <= float(hi))
        model.includeEventhdlr(_SolutionEvents(self), "onnxcomp_solutions", "candidate solutions to the caller")
        self.model = model
        self.candidates: list = []
        self.on_solution = None
        self.integer = bool(milp.integer.any())
        self._objective: dict = {}
        self.maximize = True

    def _editable(self) -> None:
        if self.model.getStage() != 1:  # not PROBLEM: drop the solving data first
            self.model.freeTransform()

    def set_bounds(self, col: int, lb: float, ub: float) -> None:
        self._editable()
        inf = self.model.infinity()
        v = self.vars[int(col)]
        self.model.chgVarLb(v, float(lb) if np.isfinite(lb) else -inf)
        self.model.chgVarUb(v, float(ub) if np.isfinite(ub) else inf)

    def set_objective(self, coef: dict, maximize: bool) -> None:
        self._editable()
        expr = quicksum(float(c) * self.vars[int(j)] for j, c in coef.items()) if coef else 0
        self.model.setObjective(expr, "maximize" if maximize else "minimize")
        self._objective, self.maximize = dict(coef), maximize

    def set_integrality(self, integer: bool) -> None:
        self._editable()
        for j in np.flatnonzero(self.milp.integer):
            self.model.chgVarType(self.vars[int(j)], ("B" if integer else "C"))
        self.integer = bool(integer)

    def solve(self, time_limit: float, on_solution=None):
        from .highs import SolveOutcome

        t0 = time.perf_counter()
        self._editable()
        self.candidates = []
        self.on_solution = on_solution
        self.model.setParam("limits/time", max(float(time_limit), 0.01))
        self.model.optimize()
        raw = self.model.getStatus()
        status = {"timelimit": "time limit", "userinterrupt": "interrupted"}.get(raw, raw)
        dual = primal = None
        if raw in ("optimal", "timelimit", "userinterrupt", "gaplimit", "nodelimit"):
            try:
                d = float(self.model.getDualbound())
                dual = d if np.isfinite(d) and abs(d) < 1e19 else None
            except Exception:  # noqa: BLE001 - no bound available at this stage
                dual = None
            if self.model.getNSols() > 0:
                primal = float(self.model.getSolObjVal(self.model.getBestSol()))
        return SolveOutcome(status, time.perf_counter() - t0, dual, primal, list(self.candidates),
                            int(self.model.getNNodes()), NAME)
