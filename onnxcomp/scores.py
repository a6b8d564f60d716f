"""Weight-importance annotations shared by the scoring analyses (``lookahead``, ``fisher``) and the lossy
transforms that rank weights or neurons by them (``prune``, ``drop``, ``quantize``).

Each analysis provides its own type (``LookaheadScores``, ``FisherScores``), so a transform asks for the
one it wants by type.  Scores describe the network they were computed on; :meth:`WeightScores.describes`
also accepts that network with some weights zeroed (``-p fisher,prune,quantize``: the quantizer still
weights the survivors by the Fisher scores computed before pruning).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ir import Network
from .params import Neighbours, n_units, tensor, tunable


@dataclass
class WeightScores:
    """Importance of every weight and every neuron (higher = more important to keep).

    ``weights[k]`` has the shape of layer k's stored weights (``params.tensor``: a dense weight matrix or a
    convolution kernel); ``neurons[k]`` has one entry per unit of layer k (a neuron, or a convolution's
    output channel; used by structured pruning; the last layer's entries are never dropped).  Both are
    ``None`` for the fixed layers (pooling, MaxPool parts, per-channel scaling), which no pass changes.
    ``method`` names the score (``magnitude``, ``lap-forward``, ``fisher-unsupervised``, ...);
    ``network`` is the network the scores were computed on.
    """

    method: str
    weights: list
    neurons: list | None = None
    network: Network | None = None

    @property
    def fingerprint(self) -> str:
        return self.network.fingerprint() if self.network is not None else ""

    def matches(self, net: Network) -> bool:
        return self.network is not None and self.fingerprint == net.fingerprint() and len(self.weights) == len(net.layers)

    def describes(self, net: Network) -> bool:
        """The scores apply to ``net``: it is their network, or that network with more weights zeroed."""
        return self.matches(net) or (self.network is not None and pruned_from(net, self.network))


@dataclass
class LookaheadScores(WeightScores):
    """LAP scores (``lookahead`` pass).  ``order`` is the sequential LAP order the user chose
    (``forward``, ``backward``, ``forward-seq``, ``backward-seq``) or ``None``; ``prune`` re-scores layer by
    layer in that order, since sequential LAP depends on the sparsity."""

    order: str | None = None


@dataclass
class FisherScores(WeightScores):
    """Fisher saliencies (``weights``, ``neurons``) plus the per-weight ``importance`` I and ``quartic`` H
    (``fisher`` pass)."""

    importance: list | None = None
    quartic: list | None = None
    objective: str = ""
    samples: int = 0
    temperature: float = 1.0


def pruned_from(net: Network, parent: Network) -> bool:
    """``net`` is ``parent`` with some weights set to zero (same layers, neurons and biases)."""
    if len(net.layers) != len(parent.layers):
        return False
    for a, b in zip(net.layers, parent.layers):
        ta, tb = tensor(a), tensor(b)
        if (type(a) is not type(b) or ta.shape != tb.shape or a.neuron_ids != b.neuron_ids
                or a.activation != b.activation or not np.array_equal(a.bias, b.bias)):
            return False
        if not np.all((ta == tb) | (ta == 0)):
            return False
    return True


def magnitude_scores(net: Network) -> WeightScores:
    """The baseline: |w| per weight; per unit (neuron or output channel) the L2 norm of its incoming
    weights times that of the weights reading it (at every position, for a channel)."""
    tensors = [tensor(layer) for layer in net.layers]
    neighbours = Neighbours(net)
    weights, neurons = [], []
    for k, layer in enumerate(net.layers):
        if not tunable(layer):
            weights.append(None)
            neurons.append(None)
            continue
        weights.append(np.abs(tensors[k]))
        outgoing = neighbours.outgoing_norms(tensors, k)
        neurons.append(neighbours.incoming_norms(tensors, k) * (np.ones(n_units(layer)) if outgoing is None else outgoing))
    return WeightScores("magnitude", weights, neurons, net)


BY_NAME = {"lap": LookaheadScores, "fisher": FisherScores}
"""``--score`` value -> the annotation that holds those scores."""


def required(score: str | None) -> tuple:
    """The annotation a lossy pass needs for ``--score score`` (none for ``magnitude`` or no choice)."""
    return (BY_NAME[score],) if score in BY_NAME else ()
