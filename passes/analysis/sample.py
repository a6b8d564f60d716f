"""``sample`` · data rows, domain samples and box corners run through onnxruntime: per-neuron statistics."""

from __future__ import annotations

from dataclasses import dataclass

from onnxcomp.options import option
from onnxcomp.pipeline import ANALYSIS, INPUTS, PassResult, register
from onnxcomp.sampling import ActivationStats, collect


@dataclass(frozen=True)
class SampleOptions:
    covariance: bool = option(False, "also accumulate the post-activation second moments E[x xᵀ] of every layer")


@register("sample", conv=True, kind=ANALYSIS, options=SampleOptions, needs=(INPUTS,), provides=(ActivationStats,),
          summary="activation statistics on data, domain samples and corners (onnxruntime)",
          paper="ISA §5.3 (preprocessing)")
def run(net, ctx, opts: SampleOptions) -> PassResult:
    stats = collect(net, ctx.box, ctx.data, samples=ctx.samples, corners=ctx.corners, seed=ctx.seed,
                    device=ctx.device, covariance=opts.covariance, progress=ctx.progress, deadline=ctx.deadline)
    return PassResult((stats,), entry=stats.summary())
