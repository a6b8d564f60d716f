"""``quantize`` · Dense(W) -> Dense(codebook[codes]), Conv(K) -> Conv(codebook[codes]) by (Fisher-)weighted k-means per layer, or per-channel int8."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcomp.budget import choose, pick_scores
from onnxcomp.errors import UsageError
from onnxcomp.conv import is_conv
from onnxcomp.options import option
from onnxcomp.params import tensor, tunable
from onnxcomp.pipeline import LOSSY, PassResult, register
from onnxcomp.quantization import LEVELS, METHODS, importance_weights, int8_layer, kmeans_layer
from onnxcomp.scores import BY_NAME as SCORE_TYPES, FisherScores, LookaheadScores, required
from onnxcomp.storage import layer_storage, storage_summary
from onnxcomp.writer import to_model

@dataclass(frozen=True)
class QuantizeOptions:
    bits: int | None = option(None, "bits per weight index, 1..8 (k-means codebook of 2^bits values)",
                              min=1, max=8)
    quant: str = option("kmeans", "kmeans (codebook + packed indices) or int8 (per-channel "
                        "DequantizeLinear)", choices=METHODS)
    score: str | None = option(None, "weight score: magnitude, lap or fisher (drop also: dependence, auto); "
                               "default: the scoring analysis that ran", choices=("magnitude", "lap", "fisher"))


@register("quantize", kind=LOSSY, options=QuantizeOptions, requires=lambda opts: required(opts.score),
          uses=(FisherScores, LookaheadScores), conv=True,
          summary="weight sharing by (Fisher-)weighted k-means per layer, or per-channel int8",
          paper="rate-distortion (Fisher) §5.3, §6.1, App. C.2")
def run(net, ctx, opts: QuantizeOptions) -> PassResult:
    np_dtype = net.onnx.np_dtype if net.onnx is not None else np.float32
    probe = ctx.fidelity_probe() if ctx.budget_active else None
    if opts.quant == "int8":
        if opts.bits is not None and opts.bits != 8:
            raise UsageError(f"--quant int8 stores 8 bits per weight; --bits {opts.bits} needs --quant kmeans")
        choice = choose(lambda _: net.with_layers([int8_layer(l, np_dtype) for l in net.layers]), [8], "bits",
                        default=8, budget=ctx.budget, probe=probe, labels=ctx.labels, seed=ctx.seed)
        objective = "int8 per channel"
    else:
        available = {name: ctx.get(t) for name, t in SCORE_TYPES.items()}
        scores = pick_scores(net, opts.score, available, default_order=("fisher",), warn=ctx.warn)
        importance, quartic, objective = importance_weights(net, scores)

        def build(bits: int):
            return net.with_layers([
                kmeans_layer(l, bits, None if importance is None else importance[k], np_dtype,
                             None if quartic is None else quartic[k])
                for k, l in enumerate(net.layers)])

        choice = choose(build, LEVELS, "bits", explicit=opts.bits, budget=ctx.budget, probe=probe,
                        labels=ctx.labels, seed=ctx.seed)
        kind = "plain" if importance is None else ("quartic weighted" if quartic is not None else "weighted")
        objective = "plain k-means" if importance is None else f"{kind} k-means ({objective})"
    for message in choice.warnings:
        ctx.warn(message)
    new = choice.network
    emitted = to_model(new)
    data_bytes = storage_summary(emitted)
    layers, stored, weights = [], 0, 0
    for k, (old, layer) in enumerate(zip(net.layers, new.layers)):
        if not tunable(layer):
            continue
        enc = layer_storage(layer, np_dtype)
        w_new, w_old = tensor(layer), tensor(old)
        stored += data_bytes.get(k, 0)
        weights += w_new.size
        layers.append({"layer": old.layer_id, "kind": "conv" if is_conv(layer) else "dense", "weights": int(w_new.size),
                       "distinct_values": int(np.unique(w_new).size),
                       "format": f"{enc.positions}/{enc.values}", "stored_bytes": data_bytes.get(k, 0),
                       "max_abs_change": float(np.abs(w_new - w_old).max(initial=0.0))})
    bpw = 8 * stored / max(weights, 1)
    file_bytes = len(emitted.SerializeToString())
    entry = dict(choice.entry, method=opts.quant, objective=objective, layers=layers,
                 bits_per_weight=round(bpw, 4), weight_bytes=stored, file_bytes=file_bytes)
    entry["message"] = (f"{objective}, {choice.level} bits: weight data {stored:,} bytes "
                        f"({bpw:.2f} bits/weight incl. codebooks and masks), file {file_bytes:,} bytes")
    return PassResult(network=new, entry=entry)
