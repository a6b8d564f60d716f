"""Proving the remaining neurons stable (or finding the inputs that show they are not): the strategies and
the ``auto`` schedule the ``milp`` pass runs.

Methods (``--stability-method``):

* ``isa`` (ISA, Algorithm 1): ONE MILP over the whole network whose objective counts the ReLU states
  not yet witnessed (indicators ``p``/``q``, formulation (7)-(12)); every solution and every node-LP input
  is pushed through a float64 forward pass, the states it witnesses leave the objective, and when the
  solver proves the optimum is 0 the neurons still in P are stably inactive and those in Q stably
  active.  Big-M constants are the sound bounds of the ``bounds`` pass.
* ``split``: branch and bound over the input box (as alpha-beta-CROWN and nnenum do): the box is bisected
  and CROWN bounds are recomputed on the pieces until every open neuron is settled on every piece (a
  proof) or witnessed.  Strong when the input has few dimensions (ACAS Xu has 5).
* ``per-neuron``: the baseline of the paper, two MILPs per neuron (max and min of its pre-activation),
  layer by layer, each layer's new exact bounds tightening the next layer's formulation.
* ``feasibility``: layer by layer, first to last, each open neuron *side* ("does some input reach
  ``y >= eps``?", "... ``y <= -eps``?") on its own: optimised-slope (alpha-CROWN) bounds, a batched
  gradient search for witnesses, then per side a ReLU branch and bound (LP per piece, proofs checked
  through the LP duals) or a feasibility MILP of the layers before it, each side an independent unit of
  work for the ``--jobs`` workers; what one layer proves tightens the bounds of the next
  (``feasibility.settle``), and so do the layer's witnessed sides, bounded by the branch and bound in
  its optimising mode with a quarter of the time left (intermediate tightening, as alpha-beta-CROWN
  tightens the unstable intermediate neurons before it branches).  ISA's one MILP over the whole network stalls on networks of 4-9 layers of
  200-256 neurons (its objective couples every open neuron); per-side problems stay small.
* ``regions`` (networks with at most two inputs, ``stability.regions``): the exact linear regions of the
  network, cut out of the input box one ReLU boundary at a time; on each region every neuron before a
  layer has a fixed phase, so the layer is affine there and its range is read off the region's vertices.
  It converges (the regions are cells of the network's own boundary arrangement), so it decides every
  neuron, ties at exactly 0 included (TLL N = 16, 1020 neurons, in seconds); on wider inputs the regions
  multiply too fast and the box ``split`` is used.
* ``auto``: for at most two inputs, ``regions`` first with half the time (what it leaves goes on to the
  schedule of low-dimensional inputs with the time left); for inputs of at most 8 dimensions, a short
  ``split`` (a quarter of the time, at most 30 s), then ``feasibility`` on what is left (half the
  remaining time), then ``split`` goes on from its unfinished pieces with the rest, and ``feasibility``
  again with whatever time the split leaves; for larger inputs, ``feasibility``.

Numerics (the epsilon policy).  Witnesses count any pre-activation beyond rounding noise
(``state.witness_floor``).  The MILP indicators carry a margin ``eps_i = 1e-5 * max(1, S_i)``
(``state.epsilons``; ``S_i`` is the magnitude of the terms the pre-activation sums, so eps is
ten times the solvers' feasibility tolerance on the scale of that row): ``p = 1`` needs ``y >= eps_i``,
``q = 1`` needs ``y <= -eps_i``.  A MILP solution is trusted only if the float64 forward pass of its
input confirms the claimed state; an unconfirmed claim never counts and never lets the neuron be removed
(it is kept, as "ambiguous").  A MILP certificate therefore states "no input of the domain reaches
``y >= eps_i``" (or ``y <= -eps_i``); a neuron removed on one may reach ``(0, eps_i)`` somewhere, and the
``fold`` pass reports the resulting worst-case output error bound (``stable.epsilon_error_bound``).
Bounds proofs are exact (epsilon 0); so are split proofs where every piece's bound shows the sign.  A
piece whose bound is only within the margin (``0 < upper < eps_i``: the pre-activation is 0 in exact
arithmetic on part of the box, as in models/external/tll's min/max banks), or whose neuron a piece MILP
settled, gives the MILP kind of certificate; such neurons are reported as ``split-epsilon`` with the
largest slack used.  Time limits and solver failures leave neurons undecided, and undecided neurons
are kept.
"""

from __future__ import annotations

import time

import numpy as np

from .common import ProofSetup
from .isa import isa
from .per_neuron import per_neuron
from .regions import REGION_MAX_DIMS, regions, supports
from .split import split
from .state import Findings, StabilityState, merge

