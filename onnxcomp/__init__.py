"""onnxcomp: an ONNX graph-to-graph compiler that makes ReLU networks smaller.

Exactly where it can prove it (stable neurons over an input domain), and within a stated fidelity
budget where the user allows loss (pruning, neuron dropping, quantization).

The Python face (``onnxcomp.api``)::

    import onnxcomp
    result = onnxcomp.compress("model.onnx", "stable", domain="0:1")
    result.save("small.onnx")
    check = onnxcomp.verify("model.onnx", "small.onnx")
"""

__version__ = "0.1.0"

_API = ("compress", "verify", "inspect", "Result")


def __getattr__(name: str):
    # Imported on first use, so that `import onnxcomp` (and the CLI's start-up) stays light.
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'onnxcomp' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
