"""What every stability strategy shares: the problem setup, the witness oracle, solver-failure policy.

A strategy (``isa``, ``split``, ``per_neuron``, ``feasibility``) is a pure function of a
:class:`ProofSetup` (the network, the box, the sound bounds and margins it may rely on, solver settings),
the findings known so far, and a time limit; it returns new ``Findings``.  Nothing here knows the pass
manager: the ``milp`` pass builds the setup from its options and annotations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..ir import Network
from ..milp import IsaOutcome
from ..milp.formulation import solution_from_input, violations
from .state import StabilityState, witness_floor

DEGENERATE = 1e-7
"""A pre-activation whose bounds on a piece differ by less than this (relative) is flat there."""


@dataclass
class ProofSetup:
    """A stability problem: ``net`` over the box ``[lo, hi]`` with sound pre-activation bounds
    ``lower``/``upper`` (per layer) usable as big-M constants, the margins ``eps`` (per layer; see
    ``state.epsilons``), and solver settings.  ``workers`` (an ``onnxcomp.workers.Workers``, or ``None``
    for inline) runs independent units; ``warnings`` collects what the user should read."""

    net: Network
    lo: np.ndarray
    hi: np.ndarray
    lower: list
    upper: list
    eps: list
    solver: str = "auto"
    threads: int | None = None
    split_batch: int = 128
    split_leaf_binaries: int = 24
    split_leaf_seconds: float = 10.0
    split_min_width: float = 1 / 64
    workers: object = None
    warnings: list = field(default_factory=list)
    progress: object = None
    """A ``pipeline.Progress`` told the neurons decided / open per layer as the proofs go (or ``None``)."""

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    @property
    def n_layers(self) -> int:
        """Hidden layers (every layer but the output one)."""
        return len(self.net.layers) - 1


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


def masks(net: Network, n_layers: int, fn) -> list:
    return [fn(k) if net.layers[k].is_relu else np.zeros(net.layers[k].n_out, bool) for k in range(n_layers)]


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


def selected_threads(sel) -> int:
    return int(getattr(sel.backend, "threads", 1) or 1)


