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


@dataclass
class WeightScores:
    """Importance of every weight and every neuron (higher = more important to keep).

    ``weights[k]`` has the shape of ``net.layers[k].weight``; ``neurons[k]`` has one entry per output
    neuron of layer k (used by structured pruning; the last layer's entries are never dropped).
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
        if (a.weight.shape != b.weight.shape or a.neuron_ids != b.neuron_ids or a.activation != b.activation
                or not np.array_equal(a.bias, b.bias)):
            return False
        if not np.all((a.weight == b.weight) | (a.weight == 0)):
            return False
    return True


def magnitude_scores(net: Network) -> WeightScores:
    """The baseline: |w| per weight, the L2 norm of a neuron's incoming and outgoing weights per neuron."""
    weights = [np.abs(layer.weight) for layer in net.layers]
    neurons = []
    for k, layer in enumerate(net.layers):
        incoming = np.linalg.norm(layer.weight, axis=1)
        outgoing = np.linalg.norm(net.layers[k + 1].weight, axis=0) if k + 1 < len(net.layers) else np.ones(layer.n_out)
        neurons.append(incoming * outgoing)
    return WeightScores("magnitude", weights, neurons, net)


BY_NAME = {"lap": LookaheadScores, "fisher": FisherScores}
"""``--score`` value -> the annotation that holds those scores."""


def required(score: str | None) -> tuple:
    """The annotation a lossy pass needs for ``--score score`` (none for ``magnitude`` or no choice)."""
    return (BY_NAME[score],) if score in BY_NAME else ()
