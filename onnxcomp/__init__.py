"""onnxcomp: an ONNX graph-to-graph compiler that makes ReLU networks smaller.

Exactly where it can prove it (stable neurons over an input domain), and within a stated fidelity
budget where the user allows loss (pruning, neuron dropping, quantization).
"""

__version__ = "0.1.0"
