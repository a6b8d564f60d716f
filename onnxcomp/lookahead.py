"""Lookahead pruning (LAP) scores: the ``lookahead`` analysis's machinery.

The lookahead distortion of a weight ``w = W_i[k, j]`` (input neuron ``j``, output neuron ``k`` of layer
``i``; our weights are stored ``[out, in]``) is the Frobenius distortion of the three-layer operator block
``W_{i+1} W_i W_{i-1}`` when ``w`` alone is zeroed (LAP paper, Eq. 4).  Zeroing ``w`` changes the block by
the rank-one matrix ``w · W_{i+1}[:, k] · W_{i-1}[j, :]``, so Eq. 4 has the closed form of Eq. 5::

    lookahead_score(w) = |w| · ‖W_{i-1}[j, :]‖ · ‖W_{i+1}[:, k]‖

``‖W_{i-1}[j, :]‖`` is the norm of the incoming weights of neuron ``j`` (the previous layer's row ``j``),
``‖W_{i+1}[:, k]‖`` the norm of the outgoing weights of neuron ``k``.  The first layer has no previous
layer and the last no next one: that factor is 1 ("ones", as in the paper, up to a constant that does not
change any ranking within the layer).

Convolutions (LAP paper §2.1, Eq. 5 for convolutional layers, Eq. 9 with BatchNormalization): for a
kernel weight ``K_i[k, j, y, x]`` the two factors are the norm of the previous layer's output-channel
kernel ``K_{i-1}[j]`` and the norm of everything that reads output channel ``k`` (the next convolution's
input-channel slices ``K_{i+1}[:, k]``, or a dense head's columns at every position of channel ``k``),
found by ``params.Neighbours`` through the pooling and MaxPool layers between.  A BatchNormalization
folded into its convolution is already in the kernel, so Eq. 5 on the folded kernels is Eq. 9; one kept
as a per-channel scaling multiplies its ``|a|`` into both factors.  Pooling and MaxPool layers have no
scores (``None``): they are never pruned.

Variants (option ``lap_variant``, paper §2.3 "mono-directional LAPs"):

* ``full``     -- both neighbours (vanilla LAP);                      method ``lap-full``
* ``forward``  -- look forward only: the next layer's factor (LFP);  method ``lap-forward``
* ``backward`` -- look backward only: the previous layer's factor (LBP); method ``lap-backward``

Sequential LAP (paper §2.3 "order of pruning" and "sequential pruning": LAP-forward, LAP-backward and their
``-seq`` versions) re-scores each layer with its already-pruned neighbours, so it depends on the target
sparsity and cannot be a sparsity-free score.  The prune transform calls::

    sequential_masks(net, sparsity, variant="forward", steps=1) -> list[np.ndarray of bool]

``sparsity`` is the fraction of weights to prune (one float for every layer, or one per tunable layer);
``variant`` is the order in which layers are pruned: ``"forward"`` (first layer to last, each scored with
the already-pruned previous layer) or ``"backward"`` (last to first, with the already-pruned next layer);
``steps`` > 1 splits the budget into that many equal rounds (the paper's ``-seq`` uses 5), and
``"forward-seq"`` / ``"backward-seq"`` are accepted as shorthand for ``steps=5``.  The masks are ``True``
where a weight is kept, one per layer with the layer's weight shape.

Neuron-level aggregate (``WeightScores.neurons``, for structured pruning): the root-sum-square of the
lookahead scores of the neuron's incoming weights,
``neurons[i][k] = ‖W_{i+1}[:, k]‖ · ‖W_i[k, :] ⊙ (‖W_{i-1}[j, :]‖)_j‖``.  Why this one: it is the
Frobenius norm of row ``k`` of the layer's distortion matrix (the same Frobenius measure Eq. 1 and Eq. 4 use), it
reduces exactly to the magnitude baseline's neuron score (incoming norm × outgoing norm, see
``scores.magnitude_scores``) when the lookahead factors are switched off, so structured magnitude and LAP
differ only by the lookahead; and it does not rely on cancellations inside the linear product
``W_i[k, :] W_{i-1}`` that the ReLU between the layers breaks (the exact linear block distortion of
removing a neuron would).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import UsageError
from .ir import Network
from .params import Neighbours, by_unit, tensor, tunable
from .scores import LookaheadScores

VARIANTS = ("full", "forward", "backward")
ORDERS = ("forward", "backward")
SEQ_STEPS = 5
"""Rounds of the paper's ``-seq`` variants (LAP paper §2.3: the budget is split into five steps)."""