METHODS = ("auto", "feasibility", "isa", "split", "regions", "per-neuron")
"""Values of ``--stability-method``."""
PROOF_KINDS = {"alpha": "alpha", "bab": "bab", "bab-epsilon": "bab-epsilon", "milp-infeasible": "milp",
               "bounds-epsilon": "bounds-epsilon", "bounds": "bounds", "lp": "lp"}
"""Certificate kinds of ``feasibility.settle`` -> proof names in the report and the certificate."""
SPLIT_MAX_DIMS = 8
"""``auto`` splits the input box when it has at most this many dimensions."""
SPLIT_FIRST_SECONDS = 30.0
REGIONS_SHARE = 0.5
"""``auto`` gives the regions search (at most two inputs) this share of the time."""


def open_count(setup: ProofSetup, state: StabilityState) -> int:
    """Neuron states still neither witnessed nor proven."""
    net = setup.net
    return sum(int((state.need_active_witness(k) | state.need_inactive_witness(k)).sum())
               for k in range(setup.n_layers) if net.layers[k].is_relu)


def feasibility(setup: ProofSetup, state: StabilityState, time_limit: float, entry: dict,
                offset: float = 0.0) -> Findings:
    """Per open neuron side, layer by layer: optimised-slope bounds, a batched witness search, then branch
    and bound on the ReLU states (``bab``) or a feasibility MILP per side ("is there an input with
    ``y >= eps``?"), each side an independent unit on the worker pool; bounds proven for a layer tighten
    the problems of the next (``feasibility.settle``).  A second call adds to the entry's stage times and
    trace; ``offset``: seconds the proofs had run before this call (the trace's time origin)."""
    from .feasibility import settle

    net = setup.net
    workers = setup.workers
    solver = setup.solver if setup.solver in ("scip", "highs") else "scip"
    if setup.solver == "gurobi":
        setup.warnings.append("--solver gurobi: the per-side proofs (stability method feasibility, auto's choice) "
                              "solve their MILPs with SCIP; Gurobi is used by --stability-method isa and per-neuron")
    st = settle(net, setup.lo, setup.hi, time_limit=time_limit, solver=solver,
                seen_active=[np.asarray(a, bool) for a in state.seen_active],
                seen_inactive=[np.asarray(a, bool) for a in state.seen_inactive],
                known=(state.proven_inactive, state.proven_active, state.epsilon),
                parallel=workers.size if workers is not None else 1,
                map_fn=workers.map if workers is not None else None,
                on_progress=setup.progress.layers if setup.progress is not None else None)
    fp = net.fingerprint()
    parts = []
    for kind in sorted({str(c) for layer in st.certificate for c in layer if c and c != "known"}):
        mask = [np.asarray(c == kind) for c in st.certificate]
        parts.append(Findings(source=PROOF_KINDS.get(kind, kind), fingerprint=fp,
                              proven_inactive=[m & a for m, a in zip(mask, st.stably_inactive)],
                              proven_active=[m & a & ~i for m, a, i in zip(mask, st.stably_active, st.stably_inactive)],
                              epsilon=[np.where(m, e, 0.0) for m, e in zip(mask, st.epsilon)]))
    stages: dict = dict(entry.get("feasibility_stage_seconds", {}))
    for stage in st.stages:
        stages[stage["stage"]] = round(stages.get(stage["stage"], 0.0) + stage["seconds"], 3)
    undecided = st.counts()["undecided"]
    progress = entry.get("feasibility_progress", []) + [{"seconds": round(offset + x["at"], 2),
                                                          "undecided": x["undecided_neurons"]} for x in st.stages]
    used_milp = any(name.startswith("milp") for name in stages)
    entry.update({"feasibility_stage_seconds": stages, "feasibility_progress": progress,
                  "feasibility_sides": entry.get("feasibility_sides", 0) + len(st.sides),
                  "feasibility_conflicts": entry.get("feasibility_conflicts", 0) + len(st.conflicts),
                  "solver": solver if used_milp else None, "status": "complete" if not undecided else "timelimit"})
    return Findings(source="feasibility", seen_active=st.seen_active, seen_inactive=st.seen_inactive,
                    fingerprint=fp, parts=parts, details={"stages": stages})


