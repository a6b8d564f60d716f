"""ISA (Algorithm 1 of the ISA paper): ONE MILP whose objective counts the ReLU states not yet witnessed.

Indicators ``p``/``q`` (formulation (7)-(12)) mark the states still to witness; every solution and every
node-LP input is pushed through a float64 forward pass, the states it witnesses leave the objective, and
when the solver proves the optimum is 0 the neurons still in P are stably inactive and those in Q stably
active (up to the margin ``eps``).  Big-M constants are the sound bounds of the setup.  One hard neuron
keeps the whole proof from finishing, so when the single MILP does not finish in a third of the time the
rest goes to one ISA MILP per layer.
"""

from __future__ import annotations

import time

import numpy as np

from ..milp import select
from ..milp.formulation import build
from .common import ProofSetup, WitnessOracle, checked_start, masks, selected_threads, solve_isa_safely
from .state import Findings, StabilityState, merge


def isa(setup: ProofSetup, known: list, time_limit: float, entry: dict) -> Findings:
    """ISA over every open neuron of ``setup`` given the findings ``known`` so far (see the module docstring).

    Its proof is all or nothing: one hard neuron keeps the optimum from being proven, and then nothing
    is proven.  So when the single MILP does not finish in a third of the time, the rest goes to
    one ISA MILP per layer (first layer first, each formulation truncated after its layer and using what
    the earlier layers proved), so that the neurons that can be settled are."""
    net = setup.net
    start = time.perf_counter()
    found = isa_once(setup, merge(net, known), time_limit / 3, entry)
    if found.proven_inactive is not None or entry.get("status") == "nothing to prove":
        return found
    parts = [found]
    layered = []
    todo = [k for k in range(setup.n_layers) if net.layers[k].is_relu]
    for j, k in enumerate(todo):
        remaining = time_limit - (time.perf_counter() - start)
        if remaining <= 0.05:
            break
        sub: dict = {}
        part = isa_once(setup, merge(net, list(known) + parts), remaining / (len(todo) - j), sub, only_layer=k)
        if sub.get("status") == "nothing to prove":
            continue
        parts.append(part)
        layered.append({"layer": net.layers[k].layer_id, "status": sub.get("status"),
                        "seconds": sub.get("milp_seconds"), "proven": part.proven_inactive is not None})
    entry["layered"] = layered
    return Findings(source="milp", fingerprint=net.fingerprint(), parts=parts)


def isa_once(setup: ProofSetup, state: StabilityState, time_limit: float, entry: dict,
             only_layer: int | None = None) -> Findings:
    """One ISA MILP over every open neuron (or only those of ``only_layer``, the formulation ending there)."""
    net, n_layers = setup.net, setup.n_layers
    lower, upper, eps = setup.lower, setup.upper, setup.eps
    p_set = masks(net, n_layers, state.need_active_witness)
    q_set = masks(net, n_layers, state.need_inactive_witness)
    if only_layer is not None:
        p_set = [m if k == only_layer else np.zeros_like(m) for k, m in enumerate(p_set)]
        q_set = [m if k == only_layer else np.zeros_like(m) for k, m in enumerate(q_set)]
    last = max([k + 1 for k in range(n_layers) if p_set[k].any() or q_set[k].any()], default=0)
    oracle = WitnessOracle(net, setup.lo, setup.hi, state, n_layers, p_set, q_set, eps)
    findings = Findings(source="milp", seen_active=oracle.seen_active, seen_inactive=oracle.seen_inactive,
                        fingerprint=net.fingerprint())
    if last == 0:
        entry.update({"status": "nothing to prove", "solver": None})
        return findings
    milp = build(net.layers, setup.lo, setup.hi, lower, upper, state.proven_inactive, state.proven_active,
                 last, p_set, q_set, eps)
    # The forward pass of the box centre must satisfy the formulation, else the formulation (or its
    # bounds) is wrong and nothing may be proven with it.
    start = checked_start(milp, net, (setup.lo + setup.hi) / 2, lower, upper)
    oracle.trust(lower, upper)
    sel = select(setup.solver, milp)
    outcome = solve_isa_safely(sel.backend, milp, oracle, time_limit, setup.threads, start)
    if outcome.status.startswith("error") and sel.name != "scip":
        from ..milp.scip import ScipBackend

        sel.note = (sel.note + "; " if sel.note else "") + f"{sel.name} failed ({outcome.note}); reran with SCIP"
        outcome = solve_isa_safely(ScipBackend(), milp, oracle, time_limit, setup.threads, start)
    if outcome.status.startswith("error"):
        setup.warn(f"milp: the solver failed ({outcome.note}); its neurons stay undecided and are kept")
    if oracle.bound_violation:
        raise RuntimeError(f"unsound bounds detected ({oracle.bound_violation}); nothing proven")
    entry.update({
        "solver": outcome.solver, "status": outcome.status, "milp_seconds": round(outcome.seconds, 3),
        "nodes": outcome.nodes, "solutions_checked": outcome.solutions_seen, "lp_inputs": outcome.lp_inputs_seen,
        "variables": milp.n_vars, "binaries": milp.n_binary, "rows": len(milp.rows), "threads": selected_threads(sel),
    })
    if sel.note:
        entry["solver_note"] = sel.note
        setup.warn(f"milp: {sel.note}")
    if outcome.proven:
        findings.proven_inactive = [np.array([oracle.p_open((k, i)) and p_set[k][i] for i in range(net.layers[k].n_out)])
                                    for k in range(n_layers)] + [np.zeros(net.layers[-1].n_out, bool)]
        findings.proven_active = [np.array([oracle.q_open((k, i)) and q_set[k][i] for i in range(net.layers[k].n_out)])
                                  for k in range(n_layers)] + [np.zeros(net.layers[-1].n_out, bool)]
        findings.epsilon = eps
    ambiguous = sorted(oracle.rejected_p | oracle.rejected_q)
    if ambiguous:
        entry["ambiguous"] = [{"layer": net.layers[k].layer_id, "neuron": net.layers[k].neuron_ids[i]} for k, i in ambiguous]
    return findings
