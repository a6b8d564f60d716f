"""ReLU stability over an input domain: what is known (annotations), and how it is proven.

``state`` holds the vocabulary and the annotation types (``Findings``, ``StabilityState``,
``Stability``, ``DomainBounds``, the epsilon policy); ``falsify`` searches witnesses; ``isa``, ``split``
and ``per_neuron`` are the proof strategies, ``schedule`` chooses among them.  These are library
modules: the passes in ``onnxcomp.passes`` are thin declarations over them.
"""

from .state import (DomainBounds, Findings, Stability, StabilityState, empty_state, epsilons, merge,  # noqa: F401
                    witness_floor)
