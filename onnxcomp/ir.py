"""The intermediate representation every pass works on: a chain of dense (and convolution) layers.

``Network`` is a plain, immutable dataclass holding ``Dense`` and ``Conv`` (``onnxcomp.conv``) layers in float64.  Passes never
mutate one; they build a new one with :func:`dataclasses.replace`.  Every array an IR object holds is
read-only (a private copy when the caller's array was writeable), so an analysis cannot change a
network by accident: writing into ``layer.weight`` raises ``ValueError``.  Each layer remembers the
original index of every neuron it still has (``neuron_ids``) and the index of the layer it came
from (``layer_id``), so a report can always speak in the numbering of the model the user gave us.

Everything ONNX-specific that the chain does not cover (an opaque prefix such as a convolutional
feature extractor, a suffix such as Softmax, the input/output value infos, opset and metadata) is
kept in ``Network.onnx`` as an opaque object that only the reader and the writer understand.

This module imports nothing of the project: it is the floor everything stands on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

RELU = "relu"
LINEAR = "linear"
ACTIVATIONS = (RELU, LINEAR)


def frozen_array(a, dtype=None) -> np.ndarray:
    """``a`` as a read-only array (copied unless it already is one of ``dtype``)."""
    arr = np.asarray(a, dtype=dtype)
    base = arr.base if isinstance(arr.base, np.ndarray) else None
    if arr.flags.writeable or (base is not None and base.flags.writeable):  # a read-only view of a writeable array
        arr = arr.copy()
        arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class Quantization:
    """How a layer's weights are stored once quantized.

    ``kind == "codebook"``: ``weight == codebook[codes]`` (weight sharing, k-means);
    ``kind == "int8"``: ``weight == scale[:, None] * codes`` (symmetric per output channel).
    The dense ``Dense.weight`` always holds the dequantized values so analyses keep working.
    """

    kind: str
    codes: np.ndarray
    codebook: np.ndarray | None = None
    scale: np.ndarray | None = None
    bits: int = 8

    def __post_init__(self) -> None:
        for name in ("codes", "codebook", "scale"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, frozen_array(value))


@dataclass(frozen=True, eq=False)
class Dense:
    """``activation(weight @ x + bias)`` with ``weight`` of shape (out, in).

    ``neuron_ids[i]`` is the original index (in layer ``layer_id`` of the input model) of output
    neuron ``i``.  ``quant`` is set by the quantize pass; ``None`` means plain float weights.
    """

    weight: np.ndarray
    bias: np.ndarray
    activation: str = RELU
    layer_id: int = 0
    neuron_ids: tuple[int, ...] = ()
    source: str = ""
    quant: Quantization | None = None

    def __post_init__(self) -> None:
        w = np.asarray(self.weight, dtype=np.float64)
        b = np.asarray(self.bias, dtype=np.float64).reshape(-1)
        if w.ndim != 2:
            raise ValueError(f"Dense weight must be 2-D, got shape {w.shape}")
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"Dense bias has {b.shape[0]} entries for {w.shape[0]} neurons")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}")
        object.__setattr__(self, "weight", frozen_array(w))
        object.__setattr__(self, "bias", frozen_array(b))
        ids = tuple(int(i) for i in self.neuron_ids) if self.neuron_ids else tuple(range(w.shape[0]))
        if len(ids) != w.shape[0]:
            raise ValueError(f"Dense has {w.shape[0]} neurons but {len(ids)} neuron_ids")
        object.__setattr__(self, "neuron_ids", ids)

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0])

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[1])

    @property
    def is_relu(self) -> bool:
        return self.activation == RELU

    @property
    def params(self) -> int:
        return int(self.weight.size + self.bias.size)

    @property
    def nonzero_params(self) -> int:
        return int(np.count_nonzero(self.weight) + np.count_nonzero(self.bias))

    @property
    def macs(self) -> int:
        return int(self.weight.size)

    # The layer interface a convolution shares (``onnxcomp.conv.Conv``): the linear map's positive,
    # negative and absolute parts, and explicit rows, whatever form ``weight`` has.
    @property
    def weight_abs(self) -> np.ndarray:
        return np.abs(self.weight)

    @property
    def weight_pos(self) -> np.ndarray:
        return np.maximum(self.weight, 0.0)

    @property
    def weight_neg(self) -> np.ndarray:
        return np.minimum(self.weight, 0.0)

    def rows(self, idx) -> np.ndarray:
        return np.asarray(self.weight[np.asarray(idx, dtype=np.int64)])

    def fingerprint_arrays(self) -> list:
        return [self.weight, self.bias, np.asarray(self.neuron_ids, dtype=np.int64)]

    def preactivation(self, x: np.ndarray) -> np.ndarray:
        """Pre-activation for a batch ``x`` of shape (N, in)."""
        return x @ self.weight.T + self.bias

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = self.preactivation(x)
        return np.maximum(y, 0.0) if self.is_relu else y


@dataclass(frozen=True, eq=False)
class Box:
    """An input domain: the box ``lo <= x <= hi`` over the flattened model input.

    ``source`` says where it came from (``"0:1"``, a file name, ``"data hull"``); ``note`` carries
    anything the user should read, e.g. that a vnnlib disjunction was replaced by its hull.
    """

    lo: np.ndarray
    hi: np.ndarray
    source: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        lo = np.asarray(self.lo, dtype=np.float64).reshape(-1)
        hi = np.asarray(self.hi, dtype=np.float64).reshape(-1)
        if lo.shape != hi.shape:
            raise ValueError(f"domain lo has {lo.size} entries but hi has {hi.size}")
        object.__setattr__(self, "lo", frozen_array(lo))
        object.__setattr__(self, "hi", frozen_array(hi))

    @property
    def size(self) -> int:
        return int(self.lo.size)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` points drawn uniformly from the box, float64, shape (n, size)."""
        return rng.uniform(self.lo, self.hi, size=(n, self.size)) if n > 0 else np.empty((0, self.size))

    def corners(self, cap: int, rng: np.random.Generator) -> np.ndarray:
        """All vertices of the box when there are at most ``cap``, else ``cap`` random ones."""
        free = np.flatnonzero(self.hi > self.lo)
        if cap <= 0:
            return np.empty((0, self.size))
        if free.size <= 20 and 2 ** free.size <= cap:
            bits = (np.arange(2 ** free.size)[:, None] >> np.arange(free.size)[None, :]) & 1
        else:
            bits = rng.integers(0, 2, size=(cap, free.size))
        pts = np.repeat(self.lo[None, :], bits.shape[0], axis=0)
        pts[:, free] = np.where(bits == 1, self.hi[free], self.lo[free])
        return pts

    def contains(self, x: np.ndarray, tol: float = 0.0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.size)
        return np.all((x >= self.lo - tol) & (x <= self.hi + tol), axis=1)


