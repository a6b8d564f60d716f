"""Network -> ONNX: the chain becomes ``Gemm(transB=1)`` (+ ``Relu``) nodes in the original graph.

The nodes outside the chain, the model's input/output value infos (names, shapes, dynamic batch
dimension, dtype), opset imports and metadata are copied from the input model untouched.  Weights
are emitted in the model's dtype, as dense initializers, as sparse initializers when pruning made
that smaller, or quantized (codebook + integer codes through ``Gather``, or per-channel int8 through
``DequantizeLinear``).  ``onnx.checker`` runs on every model built here; files are written atomically.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import __version__
from .interrupt import WRITE_LOCK, WRITTEN
from .conv import Conv
from .ir import Dense, Network
from .onnxio import SUPPORTED_FLOAT, real_inputs
from .reader import COLS, ROWS, VECTOR, OnnxContext
from .storage import UniqueNames, encode_weight, stored

PRE_PREFIX = "onnxcomp/pre/"
"""Name prefix of the extra graph outputs exposing pre-activations (``expose_preactivations``)."""

META_PREFIX = "onnxcomp."


@functools.lru_cache(maxsize=1)
def max_ir_version() -> int:
    """The newest ONNX IR version the installed onnxruntime loads (probed once with a tiny model)."""
    import onnxruntime as ort

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    for ir in range(onnx.IR_VERSION, 6, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir)
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return ir
        except Exception:
            continue
    return 7


def standalone_context(n_in: int, n_out: int, dtype: int = TensorProto.FLOAT) -> OnnxContext:
    """A context for a network built in memory (tests, synthetic models): input ``input`` of shape
    [batch, n_in], output ``output`` of shape [batch, n_out]."""
    x = helper.make_tensor_value_info("input", dtype, ["batch", n_in])
    y = helper.make_tensor_value_info("output", dtype, ["batch", n_out])
    graph = helper.make_graph([], "onnxcomp", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return OnnxContext(
        model=model, chain_nodes=frozenset(), first_chain_node=0, chain_input="input", input_layout=ROWS,
        input_shape=("batch", n_in), chain_output="output", output_layout=ROWS, output_shape=("batch", n_out),
        dtype=dtype, source="<memory>",
    )


class _Names(UniqueNames):
    """Fresh tensor/node names that cannot collide with anything already in the graph."""

    def __init__(self, model: onnx.ModelProto, dropped: frozenset = frozenset()):
        # Names of the nodes in ``dropped`` (the old chain) and of initializers only they read vanish
        # from the output, so they are free again: a file onnxcomp wrote gets the same names when it
        # is compiled again (the pre-activation outputs must be exactly PRE_PREFIX + k).
        g = model.graph
        kept = [n for i, n in enumerate(g.node) if i not in dropped]
        self.used = {i.name for i in g.input} | {o.name for o in g.output}
        self.used |= {t.name for t in g.initializer} & _referenced_names(kept)
        for n in kept:
            self.used.update(n.output)
            self.used.update(n.input)
            self.used.add(n.name)


def _weight_tensors(layer: Dense, k: int, np_dtype, names: _Names, opset: int, plain: bool = False):
    """Nodes + (dense, sparse) initializers producing layer ``k``'s weight [out, in]; returns the
    tensor name the Gemm reads.  The storage format (dense, bitmask, delta, coo; float, codebook or
    int8 values) is the smallest one the layer admits, see ``onnxcomp.storage``; ``plain`` forces one
    dense float initializer."""
    enc = encode_weight(layer, k, np_dtype, names, opset, plain=plain)
    return enc.nodes, enc.inits, enc.sparse, enc.name


def to_model(
    net: Network,
    *,
    expose_preactivations: bool = False,
    metadata: dict[str, str] | None = None,
    plain_weights: bool = False,
) -> onnx.ModelProto:
    """Build the ONNX model for ``net`` (the original graph with the chain replaced).

    ``plain_weights`` writes every weight as one dense float initializer (no sparse or quantized
    storage): the reference a compressed file is checked against."""
    ctx: OnnxContext = net.onnx if net.onnx is not None else standalone_context(net.input_size, net.output_size)
    src = ctx.model
    g = src.graph
    names = _Names(src, ctx.chain_nodes)
    np_dtype = SUPPORTED_FLOAT[ctx.dtype]
    opset = max([o.version for o in src.opset_import if o.domain in ("", "ai.onnx")] or [13])
    needs_opset = 13 if any(layer.quant is not None for layer in net.layers) else 7
    opset = max(opset, needs_opset)

    chain_nodes, chain_inits, chain_sparse, pre_outputs = [], [], [], []
    cur = ctx.chain_input
    first = net.layers[0]

    def to_rows(cur: str) -> str:
        """The chain input as [N, features] rows."""
        if ctx.input_layout == ROWS and len(ctx.input_shape) > 2:
            nxt = names("onnxcomp/flat")
            chain_nodes.append(helper.make_node("Flatten", [cur], [nxt], axis=1, name=names("onnxcomp/flatten")))
        elif ctx.input_layout == VECTOR:
            shp, nxt = names("onnxcomp/row_shape"), names("onnxcomp/row")
            chain_inits.append(numpy_helper.from_array(np.array([1, -1], dtype=np.int64), shp))
            chain_nodes.append(helper.make_node("Reshape", [cur, shp], [nxt], name=names("onnxcomp/to_row")))
        elif ctx.input_layout == COLS:
            nxt = names("onnxcomp/rows")
            chain_nodes.append(helper.make_node("Transpose", [cur], [nxt], perm=[1, 0], name=names("onnxcomp/to_rows")))
        else:
            nxt = cur
        return nxt

    if isinstance(first, Conv):
        # a convolution reads the NCHW map: the input as it is, or its rows reshaped to it (through a Gather
        # of the features when the input is in another order, e.g. NHWC)
        if not (ctx.input_layout == ROWS and tuple(ctx.input_shape[1:]) == first.in_shape) or first.in_perm:
            if first.in_perm is not None:
                cur = to_rows(cur)
                idx, nxt = names("onnxcomp/input_order"), names("onnxcomp/nchw")
                chain_inits.append(numpy_helper.from_array(np.asarray(first.in_perm, dtype=np.int64), idx))
                chain_nodes.append(helper.make_node("Gather", [cur, idx], [nxt], axis=1,
                                                    name=names("onnxcomp/to_nchw_order")))
                cur = nxt
            elif ctx.input_layout == COLS:
                cur = to_rows(cur)
            shp, nxt = names("onnxcomp/map_shape"), names("onnxcomp/map")
            chain_inits.append(numpy_helper.from_array(np.array((-1,) + first.in_shape, dtype=np.int64), shp))
            chain_nodes.append(helper.make_node("Reshape", [cur, shp], [nxt], name=names("onnxcomp/to_map")))
            cur = nxt
    else:
        cur = to_rows(cur)

    n = len(net.layers)
    direct_out = ctx.output_layout == ROWS
    flat = True  # whether ``cur`` is [N, features] (else an NCHW map)
    for k, layer in enumerate(net.layers):
        last = k == n - 1
        if isinstance(layer, Conv) and layer.pool and not expose_preactivations:
            # the layers of a MaxPool (onnxcomp.conv.max_pool) are written as the one op they came from
            part, parts, kernel_hw, strides, pads, zero_pads = layer.pool
            if part == 0:
                if any(zero_pads):
                    pad_name, padded = names("onnxcomp/maxpool_pads"), names(f"onnxcomp/padded{k}")
                    t, l, b, r = zero_pads
                    chain_inits.append(numpy_helper.from_array(np.array([0, 0, t, l, 0, 0, b, r], np.int64), pad_name))
                    chain_nodes.append(helper.make_node("Pad", [cur, pad_name], [padded], name=names(f"onnxcomp/pad{k}")))
                    cur = padded
                pooled = names(f"onnxcomp/maxpool{k}")
                chain_nodes.append(helper.make_node("MaxPool", [cur], [pooled], kernel_shape=list(kernel_hw),
                                                    strides=list(strides), pads=list(pads),
                                                    name=names(f"onnxcomp/maxpool{k}")))
                cur = pooled
            if part < parts - 1:
                continue
            if layer.is_relu:
                act = names(f"onnxcomp/act{k}")
                chain_nodes.append(helper.make_node("Relu", [cur], [act], name=names(f"onnxcomp/relu{k}")))
                cur = act
            flat = False
        elif isinstance(layer, Conv):
            nodes_k, inits_k, sparse_k, cur, pre = _conv_layer(layer, k, cur, np_dtype, names, expose_preactivations,
                                                               opset, plain_weights)
            chain_nodes += nodes_k
            chain_inits += inits_k
            chain_sparse += sparse_k
            if pre is not None:
                pre_outputs.append((pre, layer.n_out))
            flat = False
        if isinstance(layer, Conv):
            if last or not isinstance(net.layers[k + 1], Conv):
                out = ctx.chain_output if (last and direct_out and len(ctx.output_shape) == 4) else None
                if out is not None:
                    chain_nodes.append(helper.make_node("Identity", [cur], [out], name=names("onnxcomp/output")))
                    cur = out
                else:
                    f_nodes, f_inits, cur = _flatten_units(layer, cur, names, f"act{k}",
                                                           ctx.chain_output if (last and direct_out) else None)
                    chain_nodes += f_nodes
                    chain_inits += f_inits
                    flat = True
            continue
        if not flat:
            raise ValueError(f"layer {k}: a dense layer reads an unflattened feature map")
        w_nodes, w_inits, w_sparse, w_name = _weight_tensors(layer, k, np_dtype, names, opset, plain_weights)
        chain_nodes += w_nodes
        chain_inits += w_inits
        chain_sparse += w_sparse
        b_name = names(f"onnxcomp.layer{k}.bias")
        chain_inits.append(numpy_helper.from_array(np.asarray(layer.bias, dtype=np_dtype), b_name))
        direct = last and direct_out and not layer.is_relu and not expose_preactivations
        pre = ctx.chain_output if direct else names(f"{PRE_PREFIX}{k}")
        chain_nodes.append(helper.make_node("Gemm", [cur, w_name, b_name], [pre], transB=1, name=names(f"onnxcomp/gemm{k}")))
        pre_outputs.append((pre, layer.n_out))
        cur = pre
        if layer.is_relu:
            act = ctx.chain_output if (last and direct_out) else names(f"onnxcomp/act{k}")
            chain_nodes.append(helper.make_node("Relu", [pre], [act], name=names(f"onnxcomp/relu{k}")))
            cur = act
    if direct_out and not net.layers[-1].is_relu and expose_preactivations and not isinstance(net.layers[-1], Conv):
        chain_nodes.append(helper.make_node("Identity", [cur], [ctx.chain_output], name=names("onnxcomp/output")))
    if ctx.output_layout == VECTOR:
        shp = names("onnxcomp/vec_shape")
        chain_inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), shp))
        chain_nodes.append(helper.make_node("Reshape", [cur, shp], [ctx.chain_output], name=names("onnxcomp/to_vector")))
    elif ctx.output_layout == COLS:
        chain_nodes.append(helper.make_node("Transpose", [cur], [ctx.chain_output], perm=[1, 0], name=names("onnxcomp/to_cols")))

    # Assemble: kept nodes in their original order, the new chain where the old one began.
    kept = [node for i, node in enumerate(g.node) if i not in ctx.chain_nodes]
    before = [node for i, node in enumerate(g.node) if i not in ctx.chain_nodes and i < ctx.first_chain_node]
    after = kept[len(before):]
    nodes = before + chain_nodes + after
    used = _referenced_names(before + after)
    inits = [t for t in g.initializer if t.name in used] + chain_inits
    sparse_inits = [t for t in g.sparse_initializer if t.values.name in used] + chain_sparse
    chain_internal = {o for i in ctx.chain_nodes for o in g.node[i].output} - {ctx.chain_output}
    value_info = [vi for vi in g.value_info if vi.name not in chain_internal]
    outputs = list(g.output)
    if expose_preactivations:
        batch = ctx.input_shape[0] if ctx.input_layout == ROWS else (ctx.input_shape[1] if ctx.input_layout == COLS else 1)
        existing = {o.name for o in outputs}
        for name, width in pre_outputs:
            if name not in existing:
                outputs.append(helper.make_tensor_value_info(name, ctx.dtype, [batch, width]))
    graph = helper.make_graph(
        nodes, g.name or "onnxcomp", list(real_inputs(src)), outputs, initializer=inits,
        value_info=value_info, sparse_initializer=sparse_inits, doc_string=g.doc_string,
    )
    opsets = [helper.make_opsetid(o.domain, o.version) for o in src.opset_import if o.domain not in ("", "ai.onnx")]
    opsets.insert(0, helper.make_opsetid("", opset))
    ir = max(src.ir_version, 4, helper.find_min_ir_version_for(opsets, ignore_unknown=True))
    ir = min(ir, max_ir_version())
    model = helper.make_model(graph, opset_imports=opsets, ir_version=ir, producer_name="onnxcomp",
                              producer_version=__version__, doc_string=src.doc_string)
    model.model_version = src.model_version
    meta = {p.key: p.value for p in src.metadata_props if not p.key.startswith(META_PREFIX)}
    meta[META_PREFIX + "version"] = __version__
    if src.producer_name and src.producer_name != "onnxcomp":
        meta[META_PREFIX + "source_producer"] = src.producer_name
    for key, value in (metadata or {}).items():
        meta[META_PREFIX + key] = str(value)
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model


def _conv_layer(layer: Conv, k: int, cur: str, np_dtype, names: _Names, expose: bool, opset: int, plain: bool):
    """Nodes and initializers of one convolution layer on the NCHW map ``cur``: the Conv (or AveragePool)
    with its bias (an Add when the bias varies within a channel) and Relu; the kernel in the smallest
    storage it admits (a pruned or quantized kernel is decoded in the graph, as a dense layer's weight is,
    see ``onnxcomp.storage``).  Returns (nodes, inits, sparse inits, the output map's name, the exposed
    [N, n_out] pre-activation's name or None)."""
    nodes, inits, sparse = [], [], []
    pre = names(f"onnxcomp/convpre{k}")
    attrs = {"strides": list(layer.strides), "pads": list(layer.pads)}
    if layer.is_plain_average_pool:
        nodes.append(helper.make_node("AveragePool", [cur], [pre], kernel_shape=list(layer.kernel.shape[2:]),
                                      count_include_pad=1, name=names(f"onnxcomp/avgpool{k}"), **attrs))
    else:
        enc = encode_weight(stored(layer), k, np_dtype, names, opset, plain=plain, tag="kernel")
        nodes += enc.nodes
        inits += enc.inits
        sparse += enc.sparse
        ins = [cur, enc.name]
        per_channel = layer.bias_per_channel
        if per_channel is not None and np.any(per_channel):
            b_name = names(f"onnxcomp.layer{k}.bias")
            inits.append(numpy_helper.from_array(np.asarray(per_channel, dtype=np_dtype), b_name))
            ins.append(b_name)
        out = pre if per_channel is not None else names(f"onnxcomp/conv{k}")
        nodes.append(helper.make_node("Conv", ins, [out], kernel_shape=list(layer.kernel.shape[2:]),
                                      dilations=list(layer.dilations), group=layer.group,
                                      name=names(f"onnxcomp/conv{k}"), **attrs))
        if per_channel is None:
            b_name = names(f"onnxcomp.layer{k}.unit_bias")
            inits.append(numpy_helper.from_array(np.asarray(layer.unit_bias[None], dtype=np_dtype), b_name))
            nodes.append(helper.make_node("Add", [out, b_name], [pre], name=names(f"onnxcomp/conv_bias{k}")))
    exposed = None
    if expose:
        f_nodes, f_inits, exposed = _flatten_units(layer, pre, names, f"pre{k}", names(f"{PRE_PREFIX}{k}"))
        nodes += f_nodes
        inits += f_inits
    cur = pre
    if layer.is_relu:
        act = names(f"onnxcomp/act{k}")
        nodes.append(helper.make_node("Relu", [pre], [act], name=names(f"onnxcomp/relu{k}")))
        cur = act
    return nodes, inits, sparse, cur, exposed


def _flatten_units(layer: Conv, cur: str, names: _Names, tag: str, out: str | None):
    """``cur`` (the layer's NCHW map) as [N, n_out]: Flatten, then Gather of the emitted units when the layer
    keeps only some."""
    nodes, inits = [], []
    flat = out if (out is not None and layer.units is None) else names(f"onnxcomp/flat_{tag}")
    nodes.append(helper.make_node("Flatten", [cur], [flat], axis=1, name=names(f"onnxcomp/flatten_{tag}")))
    if layer.units is None:
        return nodes, inits, flat
    idx = names(f"onnxcomp/units_{tag}")
    inits.append(numpy_helper.from_array(np.asarray(layer.units, dtype=np.int64), idx))
    gathered = out if out is not None else names(f"onnxcomp/kept_{tag}")
    nodes.append(helper.make_node("Gather", [flat, idx], [gathered], axis=1, name=names(f"onnxcomp/gather_{tag}")))
    return nodes, inits, gathered


def _referenced_names(nodes) -> set[str]:
    """Every tensor name a node (or any subgraph inside it) reads."""
    names: set[str] = set()
    for node in nodes:
        names.update(node.input)
        for attr in node.attribute:
            subgraphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
            for sub in subgraphs:
                names.update(_referenced_names(sub.node))
    return names


def _current_umask() -> int:
    """The process umask, read without changing it where the system says it (Linux), else by setting
    and restoring it (brief, and under ``WRITE_LOCK`` in :func:`save_atomic`)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _target_mode(path: Path) -> int:
    """The permission bits the written file gets: an overwritten file keeps its own, a new one gets what
    ``open()`` would give it under the current umask (``mkstemp`` alone would leave 0600)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_current_umask()


def save_atomic(model: onnx.ModelProto | bytes, path: str | os.PathLike) -> int:
    """Write to a temporary file in the target folder, fsync, then rename over ``path``.

    Either the complete new file is at ``path`` or nothing changed there.  The file gets the mode a plain
    ``open()`` would give it (0666 less the umask), or keeps the mode of the file it replaces.  Returns the
    byte size.
    """
    path = Path(path)
    data = model if isinstance(model, bytes) else model.SerializeToString()
    # An interruption waits for the lock (see onnxcomp.interrupt): a write is never cut in half.
    with WRITE_LOCK:
        mode = _target_mode(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), mode)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        WRITTEN.append(str(path))
    return len(data)


def model_bytes(net: Network, **kwargs) -> bytes:
    return to_model(net, **kwargs).SerializeToString()
