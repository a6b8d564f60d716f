"""ONNX -> Network: lower the maximal Gemm / MatMul(+Add) / Relu chain of a model into dense layers.

What is absorbed into the chain (all folded exactly, in float64):

* ``Gemm`` with a constant weight (any ``transA``/``transB``/``alpha``/``beta``, broadcast bias),
  ``MatMul`` with a constant weight on either side, followed or not by ``Add`` of a constant;
* ``Relu``; consecutive linear layers with no Relu between stay separate ``Dense(linear)`` layers;
* elementwise affine ops by constants (``Add``, ``Sub``, ``Mul``, ``Div``) and
  ``BatchNormalization`` (inference form): before the first layer they fold into its columns (input
  normalisation), right after a linear layer into its rows, after a Relu into the next layer's columns;
* ``Flatten`` / ``Reshape`` / ``Squeeze`` / ``Unsqueeze`` / ``Transpose`` that only reorder the
  features of one sample, ``Identity`` and inference-mode ``Dropout``.

Constants are initializers (dense or sparse), ``Constant`` nodes, or nodes computed from constants
only (a weight written as ``Transpose(W)`` or ``Cast(W)`` by exporters that do not fold, an int8 weight
behind ``DequantizeLinear``, the bitmask/delta/packed-code decoders of onnxcomp's own compressed files;
evaluated here with the ONNX reference runtime); such nodes used only by the chain disappear with it.

The model input's axis 0 is the batch (a 1-D input has none): a chain starts at the input or at a
tensor inside the graph that keeps that batch axis, so every lowered layer maps one sample to one
sample.  A [features, batch] layout is reached only through a Transpose inside the chain.

Everything else is left alone: the nodes before the chain (e.g. a convolutional feature extractor)
and after it (e.g. Softmax/ArgMax) are written back untouched by the writer.  The chain chosen is
the one with the most linear layers.  A model with none is an ``InputError`` naming the op (or the
tensor read by several nodes) that stops the chain on the path from the model input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from math import prod

import numpy as np
import onnx
from onnx import TensorProto

from .constfold import BATCH, fold_constants
from .conv import Conv, affine_channels, average_pool, conv_output_hw, max_pool
from .errors import InputError
from .ir import LINEAR, RELU, Dense, Network
from .onnxio import SUPPORTED_FLOAT, constant_values, elem_type_name, load_model, real_inputs, value_shape

ROWS, COLS, VECTOR = "rows", "cols", "vector"
"""Layouts of a chain tensor: [batch, features...], [features, batch] (2-D only), or [features]."""


@dataclass
class OnnxContext:
    """What the writer needs to put the chain back into the original graph (opaque to passes)."""

    model: onnx.ModelProto
    chain_nodes: frozenset
    first_chain_node: int
    chain_input: str
    input_layout: str
    input_shape: tuple
    chain_output: str
    output_layout: str
    output_shape: tuple
    dtype: int
    prefix_ops: list = field(default_factory=list)
    input_stop: str = ""
    """When the chain does not start at the model input: where, and why, the path from the input stops."""
    suffix_ops: list = field(default_factory=list)
    source: str = ""

    @property
    def np_dtype(self):
        return SUPPORTED_FLOAT[self.dtype]


class _Stop(Exception):
    """This node cannot be absorbed: the chain ends before it."""


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _node_label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node '{node.name}'" if node.name else f"{node.op_type} node (output '{node.output[0]}')"


class _Walk:
    """State of a chain while it is walked node by node from its input tensor.

    Before the first linear layer the current tensor is ``scale * x[perm] + offset`` elementwise over
    the chain input ``x`` (flattened features).  After it, a linear map may be ``pending`` (no
    activation yet), or an elementwise affine map may wait after a Relu (``post``) to be folded into
    the next layer's columns.
    """

    def __init__(self, shape: tuple, layout: str, n_features: int):
        self.shape = tuple(shape)
        self.layout = layout
        self.n_in = n_features
        self.perm = np.arange(n_features)
        self.scale = np.ones(n_features)
        self.offset = np.zeros(n_features)
        self.layers: list[Dense] = []
        self.pending: tuple[np.ndarray, np.ndarray, str] | None = None
        self.post: tuple[np.ndarray, np.ndarray] | None = None
        self.n_linear = 0
        self.nodes: list[int] = []
        self.pad: tuple | None = None  # an explicit Pad waiting for the Conv / AveragePool it pads
        self.order: np.ndarray | None = None  # after a Relu: current[j] = (post applied to h)[order[j]]

    # ---- geometry ----------------------------------------------------------------------------
    @property
    def batch_axis(self) -> int | None:
        return {ROWS: 0, COLS: 1, VECTOR: None}[self.layout]

    @property
    def feature_shape(self) -> tuple:
        if self.layout == VECTOR:
            return self.shape
        return tuple(d for a, d in enumerate(self.shape) if a != self.batch_axis)

    @property
    def width(self) -> int:
        return int(prod(self.feature_shape))

    @property
    def started(self) -> bool:
        return self.n_linear > 0

    def per_feature(self, const: np.ndarray, channel_axis: int | None = None) -> np.ndarray:
        """Broadcast a constant over one sample's features; refuse if it would vary over the batch
        or grow the tensor."""
        c = np.asarray(const, dtype=np.float64)
        rank = len(self.shape)
        if channel_axis is not None:  # BatchNormalization parameters live on axis 1
            c = c.reshape([-1 if a == channel_axis else 1 for a in range(rank)])
        if c.ndim > rank:
            raise _Stop("constant has more dimensions than the tensor")
        c = c.reshape((1,) * (rank - c.ndim) + c.shape)
        if self.batch_axis is not None and c.shape[self.batch_axis] != 1:
            raise _Stop("constant varies along the batch axis")
        target = [1 if a == self.batch_axis else d for a, d in enumerate(self.shape)]
        try:
            full = np.broadcast_to(c, target)
        except ValueError:
            raise _Stop("constant does not broadcast over the features") from None
        if self.batch_axis is not None:
            full = np.moveaxis(full, self.batch_axis, 0)[0]
        return np.ascontiguousarray(full).reshape(-1)

    # ---- operations --------------------------------------------------------------------------
    def affine(self, s: np.ndarray, t: np.ndarray) -> None:
        """The current tensor becomes ``s * current + t`` (per feature)."""
        if not np.all(np.isfinite(s)) or not np.all(np.isfinite(t)):
            raise _Stop("non-finite constant")
        if not self.started:
            self.scale, self.offset = s * self.scale, s * self.offset + t
        elif isinstance(self.pending, Conv) and self.pending.pool:  # a MaxPool stays one: the map goes after it
            self._finish(LINEAR)
            self.affine(s, t)
        elif isinstance(self.pending, Conv):
            conv = self.pending
            cs = _per_channel(s, conv.out_channels)
            if cs is None:
                raise _Stop("a scale that varies within a channel after a convolution")
            self.pending = replace(conv, kernel=conv.kernel * cs[:, None, None, None],
                                   unit_bias=s.reshape(conv.unit_bias.shape) * conv.unit_bias + t.reshape(conv.unit_bias.shape))
        elif self.pending is not None:
            w, b, src = self.pending
            self.pending = (s[:, None] * w, s * b + t, src)
        else:
            if self.order is not None:  # keep ``post`` in the order of the layer output it acts on
                s_old, t_old = np.empty_like(s), np.empty_like(t)
                s_old[self.order], t_old[self.order] = s, t
                s, t = s_old, t_old
            s0, t0 = self.post if self.post is not None else (np.ones_like(s), np.zeros_like(t))
            self.post = (s * s0, s * t0 + t)

    def linear(self, a: np.ndarray, c: np.ndarray, out_layout: str, source: str) -> None:
        """The current tensor becomes ``a @ current + c`` (a: out x width) in layout ``out_layout``."""
        if not self.started:
            w = np.zeros((a.shape[0], self.n_in))
            w[:, self.perm] = a * self.scale[None, :]
            a, c = w, a @ self.offset + c
        elif self.pending is not None:
            self._finish(LINEAR)
        if self.order is not None:
            w = np.empty_like(a)
            w[:, self.order] = a
            a, self.order = w, None
        if self.post is not None:
            s, t = self.post
            a, c = a * s[None, :], c + a @ t
            self.post = None
        self.pending = (a, c, source)
        self.n_linear += 1
        batch = self.shape[self.batch_axis] if self.batch_axis is not None else None
        self.layout = out_layout
        self.shape = {ROWS: (batch, a.shape[0]), COLS: (a.shape[0], batch), VECTOR: (a.shape[0],)}[out_layout]

    def relu(self, source: str) -> None:
        if not self.started:
            raise _Stop("Relu before any linear layer")
        if self.pending is not None:
            self._finish(RELU)
        elif self.post is not None:
            self._materialise_post(RELU, source)
        elif not self.layers[-1].is_relu:  # a linear layer finished early (a pooling before a reshape)
            self.layers[-1] = replace(self.layers[-1], activation=RELU)
        # otherwise Relu(Relu(x)) == Relu(x): nothing to do

    def _finish(self, activation: str) -> None:
        if isinstance(self.pending, Conv):
            self.layers.append(replace(self.pending, activation=activation, layer_id=len(self.layers)))
        else:
            w, b, src = self.pending
            self.layers.append(Dense(w, b, activation, layer_id=len(self.layers), source=src))
        self.pending = None

    def _materialise_post(self, activation: str, source: str) -> None:
        s, t = self.post
        last = self.layers[-1] if self.layers else None
        if isinstance(last, Conv) and self.order is None:
            # an elementwise map on a feature map: per channel, a 1x1 depthwise convolution
            cs, ct = _per_channel(s, last.out_channels), _per_channel(t, last.out_channels)
            if cs is None or ct is None or last.units is not None:
                raise _Stop("an elementwise map that varies within a channel of a feature map")
            self.layers.append(replace(affine_channels(last.out_shape, cs, ct, source=source),
                                       activation=activation, layer_id=len(self.layers)))
        else:
            if self.order is not None:
                raise _Stop("an elementwise map after reordered features")
            self.layers.append(Dense(np.diag(s), t, activation, layer_id=len(self.layers), source=source))
        self.post = None

    @property
    def feature_map(self) -> tuple:
        """(C, H, W) of the current NCHW tensor (one sample)."""
        if self.layout != ROWS or len(self.shape) != 4 or any(not isinstance(d, int) for d in self.shape[1:]):
            raise _Stop("needs a batch-first 4-D (NCHW) tensor of static size")
        return tuple(int(d) for d in self.shape[1:])

    def conv(self, kernel: np.ndarray, bias: np.ndarray, strides, pads, dilations, group: int, source: str,
             op: str = "Conv") -> None:
        """The current feature map goes through a convolution (pads add to any explicit Pad before it)."""
        c, h, w = self.feature_map
        pads = tuple(int(p) for p in pads)
        if self.pad is not None:
            pads = tuple(a + b for a, b in zip(pads, self.pad))
            self.pad = None
        kernel = np.asarray(kernel, dtype=np.float64)
        bias = np.asarray(bias, dtype=np.float64)
        cg = kernel.shape[1]
        if cg * group != c:
            raise _Stop(f"kernel {list(kernel.shape)} with group {group} does not read {c} channels")
        # the per-channel affine map in front (input normalisation, or BatchNormalization after a Relu)
        in_perm = None
        if not self.started:
            if not np.array_equal(self.perm, np.arange(self.n_in)):
                in_perm = tuple(int(i) for i in self.perm)  # e.g. an NHWC input and its Transpose
            s, t = self.scale, self.offset
        elif isinstance(self.pending, Conv):
            self._finish(LINEAR)
            s, t = None, None
        elif self.pending is not None:
            raise _Stop("a convolution after a dense layer")
        else:
            if self.order is not None:
                raise _Stop("a convolution of reordered features")
            s, t = self.post if self.post is not None else (None, None)
            self.post = None
        if s is not None and not (np.all(s == 1.0) and np.all(t == 0.0)):
            cs, ct = _per_channel(s, c), _per_channel(t, c)
            if cs is None or ct is None:
                raise _Stop("an elementwise map that varies within a channel before a convolution")
            if not any(pads) or not np.any(ct):
                # padded zeros stay zeros only when there is no shift to fold
                in_ch = np.arange(c).reshape(group, cg)  # input channel read by each (group, slice)
                per_out = in_ch[np.arange(kernel.shape[0]) // (kernel.shape[0] // group)]  # (C_out, cg)
                bias = bias + np.einsum("oikl,oi->o", kernel, ct[per_out])
                kernel = kernel * cs[per_out][:, :, None, None]
            else:
                if in_perm is not None:
                    raise _Stop("a shifted, reordered input before a padded convolution")
                self.layers.append(affine_channels((c, h, w), cs, ct, layer_id=len(self.layers),
                                                   source="per-channel affine before a padded convolution"))
                self.n_linear += 1
        try:
            if op == "AveragePool":
                if in_perm is not None:
                    raise _Stop("a pooling of the reordered model input")
                layer = average_pool((c, h, w), kernel.shape[2:], strides, pads, source=source)
            else:
                layer = Conv(kernel, bias, (c, h, w), strides, pads, dilations, group, activation=LINEAR,
                             source=source, in_perm=in_perm)
        except ValueError as exc:
            raise _Stop(str(exc)) from None
        self.pending = layer
        self.n_linear += 1
        batch = self.shape[0]
        self.shape = (batch,) + layer.out_shape

    def max_pool(self, kernel_hw: tuple, strides: tuple, pads: tuple, source: str) -> None:
        """The current feature map goes through a MaxPool: the layers of :func:`onnxcomp.conv.max_pool`."""
        shape = self.feature_map
        if not self.started:
            raise _Stop("MaxPool before any linear layer")
        if isinstance(self.pending, Conv):
            self._finish(LINEAR)
        elif self.pending is not None:
            raise _Stop("a MaxPool after a dense layer")
        if self.order is not None:
            raise _Stop("a MaxPool of reordered features")
        if self.post is not None:
            self._materialise_post(LINEAR, "elementwise affine before a MaxPool")
        nonneg = self.layers[-1].is_relu
        zero = self.pad if self.pad is not None else (0, 0, 0, 0)
        self.pad = None
        try:
            parts = max_pool(shape, kernel_hw, strides, pads, nonnegative=nonneg, zero_pads=zero, source=source)
        except ValueError as exc:
            raise _Stop(str(exc)) from None
        for layer in parts[:-1]:
            self.layers.append(replace(layer, layer_id=len(self.layers)))
        self.pending = parts[-1]
        self.n_linear += len(parts)
        self.shape = (self.shape[0],) + parts[-1].out_shape

    def finish(self) -> list[Dense]:
        if self.pending is not None:
            self._finish(LINEAR)
        if self.post is not None:
            self._materialise_post(LINEAR, "elementwise affine after the last Relu")
        return self.layers

    def relayout(self, new_shape: tuple, new_layout: str, order: np.ndarray | None = None) -> None:
        """A reshape/transpose: same features, maybe reordered (``order[j]`` = old index of new j)."""
        if order is not None and not np.array_equal(order, np.arange(order.size)):
            if isinstance(self.pending, Conv):  # a linear convolution (a pooling): a layer of its own
                self._finish(LINEAR)
            if self.started and self.pending is not None:
                raise _Stop("feature reordering after a linear layer")
            if self.started:  # after a Relu: the next dense layer's columns take the order
                self.order = order if self.order is None else self.order[order]
            else:
                self.perm, self.scale, self.offset = self.perm[order], self.scale[order], self.offset[order]
        last = self.pending if self.pending is not None else (self.layers[-1] if self.layers else None)
        if self.started and not isinstance(last, Conv) and new_layout != VECTOR and len(new_shape) != 2:
            raise _Stop("reshape to rank other than 2 after a linear layer")
        self.shape, self.layout = tuple(new_shape), new_layout


class _Lowerer:
    def __init__(self, model: onnx.ModelProto, source: str, conv: bool = False):
        self.conv = conv
        self.model = model
        self.source = source
        self.graph = model.graph
        self.consts = constant_values(model)
        self.nodes = list(self.graph.node)
        self._shapes: dict[str, tuple] | None = None
        self.elem_type = TensorProto.FLOAT
        self._types: dict[str, int] = {}
        has_shape = any(node.op_type == "Shape" for node in self.nodes)
        self.folded = fold_constants(model, self.consts, self.shapes() if has_shape else None)
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            if node.op_type == "Shape" and i in self.folded:
                continue  # reads only the (static) shape of its input, not its values
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(i)
        self.graph_outputs = {o.name for o in self.graph.output}

    # ---- tensor facts ------------------------------------------------------------------------
    def shapes(self) -> dict[str, tuple]:
        if self._shapes is None:
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model, strict_mode=False)
                infos = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
            except Exception:
                infos = list(self.graph.value_info) + list(self.graph.input) + list(self.graph.output)
            self._shapes = {}
            for vi in infos:
                if vi.type.HasField("tensor_type"):
                    self._shapes[vi.name] = value_shape(vi)
                    self._types[vi.name] = vi.type.tensor_type.elem_type
        return self._shapes

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    # ---- walking -----------------------------------------------------------------------------
    def walk(self, start: str, shape: tuple, layout: str) -> _Walk:
        fshape = shape if layout == VECTOR else tuple(d for a, d in enumerate(shape) if a != {ROWS: 0, COLS: 1}[layout])
        if any(not isinstance(d, int) for d in fshape):
            raise _Stop("non-static feature dimension")
        state = _Walk(shape, layout, int(prod(fshape)))
        current = start
        while True:
            users = self.consumers.get(current, [])
            if current in self.graph_outputs or len(users) != 1:
                # The chain cannot absorb a tensor someone else also reads; say so if nothing was lowered.
                if current in self.graph_outputs and users:
                    state.stop_reason = f"tensor '{current}', a graph output that also feeds other nodes"
                elif len(users) > 1:
                    ops = ", ".join(self.nodes[i].op_type for i in users)
                    state.stop_reason = f"tensor '{current}', which feeds {len(users)} nodes ({ops})"
                break
            idx = users[0]
            node = self.nodes[idx]
            snapshot = _copy_walk(state)
            try:
                try:
                    out = self.apply(state, node, current)
                except (ValueError, IndexError) as exc:
                    # Constants whose shapes contradict the op (a malformed file; onnxruntime refuses it too).
                    raise _Stop(f"constants of unexpected shape ({exc})") from None
            except _Stop as stop:
                state = snapshot
                state.stop_reason = f"{_node_label(node)}: {stop}"
                state.stop_node = idx
                break
            state.nodes.append(idx)
            current = out
        state.end = current
        return state

    def apply(self, st: _Walk, node: onnx.NodeProto, data: str) -> str:
        """Absorb ``node`` (whose data input is ``data``) into the walk; return its output name."""
        ins = list(node.input)
        if node.domain not in ("", "ai.onnx"):
            raise _Stop(f"op from domain '{node.domain}'")
        if ins.count(data) != 1:
            raise _Stop("uses the chain tensor twice")
        others = [n for n in ins if n and n != data]
        if any(self.const(n) is None for n in others if node.op_type not in ("Dropout",)):
            raise _Stop("an operand is not a constant")
        extra_outputs = [o for o in node.output[1:] if o]
        if any(o in self.graph_outputs or self.consumers.get(o) for o in extra_outputs):
            raise _Stop("a secondary output is used")
        handler = HANDLERS.get(node.op_type)
        if handler is None:
            raise _Stop("op not supported in the chain")
        if node.op_type in CONV_OPS and not self.conv:
            raise _Stop("op not supported in the chain")
        if st.pad is not None and node.op_type not in ("Conv", "AveragePool"):
            raise _Stop("a Pad that no convolution or average pooling absorbs")
        handler(self, st, _Call(node, _attrs(node), ins, data, others, node.name or node.output[0]))
        return node.output[0]

    def _apply_target_shape(self, st: _Walk, target: list, feats: int) -> None:
        """Decide the layout after a reshape to ``target`` (ints, -1 for one free dim, or symbols)."""
        batch = st.shape[st.batch_axis] if st.batch_axis is not None else 1
        if st.layout == COLS:
            raise _Stop("reshape of a [features, batch] tensor")
        if len(target) == 0:
            raise _Stop("reshape to a scalar")
        if len(target) == 1:
            if st.layout == VECTOR or batch == 1:
                if target[0] in (-1, feats):
                    st.relayout((feats,), VECTOR)
                    return
            raise _Stop("reshape that merges the batch into the features")
        head, tail = target[0], target[1:]
        tail_known = [d for d in tail if isinstance(d, int) and d != -1]
        free = sum(1 for d in tail if d == -1 or not isinstance(d, int))
        if st.layout == VECTOR:
            if head == 1 and (prod(tail_known) == feats or free == 1):
                st.relayout((1,) + tuple(d if isinstance(d, int) and d != -1 else feats // max(prod(tail_known), 1) for d in tail), ROWS)
                return
            if len(target) == 2 and target[1] == 1 and head in (-1, feats):
                st.relayout((feats, 1), COLS)
                return
            raise _Stop("reshape of a vector")
        head_is_batch = head == -1 or head == batch or (not isinstance(head, int))
        if not head_is_batch:
            raise _Stop("reshape that changes the batch axis")
        if free == 0 and prod(tail_known) != feats:
            raise _Stop(f"reshape that mixes the batch and the features (target {list(target)} for {feats} "
                        f"features per sample)")
        if free > 1 or (free == 1 and head == -1):
            if not (head == -1 and free == 0):
                raise _Stop("ambiguous reshape")
        if free == 1:
            rest = feats // max(prod(tail_known), 1)
            tail = [rest if (d == -1 or not isinstance(d, int)) else d for d in tail]
        st.relayout((batch,) + tuple(tail), ROWS)

    # ---- choosing the chain ------------------------------------------------------------------
    def candidates(self):
        """(tensor name, shape) of every place a chain might start.

        The model input's axis 0 is the batch (rank >= 2) or there is no batch axis (rank 1): that is
        how samples are fed and how a domain box is sized.  A tensor inside the graph can start a
        chain only when it keeps that batch axis, i.e. its axis 0 is the input's axis 0 (same size or
        same symbol); a tensor whose axis 0 mixes samples and features (``Reshape(x, [-1, 2])``) is
        not a batch of samples.
        """
        inputs = real_inputs(self.model)
        in_shape = value_shape(inputs[0])
        yield inputs[0].name, in_shape
        shapes = self.shapes()
        for node in self.nodes:
            for out in node.output[:1]:
                if out not in shapes or out in self.consts or not shapes[out]:
                    continue
                shape = shapes[out]
                same_batch = (len(shape) == 1) if len(in_shape) == 1 else (len(shape) >= 2 and shape[0] == in_shape[0])
                if same_batch:
                    yield out, shape

    def best_chain(self) -> _Walk:
        best, first_stop = None, None
        for k, (name, shape) in enumerate(self.candidates()):
            if not shape:
                continue
            # A [features, batch] layout is only ever reached through a Transpose inside the walk.
            layout = VECTOR if len(shape) == 1 else ROWS
            try:
                walk = self.walk(name, shape, layout)
            except _Stop:
                continue
            walk.start = name
            walk.start_layout = layout
            if k == 0 and first_stop is None:
                first_stop = walk
            if walk.n_linear and (best is None or (walk.n_linear, len(walk.nodes)) > (best.n_linear, len(best.nodes))):
                best = walk
        if best is None:
            where = ""
            if first_stop is not None and getattr(first_stop, "stop_reason", None):
                where = f": on the path from input '{first_stop.start}' the chain stops at {first_stop.stop_reason}"
            elif first_stop is not None:
                where = f": input '{first_stop.start}' reaches no Gemm/MatMul"
            raise InputError(f"{self.source}: no lowerable Gemm/MatMul+Relu chain{where}")
        if best is not first_stop and first_stop is not None:
            best.input_stop = getattr(first_stop, "stop_reason", "") or ""
        return best


def _per_channel(v: np.ndarray, channels: int) -> np.ndarray | None:
    """``v`` (one value per feature of a C x H x W map) as one value per channel, or None if it varies
    within a channel."""
    m = np.asarray(v, dtype=np.float64).reshape(channels, -1)
    return m[:, 0].copy() if np.all(m == m[:, :1]) else None


def _copy_walk(w: _Walk) -> _Walk:
    c = _Walk.__new__(_Walk)
    c.__dict__.update(w.__dict__)
    c.layers = list(w.layers)
    c.nodes = list(w.nodes)
    return c


# ---- op handlers: one per op pattern, each absorbing one node into the walk -------------------------------------
@dataclass(frozen=True)
class _Call:
    """One node as a handler sees it: attributes, inputs, which input is the chain tensor (``data``), the
    other (constant) operands, and the name layers made from it are labelled with (``src``)."""

    node: onnx.NodeProto
    attrs: dict
    ins: list
    data: str
    others: list
    src: str


CONV_OPS = ("Conv", "AveragePool", "GlobalAveragePool", "MaxPool", "Pad")
"""Ops lowered into convolution layers only when asked (``lower(..., conv=True)``): the passes downstream
of the reader do not all take convolution layers yet, so by default they stay in the opaque prefix."""

HANDLERS: dict = {}
"""op type -> handler(lowerer, walk, call); the reader's table of what the chain absorbs."""


