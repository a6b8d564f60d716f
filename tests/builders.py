"""Hand-built ONNX models for tests, written with ``onnx.helper``.

``GraphBuilder`` grows a single-input graph one op at a time and tracks every tensor's shape, so a
layer only needs its output width: weights are drawn from a seeded generator in the model's dtype.
Every model is built with an ``ir_version`` the installed onnxruntime loads (8 by default; 3 for the
old-IR form where initializers are also listed in ``graph.input``) and passes ``onnx.checker``.

Typical use::

    g = GraphBuilder(("N", 4))
    h = g.relu(g.gemm(g.input, 8, transB=0, alpha=0.5))
    h = g.matmul(h, 3, weight_left=False)
    model = g.build(h)
    y = run_ort(model, x)          # x: (n, 4) flattened samples

Shapes use ints for fixed dimensions and strings for symbolic ones (``"N"``, ``"batch_size"``).
Helpers beside the builder: ``mlp`` (a whole MLP in one call), ``run_ort`` (plain onnxruntime, no
onnxcomp code involved), ``input_features``, ``round_trip`` (reader + writer) and ``assert_same``.
"""

from __future__ import annotations

from math import prod

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

DTYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}

# float32 rounding: what two float32 evaluations of the same function may differ by (relative to the
# output scale), and the same bound for float64 models.
F32_RTOL = 1e-5
F64_RTOL = 1e-12


