"""Unstructured pruning (the ``prune`` pass's machinery): Dense(W) -> Dense(M ⊙ W), Conv(K) -> Conv(M ⊙ K),
lowest scores zeroed.

The score ranks weights by how much zeroing each one distorts the network: magnitude |w| (the baseline,
LAP paper Eq. 1), the lookahead distortion |w|·‖W_prev[j,:]‖·‖W_next[:,k]‖ (LAP Eq. 5, from the
``lookahead`` analysis), or the Fisher objective E[(∂f/∂w)²/f]·w² (rate-distortion paper §5.3/§6.1,
from the ``fisher`` analysis).  ``--score`` picks one; by default whichever scoring analysis ran
(lookahead first), else magnitude.

Convolution kernels are pruned like weight matrices (each kernel weight once, however many positions it
is applied at); pooling and MaxPool layers are fixed arithmetic and are not pruned or counted.
``--sparsity s`` zeroes ``round(s·n)`` weights of every layer (``--granularity layer``, the paper's
setting) or ``round(s·N)`` of all N weights at once with one threshold (``--granularity global``).
Weights already zero are pruned first, so the sparsity reached is never below the one asked for.
Ordered LAP variants (LAP-forward/-backward and their -seq versions, paper §2.3) re-score each layer
after its neighbour was pruned, so their masks depend on the sparsity and come from
``lookahead.sequential_masks``.  Biases are kept.  With a budget instead of ``--sparsity`` the
strongest sparsity meeting it is searched (see ``budget.py``).

The writer stores the pruned matrices in the smallest sparse format (``onnxcomp.storage``), so the
file shrinks with the number of weights removed.
"""

from __future__ import annotations

import numpy as np

from .ir import Network
from .params import tensor, tunable, with_tensor
from .budget import strength_levels

GRANULARITIES = ("layer", "global")
LAP_ORDERS = ("forward", "backward", "forward-seq", "backward-seq")
LEVELS = strength_levels(0.0, 0.99, 0.01)
"""Sparsities a budget search chooses from, weakest first."""


def keep_masks(scores: list, sparsity: float, granularity: str = "layer") -> list:
    """Keep-masks (True = kept) pruning the lowest ``scores``; zero-score ties broken by position.

    ``scores[k]`` must already rank the layer's zero weights lowest (callers pass ``-inf`` there); a
    ``None`` entry (a fixed layer: pooling) gets a ``None`` mask and does not count toward the sparsity.
    """
    if granularity == "layer":
        masks = []
        for s in scores:
            if s is None:
                masks.append(None)
                continue
            n_prune = int(round(sparsity * s.size))
            keep = np.ones(s.size, dtype=bool)
            keep[np.argsort(s.ravel(), kind="stable")[:n_prune]] = False
            masks.append(keep.reshape(s.shape))
        return masks
    flat = np.concatenate([s.ravel() for s in scores if s is not None])
    n_prune = int(round(sparsity * flat.size))
    keep = np.ones(flat.size, dtype=bool)
    keep[np.argsort(flat, kind="stable")[:n_prune]] = False
    out, start = [], 0
    for s in scores:
        if s is None:
            out.append(None)
            continue
        out.append(keep[start : start + s.size].reshape(s.shape))
        start += s.size
    return out


def prune_network(net: Network, masks: list) -> Network:
    """``net`` with ``weights * mask`` in every tunable layer (quantization dropped: the values changed);
    layers whose mask is ``None`` (or that are fixed, e.g. pooling) are kept as they are."""
    layers = [layer if m is None or not tunable(layer) else with_tensor(layer, np.where(m, tensor(layer), 0.0))
              for layer, m in zip(net.layers, masks)]
    return net.with_layers(layers)


def sequential_or_ranked_masks(net: Network, scores, sparsity: float, granularity: str, order: str | None) -> list:
    """Keep-masks for ``sparsity``: sequential LAP in ``order`` (re-scored layer by layer), or the lowest
    ``scores`` pruned (already-zero weights first)."""
    if order is not None:
        from .lookahead import sequential_masks

        masks = sequential_masks(net, sparsity, variant=order)
        return [m & (tensor(layer) != 0) if tunable(layer) else None for m, layer in zip(masks, net.layers)]
    ranked = [None if s is None else np.where(tensor(layer) == 0, -np.inf, s)
              for layer, s in zip(net.layers, scores.weights)]
    return keep_masks(ranked, sparsity, granularity)
