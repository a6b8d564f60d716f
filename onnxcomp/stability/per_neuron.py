"""The per-neuron baseline of the ISA paper: two MILPs per open neuron (max and min of its pre-activation),
layer by layer, each layer's exact bounds tightening the next layer's formulation."""

from __future__ import annotations

import time

import numpy as np

from ..milp import select
from ..milp.formulation import build
from .common import ProofSetup
from .state import Findings, StabilityState, witness_floor


def per_neuron(setup: ProofSetup, state: StabilityState, time_limit: float, entry: dict) -> Findings:
    """The baseline: max and min of every open neuron's pre-activation by MILP, layer by layer, with the
    exact bounds of earlier layers feeding the big-M of later ones."""
    start = time.perf_counter()
    net, n_layers = setup.net, setup.n_layers
    lower = [np.array(l, dtype=np.float64) for l in setup.lower]
    upper = [np.array(u, dtype=np.float64) for u in setup.upper]
    inactive = [a.copy() for a in state.proven_inactive]
    active = [a.copy() for a in state.proven_active]
    eps = setup.eps
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
        milp = build(net.layers, setup.lo, setup.hi, lower, upper, inactive, active, k + 1)
        sel = select(setup.solver, milp)
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
                out = sel.backend.optimize(milp, remaining, setup.threads)
                solves += 1
                if out.x0 is not None:
                    x = np.clip(out.x0, setup.lo, setup.hi)[None, :]
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


