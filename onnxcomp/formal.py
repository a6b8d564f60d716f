"""A certified bound on how much two ReLU networks can differ over an input box (``verify --formal``).

``max_difference`` tries, in order, until the bound is within the tolerance or the time is up:

1. **differential bounds** on the whole box (``onnxcomp.diffbounds``): bounds on ``f2 - f1`` propagated
   through neurons matched by structure, so that weights the networks share cancel;
2. for inputs of at most 8 dimensions, **input splitting** with the same differential bounds on every
   piece, through the one branch-and-bound driver (``onnxcomp.bab``) that the stability proof uses; a
   piece the bounds cannot settle but with few unstable neurons gets an exact MILP (both networks side
   by side, sharing the input), and those MILPs run on the worker pool;
3. for larger inputs, **one MILP per output and sense** (maximise and minimise ``f1_j - f2_j``), each an
   independent unit on the worker pool, the solver's dual bound capped by the differential bound.

The certified bound is valid whenever it is reported (pieces not finished count with their bounds).
Every difference reported as found is re-checked by float64 forward passes of both networks, and the
largest one is reported with its input.  For files onnxcomp wrote, ``onnxcomp.replay`` comes first (the
file's certificate, re-proven independently); ``certify`` ties the two together.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import bab
from .bounds import crown_bounds, prove
from .diffbounds import diff_bounds, match
from .ir import Box, Network
from .milp import select
from .milp.formulation import build
from .timing import Deadline

SPLIT_MAX_DIMS = 8
PROBE_SAMPLES = 4096
"""Random points of the box (besides its centre and corners) checked for a large difference first."""


@dataclass
class FormalResult:
    """Per output: the certified bound and the largest difference actually found (with its input).
    ``method`` says what established the bound; ``complete`` is False when the time ran out first."""

    certified_max_abs_diff: float
    found_max_abs_diff: float
    per_output: list = field(default_factory=list)
    complete: bool = True
    solver: str = ""
    seconds: float = 0.0
    output_scale: float = 0.0
    method: str = ""
    found_input: list | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class _Found:
    """The largest |f1 - f2| per output seen at real inputs (float64 forward passes), with the inputs."""

    def __init__(self, net1: Network, net2: Network, m: int):
        self.net1, self.net2 = net1, net2
        self.value = np.zeros(m)
        self.input: list = [None] * m

    def check(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        diff = np.abs(self.net1.forward(x) - self.net2.forward(x))
        for j in range(diff.shape[1]):
            r = int(np.argmax(diff[:, j]))
            if diff[r, j] > self.value[j]:
                self.value[j], self.input[j] = float(diff[r, j]), x[r].tolist()
        return diff

    def best_input(self):
        return self.input[int(np.argmax(self.value))] if self.value.size and self.value.max() > 0 else None


def _scale(net: Network, box: Box, bounds=None) -> float:
    """The largest output magnitude CROWN allows over ``box`` (``bounds``: those CROWN bounds, if known)."""
    b = crown_bounds(net, box.lo[None, :], box.hi[None, :]) if bounds is None else bounds
    return float(np.maximum(np.abs(b.upper[-1]), np.abs(b.lower[-1])).max(initial=0.0))


def _per_output(certified: np.ndarray, found: _Found, detail: dict | None = None) -> list:
    """One entry per output; ``detail`` adds each MILP's outcome (``max``/``min``: bound, status, the
    difference found at its solution and that input)."""
    return [dict({"output": j, "certified_abs": float(certified[j]), "found_abs": float(found.value[j]),
                  "input": found.input[j]}, **(detail or {}).get(j, {})) for j in range(certified.size)]


def max_difference(net1: Network, net2: Network, box: Box, time_limit: float = 60.0, solver: str = "auto",
                   threads: int | None = None, tolerance: float = 0.0, *, workers=None,
                   deadline: Deadline | None = None, matching=None, clip1: tuple | None = None) -> FormalResult:
    """Certified bound of ``max |net1(x) - net2(x)|`` over ``box`` (see the module docstring); the search
    stops refining once the bound is within ``tolerance``.  ``matching``: the neuron correspondence when the
    caller knows it (``diffbounds.match`` otherwise); ``clip1``: bounds proven about ``net1``'s neurons
    (``crown_bounds(clip=...)``), e.g. the stability claims a certificate replay re-proved."""
    if net1.input_size != net2.input_size or net1.output_size != net2.output_size:
        raise ValueError("the networks have different input or output sizes")
    start = time.perf_counter()
    deadline = deadline or Deadline(time_limit)
    m = net1.output_size
    found = _Found(net1, net2, m)
    rng = np.random.default_rng(0)
    found.check(np.vstack([(box.lo + box.hi)[None, :] / 2, box.corners(64, rng), box.sample(PROBE_SAMPLES, rng)]))
    if matching is None:
        matching = match(net1, net2, box.lo[None, :], box.hi[None, :])
    plain = crown_bounds(net1, box.lo[None, :], box.hi[None, :])
    clipped = plain if clip1 is None else crown_bounds(net1, box.lo[None, :], box.hi[None, :], clip=clip1)
    low, up = diff_bounds(net1, net2, box.lo[None, :], box.hi[None, :], matching, bounds1=clipped)
    whole = np.maximum(np.maximum(up[0], -low[0]), 0.0)
    scale = _scale(net1, box, plain)

    def result(certified, method, complete=True, solver_name="") -> FormalResult:
        return FormalResult(float(certified.max(initial=0.0)), float(found.value.max(initial=0.0)),
                            _per_output(certified, found), complete, solver_name, time.perf_counter() - start, scale,
                            method, found.best_input())

    if np.all(whole <= tolerance) or np.any(found.value > tolerance):
        return result(whole, "differential bounds")
    if box.size <= SPLIT_MAX_DIMS:
        certified, complete, facts = split_difference_bounds(net1, net2, box, tolerance, deadline, matching, found,
                                                             solver=solver, workers=workers, clip1=clip1)
        return result(np.minimum(certified, whole) if not complete else certified,
                      f"differential bounds + input splitting ({facts})", complete)
    certified, complete, name, detail = _milp_outputs(net1, net2, box, deadline, solver, threads, workers, found)
    out = result(np.minimum(certified, whole), "differential bounds + MILP per output", complete, name)
    out.per_output = _per_output(np.minimum(certified, whole), found, detail)
    return out


# ---- input splitting ----------------------------------------------------------------------------------------
@dataclass
class PieceUnit:
    """One piece's exact MILP (both networks side by side), as plain data for a worker."""

    layers1: tuple
    layers2: tuple
    input_size: int
    lo: np.ndarray
    hi: np.ndarray
    time_limit: float
    solver: str
    until: float = float("inf")