class GraphBuilder:
    """Builds a single-input ONNX graph op by op; every method returns the name of its output tensor.

    ``input_shape``: the model input's dims (ints, or strings for symbolic dims).
    ``dtype``: float32 or float64, used for the input, the weights and the outputs.
    ``const_nodes``: when True every constant is a ``Constant`` node instead of an initializer
    (each call can override it with ``as_node=``).
    """

    def __init__(self, input_shape=("N", 4), *, input_name: str = "input", dtype=np.float32, seed: int = 0,
                 opset: int = 13, const_nodes: bool = False):
        self.dtype = np.dtype(dtype)
        self.elem = DTYPES[self.dtype]
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.const_nodes = const_nodes
        self.input = input_name
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple] = {input_name: tuple(input_shape)}
        self._count = 0

    # ---- plumbing ----------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        self._count += 1
        return f"{base}_{self._count}"

    def shape(self, name: str) -> tuple:
        return self.shapes[name]

    def const(self, value, *, name: str | None = None, as_node: bool | None = None, dtype=None) -> str:
        """A constant tensor (initializer, or ``Constant`` node when ``as_node``)."""
        arr = np.asarray(value, dtype=dtype if dtype is not None else self.dtype)
        name = name or self.fresh("c")
        as_node = self.const_nodes if as_node is None else as_node
        if as_node:
            self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name),
                                               name=self.fresh("Constant")))
        else:
            self.inits.append(numpy_helper.from_array(arr, name))
        self.shapes[name] = arr.shape
        return name

    def random(self, shape, scale: float | None = None) -> np.ndarray:
        """Gaussian values; the default scale keeps activations O(1) through a layer."""
        fan_in = shape[-1] if len(shape) else 1
        s = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
        return (self.rng.standard_normal(shape) * s).astype(self.dtype)

    def op(self, op_type: str, inputs: list, out_shape, *, n_outputs: int = 1, name: str | None = None,
           **attrs) -> str:
        """Any node; the caller states the output shape.  Returns the first output."""
        outs = [self.fresh(op_type.lower()) for _ in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name or self.fresh(op_type), **attrs))
        self.shapes[outs[0]] = tuple(out_shape)
        return outs[0]

    # ---- layers ------------------------------------------------------------------------------
    def gemm(self, x: str, n_out: int, *, transA: int = 0, transB: int = 1, alpha: float = 1.0, beta: float = 1.0,
             weight_left: bool = False, bias: str | None = "auto", weight=None, bias_value=None,
             as_node: bool | None = None, name: str | None = None) -> str:
        """``Gemm`` with a constant weight.

        ``weight_left=False``: the data is A (``transA=1`` means the data is [in, N]); the output is
        [M, n_out].  ``weight_left=True``: the data is B (``transB=1`` means the data is [N, in]) and
        the output is [n_out, N].  ``bias``: ``"vector"`` [n_out], ``"row"`` [1, n_out], ``"col"``
        [n_out, 1], ``"scalar"`` [], ``"one"`` [1], ``"full"`` (the output's shape), ``None`` (no C);
        ``"auto"`` is vector for data-on-the-left and col for weight-on-the-left.
        """
        xs = self.shape(x)
        if weight_left:
            k, n = (xs[1], xs[0]) if transB else (xs[0], xs[1])
            w = self.random((n_out, k)) if weight is None else np.asarray(weight, self.dtype)
            stored = w.T if transA else w
            inputs = [self.const(stored, as_node=as_node), x]
            out_shape = (n_out, n)
        else:
            m, k = (xs[1], xs[0]) if transA else (xs[0], xs[1])
            w = self.random((n_out, k)) if weight is None else np.asarray(weight, self.dtype)
            stored = w if transB else w.T
            inputs = [x, self.const(stored, as_node=as_node)]
            out_shape = (m, n_out)
        if bias == "auto":
            bias = "col" if weight_left else "vector"
        if bias is not None:
            shapes = {"vector": (n_out,), "row": (1, n_out), "col": (n_out, 1), "scalar": (), "one": (1,),
                      "full": out_shape}
            b = self.random(shapes[bias], 0.1) if bias_value is None else np.asarray(bias_value, self.dtype)
            inputs.append(self.const(b, as_node=as_node))
        return self.op("Gemm", inputs, out_shape, transA=transA, transB=transB, alpha=alpha, beta=beta, name=name)

    def matmul(self, x: str, n_out: int, *, weight_left: bool = False, bias: bool = True, bias_first: bool = False,
               weight=None, as_node: bool | None = None) -> str:
        """``MatMul`` with a constant weight, followed by ``Add`` of a constant bias when ``bias``.

        Data on the left: ``x [.., k] @ W [k, n_out]``.  Weight on the left: ``W [n_out, k] @ x`` where
        ``x`` is [k, N] or the 1-D [k] (bias [n_out, 1] or [n_out]).  ``bias_first`` writes
        ``Add(bias, y)`` instead of ``Add(y, bias)``.
        """
        xs = self.shape(x)
        if weight_left:
            k = xs[0]
            w = self.random((n_out, k)) if weight is None else np.asarray(weight, self.dtype)
            y = self.op("MatMul", [self.const(w, as_node=as_node), x], (n_out,) + tuple(xs[1:]))
            bshape = (n_out,) if len(xs) == 1 else (n_out, 1)
        else:
            k = xs[-1]
            w = self.random((n_out, k)).T if weight is None else np.asarray(weight, self.dtype)
            y = self.op("MatMul", [x, self.const(w, as_node=as_node)], tuple(xs[:-1]) + (n_out,))
            bshape = (n_out,)
        if not bias:
            return y
        b = self.const(self.random(bshape, 0.1), as_node=as_node)
        return self.op("Add", [b, y] if bias_first else [y, b], self.shape(y))

    def relu(self, x: str) -> str:
        return self.op("Relu", [x], self.shape(x))

    def unary(self, x: str, op_type: str, **attrs) -> str:
        """A shape-preserving op the chain does not absorb (Sigmoid, Tanh, LeakyRelu, ...)."""
        return self.op(op_type, [x], self.shape(x), **attrs)

    def identity(self, x: str) -> str:
        return self.op("Identity", [x], self.shape(x))

    def elementwise(self, x: str, op_type: str, value, *, const_first: bool = False,
                    as_node: bool | None = None) -> str:
        """``Add``/``Sub``/``Mul``/``Div`` of ``x`` and a constant (broadcast by ONNX rules)."""
        c = self.const(value, as_node=as_node)
        out_shape = _broadcast_shape(self.shape(x), np.shape(value))
        return self.op(op_type, [c, x] if const_first else [x, c], out_shape)

    def batchnorm(self, x: str, *, epsilon: float = 1e-3, training_mode: int | None = None,
                  extra_outputs: int = 0) -> str:
        """Inference ``BatchNormalization`` over axis 1 with random, well-conditioned statistics."""
        c = self.shape(x)[1]
        scale = self.const(self.rng.uniform(0.5, 2.0, c).astype(self.dtype))
        bias = self.const(self.random((c,), 0.3))
        mean = self.const(self.random((c,), 0.3))
        var = self.const(self.rng.uniform(0.2, 2.0, c).astype(self.dtype))
        attrs = {"epsilon": epsilon}
        if training_mode is not None:
            attrs["training_mode"] = training_mode
        return self.op("BatchNormalization", [x, scale, bias, mean, var], self.shape(x),
                       n_outputs=1 + extra_outputs, **attrs)

    def flatten(self, x: str, axis: int = 1) -> str:
        xs = self.shape(x)
        return self.op("Flatten", [x], (_prod(xs[:axis]), _prod(xs[axis:])), axis=axis)

    def reshape(self, x: str, target, out_shape=None, *, as_node: bool | None = None, allowzero: int = 0) -> str:
        """``Reshape`` to the constant ``target`` (0 copies a dim, -1 is inferred); give ``out_shape``
        when it cannot be worked out here (symbolic dims)."""
        t = self.const(np.asarray(target, dtype=np.int64), dtype=np.int64, as_node=as_node)
        if out_shape is None:
            out_shape = _reshape_shape(self.shape(x), list(target), allowzero)
        attrs = {"allowzero": allowzero} if allowzero else {}
        return self.op("Reshape", [x, t], out_shape, **attrs)

    def transpose(self, x: str, perm) -> str:
        xs = self.shape(x)
        return self.op("Transpose", [x], tuple(xs[p] for p in perm), perm=list(perm))

    def conv(self, x: str, out_channels: int, kernel: int = 3, stride: int = 1) -> str:
        """A ``Conv`` (no padding) with a constant kernel and bias: a feature-extractor prefix."""
        n, c, h, w = self.shape(x)
        k = self.const(self.random((out_channels, c, kernel, kernel), 1.0 / np.sqrt(c * kernel * kernel)))
        b = self.const(self.random((out_channels,), 0.1))
        oh, ow = (h - kernel) // stride + 1, (w - kernel) // stride + 1
        return self.op("Conv", [x, k, b], (n, out_channels, oh, ow), kernel_shape=[kernel, kernel],
                       strides=[stride, stride])

    def softmax(self, x: str, axis: int = -1) -> str:
        return self.op("Softmax", [x], self.shape(x), axis=axis)

    # ---- the model ---------------------------------------------------------------------------
    def build(self, outputs, *, ir_version: int = 8, initializers_as_inputs: bool = False,
              output_shapes: dict | None = None, output_types: dict | None = None,
              metadata: dict | None = None) -> onnx.ModelProto:
        """The checked model with ``outputs`` (a name or a list) as graph outputs.

        ``initializers_as_inputs`` lists every initializer in ``graph.input`` too (old IR, as written
        by early exporters; ``ir_version`` then defaults to 3 and the opset to at most 8).
        """
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        output_shapes = output_shapes or {}
        output_types = output_types or {}
        ins = [helper.make_tensor_value_info(self.input, self.elem, list(self.shapes[self.input]))]
        if initializers_as_inputs:
            ins += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.inits]
        outs = [helper.make_tensor_value_info(o, output_types.get(o, self.elem),
                                              list(output_shapes.get(o, self.shapes.get(o, ()))))
                for o in outputs]
        graph = helper.make_graph(self.nodes, "test", ins, outs, initializer=self.inits)
        opset = min(self.opset, 8) if initializers_as_inputs else self.opset
        if initializers_as_inputs and ir_version == 8:
            ir_version = 3
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version,
                                  producer_name="tests.builders")
        if metadata:
            helper.set_model_props(model, {str(k): str(v) for k, v in metadata.items()})
        onnx.checker.check_model(model)
        return model


