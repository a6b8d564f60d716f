"""MILP backends behind one small interface.

``select(name, milp)`` picks a backend: ``scip`` (pyscipopt, the default, no licence needed) or
``gurobi`` (gurobipy, chosen by ``auto`` when it imports and its licence admits the model's size; a
size-limited licence is detected and reported, never crashed on).  Every backend offers:

* ``solve_isa(milp, oracle, time_limit, threads) -> IsaOutcome``: the ISA loop in one solver call; every
  solution (and every node LP solution's input, ISA §5.2) is handed to ``oracle.observe(x0)``, which runs
  a real forward pass and records the states it witnesses; indicators of witnessed states are then
  forced to 0 (bound tightening / lazy constraints), and solutions that still claim them are rejected.
  ``start`` is a feasible point with every indicator 0 (a forward pass), so the problem is never
  infeasible; ``proven`` is True only when the solver proved optimality (no remaining indicator can be 1).
  ``piece=True`` says the MILP is one of many over small pieces of the input box (split), for settings
  that suit those (SCIP: no presolving; Gurobi: unchanged).
* ``optimize(milp, time_limit, threads) -> OptOutcome``: plain optimisation of ``milp.objective``;
  ``bound`` is the solver's dual bound (sound up to its tolerances), used by the per-neuron baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .formulation import ReluMilp


SOLVERS = ("auto", "scip", "gurobi")
"""Values of ``--solver``."""


class IsaOracle(Protocol):
    def observe(self, x0: np.ndarray) -> None: ...

    def p_open(self, key) -> bool: ...

    def q_open(self, key) -> bool: ...

    def reject(self, key, kind: str) -> None: ...

    def finished(self) -> bool: ...


@dataclass
class IsaOutcome:
    proven: bool
    status: str
    seconds: float
    nodes: int = 0
    solutions_seen: int = 0
    lp_inputs_seen: int = 0
    solver: str = ""
    note: str = ""


@dataclass
class OptOutcome:
    status: str
    bound: float | None
    value: float | None
    seconds: float
    solver: str = ""
    x0: np.ndarray | None = None


@dataclass
class Selection:
    backend: object
    name: str
    note: str = ""
    tried: list = field(default_factory=list)


def select(name: str, milp: ReluMilp) -> Selection:
    """The backend for ``name`` in {auto, scip, gurobi}; ``auto`` prefers a licensed Gurobi."""
    from . import scip

    if name not in SOLVERS:
        from ..errors import UsageError

        raise UsageError(f"--solver {name!r}: expected auto, scip or gurobi")
    if name == "scip":
        return Selection(scip.ScipBackend(), "scip")
    from . import gurobi

    ok, why = gurobi.admits(milp)
    if ok:
        return Selection(gurobi.GurobiBackend(), "gurobi")
    if name == "gurobi":
        return Selection(scip.ScipBackend(), "scip", note=f"gurobi not used ({why}); fell back to SCIP")
    return Selection(scip.ScipBackend(), "scip", note=f"gurobi not used ({why})")