def solve_piece(unit: PieceUnit) -> FormalResult | None:
    """``milp_difference`` on one piece (a pure function of ``unit``: usable by a process pool)."""
    seconds = min(unit.time_limit, unit.until - time.time())
    if seconds <= 0.01:
        return None
    net1, net2 = Network(unit.layers1, unit.input_size), Network(unit.layers2, unit.input_size)
    return milp_difference(net1, net2, Box(unit.lo, unit.hi), seconds, unit.solver)


class DiffSearch:
    """Input splitting on ``|f1 - f2|``: a piece is done when its differential bound is within the
    tolerance, or when its centre already shows a larger difference (a counterexample)."""

    leaf_fn = staticmethod(solve_piece)

    def __init__(self, net1, net2, box, tolerance, matching, found: _Found, deadline: Deadline, solver: str,
                 leaf_binaries: int = 24, leaf_seconds: float = 30.0, clip1: tuple | None = None):
        self.net1, self.net2, self.tol, self.matching, self.found = net1, net2, tolerance, matching, found
        self.clip1 = clip1
        self.deadline, self.solver = deadline, solver
        self.leaf_binaries, self.leaf_seconds = leaf_binaries, leaf_seconds
        self.certified = np.zeros(net1.output_size)
        self.width0 = np.where(box.hi > box.lo, box.hi - box.lo, 1.0)
        self._context: dict = {}

    def bounds(self, lo: np.ndarray, hi: np.ndarray):
        """(bound on |f1 - f2| per piece and output, input sensitivity, unstable neurons per piece)."""
        b1 = crown_bounds(self.net1, lo, hi, with_coef=True, clip=self.clip1)
        b2 = crown_bounds(self.net2, lo, hi, with_coef=True)
        low, up = diff_bounds(self.net1, self.net2, lo, hi, self.matching, bounds1=b1, bounds2=b2)
        bound = np.maximum(np.maximum(up, -low), 0.0)
        sens = np.abs(b1.coef[-1]).sum(axis=1) + np.abs(b2.coef[-1]).sum(axis=1)
        unstable = sum(((l < 0) & (u > 0)).sum(axis=1) for net, bb in ((self.net1, b1), (self.net2, b2))
                       for k, (l, u) in enumerate(zip(bb.lower[:-1], bb.upper[:-1])) if net.layers[k].is_relu)
        return bound, sens, unstable

    def assess(self, pieces: list) -> list:
        lo = np.stack([p.lo for p in pieces])
        hi = np.stack([p.hi for p in pieces])
        bound, sens, unstable = self.bounds(lo, hi)
        diff = self.found.check((lo + hi) / 2)
        decisions = []
        for r, piece in enumerate(pieces):
            if np.all(bound[r] <= self.tol) or np.any(diff[r] > self.tol):
                self.certified = np.maximum(self.certified, bound[r])  # settled, or a counterexample: stop here
                decisions.append(bab.Decision(bab.DONE))
                continue
            dim = bab.split_dimension(piece.hi - piece.lo, sens[r], self.width0)
            left = self.deadline.remaining()
            if unstable[r] <= self.leaf_binaries and left > 0:
                self._context[id(piece)] = (bound[r], dim)
                unit = PieceUnit(tuple(self.net1.layers), tuple(self.net2.layers), self.net1.input_size, piece.lo,
                                 piece.hi, min(self.leaf_seconds, left), self.solver, time.time() + left)
                decisions.append(bab.Decision(bab.LEAF, unit=unit))
                continue
            decisions.append(bab.Decision(bab.SPLIT, dim))
        return decisions

    def after_leaf(self, piece, decision, result: FormalResult | None) -> bab.Decision:
        bound, dim = self._context.pop(id(piece))
        if result is not None:
            for e in result.per_output:
                if e.get("input") is not None:
                    self.found.check(np.asarray(e["input"]))
            if result.complete:
                self.certified = np.maximum(self.certified,
                                            np.minimum(bound, [e["certified_abs"] for e in result.per_output]))
                return bab.Decision(bab.DONE)
        return bab.Decision(bab.SPLIT, dim)