def _handles(*ops: str):
    def deco(fn):
        for op in ops:
            HANDLERS[op] = fn
        return fn
    return deco


@_handles("Identity")
def _identity(lw: _Lowerer, st: _Walk, c: _Call) -> None:
    """Identity(x) -> x."""


@_handles("Cast")
def _cast(lw: _Lowerer, st: _Walk, c: _Call) -> None:
    """Cast(x) to the chain's own element type -> x (any other Cast ends the chain)."""
    if c.attrs.get("to") != lw.elem_type:
        raise _Stop("Cast to another type")


@_handles("Dropout")
def _dropout(lw: _Lowerer, st: _Walk, c: _Call) -> None:
    """Dropout(x) in inference mode -> x."""
    if c.ins[0] != c.data:
        raise _Stop("the chain tensor is not Dropout's data input")
    if len(c.ins) > 2 and c.ins[2]:
        mode = lw.const(c.ins[2])
        if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
            raise _Stop("Dropout in training mode")


@_handles("Relu")
def _relu(lw: _Lowerer, st: _Walk, c: _Call) -> None:
    """Relu(pending linear layer) -> Dense(relu); Relu(Relu(x)) -> Relu(x)."""
    st.relu(c.src)


@_handles("Add", "Sub", "Mul", "Div")
def _elementwise(lw: _Lowerer, st: _Walk, c: _Call) -> None:
    """x + c, x - c, c - x, x * c, x / c (c constant per feature) -> s * x + t, folded into the first
    layer's columns (input normalisation), the pending layer's rows, or after a Relu the next layer's columns."""
    op = c.node.op_type
    pc = st.per_feature(lw.const(c.others[0]).astype(np.float64))
    first = c.ins[0] == c.data
    if op == "Add":
        st.affine(np.ones_like(pc), pc)
    elif op == "Sub":
        st.affine(np.ones_like(pc), -pc) if first else st.affine(-np.ones_like(pc), pc)
    elif op == "Mul":
        st.affine(pc, np.zeros_like(pc))
    else:
        if not first:
            raise _Stop("division by the chain tensor is not affine")
        if np.any(pc == 0):
            raise _Stop("division by a zero constant")
        st.affine(1.0 / pc, np.zeros_like(pc))