def _prod(dims) -> int | str:
    return int(prod(dims)) if all(isinstance(d, int) for d in dims) else "?"


def _broadcast_shape(a: tuple, b: tuple) -> tuple:
    rank = max(len(a), len(b))
    a = (1,) * (rank - len(a)) + tuple(a)
    b = (1,) * (rank - len(b)) + tuple(b)
    return tuple(y if x == 1 else x for x, y in zip(a, b))


def _reshape_shape(shape: tuple, target: list, allowzero: int) -> tuple:
    out = [shape[i] if (v == 0 and not allowzero) else v for i, v in enumerate(target)]
    if -1 in out:
        known = [d for d in out if d != -1]
        total = _prod(shape)
        if isinstance(total, int) and all(isinstance(d, int) for d in known):
            out[out.index(-1)] = total // max(int(prod(known)), 1)
        else:
            out[out.index(-1)] = "?"
    return tuple(out)


def mlp(n_in: int, widths, n_out: int, *, form: str = "gemm", transB: int = 1, alpha: float = 1.0,
        beta: float = 1.0, bias: str = "auto", relu=True, batch="N", seed: int = 0, dtype=np.float32,
        weight_left: bool = False, const_nodes: bool = False, initializers_as_inputs: bool = False,
        output_name: str | None = None) -> onnx.ModelProto:
    """An MLP ``n_in -> widths... -> n_out`` in Gemm or MatMul+Add form.

    ``relu`` is True (Relu after every hidden layer), False (no Relu at all: a linear chain) or a
    list of booleans, one per hidden layer.  ``weight_left`` writes every layer with the weight on
    the left (``W @ x``, data as [features, N]), which needs a data layout the builder gets with a
    Transpose of the [N, n_in] input, transposed back at the end.
    """
    g = GraphBuilder((batch, n_in), seed=seed, dtype=dtype, const_nodes=const_nodes)
    acts = [relu] * len(widths) if isinstance(relu, bool) else list(relu)
    h = g.input
    if weight_left:
        h = g.transpose(h, (1, 0))
    for k, width in enumerate(list(widths) + [n_out]):
        if form == "gemm":
            if weight_left:  # the data is [k, N]: transB says whether the weight is stored transposed
                h = g.gemm(h, width, transA=transB, transB=0, alpha=alpha, beta=beta, bias=bias, weight_left=True)
            else:
                h = g.gemm(h, width, transB=transB, alpha=alpha, beta=beta, bias=bias)
        else:
            h = g.matmul(h, width, weight_left=weight_left)
        if k < len(widths) and acts[k]:
            h = g.relu(h)
    if weight_left:
        h = g.transpose(h, (1, 0))
    if output_name:
        h = g.op("Identity", [h], g.shape(h))
        g.nodes[-1].output[0] = output_name
        g.shapes[output_name] = g.shapes[h]
        h = output_name
    return g.build(h, initializers_as_inputs=initializers_as_inputs)


