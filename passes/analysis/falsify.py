"""``falsify`` · witnesses for the undecided neurons: samples, box vertices, projected gradient steps."""

from __future__ import annotations

from dataclasses import dataclass

from onnxcomp.options import option
from onnxcomp.pipeline import ANALYSIS, DOMAIN, PassResult, register
from onnxcomp.sampling import ActivationStats
from onnxcomp.stability import DomainBounds, Stability
from onnxcomp.stability.falsify import search


@dataclass(frozen=True)
class FalsifyOptions:
    falsify_samples: int = option(20000, "uniform domain samples the witness search draws", min=0)
    pgd_steps: int = option(40, "projected gradient steps per start of the witness search", min=0)
    falsify_share: float = option(0.25, "at most this share of the time left goes to the witness search",
                                  gt=0.0, max=1.0)


@register("falsify", conv=True, kind=ANALYSIS, options=FalsifyOptions, needs=(DOMAIN,), requires=(Stability, DomainBounds),
          uses=(ActivationStats,), provides=(Stability,),
          summary="witness search for undecided neurons: samples, box vertices, projected gradient steps",
          paper="ISA §5 (disproving stability is easy)")
def run(net, ctx, opts: FalsifyOptions) -> PassResult:
    stability = Stability.start(net, ctx.get(Stability), ctx.get(ActivationStats))
    state = stability.state(net)
    ctx.progress.layers(state.progress(net))
    regions_next = _regions_follow(net, ctx)
    found, facts = search(net, ctx.box, state, list(ctx.get(DomainBounds).eps), ctx.rng(1),
                          samples=opts.falsify_samples, corners=ctx.corners, pgd_steps=opts.pgd_steps,
                          gradient=not regions_next,
                          deadline=ctx.deadline.share(opts.falsify_share))
    if regions_next:
        facts["gradient_search"] = "skipped: the milp pass's regions search witnesses every state it does not prove"
        facts["message"] += " (no gradient search: the regions search follows)"
    return PassResult((stability.extended(found),), entry=facts)


def _regions_follow(net, ctx) -> bool:
    """Whether a later ``milp`` pass runs the exact regions search on this network (at most two inputs,
    ``--stability-method`` auto or regions): it confirms a witness at every vertex where a side is reached,
    so projected gradient steps would only find what it finds anyway (on TLL N=16 they were 3/4 of the
    run's time, with nothing found)."""
    from onnxcomp.pipeline import REGISTRY
    from onnxcomp.stability.regions import supports

    if "milp" not in ctx.planned or not supports(net):
        return False
    return ctx.options.for_pass(REGISTRY["milp"]).stability_method in ("auto", "regions")