@dataclass(frozen=True, eq=False)
class Network:
    """A chain of dense layers, plus the opaque ONNX context around it.

    ``input_size`` is the number of features the chain reads (after any folded Flatten/Reshape);
    ``onnx`` is owned by the reader/writer (prefix/suffix nodes, value infos, opset, dtype).
    """

    layers: tuple[Dense, ...]
    input_size: int
    onnx: Any = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers:
            raise ValueError("a Network needs at least one layer")
        if len({layer.layer_id for layer in layers}) != len(layers):
            # built in memory with default ids: number the layers so reports stay unambiguous
            layers = tuple(replace(layer, layer_id=k) for k, layer in enumerate(layers))
        width = self.input_size
        for k, layer in enumerate(layers):
            if layer.n_in != width:
                raise ValueError(f"layer {k} reads {layer.n_in} features but receives {width}")
            width = layer.n_out
        object.__setattr__(self, "layers", layers)

    # ---- shape facts -------------------------------------------------------------------------
    @property
    def output_size(self) -> int:
        return self.layers[-1].n_out

    @property
    def widths(self) -> list[int]:
        """Widths of the hidden layers (every layer but the last)."""
        return [layer.n_out for layer in self.layers[:-1]]

    @property
    def params(self) -> int:
        return int(sum(layer.params for layer in self.layers))

    @property
    def nonzero_params(self) -> int:
        return int(sum(layer.nonzero_params for layer in self.layers))

    @property
    def macs(self) -> int:
        """Multiply-accumulates per input sample of the chain (a convolution's at every position)."""
        return int(sum(layer.macs for layer in self.layers))

    @property
    def has_conv(self) -> bool:
        """True when some layer is not a dense matrix (a convolution or pooling layer)."""
        return any(not isinstance(layer, Dense) for layer in self.layers)

    # ---- evaluation --------------------------------------------------------------------------
    def forward(self, x: np.ndarray, preactivations: bool = False):
        """Evaluate the chain in float64 on a batch (N, input_size).

        With ``preactivations=True`` returns ``(output, [pre-activation of every layer])``.
        """
        h = np.asarray(x, dtype=np.float64).reshape(-1, self.input_size)
        pres = []
        for layer in self.layers:
            y = layer.preactivation(h)
            if preactivations:
                pres.append(y)
            h = np.maximum(y, 0.0) if layer.is_relu else y
        return (h, pres) if preactivations else h

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def fingerprint(self) -> str:
        """A hash of all weights, used to check that analysis passes leave a network untouched."""
        h = hashlib.sha256()
        for layer in self.layers:
            for arr in layer.fingerprint_arrays():
                h.update(np.ascontiguousarray(arr).tobytes())
            h.update(layer.activation.encode())
        return h.hexdigest()

    def with_layers(self, layers) -> "Network":
        return replace(self, layers=tuple(layers))