# ---- running -------------------------------------------------------------------------------------
def input_info(model: onnx.ModelProto) -> tuple[str, tuple, np.dtype]:
    """(name, dims, numpy dtype) of the model's one real input."""
    inits = {t.name for t in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in inp.type.tensor_type.shape.dim)
    return inp.name, dims, np.dtype(helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type))


def input_features(model: onnx.ModelProto) -> int:
    """Features of one sample: the product of the input dims after the batch axis (all dims for 1-D)."""
    _, dims, _ = input_info(model)
    return int(prod(dims[1:] if len(dims) > 1 else dims))


def run_ort(model: onnx.ModelProto, x: np.ndarray, outputs: list | None = None) -> list[np.ndarray]:
    """Every output (or the named ones) for flattened samples ``x`` (n, features), straight onnxruntime.

    A model with a symbolic first dim gets the whole batch at once; a fixed batch B (or a 1-D input)
    gets B samples (one sample) per call and the results are stacked.  Outputs are (n, -1).  Float64
    models run without onnxruntime's MatMulScaleFusion, which rounds a folded scale to float32.
    """
    name, dims, dtype = input_info(model)
    # onnxruntime's MatMulScaleFusion rounds a folded scale to float32 even in a float64 model.
    disabled = ["MatMulScaleFusion"] if dtype == np.float64 else None
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled)
    x = np.asarray(x).astype(dtype)
    if len(dims) > 1 and not isinstance(dims[0], int):
        outs = sess.run(outputs, {name: x.reshape((x.shape[0],) + tuple(dims[1:]))})
        return [np.asarray(o).reshape(x.shape[0], -1) for o in outs]
    # A fixed batch B (1 for most such models) takes B samples per call.
    per_call = dims[0] if len(dims) > 1 else 1
    assert x.shape[0] % per_call == 0, f"{x.shape[0]} samples for a model with fixed batch {per_call}"
    calls = [sess.run(outputs, {name: x[i : i + per_call].reshape(dims)}) for i in range(0, x.shape[0], per_call)]
    return [np.concatenate([np.asarray(c[j]).reshape(per_call, -1) for c in calls]) for j in range(len(calls[0]))]


