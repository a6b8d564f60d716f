"""``permute`` · Dense_k rows and Dense_{k+1} columns permuted by the same P -> the same function.

The example of a pass added from outside onnxcomp: this one module, one declaration, nothing edited
elsewhere.  Loaded with ``ONNXCOMP_PASSES=example_permute`` (this folder on the Python path), it appears
as ``-p permute`` with a ``--permute-seed`` flag, as ``permute_seed`` in a config file and as
``onnxcomp.compress(..., permute_seed=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from onnxcomp.options import option
from onnxcomp.pipeline import EXACT, PassResult, register


@dataclass(frozen=True)
class PermuteOptions:
    permute_seed: int = option(0, "seed of the permutation of every hidden layer's neurons", min=0)


@register("permute", kind=EXACT, options=PermuteOptions, summary="permute every hidden layer's neurons (exact)")
def run(net, ctx, opts: PermuteOptions) -> PassResult:
    rng = np.random.default_rng(opts.permute_seed)
    layers = list(net.layers)
    for k in range(len(layers) - 1):
        p = rng.permutation(layers[k].n_out)
        layers[k] = replace(layers[k], weight=layers[k].weight[p], bias=layers[k].bias[p],
                            neuron_ids=tuple(layers[k].neuron_ids[i] for i in p))
        layers[k + 1] = replace(layers[k + 1], weight=layers[k + 1].weight[:, p])
    return PassResult(network=net.with_layers(layers), entry={"message": f"permuted with seed {opts.permute_seed}"})
