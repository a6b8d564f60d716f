"""``dependence`` · how well each hidden neuron (or conv output channel, at every position) is predicted linearly
by the others of its layer (LRE); exact ones flagged."""

from __future__ import annotations

from dataclasses import dataclass

from onnxcomp.dependence import DEFAULT_TOL, Dependence, analyse
from onnxcomp.options import option
from onnxcomp.pipeline import ANALYSIS, INPUTS, PassResult, register


@dataclass(frozen=True)
class DependenceOptions:
    dependence_tol: float = option(DEFAULT_TOL, "residual (relative to the layer's RMS) below which a "
                                   "neuron counts as exactly dependent", min=0.0)


@register("dependence", conv=True, kind=ANALYSIS, options=DependenceOptions, needs=(INPUTS,), provides=(Dependence,),
          summary="linear dependence of hidden activations (LRE): residual per neuron, exact flags",
          paper="LRE-AMC §3.2")
def run(net, ctx, opts: DependenceOptions) -> PassResult:
    dep = analyse(net, ctx.calibration(), opts.dependence_tol)
    n_exact = sum(d.n_exact for d in dep.layers)
    n_hidden = sum(len(d.neuron_ids) for d in dep.layers)
    proved = sum(1 for d in dep.layers for p in d.proof if p)
    noun = "units (neurons and channels)" if net.has_conv else "neurons"
    return PassResult((dep,), entry={
        "samples": dep.samples, "sources": dep.sources, "layers": dep.summary(),
        "message": f"{n_exact} of {n_hidden} hidden {noun} exactly linearly dependent on {dep.samples} samples "
                   f"({proved} proved for every input)"})
