"""``lookahead`` · LAP score |w|·‖W_prev[j,:]‖·‖W_next[:,k]‖ of every weight (the network is untouched)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from onnxcomp.lookahead import lookahead_scores
from onnxcomp.options import option
from onnxcomp.pipeline import ANALYSIS, PassResult, register
from onnxcomp.scores import LookaheadScores

VARIANTS = {"full": ("full", None), "lap": ("full", None), "forward": ("forward", None), "lfp": ("forward", None),
            "backward": ("backward", None), "lbp": ("backward", None), "lap-forward": ("full", "forward"),
            "lap-backward": ("full", "backward"), "lap-forward-seq": ("full", "forward-seq"),
            "lap-backward-seq": ("full", "backward-seq")}
"""``--lap-variant`` -> (score variant, sequential pruning order for ``prune``)."""


@dataclass(frozen=True)
class LookaheadOptions:
    lap_variant: str = option("full", "LAP variant: full, forward (LFP), backward (LBP), lap-forward, lap-backward, "
                              "lap-forward-seq, lap-backward-seq", choices=tuple(VARIANTS))


@register("lookahead", kind=ANALYSIS, options=LookaheadOptions, provides=(LookaheadScores,), conv=True,
          summary="lookahead pruning (LAP) scores |w|·‖W_prev[j,:]‖·‖W_next[:,k]‖ per weight",
          paper="LAP (Park et al., ICLR 2020) Eq. 5, §2.3")
def run(net, ctx, opts: LookaheadOptions) -> PassResult:
    variant, order = VARIANTS[opts.lap_variant]
    scores = replace(lookahead_scores(net, variant), order=order)
    layers = [{"layer": layer.layer_id, "weights": int(s.size), "zero_score": int(np.sum(s == 0.0)),
               "median_score": float(np.median(s))} for layer, s in zip(net.layers, scores.weights) if s is not None]
    n_weights = sum(l["weights"] for l in layers)
    return PassResult((scores,), entry={"method": scores.method, "layers": layers,
                                        "message": f"{scores.method} scores for {n_weights} weights in "
                                                   f"{len(layers)} layers"})