@_handles("BatchNormalization")
def _batch_norm(lw: _Lowerer, st: _Walk, c: _Call) -> None:
    """BatchNormalization(x) in inference form -> (scale / sqrt(var + eps)) * x + (bias - mean * scale /
    sqrt(var + eps)), folded like any elementwise affine map."""
    if c.ins[0] != c.data or c.attrs.get("training_mode", 0):
        raise _Stop("BatchNormalization not in inference form")
    if st.layout != ROWS:
        raise _Stop("BatchNormalization on a non batch-first tensor")
    scale, bias, mean, var = (lw.const(n).astype(np.float64) for n in c.ins[1:5])
    s = scale / np.sqrt(var + float(c.attrs.get("epsilon", 1e-5)))
    st.affine(st.per_feature(s, channel_axis=1), st.per_feature(bias - mean * s, channel_axis=1))


@_handles("Gemm")
def _gemm(lw: _Lowerer, st: _Walk, c: _Call) -> None:
    """Gemm(x, B, C) = alpha * x' @ B' + beta * C (any transA/transB, either side) -> Dense(alpha * W, beta * C)."""
    a, ins, data = c.attrs, c.ins, c.data
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    ta, tb = int(a.get("transA", 0)), int(a.get("transB", 0))
    if len(ins) > 2 and ins[2] == data:
        raise _Stop("the chain tensor is Gemm's bias C")
    if st.layout == VECTOR or len(st.shape) != 2:
        raise _Stop("Gemm needs a 2-D tensor")
    if ins[0] == data:  # Y = data' @ B'  with data' = [N, in]
        if (st.layout, ta) not in ((ROWS, 0), (COLS, 1)):
            raise _Stop("Gemm contracts the batch axis")
        w = lw.const(ins[1]).astype(np.float64)
        w = w.T if tb else w  # [in, out]
        mat, out_layout = alpha * w.T, ROWS
    else:  # Y = A' @ data'  with data' = [in, N]
        if (st.layout, tb) not in ((COLS, 0), (ROWS, 1)):
            raise _Stop("Gemm contracts the batch axis")
        w = lw.const(ins[0]).astype(np.float64)
        mat, out_layout = alpha * (w.T if ta else w), COLS
    if mat.ndim != 2 or mat.shape[1] != st.width:
        raise _Stop(f"weight shape {list(w.shape)} does not match {st.width} input features")
    bias = np.zeros(mat.shape[0])
    if len(ins) > 2 and ins[2]:
        const = lw.const(ins[2]).astype(np.float64) * beta
        probe = _Walk((None, mat.shape[0]) if out_layout == ROWS else (mat.shape[0], None), out_layout, 0)
        bias = probe.per_feature(const)
    st.linear(mat, bias, out_layout, c.src)


