"""``bounds`` · sound pre-activation bounds over the domain box, and the stability they prove."""

from __future__ import annotations

from dataclasses import dataclass

from onnxcomp.options import option
from onnxcomp.pipeline import ANALYSIS, DOMAIN, PassResult, register
from onnxcomp.sampling import ActivationStats
from onnxcomp.stability import DomainBounds, Stability
from onnxcomp.stability.by_bounds import METHODS, certify, domain_bounds


@dataclass(frozen=True)
class BoundsOptions:
    bounds_method: str = option("crown", "bound propagation: crown (back-substitution, intersected with intervals) "
                                "or interval", choices=METHODS)


@register("bounds", conv=True, kind=ANALYSIS, options=BoundsOptions, needs=(DOMAIN,), uses=(ActivationStats, Stability),
          provides=(DomainBounds, Stability),
          summary="sound pre-activation bounds (interval + CROWN back-substitution) and the stability they prove",
          paper="ISA §4 (big-M); CROWN/DeepPoly")
def run(net, ctx, opts: BoundsOptions) -> PassResult:
    bounds = domain_bounds(net, ctx.box, opts.bounds_method)
    found, facts = certify(net, bounds)
    stability = Stability.start(net, ctx.get(Stability), ctx.get(ActivationStats)).extended(found)
    ctx.progress.layers(stability.state(net).progress(net))
    return PassResult((bounds, stability), entry=facts)
