"""``fisher`` · Fisher weight importance E[(∂f/∂w)²/f] (gradient / gradient+Hessian with labels)."""

from __future__ import annotations

from dataclasses import dataclass

from onnxcomp.fisher import OBJECTIVES, analyse
from onnxcomp.options import option
from onnxcomp.pipeline import ANALYSIS, DATA, PassResult, register
from onnxcomp.scores import FisherScores


@dataclass(frozen=True)
class FisherOptions:
    fisher_objective: str = option("auto", "auto (gradient+hessian with labels, else unsupervised), "
                                   "unsupervised, gradient or gradient+hessian", choices=OBJECTIVES)
    fisher_temperature: float = option(1.0, "softmax temperature T of f = softmax(z / T)", gt=0.0)


@register("fisher", kind=ANALYSIS, options=FisherOptions, needs=(DATA,), provides=(FisherScores,), conv=True,
          summary="Fisher weight importance E[(∂f/∂w)²/f] (gradient / gradient+Hessian with labels)",
          paper="Rate distortion for model compression (Gao et al., ICML 2019) Eq. 6, §6.2")
def run(net, ctx, opts: FisherOptions) -> PassResult:
    scores = analyse(net, ctx.calibration(), ctx.labels, opts.fisher_objective, opts.fisher_temperature)
    n_weights = sum(w.size for w in scores.weights if w is not None)
    return PassResult((scores,), entry={
        "method": scores.method, "objective": scores.objective, "samples": scores.samples,
        "temperature": scores.temperature,
        "message": f"{scores.method} importance of {n_weights} weights on {scores.samples} rows"})
