"""``prune``: unstructured pruning · Dense(W) -> Dense(M ⊙ W), the weights with the lowest scores zeroed.

The score ranks weights by how much zeroing each one distorts the network: magnitude |w| (the baseline,
LAP paper Eq. 1), the lookahead distortion |w|·‖W_prev[j,:]‖·‖W_next[:,k]‖ (LAP Eq. 5, from the
``lookahead`` analysis), or the Fisher objective E[(∂f/∂w)²/f]·w² (rate-distortion paper §5.3/§6.1,
from the ``fisher`` analysis).  ``--score`` picks one; by default whichever scoring analysis ran
(lookahead first), else magnitude.

``--sparsity s`` zeroes ``round(s·n)`` weights of every layer (``--granularity layer``, the paper's
setting) or ``round(s·N)`` of all N weights at once with one threshold (``--granularity global``).
Weights already zero are pruned first, so the sparsity reached is never below the one asked for.
Ordered LAP variants (LAP-forward/-backward and their -seq versions, paper §2.3) re-score each layer
after its neighbour was pruned, so their masks depend on the sparsity and come from
``lookahead.sequential_masks``.  Biases are kept.  With a budget instead of ``--sparsity`` the
strongest sparsity meeting it is searched (see ``lossy.py``).

The writer stores the pruned matrices in the smallest sparse format (``onnxcomp.storage``), so the
file shrinks with the number of weights removed.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from onnxcomp.errors import UsageError
from onnxcomp.ir import Network
from onnxcomp.pipeline import TRANSFORM, Context, register

from .lossy import apply_with_budget, record_pruning, strength_levels, weight_scores

GRANULARITIES = ("layer", "global")
LAP_ORDERS = ("forward", "backward", "forward-seq", "backward-seq")
LEVELS = strength_levels(0.0, 0.99, 0.01)
"""Sparsities a budget search chooses from, weakest first."""


def keep_masks(scores: list, sparsity: float, granularity: str = "layer") -> list[np.ndarray]:
    """Keep-masks (True = kept) pruning the lowest ``scores``; zero-score ties broken by position.

    ``scores[k]`` must already rank the layer's zero weights lowest (callers pass ``-inf`` there).
    """
    if granularity == "layer":
        masks = []
        for s in scores:
            n_prune = int(round(sparsity * s.size))
            keep = np.ones(s.size, dtype=bool)
            keep[np.argsort(s.ravel(), kind="stable")[:n_prune]] = False
            masks.append(keep.reshape(s.shape))
        return masks
    flat = np.concatenate([s.ravel() for s in scores])
    n_prune = int(round(sparsity * flat.size))
    keep = np.ones(flat.size, dtype=bool)
    keep[np.argsort(flat, kind="stable")[:n_prune]] = False
    out, start = [], 0
    for s in scores:
        out.append(keep[start : start + s.size].reshape(s.shape))
        start += s.size
    return out


def prune_network(net: Network, masks: list[np.ndarray]) -> Network:
    """``net`` with ``weight * mask`` in every layer (quantization dropped: the values changed)."""
    layers = [replace(layer, weight=np.where(m, layer.weight, 0.0), quant=None) for layer, m in zip(net.layers, masks)]
    return net.with_layers(layers)


def _check_sparsity(value) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--sparsity {value!r}: expected a number") from None
    if not 0.0 <= s < 1.0:
        raise UsageError(f"--sparsity {s:g}: expected the fraction of weights to prune, 0 <= sparsity < 1")
    return s


@register("prune", TRANSFORM, "unstructured pruning to a target sparsity by magnitude, lookahead or Fisher score",
          paper="LAP Eq. 1, 5, Alg. 1; rate-distortion (Fisher) §5.3", exact=False)
def run(net: Network, ctx: Context) -> Network:
    granularity = str(ctx.opt("granularity", "layer"))
    if granularity not in GRANULARITIES:
        raise UsageError(f"--granularity {granularity!r}: expected layer or global")
    scores = weight_scores(net, ctx)
    if scores is None:
        from passes.analysis.scores import magnitude_scores

        scores = magnitude_scores(net)
    order = ctx.opt("lap_order")
    sequential = order is not None and scores.method.startswith("lap")
    if order is not None and order not in LAP_ORDERS:
        raise UsageError(f"LAP order {order!r}: expected one of {', '.join(LAP_ORDERS)}")
    if sequential and granularity == "global":
        raise UsageError(f"LAP-{order} prunes layer by layer; it has no --granularity global")
    ranked = [np.where(layer.weight == 0, -np.inf, s) for layer, s in zip(net.layers, scores.weights)]

    def build(sparsity: float) -> Network:
        if sparsity == 0:
            return net
        if sequential:
            from passes.analysis.lookahead import sequential_masks

            masks = sequential_masks(net, sparsity, variant=order)
            masks = [m & (layer.weight != 0) for m, layer in zip(masks, net.layers)]
        else:
            masks = keep_masks(ranked, sparsity, granularity)
        return prune_network(net, masks)

    new = apply_with_budget(net, ctx, build, LEVELS, "sparsity", parse=_check_sparsity)
    record_pruning(ctx, net, new)
    method = f"lap-{order}" if sequential else scores.method
    layers = []
    for old, layer in zip(net.layers, new.layers):
        nz_before, nz_after = int(np.count_nonzero(old.weight)), int(np.count_nonzero(layer.weight))
        layers.append({"layer": old.layer_id, "weights": int(old.weight.size), "nonzero_before": nz_before,
                       "nonzero_after": nz_after, "sparsity": round(1 - nz_after / old.weight.size, 6)})
    total = sum(l["weights"] for l in layers)
    kept = sum(l["nonzero_after"] for l in layers)
    ctx.entry.update({"score": method, "granularity": granularity, "layers": layers,
                      "surviving_fraction": round(kept / total, 6)})
    changed = new is not net
    ctx.entry["changed"] = changed
    if not changed:
        ctx.entry["message"] = "sparsity 0: nothing pruned"
    else:
        ctx.entry["message"] = (f"{method} pruning ({granularity}) to sparsity {ctx.entry['sparsity']}: "
                                f"{total - kept:,} of {total:,} weights zero, {kept:,} survive ({100 * kept / total:.1f}%)")
    return new
