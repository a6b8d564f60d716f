"""``prune`` · Dense(W) -> Dense(M ⊙ W), Conv(K) -> Conv(M ⊙ K): the weights with the lowest magnitude, LAP or Fisher scores zeroed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcomp.budget import choose, pick_scores
from onnxcomp.errors import UsageError
from onnxcomp.conv import is_conv
from onnxcomp.options import option
from onnxcomp.params import tensor, tunable
from onnxcomp.pipeline import LOSSY, PassResult, register
from onnxcomp.pruning import GRANULARITIES, LEVELS, prune_network, sequential_or_ranked_masks
from onnxcomp.scores import BY_NAME as SCORE_TYPES, FisherScores, LookaheadScores, magnitude_scores, required

@dataclass(frozen=True)
class PruneOptions:
    sparsity: float | None = option(None, "fraction of weights to zero, 0 <= s < 1 (or searched under a "
                                    "budget)", min=0.0, lt=1.0)
    granularity: str = option("layer", "the sparsity per layer or global (one threshold)", choices=GRANULARITIES)
    score: str | None = option(None, "weight score: magnitude, lap or fisher (drop also: dependence, auto); "
                               "default: the scoring analysis that ran", choices=("magnitude", "lap", "fisher"))


@register("prune", kind=LOSSY, options=PruneOptions, requires=lambda opts: required(opts.score),
          uses=(LookaheadScores, FisherScores), conv=True,
          summary="unstructured pruning to a target sparsity by magnitude, lookahead or Fisher score",
          paper="LAP Eq. 1, 5, Alg. 1; rate-distortion (Fisher) §5.3")
def run(net, ctx, opts: PruneOptions) -> PassResult:
    available = {name: ctx.get(t) for name, t in SCORE_TYPES.items()}
    scores = pick_scores(net, opts.score, available, warn=ctx.warn) or magnitude_scores(net)
    order = getattr(scores, "order", None)
    if order is not None and opts.granularity == "global":
        raise UsageError(f"LAP-{order} prunes layer by layer; it has no --granularity global")

    def build(sparsity: float):
        if sparsity == 0:
            return net
        return prune_network(net, sequential_or_ranked_masks(net, scores, sparsity, opts.granularity, order))

    choice = choose(build, LEVELS, "sparsity", explicit=opts.sparsity, budget=ctx.budget,
                    probe=ctx.fidelity_probe() if ctx.budget_active else None, labels=ctx.labels, seed=ctx.seed)
    for message in choice.warnings:
        ctx.warn(message)
    new = choice.network
    method = f"lap-{order}" if order is not None else scores.method
    layers = []
    for old, layer in zip(net.layers, new.layers):
        if not tunable(old):
            continue
        before, after = tensor(old), tensor(layer)
        nz_before, nz_after = int(np.count_nonzero(before)), int(np.count_nonzero(after))
        layers.append({"layer": old.layer_id, "kind": "conv" if is_conv(old) else "dense", "weights": int(before.size),
                       "nonzero_before": nz_before, "nonzero_after": nz_after,
                       "sparsity": round(1 - nz_after / before.size, 6)})
    total = sum(l["weights"] for l in layers)
    kept = sum(l["nonzero_after"] for l in layers)
    entry = dict(choice.entry, score=method, granularity=opts.granularity, layers=layers,
                 surviving_fraction=round(kept / total, 6), changed=new is not net)
    if new is net:
        entry["message"] = "sparsity 0: nothing pruned"
    else:
        entry["message"] = (f"{method} pruning ({opts.granularity}) to sparsity {choice.level}: {total - kept:,} of "
                            f"{total:,} weights zero, {kept:,} survive ({100 * kept / total:.1f}%)")
    return PassResult(network=new, entry=entry)
