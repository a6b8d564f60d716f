"""A certified bound on how much two ReLU networks can differ over an input box (``verify --formal``).

Two methods, chosen by the input dimension:

* ``split`` (inputs of at most 8 dimensions): branch and bound over the input box.  On every piece CROWN
  gives linear bounds ``f1 <= A1 x + c1`` and ``-f2 <= A2 x + c2`` that share ``x``, so
  ``f1 - f2 <= (A1 + A2) x + c1 + c2`` is maximised over the piece exactly; the same for ``f2 - f1``.  A
  piece is done when that bound is within the tolerance; otherwise it is bisected (or, if its centre
  already shows a larger difference, that input is a counterexample).  The certified bound is the largest
  bound over the pieces, valid even when the time limit stops the search.
* ``milp``: both networks side by side in one MILP sharing the input variables (each with its own
  sound CROWN bounds as big-M); for every output ``j`` the solver maximises and minimises
  ``f1_j(x) - f2_j(x)``.  The dual bounds give the certified ``max |f1_j - f2_j|`` (up to the solver's
  feasibility tolerance); the best primal solutions are inputs where the difference is reached.

Every difference reported as found is re-checked by float64 forward passes of both networks.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .bounds import crown_bounds, prove
from .ir import Box, Network
from .milp import select
from .milp.formulation import build


@dataclass
class FormalResult:
    """Per output: the certified bound and the largest difference actually found (with its input)."""

    certified_max_abs_diff: float
    found_max_abs_diff: float
    per_output: list = field(default_factory=list)
    complete: bool = True
    solver: str = ""
    seconds: float = 0.0
    output_scale: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _formulate(net: Network, box: Box, into=None, tag: str = ""):
    b = crown_bounds(net, box.lo[None, :], box.hi[None, :])
    lower, upper = [x[0] for x in b.lower], [x[0] for x in b.upper]
    inactive, active = prove(net, b)
    return build(net.layers, box.lo, box.hi, lower, upper, inactive, active, len(net.layers), into=into, tag=tag), upper, lower


SPLIT_MAX_DIMS = 8


def max_difference(net1: Network, net2: Network, box: Box, time_limit: float = 60.0, solver: str = "auto",
                   threads: int | None = None, tolerance: float = 0.0) -> FormalResult:
    """Certified bound of ``max |net1(x) - net2(x)|`` over ``box`` (see module docstring); the split
    method stops refining a piece once its bound is within ``tolerance``."""
    if net1.input_size != net2.input_size or net1.output_size != net2.output_size:
        raise ValueError("the networks have different input or output sizes")
    if box.size <= SPLIT_MAX_DIMS:
        return split_difference(net1, net2, box, tolerance, time_limit, solver=solver)
    return milp_difference(net1, net2, box, time_limit, solver, threads)


def _diff_bounds(net1: Network, net2: Network, lo: np.ndarray, hi: np.ndarray):
    """Upper bounds of ``f1 - f2`` and of ``f2 - f1`` on each box (B, m), and the coefficients used."""
    b1 = crown_bounds(net1, lo, hi, with_coef=True)
    b2 = crown_bounds(net2, lo, hi, with_coef=True)
    m = net1.output_size
    a1, c1 = b1.coef[-1], b1.const[-1]
    a2, c2 = b2.coef[-1], b2.const[-1]
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    a_up, c_up = a1[:, :m] + a2[:, m:], c1[:, :m] + c2[:, m:]  # f1 - f2
    a_dn, c_dn = a2[:, :m] + a1[:, m:], c2[:, :m] + c1[:, m:]  # f2 - f1

    def concretise(a, c):
        value = np.einsum("bij,bj->bi", a, centre) + np.einsum("bij,bj->bi", np.abs(a), radius) + c
        mag = np.einsum("bij,bj->bi", np.abs(a), np.maximum(np.abs(lo), np.abs(hi))) + np.abs(c)
        return value + 1e-9 * mag + 1e-12  # outward margin, as in onnxcomp.bounds

    unstable = sum(((l < 0) & (u > 0)).sum(axis=1) for net, bb in ((net1, b1), (net2, b2))
                   for k, (l, u) in enumerate(zip(bb.lower[:-1], bb.upper[:-1])) if net.layers[k].is_relu)
    return concretise(a_up, c_up), concretise(a_dn, c_dn), np.abs(a_up) + np.abs(a_dn), unstable


def split_difference(net1: Network, net2: Network, box: Box, tolerance: float, time_limit: float,
                     batch: int = 128, leaf_binaries: int = 24, solver: str = "auto") -> FormalResult:
    """Input-space branch and bound on ``|f1 - f2|`` (see module docstring).  A piece whose linear
    bounds cannot settle it but that has at most ``leaf_binaries`` unstable neurons (both networks) is
    settled exactly by ``milp_difference`` on that piece (the linear bounds of f1 and of f2 relax a
    ReLU they share independently, which no amount of splitting fixes near its boundary)."""
    start = time.perf_counter()
    m = net1.output_size
    stack = [(box.lo.copy(), box.hi.copy())]
    certified = np.zeros(m)
    found = np.zeros(m)
    found_input: list = [None] * m
    pieces = leaves = 0
    complete = True
    b = crown_bounds(net1, box.lo[None, :], box.hi[None, :])
    scale = float(np.maximum(np.abs(b.upper[-1]), np.abs(b.lower[-1])).max(initial=0.0))
    while stack:
        if time.perf_counter() - start > time_limit:
            complete = False
            break
        chunk, stack = stack[-batch:], stack[:-batch]
        lo = np.stack([c[0] for c in chunk])
        hi = np.stack([c[1] for c in chunk])
        up, dn, sens, unstable = _diff_bounds(net1, net2, lo, hi)
        bound = np.maximum(np.maximum(up, dn), 0.0)  # (B, m)
        centre = (lo + hi) / 2
        diff = np.abs(net1.forward(centre) - net2.forward(centre))
        for j in range(m):
            r = int(np.argmax(diff[:, j]))
            if diff[r, j] > found[j]:
                found[j], found_input[j] = float(diff[r, j]), centre[r].tolist()
        pieces += len(chunk)
        for r, (clo, chi) in enumerate(chunk):
            if np.all(bound[r] <= tolerance) or np.any(diff[r] > tolerance):
                certified = np.maximum(certified, bound[r])  # settled, or a counterexample: stop here
                continue
            if unstable[r] <= leaf_binaries:
                remaining = time_limit - (time.perf_counter() - start)
                piece = milp_difference(net1, net2, Box(clo, chi), max(min(remaining, 30.0), 0.01), solver)
                leaves += 1
                for e in piece.per_output:
                    j = e["output"]
                    if e["found_abs"] > found[j]:
                        found[j] = e["found_abs"]
                        found_input[j] = next((e[sd]["input"] for sd in ("max", "min")
                                               if e[sd].get("found") is not None and abs(e[sd]["found"]) == e["found_abs"]), None)
                if piece.complete:
                    certified = np.maximum(certified, np.minimum(bound[r], [e["certified_abs"] for e in piece.per_output]))
                    continue
            width = chi - clo
            score = width * sens[r].sum(axis=0)
            d = int(np.argmax(score)) if np.any(score > 0) else int(np.argmax(width))
            mid = (clo[d] + chi[d]) / 2
            left_hi, right_lo = chi.copy(), clo.copy()
            left_hi[d], right_lo[d] = mid, mid
            stack.append((clo, left_hi))
            stack.append((right_lo, chi))
    if stack:  # unfinished pieces still count with their current bounds
        lo = np.stack([c[0] for c in stack])
        hi = np.stack([c[1] for c in stack])
        for s in range(0, len(stack), 4096):
            up, dn, _, _ = _diff_bounds(net1, net2, lo[s:s + 4096], hi[s:s + 4096])
            certified = np.maximum(certified, np.maximum(np.maximum(up, dn), 0.0).max(axis=0))
    per_output = [{"output": j, "certified_abs": float(certified[j]), "found_abs": float(found[j]),
                   "input": found_input[j]} for j in range(m)]
    return FormalResult(float(certified.max(initial=0.0)), float(found.max(initial=0.0)), per_output, complete,
                        f"split ({pieces} pieces, {leaves} piece MILPs)", time.perf_counter() - start, scale)


def milp_difference(net1: Network, net2: Network, box: Box, time_limit: float = 60.0, solver: str = "auto",
                    threads: int | None = None) -> FormalResult:
    """Both networks in one MILP; maximise and minimise every output difference."""
    start = time.perf_counter()
    milp, up1, lo1 = _formulate(net1, box)
    out1 = milp.post[-1].copy()
    _formulate(net2, box, into=milp, tag="b:")
    out2 = milp.post[-1].copy()
    backend = select(solver, milp).backend
    n_out = net1.output_size
    per_output = []
    complete = True
    budget = time_limit / max(2 * n_out, 1)
    scale = float(np.maximum(np.abs(up1[-1]), np.abs(lo1[-1])).max(initial=0.0))
    for j in range(n_out):
        objective: dict = {}
        for var, sign in ((out1[j], 1.0), (out2[j], -1.0)):
            if var >= 0:  # -1: a ReLU output proven inactive, the constant 0
                objective[int(var)] = objective.get(int(var), 0.0) + sign
        entry = {"output": j}
        for sense in ("max", "min"):
            milp.objective, milp.constant, milp.maximize = dict(objective), 0.0, sense == "max"
            if not objective:
                entry[sense] = {"bound": 0.0, "status": "constant", "found": 0.0}
                continue
            res = backend.optimize(milp, budget, threads)
            found = None
            if res.x0 is not None:
                x = np.clip(res.x0, box.lo, box.hi)[None, :]
                found = float((net1.forward(x) - net2.forward(x))[0, j])
            bound = res.bound
            if bound is None or not np.isfinite(bound):
                complete = False
                bound = np.inf if sense == "max" else -np.inf
            if res.status != "optimal":
                complete = False
            entry[sense] = {"bound": float(bound), "status": res.status, "found": found,
                            "input": None if res.x0 is None else np.clip(res.x0, box.lo, box.hi).tolist()}
        entry["certified_abs"] = float(max(entry["max"]["bound"], -entry["min"]["bound"], 0.0))
        founds = [abs(entry[s]["found"]) for s in ("max", "min") if entry[s].get("found") is not None]
        entry["found_abs"] = float(max(founds, default=0.0))
        per_output.append(entry)
    return FormalResult(
        certified_max_abs_diff=max((e["certified_abs"] for e in per_output), default=0.0),
        found_max_abs_diff=max((e["found_abs"] for e in per_output), default=0.0),
        per_output=per_output, complete=complete, solver=getattr(backend, "name", ""),
        seconds=time.perf_counter() - start, output_scale=scale,
    )