def layer_lookahead(neighbours: Neighbours, tensors: Sequence, i: int, look_back: bool = True,
                    look_ahead: bool = True) -> np.ndarray:
    """Lookahead distortion (Eq. 5) of every weight of tunable layer ``i`` given the (possibly pruned)
    ``tensors`` of every layer (``params.tensor``; entries of fixed layers are not read)."""
    w = np.asarray(tensors[i], dtype=np.float64)
    back = neighbours.back_factor(tensors, i) if look_back else 1.0
    ahead = neighbours.ahead_factor(tensors, i) if look_ahead else 1.0
    return np.abs(w) * ahead * back


def lookahead_scores(net: Network, variant: str = "full") -> LookaheadScores:
    """LAP scores of every weight and the unit aggregate (see the module docstring); ``None`` for the
    fixed layers (pooling, MaxPool parts, scaling)."""
    if variant not in VARIANTS:
        raise UsageError(f"lap_variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    tensors = [tensor(layer) for layer in net.layers]
    neighbours = Neighbours(net)
    look_back = variant in ("full", "backward")
    look_ahead = variant in ("full", "forward")
    scores = [layer_lookahead(neighbours, tensors, i, look_back, look_ahead) if tunable(layer) else None
              for i, layer in enumerate(net.layers)]
    units = [None if s is None else np.sqrt(np.sum(by_unit(s) ** 2, axis=1)) for s in scores]
    return LookaheadScores(f"lap-{variant}", scores, units, net)


def _keep_mask(score: np.ndarray, already_pruned: np.ndarray, n_prune: int) -> np.ndarray:
    """Keep all but the ``n_prune`` lowest scores; weights pruned earlier go first, so masks only shrink."""
    order_key = np.where(already_pruned, -np.inf, score).ravel()
    keep = np.ones(score.size, dtype=bool)
    if n_prune > 0:
        # stable sort: among equal scores, the earlier index is pruned first (deterministic masks)
        keep[np.argsort(order_key, kind="stable")[:n_prune]] = False
    return keep.reshape(score.shape)


def _per_layer(sparsity, n_layers: int) -> list[float]:
    values = [float(sparsity)] * n_layers if np.isscalar(sparsity) else [float(s) for s in sparsity]
    if len(values) != n_layers:
        raise UsageError(f"sparsity: {len(values)} values given for {n_layers} layers")
    for s in values:
        if not 0.0 <= s < 1.0:
            raise UsageError(f"sparsity {s}: expected a fraction of weights to prune, 0 <= sparsity < 1")
    return values


def sequential_masks(net: Network, sparsity, variant: str = "forward", steps: int = 1) -> list[np.ndarray]:
    """Keep-masks of LAP-forward / LAP-backward (``steps=1``) and their ``-seq`` versions (``steps=5``).

    Layers are pruned one after the other in the order ``variant`` names; each is scored with Eq. 5 on
    the neighbours as they are at that moment (the already-pruned side pruned, the other side intact).
    With ``steps > 1`` every round prunes another ``sparsity/steps`` of each layer, so later rounds see
    the pruning of all layers from the earlier rounds.  ``round(sparsity * size)`` weights are pruned per
    layer in the end.
    """
    if variant.endswith("-seq"):
        variant, steps = variant[: -len("-seq")], SEQ_STEPS
    if variant not in ORDERS:
        raise UsageError(f"sequential LAP variant {variant!r}: expected forward, backward, forward-seq or backward-seq")
    if int(steps) < 1:
        raise UsageError(f"sequential LAP steps {steps}: expected at least 1")
    steps = int(steps)
    learned = [i for i, layer in enumerate(net.layers) if tunable(layer)]
    fractions = dict(zip(learned, _per_layer(sparsity, len(learned))))
    weights = [np.array(tensor(layer), dtype=np.float64) for layer in net.layers]
    pruned = [np.zeros(w.shape, dtype=bool) for w in weights]
    neighbours = Neighbours(net)
    order = learned if variant == "forward" else learned[::-1]
    for step in range(1, steps + 1):
        for i in order:
            target = int(round(fractions[i] * weights[i].size * step / steps))
            score = layer_lookahead(neighbours, weights, i)
            keep = _keep_mask(score, pruned[i], target)
            pruned[i] = ~keep
            weights[i] = np.where(keep, tensor(net.layers[i]), 0.0)
    return [~p for p in pruned]