@_handles("MatMul")
def _matmul(lw: _Lowerer, st: _Walk, c: _Call) -> None:
    """MatMul(x, W) or MatMul(W, x) with a constant 2-D W -> Dense(W) (an Add after it becomes its bias)."""
    if len(st.shape) > 2:
        raise _Stop("MatMul on a tensor of rank > 2")
    if c.ins[0] == c.data:  # data @ W
        w = lw.const(c.ins[1]).astype(np.float64)
        if st.layout == COLS or w.ndim != 2:
            raise _Stop("MatMul contracts the batch axis")
        mat = w.T
    else:  # W @ data
        w = lw.const(c.ins[0]).astype(np.float64)
        if st.layout == ROWS or w.ndim != 2:
            raise _Stop("MatMul contracts the batch axis")
        mat = w
    if mat.shape[1] != st.width:
        raise _Stop(f"weight shape {list(w.shape)} does not match {st.width} input features")
    st.linear(mat, np.zeros(mat.shape[0]), st.layout, c.src)


@_handles("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def _reshape(lw: _Lowerer, st: _Walk, c: _Call) -> None:
    """Flatten / Reshape / Squeeze / Unsqueeze that keep the batch axis and only regroup one sample's
    features -> nothing (a new shape for the same features in the same order)."""
    op, a = c.node.op_type, c.attrs
    shape = list(st.shape)
    feats = st.width
    if op == "Flatten":
        axis = int(a.get("axis", 1))
        axis = axis + len(shape) if axis < 0 else axis
        if st.layout != ROWS or axis != 1:
            raise _Stop("Flatten that does not keep the batch axis")
        st.relayout((shape[0], feats), ROWS)
        return
    if op == "Reshape":
        target = lw.const(c.node.input[1])
        if target is None:
            raise _Stop("Reshape with a computed shape")
        target = [int(v) for v in np.asarray(target).reshape(-1)]
        allowzero = int(a.get("allowzero", 0))
        target = [shape[i] if ((v == 0 and not allowzero) or (v == BATCH and i == 0)) and i < len(shape) else v
                  for i, v in enumerate(target)]
        if any(abs(v) >= BATCH for v in target if isinstance(v, int)):
            raise _Stop("Reshape to a shape computed from the batch size")
    else:
        axes = a.get("axes")
        if axes is None and len(c.node.input) > 1 and c.node.input[1]:
            axes = lw.const(c.node.input[1])
            if axes is None:
                raise _Stop(f"{op} with computed axes")
        inferred = lw.shapes().get(c.node.output[0])
        if inferred is None:
            raise _Stop(f"{op} output shape unknown")
        target = [d if isinstance(d, int) else -1 for d in inferred]
    lw._apply_target_shape(st, target, feats)


@_handles("Transpose")
def _transpose(lw: _Lowerer, st: _Walk, c: _Call) -> None:
    """Transpose of [N, F] <-> [F, N] -> a layout change; one that permutes one sample's feature axes
    (before the first layer) -> the first layer's columns permuted."""
    rank = len(st.shape)
    perm = list(c.attrs.get("perm", list(range(rank))[::-1]))
    if st.layout == VECTOR:
        return
    if rank == 2 and perm == [1, 0]:
        st.relayout((st.shape[1], st.shape[0]), COLS if st.layout == ROWS else ROWS)
        return
    if st.layout != ROWS or perm[0] != 0:
        raise _Stop("Transpose that moves the batch axis")
    fshape = st.feature_shape
    order = np.arange(st.width).reshape(fshape).transpose([p - 1 for p in perm[1:]]).reshape(-1)
    st.relayout((st.shape[0],) + tuple(fshape[p - 1] for p in perm[1:]), ROWS, order)


def _spatial_attrs(c: _Call, kernel_hw: tuple, in_hw: tuple) -> tuple:
    """(strides, pads (top, left, bottom, right), dilations) of a 2-D Conv / pooling node; auto_pad resolved."""
    a = c.attrs
    strides = tuple(a.get("strides", (1, 1)))
    dilations = tuple(a.get("dilations", (1, 1)))
    if len(strides) != 2 or len(dilations) != 2:
        raise _Stop("only 2-D convolutions and pooling")
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("NOTSET", ""):
        p = tuple(a.get("pads", (0, 0, 0, 0)))
        if len(p) != 4:
            raise _Stop("only 2-D convolutions and pooling")
        pads = (p[0], p[1], p[2], p[3])
    elif auto == "VALID":
        pads = (0, 0, 0, 0)
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [max((-(-in_hw[i] // strides[i]) - 1) * strides[i] + dilations[i] * (kernel_hw[i] - 1) + 1 - in_hw[i], 0)
                 for i in range(2)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        pads = (small[0], small[1], big[0], big[1]) if auto == "SAME_UPPER" else (big[0], big[1], small[0], small[1])
    else:
        raise _Stop(f"auto_pad {auto}")
    if any(p < 0 for p in pads):
        raise _Stop("negative padding")
    return strides, pads, dilations


@_handles("Conv")
def _conv(lw: _Lowerer, st: _Walk, c: _Call) -> None:
    """Conv(x, W, B) over a batch-first NCHW map (any stride, padding, dilation, group) -> Conv layer; a
    BatchNormalization / per-channel affine right after it folds into its kernel, one before it (input
    normalisation, or after a Relu) into its kernel when padding allows, else a 1x1 depthwise layer."""
    if c.ins[0] != c.data:
        raise _Stop("the chain tensor is not Conv's data input")
    w = lw.const(c.ins[1])
    if w is None or w.ndim != 4:
        raise _Stop("only 2-D convolutions with a constant kernel")
    w = w.astype(np.float64)
    bias = lw.const(c.ins[2]).astype(np.float64).reshape(-1) if len(c.ins) > 2 and c.ins[2] else np.zeros(w.shape[0])
    _, h, wd = st.feature_map
    if st.pad is not None:
        h, wd = h + st.pad[0] + st.pad[2], wd + st.pad[1] + st.pad[3]
    strides, pads, dil = _spatial_attrs(c, w.shape[2:], (h, wd))
    st.conv(w, bias, strides, pads, dil, int(c.attrs.get("group", 1)), c.src)


@_handles("Gather")
def _gather(lw: _Lowerer, st: _Walk, c: _Call) -> None:
    """Gather of some flattened units of a convolution (axis 1, constant increasing indices: what the writer
    emits when units of a feature map are proven constant) -> those units are the layer's output."""
    idx = lw.const(c.ins[1]) if len(c.ins) > 1 and c.ins[0] == c.data else None
    if idx is None:
        raise _Stop("Gather of the chain tensor with computed indices")
    idx = np.asarray(idx).reshape(-1) if np.asarray(idx).ndim == 1 else None
    if idx is None or int(c.attrs.get("axis", 0)) != 1 or st.layout != ROWS or len(st.shape) != 2:
        raise _Stop("Gather that is not a selection of features (axis 1 of [N, F], 1-D indices)")
    if not st.started:  # a permutation of the model input (what the writer emits for an NHWC input)
        order = np.where(idx < 0, idx + st.width, idx)
        if sorted(order.tolist()) != list(range(st.width)):
            raise _Stop("Gather of input features that is not a permutation")
        st.relayout(st.shape, ROWS, order)
        return
    if isinstance(st.pending, Conv):
        st._finish(LINEAR)
    last = st.layers[-1] if st.layers else None
    if not isinstance(last, Conv) or st.pending is not None or st.post is not None or st.order is not None:
        raise _Stop("Gather of features that are not a convolution's output")
    idx = np.where(idx < 0, idx + st.width, idx)
    if np.any(idx < 0) or np.any(idx >= st.width) or np.any(np.diff(idx) <= 0):
        raise _Stop("Gather with indices that are not increasing and in range")
    keep = np.zeros(last.n_out, bool)
    keep[idx] = True
    st.layers[-1] = last.keep_units(keep)
    st.shape = (st.shape[0], int(idx.size))


@_handles("AveragePool", "GlobalAveragePool")
def _average_pool(lw: _Lowerer, st: _Walk, c: _Call) -> None:
    """AveragePool (padded zeros counted, or no padding; floor mode) / GlobalAveragePool -> a depthwise Conv
    layer with kernel 1/(kh kw), written back as the pooling op."""
    ch, h, wd = st.feature_map
    if st.pad is not None:
        h, wd = h + st.pad[0] + st.pad[2], wd + st.pad[1] + st.pad[3]
    if c.node.op_type == "GlobalAveragePool":
        if st.pad is not None:
            raise _Stop("a Pad before a global pooling")
        kernel_hw, strides, pads, dil = (h, wd), (1, 1), (0, 0, 0, 0), (1, 1)
    else:
        kernel_hw = tuple(c.attrs.get("kernel_shape", ()))
        if len(kernel_hw) != 2:
            raise _Stop("only 2-D pooling")
        strides, pads, dil = _spatial_attrs(c, kernel_hw, (h, wd))
        if dil != (1, 1):
            raise _Stop("dilated pooling")
        if (any(pads) or st.pad is not None) and not c.attrs.get("count_include_pad", 0):
            raise _Stop("AveragePool over padding that is not counted is not a fixed kernel")
        _check_ceil_mode(c, (h, wd), kernel_hw, strides, pads)
    kernel = np.full((ch, 1) + tuple(kernel_hw), 1.0 / (kernel_hw[0] * kernel_hw[1]))
    st.conv(kernel, np.zeros(ch), strides, pads, (1, 1), ch, c.src, op="AveragePool")


@_handles("MaxPool")
def _max_pool(lw: _Lowerer, st: _Walk, c: _Call) -> None:
    """MaxPool (2-D, floor mode or a ceil mode without partial windows, no dilation, one output) -> the
    exact ReLU layers of :func:`onnxcomp.conv.max_pool`, written back as one MaxPool."""
    if len([o for o in c.node.output if o]) > 1:
        raise _Stop("MaxPool with an indices output")
    ch, h, wd = st.feature_map
    if st.pad is not None:
        h, wd = h + st.pad[0] + st.pad[2], wd + st.pad[1] + st.pad[3]
    kernel_hw = tuple(int(v) for v in c.attrs.get("kernel_shape", ()))
    if len(kernel_hw) != 2:
        raise _Stop("only 2-D pooling")
    strides, pads, dil = _spatial_attrs(c, kernel_hw, (h, wd))
    if dil != (1, 1) or c.attrs.get("storage_order", 0):
        raise _Stop("dilated MaxPool, or one with a column-major storage order")
    _check_ceil_mode(c, (h, wd), kernel_hw, strides, pads)
    st.max_pool(kernel_hw, strides, pads, c.src)


def _check_ceil_mode(c: _Call, hw: tuple, kernel_hw: tuple, strides: tuple, pads: tuple) -> None:
    """A pooling in ceil mode is read only when no window is partial (then it is the floor-mode one)."""
    if c.attrs.get("ceil_mode", 0):
        floor = conv_output_hw(hw, kernel_hw, strides, pads, (1, 1))
        ceil = tuple(-(-(size + pads[i] + pads[i + 2] - kernel_hw[i]) // strides[i]) + 1
                     for i, size in enumerate(hw))
        if floor != ceil:
            raise _Stop(f"{c.node.op_type} in ceil mode with a partial window")


@_handles("Pad")
def _pad(lw: _Lowerer, st: _Walk, c: _Call) -> None:
    """Pad with zeros of the spatial axes of an NCHW map -> extra padding of the Conv / AveragePool after it."""
    mode = c.attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode != "constant":
        raise _Stop(f"Pad in {mode} mode")
    pads = c.attrs.get("pads")
    if pads is None and len(c.ins) > 1 and c.ins[1]:
        pads = lw.const(c.ins[1])
    value = 0.0
    if len(c.ins) > 2 and c.ins[2]:
        value = float(np.asarray(lw.const(c.ins[2])).reshape(-1)[0])
    value = float(c.attrs.get("value", value))
    if len(c.ins) > 3 and c.ins[3]:
        raise _Stop("Pad with axes")
    _ = st.feature_map  # refuses anything but an NCHW map
    p = [int(v) for v in np.asarray(pads).reshape(-1)]
    if value != 0.0 or len(p) != 8 or any(p[i] for i in (0, 1, 4, 5)) or any(v < 0 for v in p):
        raise _Stop("Pad other than zeros around the spatial axes")
    if st.pad is not None:
        raise _Stop("two Pads in a row")
    st.pad = (p[2], p[3], p[6], p[7])


def check_input(model: onnx.ModelProto, source: str = "model") -> onnx.ValueInfoProto:
    """The model's single input, refused (``InputError`` naming ``source``) unless it is a float32 or
    float64 tensor with static, positive dims except a batch axis 0 (a 1-D input has no batch axis)."""
    inputs = real_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise InputError(f"{source}: model has {len(inputs)} inputs ({names}); onnxcomp handles single-input models")
    inp = inputs[0]
    if not inp.type.HasField("tensor_type"):
        raise InputError(f"{source}: input '{inp.name}' is not a tensor")
    elem = inp.type.tensor_type.elem_type
    if elem not in SUPPORTED_FLOAT:
        raise InputError(
            f"{source}: input '{inp.name}' is {elem_type_name(elem)}; onnxcomp supports float32 and float64 models"
        )
    shape = value_shape(inp)
    if not shape:
        raise InputError(f"{source}: input '{inp.name}' has no shape")
    for axis, d in enumerate(shape):
        if (axis > 0 or len(shape) == 1) and not isinstance(d, int):
            what = "only axis 0 (batch) may be dynamic" if len(shape) > 1 else "a 1-D input has no batch axis"
            raise InputError(f"{source}: input '{inp.name}' has dynamic dimension {d!r} at axis {axis}; {what}")
        if isinstance(d, int) and d <= 0:
            raise InputError(f"{source}: input '{inp.name}' has dimension {d} at axis {axis}")
    return inp


def lower(model: onnx.ModelProto, source: str = "model", conv: bool = False) -> Network:
    """Lower an in-memory ONNX model to a ``Network`` (raises ``InputError`` with ``source`` named).

    ``conv``: also lower Conv / AveragePool / GlobalAveragePool / Pad (and BatchNormalization around them)
    into ``onnxcomp.conv.Conv`` layers, so the chain can start at the input of a convolutional model."""
    inp = check_input(model, source)
    elem = inp.type.tensor_type.elem_type
    lw = _Lowerer(model, source, conv=conv)
    lw.elem_type = elem
    walk = lw.best_chain()
    layers = walk.finish()
    for node_idx in walk.nodes:
        node = lw.nodes[node_idx]
        for name in node.input:
            c = lw.const(name)
            if c is not None and np.issubdtype(c.dtype, np.floating) and not np.all(np.isfinite(c)):
                raise InputError(f"{source}: {_node_label(node)} has NaN or Inf in constant '{name}'")
    # Finite constants can still overflow when folded together (1e200 * 1e200 in a float64 model).
    for k, layer in enumerate(layers):
        params = layer.kernel if isinstance(layer, Conv) else layer.weight
        if not (np.all(np.isfinite(params)) and np.all(np.isfinite(layer.bias))):
            raise InputError(f"{source}: layer {k} (from '{layer.source}') has non-finite weights after folding its "
                             f"constants (values beyond float range)")
    chain_nodes = set(walk.nodes)
    # Nodes computing constants (Constant, folded Transpose/Cast/...) used only by the chain disappear
    # with it; walking backwards catches a constant computed from another one.
    for i in range(len(lw.nodes) - 1, -1, -1):
        node = lw.nodes[i]
        if node.op_type != "Constant" and i not in lw.folded:
            continue
        outs = [o for o in node.output if o]
        users = [u for o in outs for u in lw.consumers.get(o, [])]
        if users and all(u in chain_nodes for u in users) and not any(o in lw.graph_outputs for o in outs):
            chain_nodes.add(i)
    start_shape = value_shape(inp) if walk.start == inp.name else lw.shapes()[walk.start]
    dtype = elem if walk.start == inp.name else lw._types.get(walk.start, elem)
    if dtype not in SUPPORTED_FLOAT:
        raise InputError(f"{source}: chain input '{walk.start}' is {elem_type_name(dtype)}")
    main_nodes = [i for i in walk.nodes]
    first = min(main_nodes)
    ancestors = _ancestors(lw, walk.start)
    ctx = OnnxContext(
        model=model,
        chain_nodes=frozenset(chain_nodes),
        first_chain_node=first,
        chain_input=walk.start,
        input_layout=walk.start_layout,
        input_shape=tuple(start_shape),
        chain_output=walk.end,
        output_layout=walk.layout,
        output_shape=tuple(walk.shape),
        dtype=dtype,
        prefix_ops=[lw.nodes[i].op_type for i in sorted(ancestors)],
        input_stop=getattr(walk, "input_stop", "") if ancestors else "",
        suffix_ops=[n.op_type for i, n in enumerate(lw.nodes) if i not in chain_nodes and i not in ancestors],
        source=source,
    )
    return Network(layers=tuple(layers), input_size=walk.n_in, onnx=ctx)


def _ancestors(lw: _Lowerer, tensor: str) -> set[int]:
    producer = {out: i for i, n in enumerate(lw.nodes) for out in n.output}
    seen: set[int] = set()
    stack = [tensor]
    while stack:
        t = stack.pop()
        i = producer.get(t)
        if i is None or i in seen:
            continue
        seen.add(i)
        stack.extend(n for n in lw.nodes[i].input if n)
    return seen


def read(path: str | os.PathLike, conv: bool = False) -> Network:
    """Load and lower an ONNX file (``conv``: see :func:`lower`)."""
    return lower(load_model(path), source=str(path), conv=conv)


def has_prefix(net: Network) -> bool:
    """True when the chain does not start at the model input (an opaque prefix computes it)."""
    ctx = net.onnx
    return ctx is not None and ctx.chain_input != real_inputs(ctx.model)[0].name


def model_input_info(net: Network) -> tuple[str, tuple, int]:
    """(name, shape, element type) of the model input."""
    inp = real_inputs(net.onnx.model)[0]
    return inp.name, value_shape(inp), inp.type.tensor_type.elem_type


def model_input_features(net: Network) -> int:
    """Number of features of one model-input sample (the size a domain box must have)."""
    _, shape, _ = model_input_info(net)
    dims = shape if len(shape) == 1 else shape[1:]
    return int(prod(dims))