def split_difference_bounds(net1: Network, net2: Network, box: Box, tolerance: float, deadline: Deadline, matching,
                            found: _Found, *, solver: str = "auto", workers=None, batch: int = 128,
                            clip1: tuple | None = None):
    """Input splitting (see the module docstring); returns (certified bound per output, complete, facts)."""
    search = DiffSearch(net1, net2, box, tolerance, matching, found, deadline, solver, clip1=clip1)
    outcome = bab.run(search, [bab.Piece(box.lo.copy(), box.hi.copy())], deadline, batch=batch, workers=workers)
    certified = search.certified
    for s in range(0, len(outcome.open), 4096):  # unfinished pieces still count with their bounds
        part = outcome.open[s:s + 4096]
        bound, _, _ = search.bounds(np.stack([p.lo for p in part]), np.stack([p.hi for p in part]))
        certified = np.maximum(certified, bound.max(axis=0))
    return certified, outcome.complete, f"{outcome.pieces} pieces, {outcome.leaves} piece MILPs"


def split_difference(net1: Network, net2: Network, box: Box, tolerance: float, time_limit: float,
                     solver: str = "auto", workers=None) -> FormalResult:
    """Input splitting alone, from the whole box (``max_difference`` uses it after the whole-box bound)."""
    start = time.perf_counter()
    found = _Found(net1, net2, net1.output_size)
    matching = match(net1, net2, box.lo[None, :], box.hi[None, :])
    certified, complete, facts = split_difference_bounds(net1, net2, box, tolerance, Deadline(time_limit), matching,
                                                         found, solver=solver, workers=workers)
    return FormalResult(float(certified.max(initial=0.0)), float(found.value.max(initial=0.0)),
                        _per_output(certified, found), complete, f"split ({facts})", time.perf_counter() - start,
                        _scale(net1, box), "differential bounds + input splitting", found.best_input())


# ---- MILP ------------------------------------------------------------------------------------------------------
def _formulate(net: Network, box: Box, into=None, tag: str = ""):
    b = crown_bounds(net, box.lo[None, :], box.hi[None, :])
    lower, upper = [x[0] for x in b.lower], [x[0] for x in b.upper]
    inactive, active = prove(net, b)
    return build(net.layers, box.lo, box.hi, lower, upper, inactive, active, len(net.layers), into=into, tag=tag), upper, lower


@dataclass
class OutputUnit:
    """Maximise (or minimise) ``f1_j - f2_j`` over the box: one MILP, as plain data for a worker."""

    layers1: tuple
    layers2: tuple
    input_size: int
    lo: np.ndarray
    hi: np.ndarray
    output: int
    sense: str
    time_limit: float
    solver: str
    threads: int | None = None
    until: float = float("inf")


