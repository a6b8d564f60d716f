"""Annotation types shared by the scoring analyses (lookahead, fisher, magnitude) and the lossy
transforms that consume them (prune, drop, quantize)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcomp.ir import Network


@dataclass
class WeightScores:
    """Importance of every weight and every neuron (higher = more important to keep).

    ``weights[k]`` has the shape of ``net.layers[k].weight``; ``neurons[k]`` has one entry per output
    neuron of layer k (used by structured pruning; the last layer's entries are never dropped).
    ``method`` names the score (``magnitude``, ``lap-forward``, ``fisher``, ...).
    ``fingerprint`` is the ``Network.fingerprint()`` the scores were computed on, so a transform can
    refuse scores that belong to another network.
    """

    method: str
    weights: list
    neurons: list | None = None
    fingerprint: str = ""

    def matches(self, net: Network) -> bool:
        return self.fingerprint == net.fingerprint() and len(self.weights) == len(net.layers)


def magnitude_scores(net: Network) -> WeightScores:
    """The baseline: |w| per weight, the L2 norm of a neuron's incoming and outgoing weights per neuron."""
    weights = [np.abs(layer.weight) for layer in net.layers]
    neurons = []
    for k, layer in enumerate(net.layers):
        incoming = np.linalg.norm(layer.weight, axis=1)
        outgoing = np.linalg.norm(net.layers[k + 1].weight, axis=0) if k + 1 < len(net.layers) else np.ones(layer.n_out)
        neurons.append(incoming * outgoing)
    return WeightScores("magnitude", weights, neurons, net.fingerprint())