def round_trip(model: onnx.ModelProto):
    """(lowered Network, re-emitted model) through onnxcomp's reader and writer."""
    from onnxcomp.reader import lower
    from onnxcomp.writer import to_model

    net = lower(model, source="test model")
    return net, to_model(net)


def assert_same(a: np.ndarray, b: np.ndarray, rtol: float = F32_RTOL, what: str = "") -> None:
    """Equal up to float rounding: ``|a - b| <= rtol * max(1, max |a|)`` everywhere (exact for ints);
    NaN and infinities must sit at the same places with the same values."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    if a.dtype.kind in "iub":
        assert np.array_equal(a, b), f"{what}: integer outputs differ"
        return
    a, b = a.astype(np.float64), b.astype(np.float64)
    same_special = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
    assert np.array_equal(np.isfinite(a), np.isfinite(b)) and same_special.sum() == (~np.isfinite(a)).sum(), \
        f"{what}: NaN/Inf at different places"
    a, b = np.where(same_special, 0.0, a), np.where(same_special, 0.0, b)
    scale = max(1.0, float(np.max(np.abs(a), initial=0.0)))
    err = float(np.max(np.abs(a - b), initial=0.0))
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} exceeds {rtol:g} x scale {scale:.3g}"


# ---- faults, for tests that must catch a wrong model ----------------------------------------------
def perturb_initializer(model: onnx.ModelProto, name: str, index: tuple, delta: float) -> onnx.ModelProto:
    """A copy of ``model`` with one entry of initializer ``name`` changed by ``delta``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for k, t in enumerate(out.graph.initializer):
        if t.name == name:
            arr = numpy_helper.to_array(t).copy()
            arr[index] += delta
            out.graph.initializer[k].CopyFrom(numpy_helper.from_array(arr, name))
            return out
    raise KeyError(name)


def flip_relu(model: onnx.ModelProto, relu_index: int, neuron: int) -> onnx.ModelProto:
    """A copy of ``model`` where neuron ``neuron`` of the ``relu_index``-th Relu node is passed through
    unrectified (its Relu removed), via ``Where(mask, pre, Relu(pre))``; everything else is unchanged."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    relus = [i for i, n in enumerate(out.graph.node) if n.op_type == "Relu"]
    pos = relus[relu_index]
    node = out.graph.node[pos]
    pre, post = node.input[0], node.output[0]
    width = _feature_width(out, pre)
    mask = numpy_helper.from_array(np.arange(width) == neuron, f"{post}__flip_mask")
    out.graph.initializer.append(mask)
    node.output[0] = f"{post}__rectified"
    out.graph.node.insert(pos + 1, helper.make_node("Where", [mask.name, pre, node.output[0]], [post],
                                                    name=f"{post}__flip"))
    onnx.checker.check_model(out)
    return out


def _feature_width(model: onnx.ModelProto, tensor: str) -> int:
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.name == tensor:
            return vi.type.tensor_type.shape.dim[-1].dim_value
    raise KeyError(tensor)


def random_network(rng, n_in: int, widths, n_out: int = 2, *, bias_scale: float = 1.0, shift: float = 0.0,
                   linear_every: int = 0, activation: str = "relu", fan_in_scaled: bool = False, onnx_context=None):
    """A random in-memory MLP (``onnxcomp.ir.Network``) for property tests.

    ``rng`` is a seed or a numpy Generator.  Hidden layers draw ``W ~ N(0, 1)`` (divided by sqrt(fan-in)
    with ``fan_in_scaled``) and ``b ~ N(0, 1) * bias_scale + shift``; with ``linear_every=m`` every m-th
    hidden layer is linear; the output layer is linear with ``W, b ~ N(0, 1)``.
    """
    from onnxcomp.ir import LINEAR, Dense, Network

    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    layers, prev = [], n_in
    for k, width in enumerate(widths):
        act = LINEAR if linear_every and (k + 1) % linear_every == 0 else activation
        w = rng.normal(size=(width, prev))
        if fan_in_scaled:
            w = w / np.sqrt(prev)
        layers.append(Dense(w, rng.normal(size=width) * bias_scale + shift, act))
        prev = width
    layers.append(Dense(rng.normal(size=(n_out, prev)), rng.normal(size=n_out), LINEAR))
    return Network(tuple(layers), n_in, onnx=onnx_context)