def prove(setup: ProofSetup, known: list, method: str, time_limit: float) -> tuple[Findings, dict]:
    """Run ``method`` on the neurons ``known`` leaves open, within ``time_limit`` seconds.

    Returns the findings (one ``Findings`` of source ``milp`` holding each strategy's as parts, with the
    solver facts in ``details``) and the report entry (counts, solver, status, timings, message)."""
    if method not in METHODS:
        raise ValueError(f"stability method {method!r}: expected one of {', '.join(METHODS)}")
    net = setup.net
    start = time.perf_counter()
    entry: dict = {"method": method}
    known = list(known)
    results: list[Findings] = []

    def elapsed() -> float:
        return time.perf_counter() - start

    def record(found: Findings) -> StabilityState:
        results.append(found)
        known.append(found)
        merged = merge(net, known)
        if setup.progress is not None:  # after each strategy (feasibility also reports while it runs)
            setup.progress.layers(merged.progress(net))
        return merged

    def trace(merged: StabilityState) -> None:
        """A point of the proofs' trace (undecided neurons over time; ``feasibility`` adds its own)."""
        entry.setdefault("feasibility_progress", []).append(
            {"seconds": round(elapsed(), 2), "undecided": merged.counts(net)["undecided"]})

    state = merge(net, known)
    low_dim = setup.lo.size <= SPLIT_MAX_DIMS
    if not open_count(setup, state):
        entry.update({"status": "nothing to prove", "solver": None})  # all settled before, or no hidden neuron
    elif method == "split":
        state = record(split(setup, state, time_limit, entry, workers=setup.workers))
    elif method == "per-neuron":
        state = record(per_neuron(setup, state, time_limit, entry))
    elif method == "regions" and supports(net):
        state = record(regions(setup, state, time_limit, entry))
        trace(state)
    elif method == "regions":
        setup.warn(f"--stability-method regions needs a network of at most {REGION_MAX_DIMS} inputs without "
                   f"convolutions (this one has {net.input_size} inputs): input splitting (split) used instead")
        state = record(split(setup, state, time_limit, entry, workers=setup.workers))
    elif method == "isa":
        state = record(isa(setup, known, max(time_limit, 0.01), entry))
        if entry.get("ambiguous") and open_count(setup, state) and time_limit - elapsed() > 0.05:
            # a solution whose claimed states the float64 replay rejected leaves its neurons neither proven
            # nor witnessed although the MILP finished; the per-side proofs settle those sides
            sub: dict = {}
            state = record(feasibility(setup, state, time_limit - elapsed(), sub, elapsed()))
            entry["ambiguous_settled"] = {"method": "feasibility", "status": sub.get("status"),
                                          "stage_seconds": sub.get("feasibility_stage_seconds")}
    elif method == "feasibility" or not low_dim:
        state = record(feasibility(setup, state, time_limit, entry))
    else:
        if supports(net):
            # at most two inputs: the exact regions usually decide everything in seconds; what they leave at
            # their share of the time goes to the box split and the per-side proofs with the time left
            state = record(regions(setup, state, time_limit * REGIONS_SHARE, entry))
            trace(state)
        # a short split (often all it takes), then the per-side proofs on what is left with half the
        # remaining time, then the split goes on (from its unfinished pieces).
        if open_count(setup, state):
            left = max(time_limit - elapsed(), 0.0)
            first_split = split(setup, state, min(left / 4, SPLIT_FIRST_SECONDS), entry, workers=setup.workers)
            state = record(first_split)
            if open_count(setup, state):
                state = record(feasibility(setup, state, max((time_limit - elapsed()) / 2, 0.01), entry, elapsed()))
            if open_count(setup, state) and time_limit - elapsed() > 0.5:
                first = {k: entry[k] for k in ("split_boxes", "split_leaf_milps", "split_seconds")}
                state = record(split(setup, state, time_limit - elapsed(), entry, resume=first_split.resume,
                                     workers=setup.workers))
                for k, v in first.items():
                    entry[k] = round(entry[k] + v, 3) if isinstance(v, float) else entry[k] + v
            if open_count(setup, state) and time_limit - elapsed() > 1.0:
                # the split ended early (its open pieces were closed by leaf MILPs that did not settle every
                # neuron): the per-side proofs get the rest, starting from everything known now
                state = record(feasibility(setup, state, time_limit - elapsed(), entry, elapsed()))
    counts = state.counts(net)
    entry.update(counts)
    entry["seconds_total"] = round(elapsed(), 3)
    how = []
    if "regions_pieces" in entry:
        how.append(f"regions: {entry['regions_pieces']} pieces, "
                   + ("complete" if entry["regions_complete"] else "time limit"))
    if "split_boxes" in entry:
        how.append(f"split: {entry['split_boxes']} pieces, {entry['split_leaf_milps']} piece MILPs, "
                   + ("complete" if entry["split_complete"] else "time limit"))
    if "feasibility_stage_seconds" in entry:
        how.append("per-side proofs: " + ", ".join(entry["feasibility_stage_seconds"]))
    if entry.get("solver"):
        how.append(f"{entry['solver']}: {entry.get('status')}")
    elif entry.get("status"):
        how.append(str(entry["status"]))
    entry["message"] = (f"{counts['stably_inactive']} stably inactive, {counts['stably_active']} stably active, "
                        f"{counts['unstable']} unstable, {counts['undecided']} undecided"
                        + (f" ({'; '.join(how)})" if how else ""))
    details = {k: entry[k] for k in ("solver", "status", "milp_seconds") if entry.get(k) is not None}
    combined = Findings(source="milp", fingerprint=net.fingerprint(), parts=results, details=details)
    return combined, entry
