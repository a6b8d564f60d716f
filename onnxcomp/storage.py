"""How a layer's weight matrix is stored in the emitted ONNX file, and how onnxruntime rebuilds it.

A pruned or quantized layer only makes the *file* smaller if its weights are stored compactly, and
the stored form must still be plain ONNX that onnxruntime executes.  A weight matrix W [out, in] is
written as two independent choices:

* **values** – the entries as float (the model's dtype), as codebook indices packed at ``bits`` bits
  each plus a float codebook (weight sharing: W = codebook[codes]), or as per-output-channel int8
  with a float scale (``DequantizeLinear``);
* **positions** – ``dense`` (every entry stored), ``bitmask`` (one bit per entry says non-zero, the
  non-zero values follow in row-major order), ``delta`` (one uint8 gap per stored entry from the
  previous stored position; a gap longer than 255 is bridged by storing a zero at distance 255), or
  ``coo`` (an ONNX ``sparse_initializer`` with int64 linear indices, which onnxruntime densifies at
  load; only for float values).

Costs per weight at density d (float32 values): dense 4, bitmask 1/8 + 4d, delta 5d (+ bridges),
coo 12d.  Every candidate that the layer admits is built and the one with the fewest bytes wins, so
file bytes fall roughly in proportion to the weights removed (and to ``bits``).

Decoding uses only ops onnxruntime runs on CPU and CUDA (opset 13): ``BitShift`` on uint8 to unpack
bits, ``CumSum``, ``Gather``, ``ScatterElements``, ``ConstantOfShape``, ``ReduceSum``, ``Reshape``,
``Cast``, ``DequantizeLinear``.  All their inputs are initializers, so onnxruntime's constant folding
evaluates them once when the session is created; inference then runs the same dense ``Gemm``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .ir import Dense

DECODER_OPSET = 13
"""Opset the bitmask/delta/packed-code decoders need (ReduceSum with an axes input)."""

POSITION_FORMATS = ("dense", "bitmask", "delta", "coo")

_ONNX_TYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
              np.dtype(np.int8): TensorProto.INT8, np.dtype(np.int32): TensorProto.INT32}


@dataclass
class Encoded:
    """Nodes and initializers that produce one weight tensor named ``name``."""

    name: str
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    sparse: list = field(default_factory=list)
    positions: str = "dense"
    values: str = "float"

    @property
    def nbytes(self) -> int:
        """Serialized size of everything this encoding adds to the graph."""
        return (sum(t.ByteSize() for t in self.inits) + sum(t.ByteSize() for t in self.sparse)
                + sum(n.ByteSize() for n in self.nodes))


class _Builder:
    """Collects the nodes/initializers of one layer's encoding.

    Weight data is named ``onnxcomp.layer{k}.<what>``; small decoder constants (shapes, shift amounts)
    are shared by every layer of the model (kept in a table on the writer's ``names``), and decoder
    nodes get short output names and no node names: on a small layer these would otherwise cost as
    many bytes as the codes themselves.
    """

    def __init__(self, names, k: int):
        self.names, self.base, self.short = names, f"onnxcomp.layer{k}", f"w{k}"
        self.nodes: list = []
        self.inits: list = []
        self.shared = _shared_constants(names)

    def init(self, suffix: str, array: np.ndarray) -> str:
        name = self.names(f"{self.base}.{suffix}")
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, array) -> str:
        # np.require keeps a 0-d array 0-d (ascontiguousarray would make CumSum's axis a 1-element
        # vector, which onnxruntime tolerates but the ONNX spec and its reference runtime do not).
        array = np.require(array, requirements="C")
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.shared:
            name = self.names(f"onnxcomp.c{len(self.shared)}")
            self.inits.append(numpy_helper.from_array(array, name))
            self.shared[key] = name
        return self.shared[key]

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64))

    def node(self, op: str, inputs: list, suffix: str, out: str | None = None, **attrs) -> str:
        out = out or self.names(f"{self.short}.{suffix}")
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out


def _shared_constants(names) -> dict:
    table = getattr(names, "storage_constants", None)
    if table is None:
        table = {}
        names.storage_constants = table
    return table


# ---- bit packing (numpy side) ---------------------------------------------------------------------

def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Little-endian bit stream of ``codes`` (each < 2**bits), ``bits`` bits per code, as uint8."""
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    planes = (codes[:, None] >> np.arange(bits)[None, :]) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` (numpy reference of the ONNX decoder)."""
    flat = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")[: count * bits]
    return (flat.reshape(count, bits).astype(np.int64) << np.arange(bits)[None, :]).sum(axis=1)


def delta_gaps(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 gaps for sorted ``positions`` (first gap = position + 1), bridging gaps over 255 with
    extra stored entries.  Returns (gaps, index into ``positions`` of every stored entry or -1 for a
    bridge)."""
    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    steps = np.diff(np.concatenate([[-1], pos]))
    bridges = (steps - 1) // 255  # full 255-steps stored as zeros before each real entry
    last = np.cumsum(bridges + 1) - 1  # where each real entry lands in the stream
    gaps = np.full(int(last[-1]) + 1 if pos.size else 0, 255, dtype=np.uint8)
    which = np.full(gaps.size, -1, dtype=np.int64)
    gaps[last] = steps - 255 * bridges
    which[last] = np.arange(pos.size)
    return gaps, which


# ---- decoders (ONNX side) -----------------------------------------------------------------------

def _unpack_graph(b: _Builder, packed: str, bits: int, count: int) -> str:
    """int32 codes [count] from a little-endian bit stream (``bits`` per code) in uint8 ``packed``."""
    col = b.node("Reshape", [packed, b.ints([-1, 1])], "bytes_col")
    # (byte << (7 - j)) >> 7 isolates bit j of each byte; BitShift on uint8 truncates to 8 bits.
    left = b.node("BitShift", [col, b.const(np.arange(7, -1, -1, dtype=np.uint8))], "bits_hi", direction="LEFT")
    one = b.node("BitShift", [left, b.const(np.array([7], dtype=np.uint8))], "bits", direction="RIGHT")
    flat = b.node("Reshape", [one, b.ints([-1])], "bits_flat")
    used = b.node("Slice", [flat, b.ints([0]), b.ints([count * bits])], "bits_used")
    as_int = b.node("Cast", [used], "bits_i32", to=TensorProto.INT32)
    if bits == 1:
        return as_int
    planes = b.node("Reshape", [as_int, b.ints([count, bits])], "planes")
    weighted = b.node("Mul", [planes, b.const((1 << np.arange(bits)).astype(np.int32))], "weighted")
    return b.node("ReduceSum", [weighted, b.ints([1])], "codes", keepdims=0)


def _codes_stream(b: _Builder, codes: np.ndarray, bits: int) -> str:
    """int32 tensor holding ``codes``: raw uint8 for 8 bits, else a packed bit stream."""
    if bits >= 8:
        return b.node("Cast", [b.init("codes", codes.astype(np.uint8))], "codes_i32", to=TensorProto.INT32)
    return _unpack_graph(b, b.init("codes_packed", pack_bits(codes, bits)), bits, codes.size)


def _place(b: _Builder, positions: str, mask: np.ndarray, stream: str, zero_value, dtype: np.dtype) -> str:
    """Put the stored entries ``stream`` at their positions of the flat [n] matrix (``mask`` true).
    For ``bitmask`` the stream starts with one extra zero entry that every unset position reads."""
    n = mask.size
    if positions == "bitmask":
        bits = _unpack_graph(b, b.init("mask_packed", np.packbits(mask.astype(np.uint8), bitorder="little")), 1, n)
        # Entry i reads stream[cumsum(mask)[i]] when set and stream[0] (the zero) when not.
        rank = b.node("CumSum", [bits, b.const(np.array(0, dtype=np.int32))], "rank")
        index = b.node("Mul", [rank, bits], "index")
        return b.node("Gather", [stream, index], "placed", axis=0)
    # delta: positions = cumsum(gaps) - 1, scattered into a tensor of zeros.
    gaps, _ = delta_gaps(np.flatnonzero(mask))
    g64 = b.node("Cast", [b.init("gaps", gaps)], "gaps_i64", to=TensorProto.INT64)
    ends = b.node("CumSum", [g64, b.const(np.array(0, dtype=np.int32))], "ends")
    pos = b.node("Sub", [ends, b.ints([1])], "pos")
    zeros = b.node("ConstantOfShape", [b.ints([n])], "zeros",
                   value=numpy_helper.from_array(np.array([zero_value], dtype=dtype)))
    return b.node("ScatterElements", [zeros, pos, stream], "placed", axis=0)


def _stored_order(mask: np.ndarray, positions: str) -> np.ndarray:
    """Flat indices of the entries a position format stores, in stream order (-1 = a bridge zero)."""
    nz = np.flatnonzero(mask)
    if positions == "delta":
        _, which = delta_gaps(nz)
        return np.where(which >= 0, nz[np.maximum(which, 0)], -1)
    return nz


def _encode_float(layer: Dense, np_dtype, names, k: int, positions: str, out: str) -> Encoded:
    w = np.asarray(layer.weight, dtype=np_dtype)
    flat = w.reshape(-1)
    b = _Builder(names, k)
    if positions == "dense":
        b.inits.append(numpy_helper.from_array(w, out))
        return Encoded(out, b.nodes, b.inits, [], "dense", "float")
    if positions == "coo":
        nz = np.flatnonzero(flat)
        values = numpy_helper.from_array(flat[nz], out)
        indices = numpy_helper.from_array(nz.astype(np.int64), names(out + ".indices"))
        return Encoded(out, [], [], [helper.make_sparse_tensor(values, indices, list(w.shape))], "coo", "float")
    mask = flat != 0
    order = _stored_order(mask, positions)
    stored = np.where(order >= 0, flat[np.maximum(order, 0)], 0).astype(np_dtype)
    if positions == "bitmask":
        stored = np.concatenate([np.zeros(1, dtype=np_dtype), stored])
    stream = b.init("values", stored)
    placed = _place(b, positions, mask, stream, 0, np.dtype(np_dtype))
    b.node("Reshape", [placed, b.ints(list(w.shape))], "weight", out=out)
    return Encoded(out, b.nodes, b.inits, [], positions, "float")


def _encode_codebook(layer: Dense, np_dtype, names, k: int, positions: str, out: str) -> Encoded:
    q = layer.quant
    codes = np.asarray(q.codes, dtype=np.int64).reshape(-1)
    codebook = np.asarray(q.codebook, dtype=np_dtype).reshape(-1)
    bits = int(q.bits)
    if codebook.size > 2 ** bits or (codes.size and (codes.min() < 0 or codes.max() >= codebook.size)):
        raise ValueError(f"layer {k}: codebook of {codebook.size} values or its codes do not fit {bits} bits")
    b = _Builder(names, k)
    book = b.init("codebook", codebook)
    if positions == "dense":
        stream = _codes_stream(b, codes, bits)
        values = b.node("Gather", [book, stream], "values", axis=0)
    else:
        # Sparse positions store the codes of the non-zero weights only; codebook[zero] == 0.
        zero = int(np.flatnonzero(codebook == 0)[0])
        mask = codebook[codes] != 0
        order = _stored_order(mask, positions)
        stored = np.where(order >= 0, codes[np.maximum(order, 0)], zero)
        if positions == "bitmask":
            stored = np.concatenate([[zero], stored])
        stream = _codes_stream(b, stored, bits)
        placed = _place(b, positions, mask, stream, zero, np.dtype(np.int32))
        values = b.node("Gather", [book, placed], "values", axis=0)
    b.node("Reshape", [values, b.ints(list(layer.weight.shape))], "weight", out=out)
    return Encoded(out, b.nodes, b.inits, [], positions, f"codebook{bits}")


def _encode_int8(layer: Dense, np_dtype, names, k: int, positions: str, out: str) -> Encoded:
    q = layer.quant
    codes = np.asarray(q.codes, dtype=np.int8)
    b = _Builder(names, k)
    if positions == "dense":
        qw = b.init("qweight", codes)
    else:
        flat = codes.reshape(-1)
        mask = flat != 0
        order = _stored_order(mask, positions)
        stored = np.where(order >= 0, flat[np.maximum(order, 0)], 0).astype(np.int8)
        if positions == "bitmask":
            stored = np.concatenate([np.zeros(1, dtype=np.int8), stored])
        placed = _place(b, positions, mask, b.init("qvalues", stored), 0, np.dtype(np.int8))
        qw = b.node("Reshape", [placed, b.ints(list(codes.shape))], "qweight")
    scale = b.init("scale", np.asarray(q.scale, dtype=np.float32))
    zp = b.const(np.zeros(codes.shape[0], dtype=np.int8))
    if np.dtype(np_dtype) == np.float32:
        b.node("DequantizeLinear", [qw, scale, zp], "weight", out=out, axis=0)
    else:
        deq = b.node("DequantizeLinear", [qw, scale, zp], "weight_f32", axis=0)
        b.node("Cast", [deq], "weight", out=out, to=_ONNX_TYPE[np.dtype(np_dtype)])
    return Encoded(out, b.nodes, b.inits, [], positions, "int8")


def candidate_formats(layer: Dense, opset: int) -> list[str]:
    """Position formats this layer admits (decoders need opset 13; coo only holds float values)."""
    q = layer.quant
    if q is None:
        zeros = layer.weight.size - np.count_nonzero(layer.weight)
    elif q.kind == "codebook":
        book = np.asarray(q.codebook)
        zeros = int(np.sum(book[np.asarray(q.codes)] == 0)) if np.any(book == 0) else 0
    else:
        zeros = layer.weight.size - np.count_nonzero(q.codes)
    formats = ["dense"]
    if zeros == 0:
        return formats
    if q is None:
        formats.append("coo")
    if opset >= DECODER_OPSET and zeros < layer.weight.size:
        formats += ["bitmask", "delta"]
    return formats


@dataclass(frozen=True)
class Stored:
    """What an encoder reads of a layer: the dequantized weights (any shape: a weight matrix or a
    convolution kernel, whose int8 scales are per output channel, axis 0) and their ``Quantization``."""

    weight: np.ndarray
    quant: object = None


def stored(layer) -> Stored:
    """A dense layer's weight matrix, or a convolution's kernel, as the encoders read it."""
    return Stored(layer.kernel if hasattr(layer, "kernel") else layer.weight, layer.quant)


def encode_weight(layer, k: int, np_dtype, names, opset: int, *, positions: str | None = None,
                  plain: bool = False, tag: str = "weight") -> Encoded:
    """The smallest admissible encoding of layer ``k``'s weight (or the one named by ``positions``);
    ``layer`` is a ``Dense`` or a :class:`Stored` (a convolution's kernel, see :func:`stored`).

    ``plain=True`` writes the dequantized weight as one dense float initializer (the reference the
    writer's output is checked against).
    """
    out = names(f"onnxcomp.layer{k}.{tag}")
    q = layer.quant
    if plain:
        return _encode_float(layer, np_dtype, names, k, "dense", out)
    if q is None:
        encode = _encode_float
    elif q.kind == "codebook":
        encode = _encode_codebook
    elif q.kind == "int8":
        encode = _encode_int8
    else:
        raise ValueError(f"unknown quantization kind {q.kind!r}")
    formats = [positions] if positions else candidate_formats(layer, opset)
    best = None
    for fmt in formats:
        # Trial encodings use throw-away names so the graph's name table only sees the winner.
        trial = encode(layer, np_dtype, _TrialNames(names), k, fmt, out)
        if best is None or trial.nbytes < best[1]:
            best = (fmt, trial.nbytes)
    return encode(layer, np_dtype, names, k, best[0], out)


class UniqueNames:
    """Hands out names not in ``used`` (``base``, then ``base_1``, ``base_2``, ...), reserving them."""

    used: set

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


class _TrialNames(UniqueNames):
    """Proposes unique names without reserving them in the real table, and sees (a copy of) the
    constants already shared in the model."""

    def __init__(self, names):
        self.used = set(getattr(names, "used", set()))
        self.storage_constants = dict(getattr(names, "storage_constants", None) or {})


def storage_summary(model: onnx.ModelProto) -> dict:
    """Bytes of each onnxcomp layer's weight data (codes, codebook, mask, values, scales; not the bias
    and not the decoder nodes or shared constants), read back from a written model: ``{layer: bytes}``."""
    sizes: dict[int, int] = {}

    def add(name: str, nbytes: int) -> None:
        parts = name.split(".")
        if len(parts) >= 3 and parts[0] == "onnxcomp" and parts[1].startswith("layer") and parts[2] not in ("bias", "unit_bias"):
            k = int(parts[1][len("layer"):].split("_")[0])
            sizes[k] = sizes.get(k, 0) + nbytes

    for t in model.graph.initializer:
        add(t.name, t.ByteSize())
    for sp in model.graph.sparse_initializer:
        add(sp.values.name, sp.ByteSize())
    return sizes


def sparse_to_dense(sp: onnx.SparseTensorProto) -> np.ndarray:
    """The dense array of a COO sparse tensor (linear or [nnz, rank] indices)."""
    vals = numpy_helper.to_array(sp.values)
    idx = numpy_helper.to_array(sp.indices)
    dense = np.zeros(int(np.prod(sp.dims)), dtype=vals.dtype)
    flat = idx if idx.ndim == 1 else np.ravel_multi_index(tuple(idx.T), tuple(sp.dims))
    dense[flat] = vals
    return dense.reshape(tuple(sp.dims))


def materialize(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every weight computed from constants (decoders, sparse initializers) is a plain
    dense initializer again, evaluated with onnxruntime.  Lets tools that expect constant Gemm
    weights (the reader, ``inspect``) read a compressed file."""
    import onnxruntime as ort

    g = model.graph
    const = {t.name for t in g.initializer}
    const |= {s.values.name for s in g.sparse_initializer}
    folded, kept = [], []
    for node in g.node:
        if node.op_type != "Constant" and node.input and all((not i) or i in const for i in node.input):
            folded.append(node)
            const.update(node.output)
        else:
            kept.append(node)
    needed = sorted({i for n in kept for i in n.input if i in const} | ({o.name for o in g.output} & const))
    values = {sp.values.name: sparse_to_dense(sp) for sp in g.sparse_initializer if sp.values.name in needed}
    computed = [n for n in needed if n not in values and n not in {t.name for t in g.initializer}]
    if not computed and not values:
        return model
    if computed:
        inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
        probe = helper.make_graph(folded, "materialize", [], [inferred[n] for n in computed],
                                  initializer=list(g.initializer), sparse_initializer=list(g.sparse_initializer))
        pm = helper.make_model(probe, opset_imports=list(model.opset_import), ir_version=model.ir_version)
        sess = ort.InferenceSession(pm.SerializeToString(), providers=["CPUExecutionProvider"])
        values.update(zip(computed, sess.run(computed, {})))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    used = {i for n in kept for i in n.input} | {o.name for o in g.output}
    inits = [t for t in g.initializer if t.name in used]
    inits += [numpy_helper.from_array(values[n], n) for n in sorted(values)]
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    del out.graph.sparse_initializer[:]
    return out


def layer_storage(layer, np_dtype=np.float32, opset: int = DECODER_OPSET) -> Encoded:
    """The encoding the writer would choose for ``layer``'s weights or kernel (for reports: format and bytes)."""
    return encode_weight(stored(layer), 0, np_dtype, _TrialNames(None), opset)