def solve_output(unit: OutputUnit) -> dict:
    """One output and sense of the side-by-side MILP (a pure function of ``unit``); the returned bound is
    the solver's dual bound (``inf`` when it has none) and ``input`` its best solution's input."""
    seconds = min(unit.time_limit, unit.until - time.time())
    inf = np.inf if unit.sense == "max" else -np.inf
    if seconds <= 0.01:
        return {"bound": float(inf), "status": "not started (time limit)", "found": None, "input": None, "solver": ""}
    net1, net2 = Network(unit.layers1, unit.input_size), Network(unit.layers2, unit.input_size)
    box = Box(unit.lo, unit.hi)
    milp, _, _ = _formulate(net1, box)
    out1 = milp.post[-1].copy()
    _formulate(net2, box, into=milp, tag="b:")
    out2 = milp.post[-1].copy()
    objective: dict = {}
    for var, sign in ((out1[unit.output], 1.0), (out2[unit.output], -1.0)):
        if var >= 0:  # -1: a ReLU output proven inactive, the constant 0
            objective[int(var)] = objective.get(int(var), 0.0) + sign
    if not objective:
        return {"bound": 0.0, "status": "constant", "found": 0.0, "input": None, "solver": ""}
    milp.objective, milp.constant, milp.maximize = objective, 0.0, unit.sense == "max"
    backend = select(unit.solver, milp).backend
    res = backend.optimize(milp, seconds, unit.threads)
    found = x = None
    if res.x0 is not None:
        x = np.clip(res.x0, box.lo, box.hi)
        found = float((net1.forward(x[None, :]) - net2.forward(x[None, :]))[0, unit.output])
    bound = res.bound if res.bound is not None and np.isfinite(res.bound) else inf
    if np.isfinite(bound):
        # the solver decides rows up to its feasibility tolerance, so its dual bound is exact only up to that
        # tolerance on the scale of the output rows: widen it by the margin the stability proofs use
        bound = bound + (1.0 if unit.sense == "max" else -1.0) * _milp_margin(net1, net2, box, unit.output)
    return {"bound": float(bound), "status": res.status, "found": found, "input": None if x is None else x.tolist(),
            "solver": getattr(backend, "name", "")}


MILP_FEASIBILITY = 1e-6
"""The absolute row violation a MILP solver accepts (SCIP's and HiGHS's default feasibility tolerances are
1e-6 and 1e-7): a solution may break each constraint, the input box included, by this much."""


def _milp_margin(net1: Network, net2: Network, box: Box, output: int) -> float:
    """How far a solver's optimum of ``f1_j - f2_j`` can be from the true one when every row holds only up to
    :data:`MILP_FEASIBILITY`: each layer's values may be off by that much plus what the earlier errors make
    of it through ``|W|`` (ReLU is 1-Lipschitz), from inputs off the box by as much; both networks add."""
    margin = 0.0
    for net in (net1, net2):
        delta = np.full(net.input_size, MILP_FEASIBILITY)
        for layer in net.layers:
            delta = np.asarray(layer.weight_abs @ delta).reshape(-1) + MILP_FEASIBILITY
        margin += float(delta[output])
    return margin


def _milp_outputs(net1, net2, box, deadline: Deadline, solver, threads, workers, found: _Found):
    units = [OutputUnit(tuple(net1.layers), tuple(net2.layers), net1.input_size, box.lo, box.hi, j, sense, 0.0, solver,
                        threads) for j in range(net1.output_size) for sense in ("max", "min")]
    size = workers.size if workers is not None else 1
    seconds = deadline.remaining() * size / max(len(units), 1)
    for u in units:
        u.time_limit, u.until = max(seconds, 0.01), time.time() + deadline.remaining()
    results = workers.map(solve_output, units) if workers is not None else [solve_output(u) for u in units]
    certified = np.zeros(net1.output_size)
    complete = True
    detail: dict = {}
    for u, r in zip(units, results):
        detail.setdefault(u.output, {})[u.sense] = {k: r[k] for k in ("bound", "status", "found", "input")}
        if r["input"] is not None:
            found.check(np.asarray(r["input"]))
        complete &= r["status"] in ("optimal", "constant")
        side = r["bound"] if u.sense == "max" else -r["bound"]
        certified[u.output] = max(certified[u.output], side, 0.0)
    names = sorted({r["solver"] for r in results if r["solver"]})
    return certified, complete, ",".join(names), detail


def milp_difference(net1: Network, net2: Network, box: Box, time_limit: float = 60.0, solver: str = "auto",
                    threads: int | None = None, workers=None) -> FormalResult:
    """Both networks in one MILP; maximise and minimise every output difference (see ``solve_output``)."""
    start = time.perf_counter()
    found = _Found(net1, net2, net1.output_size)
    certified, complete, name, detail = _milp_outputs(net1, net2, box, Deadline(time_limit), solver, threads, workers,
                                                      found)
    per_output = _per_output(certified, found, detail)
    return FormalResult(float(certified.max(initial=0.0)), float(found.value.max(initial=0.0)), per_output, complete,
                        name, time.perf_counter() - start, _scale(net1, box), "MILP per output", found.best_input())
