"""``milp`` · proves the remaining neurons stable (ISA, input splitting, per-neuron MILPs) or witnesses them."""

from __future__ import annotations

from dataclasses import dataclass, replace

from onnxcomp.conv import dense_view
from onnxcomp.milp import SOLVERS
from onnxcomp.options import option
from onnxcomp.pipeline import ANALYSIS, DOMAIN, PassResult, register
from onnxcomp.sampling import ActivationStats
from onnxcomp.stability import DomainBounds, Stability
from onnxcomp.stability.state import Findings
from onnxcomp.stability.common import ProofSetup
from onnxcomp.stability.schedule import METHODS, prove

CONV_MILP_SHARE = 0.9
"""On a convolutional network the proofs get this share of the time left (see ``run``)."""
DEFAULT_SECONDS = 600.0
"""Seconds for the proofs when the run has no time limit (a library caller's Context)."""


@dataclass(frozen=True)
class MilpOptions:
    stability_method: str = option("auto", "how the remaining neurons are proven: auto, feasibility (per neuron side, "
                                   "layer by layer), isa (one MILP), split (input branch and bound), regions (at most "
                                   "two inputs: the exact linear regions) or per-neuron "
                                   "(the baseline)", choices=METHODS)
    solver: str = option("auto", "MILP solver: auto (Gurobi if its licence admits the model, else SCIP), scip or "
                         "gurobi; feasibility's per-side MILPs use SCIP", choices=SOLVERS)
    threads: int | None = option(None, "solver threads (Gurobi; SCIP runs single-threaded)", min=1)
    split_batch: int = option(128, "input split: pieces bounded together in one batch", min=1)
    split_leaf_binaries: int = option(24, "input split: a piece with at most this many unstable neurons gets a MILP",
                                      min=0)
    split_leaf_seconds: float = option(10.0, "input split: seconds for one piece's MILP", gt=0.0)
    split_min_width: float = option(1 / 64, "input split: a piece narrower than this share of the box in every "
                                    "input gets a MILP", gt=0.0, max=1.0)


@register("milp", conv=True, kind=ANALYSIS, options=MilpOptions, needs=(DOMAIN,), requires=(Stability, DomainBounds),
          uses=(ActivationStats,), provides=(Stability,),
          summary="prove the remaining neurons stable (per-side proofs layer by layer, input splitting, ISA's one MILP, "
                  "or per-neuron MILPs)",
          paper="ISA Algorithm 1, formulation (7)-(12)")
def run(net, ctx, opts: MilpOptions) -> PassResult:
    bounds = ctx.get(DomainBounds)
    stability = Stability.start(net, ctx.get(Stability), ctx.get(ActivationStats))
    ctx.progress.layers(stability.state(net).progress(net))
    known, own = list(stability.findings), net.fingerprint()
    mine = own  # the fingerprint of the network the proofs run on
    if net.has_conv:
        # the solvers take explicit rows; the same units in the same order, so what is known carries over to
        # the view, and what is proven there back
        view = dense_view(net)
        if view is None:
            ctx.warn("the convolutions are too large for the MILP stage's explicit rows; the neurons the bounds "
                     "left undecided are kept")
            return PassResult((stability,), entry={"message": "skipped: convolutions too large for explicit rows"})
        net, mine = view, view.fingerprint()
        known = [restamp(f, own, mine) for f in known]
    setup = ProofSetup(net, ctx.box.lo, ctx.box.hi, list(bounds.lower), list(bounds.upper), list(bounds.eps),
                       solver=opts.solver, threads=opts.threads, split_batch=opts.split_batch,
                       split_leaf_binaries=opts.split_leaf_binaries, split_leaf_seconds=opts.split_leaf_seconds,
                       split_min_width=opts.split_min_width, workers=ctx.workers(), progress=ctx.progress)
    seconds = ctx.deadline.remaining() if ctx.deadline.limited else DEFAULT_SECONDS
    if mine != own:
        # building a MILP over thousands of explicit conv rows takes time the solver's limit does not see
        # (the LeNet fixture's stage ran 20 s past its share): leave it that much
        seconds *= CONV_MILP_SHARE
    found, entry = prove(setup, known, opts.stability_method, max(seconds, 0.01))
    found = restamp(found, mine, own)
    for message in setup.warnings:
        ctx.warn(message)
    return PassResult((stability.extended(found),), entry=entry)


def restamp(found: Findings, old: str, new: str) -> Findings:
    """``found`` (and its parts) with the network fingerprint ``old`` replaced by ``new``."""
    parts = None if found.parts is None else [restamp(p, old, new) for p in found.parts]
    return replace(found, fingerprint=new if found.fingerprint == old else found.fingerprint, parts=parts)
