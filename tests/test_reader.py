"""Reader: every op pattern the chain absorbs, and for each one a model it must refuse or stop at.

A lowering is checked three ways: the IR (layer count, widths, activations, kept prefix/suffix ops),
the IR evaluated in float64 against onnxruntime on the original (when the chain is the whole model),
and the re-emitted model against the original in onnxruntime (outputs equal up to float32 rounding).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from builders import GraphBuilder, assert_same, input_features, mlp, round_trip, run_ort
from onnxcomp.errors import InputError
from onnxcomp.reader import lower, model_input_features

R, L = "relu", "linear"


def check_lowering(model, layers, prefix=(), suffix=(), *, n=32, lo=-2.0, hi=2.0, seed=0):
    """Lower ``model``, compare its IR with ``layers`` [(n_in, n_out, activation)] and the kept ops,
    and check both the IR and the round trip numerically.  Returns the Network."""
    net, out = round_trip(model)
    got = [(layer.n_in, layer.n_out, layer.activation) for layer in net.layers]
    assert got == list(layers)
    assert net.onnx.prefix_ops == list(prefix)
    assert net.onnx.suffix_ops == list(suffix)
    n = n - n % _fixed_batch(model)
    x = np.random.default_rng(seed).uniform(lo, hi, (n, input_features(model)))
    ref = run_ort(model, x)
    new = run_ort(out, x)
    assert len(ref) == len(new)
    for k, (a, b) in enumerate(zip(ref, new)):
        assert_same(a, b, what=f"output {k}")
    if not prefix and not suffix and len(ref) == 1:
        assert net.input_size == input_features(model) == model_input_features(net)
        assert_same(ref[0], net.forward(x).reshape(ref[0].shape), rtol=1e-5, what="IR forward")
    return net


def _fixed_batch(model) -> int:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return dims[0].dim_value if len(dims) > 1 and dims[0].HasField("dim_value") else 1


def refused(model, *fragments):
    """The model has no chain: one InputError line naming what stops it."""
    with pytest.raises(InputError) as info:
        lower(model, source="m.onnx")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("m.onnx: ")
    for frag in fragments:
        assert frag in msg, msg
    return msg


# ---- Gemm -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("transB", [0, 1])
@pytest.mark.parametrize("bias", ["vector", "row", "scalar", "one", None])
def test_gemm_any_transB_alpha_beta_and_bias_broadcast(transB, bias):
    model = mlp(5, [7, 6], 3, transB=transB, alpha=0.7, beta=-1.3, bias=bias, seed=transB)
    net = check_lowering(model, [(5, 7, R), (7, 6, R), (6, 3, L)])
    if bias is None:
        assert all(np.all(layer.bias == 0) for layer in net.layers)


def test_gemm_alpha_beta_are_folded_into_the_layer():
    w, b = np.array([[1.0, 2.0], [3.0, -4.0]]), np.array([0.5, -0.25])
    g = GraphBuilder(("N", 2))
    model = g.build(g.gemm(g.input, 2, weight=w, bias_value=b, alpha=0.5, beta=2.0))
    net = check_lowering(model, [(2, 2, L)])
    np.testing.assert_allclose(net.layers[0].weight, 0.5 * w)
    np.testing.assert_allclose(net.layers[0].bias, 2.0 * b)


def test_gemm_with_full_bias_on_a_fixed_batch_of_one():
    g = GraphBuilder((1, 4))
    h = g.relu(g.gemm(g.input, 3, bias="full"))
    check_lowering(g.build(g.gemm(h, 2, bias="row")), [(4, 3, R), (3, 2, L)])


def test_gemm_transA_where_the_data_is_A():
    # Transpose(x) is [in, N]; Gemm(xT, W, transA=1) reads it back as [N, in].
    g = GraphBuilder(("N", 4))
    h = g.gemm(g.transpose(g.input, (1, 0)), 3, transA=1, transB=0)
    h = g.gemm(g.transpose(g.relu(h), (1, 0)), 2, transA=1, transB=1, bias="row")
    check_lowering(g.build(h), [(4, 3, R), (3, 2, L)])


@pytest.mark.parametrize("transA", [0, 1])
def test_gemm_with_the_weight_on_the_left(transA):
    # Gemm(W, x, transB=1) = W @ x^T: [out, N]; the next layer keeps the weight on the left.
    g = GraphBuilder(("N", 4))
    h = g.relu(g.gemm(g.input, 5, weight_left=True, transA=transA, transB=1))
    h = g.gemm(h, 2, weight_left=True, transA=transA, transB=0, bias="col", beta=0.5)
    check_lowering(g.build(g.transpose(h, (1, 0))), [(4, 5, R), (5, 2, L)])


def test_chain_may_end_in_features_by_batch_layout():
    g = GraphBuilder(("N", 4))
    h = g.gemm(g.relu(g.gemm(g.input, 5, weight_left=True, transB=1)), 2, weight_left=True, transB=0)
    model = g.build(h)
    net, out = round_trip(model)
    assert [layer.n_out for layer in net.layers] == [5, 2]
    assert [tuple(d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim) for o in out.graph.output] == [(2, "N")]
    x = np.random.default_rng(1).uniform(-1, 1, (9, 4)).astype(np.float32)
    import onnxruntime as ort

    a = ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})[0]
    b = ort.InferenceSession(out.SerializeToString()).run(None, {"input": x})[0]
    assert a.shape == b.shape == (2, 9)
    assert_same(a, b)


def test_gemm_weight_computed_from_constants_is_folded():
    # An exporter that does not fold constants writes Gemm(x, Transpose(Cast(W))).
    g = GraphBuilder(("N", 4))
    w64 = g.const(g.random((4, 3)).astype(np.float64), dtype=np.float64)
    w = g.op("Transpose", [g.op("Cast", [w64], (4, 3), to=TensorProto.FLOAT)], (3, 4), perm=[1, 0])
    h = g.op("Gemm", [g.input, w, g.const(g.random((3,), 0.1))], ("N", 3), transB=1)
    model = g.build(g.gemm(g.relu(h), 2))
    check_lowering(model, [(4, 3, R), (3, 2, L)])
    _, out = round_trip(model)
    assert "Transpose" not in [n.op_type for n in out.graph.node]


def test_gemm_weight_that_depends_on_the_data_stops_the_chain():
    # The second Gemm's weight is computed from the first layer's output: not a constant.
    g = GraphBuilder(("N", 4))
    h = g.gemm(g.input, 3)
    r = g.relu(h)
    w = g.op("ReduceMean", [h], (1, 3), axes=[0], keepdims=1)
    y = g.op("Gemm", [r, w], ("N", 1), transB=1)
    check_lowering(g.build(y), [(4, 3, L)], suffix=["Relu", "ReduceMean", "Gemm"])


def test_gemm_weight_that_is_not_constant_names_the_node():
    g = GraphBuilder(("N", 4))
    w = g.op("Shape", [g.const(np.zeros((4, 3)))], (2,))
    wf = g.op("ConstantOfShape", [w], (4, 3), value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5]))
    y = g.op("Gemm", [g.input, wf], ("N", 3), name="fc1")
    refused(g.build(y), "Gemm node 'fc1'", "not a constant")


def test_gemm_contracting_the_batch_axis_is_refused():
    g = GraphBuilder((1, 4))
    y = g.gemm(g.input, 3, transA=1, name="fc")
    refused(g.build(y), "Gemm node 'fc'", "batch axis")


# ---- MatMul (+ Add) -------------------------------------------------------------------------------
@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_add_with_the_weight_on_the_right(bias_first):
    g = GraphBuilder(("batch_size", 6))
    h = g.relu(g.matmul(g.input, 8, bias_first=bias_first))
    h = g.relu(g.matmul(h, 5, bias_first=not bias_first))
    check_lowering(g.build(g.matmul(h, 3)), [(6, 8, R), (8, 5, R), (5, 3, L)])


def test_matmul_add_with_the_weight_on_the_left():
    check_lowering(mlp(4, [6, 5], 3, form="matmul", weight_left=True), [(4, 6, R), (6, 5, R), (5, 3, L)])


def test_matmul_without_add_is_a_layer_with_zero_bias():
    g = GraphBuilder(("N", 4))
    h = g.matmul(g.input, 3, bias=False)
    net = check_lowering(g.build(g.matmul(g.relu(h), 2, bias=False)), [(4, 3, R), (3, 2, L)])
    assert all(np.all(layer.bias == 0) for layer in net.layers)


@pytest.mark.parametrize("weight_left", [True, False])
def test_one_dimensional_input_like_vnncomp_test(weight_left):
    g = GraphBuilder((3,))
    h = g.relu(g.matmul(g.input, 4, weight_left=weight_left))
    h = g.relu(g.matmul(h, 4, weight_left=weight_left))
    check_lowering(g.build(g.matmul(h, 1, weight_left=weight_left)), [(3, 4, R), (4, 4, R), (4, 1, L)])


def test_matmul_contracting_the_batch_axis_is_refused():
    g = GraphBuilder((3, 4))
    y = g.op("MatMul", [g.const(g.random((5, 3))), g.input], (5, 4), name="mm")
    refused(g.build(y), "MatMul node 'mm'", "batch axis")


def test_matmul_of_a_rank3_tensor_is_refused():
    g = GraphBuilder(("N", 2, 4))
    y = g.op("MatMul", [g.input, g.const(g.random((4, 3)))], ("N", 2, 3), name="mm3")
    refused(g.build(y), "MatMul node 'mm3'")


def test_add_of_a_data_dependent_tensor_stops_the_chain():
    g = GraphBuilder(("N", 4))
    h = g.gemm(g.input, 3)
    y = g.op("Add", [h, h], ("N", 3))
    check_lowering(g.build(g.gemm(y, 2)), [(4, 3, L)], suffix=["Add", "Gemm"])


# ---- Relu and linear layers -----------------------------------------------------------------------
def test_consecutive_linear_layers_stay_separate():
    model = mlp(2, [8, 6, 4], 1, form="matmul", relu=[False, True, False])
    check_lowering(model, [(2, 8, L), (8, 6, R), (6, 4, L), (4, 1, L)])


def test_purely_linear_network():
    check_lowering(mlp(3, [4, 4], 2, relu=False), [(3, 4, L), (4, 4, L), (4, 2, L)])


def test_relu_twice_is_one_relu():
    g = GraphBuilder(("N", 4))
    h = g.relu(g.relu(g.gemm(g.input, 3)))
    check_lowering(g.build(g.gemm(h, 2)), [(4, 3, R), (3, 2, L)])


def test_relu_as_the_last_op():
    g = GraphBuilder(("N", 4))
    check_lowering(g.build(g.relu(g.gemm(g.relu(g.gemm(g.input, 3)), 2))), [(4, 3, R), (3, 2, R)])


def test_relu_before_any_layer_is_kept_as_prefix():
    g = GraphBuilder(("N", 4))
    check_lowering(g.build(g.gemm(g.relu(g.input), 3)), [(4, 3, L)], prefix=["Relu"])


def test_unsupported_activation_inside_the_chain_ends_it():
    g = GraphBuilder(("N", 4))
    h = g.unary(g.relu(g.gemm(g.input, 3)), "Sigmoid")
    check_lowering(g.build(g.gemm(h, 2)), [(4, 3, R)], suffix=["Sigmoid", "Gemm"])


def test_the_chain_with_more_layers_wins():
    g = GraphBuilder(("N", 4))
    h = g.unary(g.relu(g.gemm(g.input, 3)), "LeakyRelu", alpha=0.1)
    h = g.gemm(g.relu(g.gemm(h, 5)), 2)
    check_lowering(g.build(h), [(3, 5, R), (5, 2, L)], prefix=["Gemm", "Relu", "LeakyRelu"])


def test_hidden_tensor_read_twice_ends_the_chain():
    g = GraphBuilder(("N", 4))
    h = g.relu(g.gemm(g.input, 3))
    check_lowering(g.build([g.gemm(h, 2), g.gemm(h, 2)]), [(4, 3, R)], suffix=["Gemm", "Gemm"])


def test_hidden_tensor_that_is_also_a_graph_output():
    g = GraphBuilder(("N", 4))
    h = g.relu(g.gemm(g.input, 3))
    check_lowering(g.build([h, g.gemm(h, 2)]), [(4, 3, R)], suffix=["Gemm"])


# ---- BatchNormalization ---------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["gemm", "matmul"])
def test_batchnorm_after_a_layer_is_folded(form):
    g = GraphBuilder(("N", 4))
    h = g.gemm(g.input, 6) if form == "gemm" else g.matmul(g.input, 6)
    h = g.relu(g.batchnorm(h))
    check_lowering(g.build(g.gemm(h, 2)), [(4, 6, R), (6, 2, L)])


def test_batchnorm_before_the_first_layer_and_after_a_relu():
    g = GraphBuilder(("N", 4))
    h = g.relu(g.gemm(g.batchnorm(g.input), 5))
    h = g.gemm(g.batchnorm(h), 2)
    check_lowering(g.build(h), [(4, 5, R), (5, 2, L)])


def test_batchnorm_like_marabou_linear_bn_linear():
    g = GraphBuilder(("N", 2))
    h = g.gemm(g.batchnorm(g.gemm(g.input, 3)), 1)
    check_lowering(g.build(h), [(2, 3, L), (3, 1, L)])


def test_batchnorm_over_channels_before_flatten():
    g = GraphBuilder(("N", 2, 3, 3))
    h = g.gemm(g.flatten(g.batchnorm(g.input)), 4)
    check_lowering(g.build(h), [(18, 4, L)])


def test_batchnorm_with_explicit_inference_mode():
    g = GraphBuilder(("N", 4), opset=15)
    h = g.relu(g.batchnorm(g.gemm(g.input, 3), training_mode=0))
    check_lowering(g.build(g.gemm(h, 2)), [(4, 3, R), (3, 2, L)])


def test_training_mode_batchnorm_stops_the_chain():
    g = GraphBuilder(("N", 4), opset=15)
    h = g.relu(g.batchnorm(g.gemm(g.input, 3), training_mode=1, extra_outputs=2))
    model = g.build(g.gemm(h, 2))
    net, _ = round_trip(model)
    assert [layer.n_out for layer in net.layers] == [3]
    assert net.onnx.suffix_ops == ["BatchNormalization", "Relu", "Gemm"]


def test_training_mode_batchnorm_at_the_input_is_kept_as_prefix():
    g = GraphBuilder(("N", 4), opset=15)
    h = g.batchnorm(g.input, training_mode=1, extra_outputs=2)
    net, _ = round_trip(g.build(g.gemm(h, 2)))
    assert [layer.n_out for layer in net.layers] == [2]
    assert net.onnx.prefix_ops == ["BatchNormalization"]


def test_training_mode_batchnorm_alone_is_refused():
    g = GraphBuilder(("N", 4), opset=15)
    h = g.batchnorm(g.input, training_mode=1, extra_outputs=2)
    g.nodes[-1].name = "bn0"
    refused(g.build(h), "BatchNormalization node 'bn0'", "inference form")


# ---- input normalisation by constants -------------------------------------------------------------
@pytest.mark.parametrize("op", ["Sub", "Div", "Mul", "Add"])
@pytest.mark.parametrize("shape", [(), (4,), (1, 4)])
def test_input_normalisation_is_folded_into_the_first_layer(op, shape):
    g = GraphBuilder(("N", 4))
    value = np.random.default_rng(3).uniform(0.5, 2.0, shape)
    h = g.relu(g.gemm(g.elementwise(g.input, op, value), 5))
    check_lowering(g.build(g.gemm(h, 2)), [(4, 5, R), (5, 2, L)])


@pytest.mark.parametrize("op", ["Sub", "Mul", "Add"])
def test_constant_on_the_left(op):
    g = GraphBuilder(("N", 4))
    h = g.elementwise(g.input, op, np.array([0.5, 1.5, -1.0, 2.0]), const_first=True)
    check_lowering(g.build(g.gemm(h, 3)), [(4, 3, L)])


def test_acasxu_style_normalisation_on_a_1x1x1x5_input():
    g = GraphBuilder((1, 1, 1, 5))
    h = g.elementwise(g.input, "Sub", np.array([0.1, -0.2, 0.3, 0.0, 1.0]).reshape(1, 1, 1, 5))
    h = g.elementwise(h, "Div", np.array([2.0, 3.0, 0.5, 1.0, 4.0]).reshape(1, 1, 1, 5))
    h = g.relu(g.matmul(g.flatten(h), 6))
    check_lowering(g.build(g.matmul(h, 5)), [(5, 6, R), (6, 5, L)], n=8)


def test_affine_ops_between_and_after_layers():
    g = GraphBuilder(("N", 4))
    h = g.elementwise(g.gemm(g.input, 3), "Mul", np.array([2.0, -1.0, 0.5]))
    h = g.relu(g.elementwise(h, "Sub", np.ones(3), const_first=True))
    h = g.elementwise(g.elementwise(h, "Add", np.ones(3)), "Div", np.full((1, 3), 4.0))
    h = g.elementwise(g.gemm(h, 2), "Mul", 3.0)
    check_lowering(g.build(h), [(4, 3, R), (3, 2, L)])


def test_affine_after_the_last_relu_becomes_a_linear_layer():
    g = GraphBuilder(("N", 4))
    h = g.elementwise(g.relu(g.gemm(g.input, 3)), "Mul", np.array([2.0, 0.0, 1.0]))
    check_lowering(g.build(h), [(4, 3, R), (3, 3, L)])


def test_division_by_the_chain_tensor_stops_the_chain():
    g = GraphBuilder(("N", 4))
    h = g.relu(g.gemm(g.input, 3))
    h = g.elementwise(h, "Div", np.ones(3), const_first=True)
    check_lowering(g.build(g.gemm(h, 2)), [(4, 3, R)], suffix=["Div", "Gemm"], lo=0.5, hi=1.5)


def test_division_of_a_constant_by_the_input_is_kept_as_prefix():
    g = GraphBuilder(("N", 4))
    h = g.elementwise(g.input, "Div", np.ones(4), const_first=True)
    check_lowering(g.build(g.gemm(h, 3)), [(4, 3, L)], prefix=["Div"], lo=0.5, hi=1.5)


def test_division_by_zero_is_not_folded():
    g = GraphBuilder(("N", 4))
    h = g.elementwise(g.input, "Div", np.array([1.0, 0.0, 2.0, 1.0]))
    model = g.build(g.gemm(h, 3))
    net, _ = round_trip(model)
    assert net.onnx.prefix_ops == ["Div"]


def test_product_with_itself_is_not_affine():
    g = GraphBuilder(("N", 4))
    h = g.op("Mul", [g.input, g.input], ("N", 4), name="sq")
    check_lowering(g.build(g.gemm(h, 3)), [(4, 3, L)], prefix=["Mul"])


def test_constant_varying_over_the_batch_stops_the_chain():
    # A fixed batch of 2 where each batch row gets its own offset: not a per-sample affine map.
    g = GraphBuilder((2, 4))
    h = g.elementwise(g.gemm(g.input, 3), "Add", np.arange(6.0).reshape(2, 3))
    check_lowering(g.build(g.gemm(g.relu(h), 2)), [(4, 3, L)], suffix=["Add", "Relu", "Gemm"])


def test_constant_varying_over_the_batch_at_the_input_is_kept_as_prefix():
    g = GraphBuilder((2, 4))
    h = g.elementwise(g.input, "Add", np.arange(8.0).reshape(2, 4))
    check_lowering(g.build(g.gemm(h, 3)), [(4, 3, L)], prefix=["Add"])


def test_constant_growing_the_rank_is_refused():
    g = GraphBuilder(("N", 4))
    h = g.elementwise(g.input, "Sub", np.ones((1, 1, 4)))
    g.nodes[-1].name = "sub3"
    refused(g.build(g.gemm(g.reshape(h, [-1, 4], ("N", 4)), 3)), "Sub node 'sub3'")


def test_nan_in_a_chain_constant_is_refused():
    g = GraphBuilder(("N", 4))
    w = g.random((3, 4))
    w[1, 2] = np.nan
    y = g.gemm(g.input, 3, weight=w, name="fc")
    refused(g.build(y), "NaN")


# ---- Flatten / Reshape / Transpose ------------------------------------------------------------------
def test_mnistfc_style_input_1x784x1_with_flatten():
    g = GraphBuilder((1, 784, 1))
    h = g.relu(g.gemm(g.flatten(g.input), 8))
    check_lowering(g.build(g.gemm(h, 3)), [(784, 8, R), (8, 3, L)], n=4, lo=0, hi=1)


@pytest.mark.parametrize("batch", [1, "batch_size"])
def test_image_input_with_a_constant_node_reshape(batch):
    g = GraphBuilder((batch, 1, 28, 28))
    h = g.reshape(g.input, [-1, 784], (batch, 784), as_node=True)
    h = g.relu(g.gemm(h, 10))
    check_lowering(g.build(g.gemm(h, 10)), [(784, 10, R), (10, 10, L)], n=4, lo=0, hi=1)


def test_reshape_with_zero_copies_the_batch_dim():
    g = GraphBuilder(("N", 2, 3))
    h = g.reshape(g.input, [0, -1], ("N", 6))
    check_lowering(g.build(g.gemm(h, 4)), [(6, 4, L)])


def test_reshape_with_zero_on_a_fixed_batch():
    g = GraphBuilder((1, 2, 3))
    check_lowering(g.build(g.gemm(g.reshape(g.input, [0, 6]), 4)), [(6, 4, L)])


def test_reshape_between_layers_that_keeps_the_features():
    g = GraphBuilder(("N", 4))
    h = g.reshape(g.relu(g.gemm(g.input, 6)), [-1, 6], ("N", 6))
    check_lowering(g.build(g.gemm(h, 2)), [(4, 6, R), (6, 2, L)])


def test_transpose_of_features_before_flatten_reorders_the_columns():
    g = GraphBuilder(("N", 2, 3))
    h = g.flatten(g.transpose(g.input, (0, 2, 1)))
    check_lowering(g.build(g.gemm(h, 5)), [(6, 5, L)])


def test_reshape_mixing_batch_and_features_stops_the_chain():
    g = GraphBuilder(("N", 4))
    h = g.gemm(g.input, 4)
    h = g.reshape(h, [-1, 2], ("M", 2))
    model = g.build(g.gemm(h, 3), output_shapes={})
    net, out = round_trip(model)
    assert [layer.n_out for layer in net.layers] == [4]
    assert net.onnx.suffix_ops == ["Reshape", "Gemm"]
    x = np.random.default_rng(0).uniform(-1, 1, (6, 4)).astype(np.float32)
    import onnxruntime as ort

    a = ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})[0]
    b = ort.InferenceSession(out.SerializeToString()).run(None, {"input": x})[0]
    assert_same(a, b)


def test_reshape_mixing_batch_and_features_at_the_input_is_refused():
    g = GraphBuilder(("N", 4))
    h = g.reshape(g.input, [-1, 2], ("M", 2))
    g.nodes[-1].name = "view"
    refused(g.build(g.gemm(h, 3), output_shapes={}), "Reshape node 'view'", "mixes the batch and the features")


def test_flatten_that_folds_the_batch_is_refused():
    g = GraphBuilder(("N", 2, 3))
    h = g.op("Flatten", [g.input], ("M", 3), axis=2, name="flat2")
    refused(g.build(g.gemm(h, 3), output_shapes={}), "Flatten node 'flat2'")


def test_transpose_moving_the_batch_axis_of_a_rank3_tensor_is_refused():
    g = GraphBuilder((1, 2, 3))
    h = g.op("Transpose", [g.input], (2, 1, 3), perm=[1, 0, 2], name="tr")
    refused(g.build(g.gemm(g.reshape(h, [2, 3]), 3)), "Transpose node 'tr'")


# ---- Identity, Constant nodes, old IR, Dropout, Cast --------------------------------------------
def test_identity_everywhere():
    g = GraphBuilder(("N", 4))
    h = g.identity(g.relu(g.identity(g.gemm(g.identity(g.input), 3))))
    check_lowering(g.build(g.identity(g.gemm(h, 2))), [(4, 3, R), (3, 2, L)])


def test_constants_from_constant_nodes():
    model = mlp(4, [5, 6], 3, const_nodes=True)
    assert not model.graph.initializer
    check_lowering(model, [(4, 5, R), (5, 6, R), (6, 3, L)])
    _, out = round_trip(model)
    assert "Constant" not in [n.op_type for n in out.graph.node]


def test_constant_node_shared_with_the_suffix_is_kept():
    g = GraphBuilder(("N", 3))
    c = g.const(np.array([1.0, 2.0, 3.0]), as_node=True)
    h = g.op("Add", [g.relu(g.gemm(g.input, 3)), c], ("N", 3))
    h = g.gemm(h, 3)
    y = g.op("Max", [g.unary(h, "Sigmoid"), c], ("N", 3))
    check_lowering(g.build(y), [(3, 3, R), (3, 3, L)], suffix=["Constant", "Sigmoid", "Max"])


def test_initializers_listed_as_graph_inputs_old_ir():
    model = mlp(4, [5], 3, initializers_as_inputs=True, transB=0)
    assert model.ir_version == 3 and len(model.graph.input) > 1
    net = check_lowering(model, [(4, 5, R), (5, 3, L)])
    _, out = round_trip(model)
    assert [i.name for i in out.graph.input] == ["input"]
    assert net.onnx.chain_input == "input"


def test_inference_dropout_and_same_type_cast_are_transparent():
    g = GraphBuilder(("N", 4))
    h = g.op("Dropout", [g.gemm(g.input, 3)], ("N", 3))
    h = g.op("Cast", [g.relu(h)], ("N", 3), to=TensorProto.FLOAT)
    check_lowering(g.build(g.gemm(h, 2)), [(4, 3, R), (3, 2, L)])


def test_training_dropout_and_cast_to_another_type_stop_the_chain():
    g = GraphBuilder(("N", 4), opset=13)
    h = g.gemm(g.input, 3)
    train = g.const(np.array(True), dtype=np.bool_)
    h = g.op("Dropout", [h, g.const(np.array(0.5, dtype=np.float32), dtype=np.float32), train], ("N", 3))
    net, _ = round_trip(g.build(g.gemm(h, 2)))
    assert [layer.n_out for layer in net.layers] == [3] and net.onnx.suffix_ops == ["Dropout", "Gemm"]
    g = GraphBuilder(("N", 4))
    h = g.op("Cast", [g.gemm(g.input, 3)], ("N", 3), to=TensorProto.DOUBLE)
    model = g.build(h, output_types={h: TensorProto.DOUBLE})
    check_lowering(model, [(4, 3, L)], suffix=["Cast"])


def test_chain_tensor_in_an_operand_slot_that_is_not_data_stops_the_chain():
    # Gemm(A, B, C=h) adds h to a constant product; Dropout(c, ratio=h) returns c: neither is a layer of h.
    g = GraphBuilder((1, 3))
    h = g.relu(g.gemm(g.input, 3))
    y = g.op("Gemm", [g.const(np.ones((1, 2))), g.const(np.ones((2, 3))), h], (1, 3))
    check_lowering(g.build(y), [(3, 3, R)], suffix=["Gemm"])
    g = GraphBuilder((1,))
    h = g.matmul(g.input, 1, weight_left=True)
    y = g.op("Dropout", [g.const(np.ones((2, 2))), h], (2, 2))
    net = lower(g.build(y))
    assert [layer.n_out for layer in net.layers] == [1] and net.onnx.suffix_ops == ["Dropout"]


def test_squeeze_to_a_scalar_stops_the_chain():
    g = GraphBuilder((1,))
    h = g.matmul(g.relu(g.matmul(g.input, 2, weight_left=True)), 1, weight_left=True)
    check_lowering(g.build(g.op("Squeeze", [h], ())), [(1, 2, R), (2, 1, L)], suffix=["Squeeze"])


def test_float64_model():
    check_lowering(mlp(4, [5], 3, dtype=np.float64), [(4, 5, R), (5, 3, L)])


# ---- prefix and suffix ------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, "N"])
def test_conv_prefix_and_softmax_suffix_are_kept(batch):
    g = GraphBuilder((batch, 1, 6, 6))
    h = g.flatten(g.relu(g.conv(g.input, 2)))
    h = g.softmax(g.gemm(g.relu(g.gemm(h, 5)), 3))
    net = check_lowering(g.build(h), [(32, 5, R), (5, 3, L)], prefix=["Conv", "Relu"], suffix=["Softmax"], n=8)
    assert net.input_size == 32 and model_input_features(net) == 36


def test_integer_suffix_output():
    g = GraphBuilder(("N", 4))
    logits = g.gemm(g.relu(g.gemm(g.input, 6)), 3)
    label = g.op("ArgMax", [logits], ("N",), axis=1, keepdims=0)
    model = g.build([logits, label], output_types={label: TensorProto.INT64})
    check_lowering(model, [(4, 6, R), (6, 3, L)], suffix=["ArgMax"])


# ---- no chain / unsupported models --------------------------------------------------------------------
def test_no_chain_names_the_first_op_that_stops_it():
    g = GraphBuilder(("N", 4))
    g.unary(g.input, "Sigmoid")
    g.nodes[-1].name = "act0"
    h = g.unary(g.nodes[-1].output[0], "Tanh")
    msg = refused(g.build(h), "Sigmoid node 'act0'", "not supported")
    assert "input 'input'" in msg


def test_no_chain_when_the_input_is_read_twice():
    g = GraphBuilder(("N", 4))
    a = g.unary(g.input, "Sigmoid")
    b = g.unary(g.input, "Tanh")
    refused(g.build(g.op("Add", [a, b], ("N", 4))), "tensor 'input'", "2 nodes (Sigmoid, Tanh)")


def test_two_inputs_are_refused():
    x = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2])
    z = helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "g", [x, y], [z])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    refused(model, "2 inputs")


def test_integer_input_is_refused():
    x = helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 2])
    z = helper.make_tensor_value_info("z", TensorProto.INT64, ["N", 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "g", [x], [z])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    refused(model, "int64", "float32 and float64")


def test_dynamic_feature_dimension_is_refused():
    g = GraphBuilder(("N", "F"))
    y = g.op("Relu", [g.input], ("N", "F"))
    refused(g.build(y), "dynamic dimension 'F' at axis 1")


def test_refusal_is_raised_from_the_file_reader(tmp_path):
    from onnxcomp.reader import read

    g = GraphBuilder(("N", 4))
    model = g.build(g.unary(g.input, "Sigmoid"))
    path = tmp_path / "sig.onnx"
    onnx.save(model, path)
    with pytest.raises(InputError, match=r"sig\.onnx: no lowerable"):
        read(path)


# ---- loading files ------------------------------------------------------------------------------------
def _save(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("content,match", [
    (b"", "empty file"),
    (b"\xff\xff\xff garbage", "not an ONNX model"),
])
def test_unreadable_files_are_one_line_errors(tmp_path, content, match):
    from onnxcomp.reader import read

    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        read(path)
    with pytest.raises(InputError, match="is a directory"):
        read(tmp_path)


def test_initializer_holding_fewer_values_than_declared(tmp_path):
    from onnxcomp.reader import read

    model = mlp(4, [5], 3)
    t = model.graph.initializer[0]
    t.raw_data = t.raw_data[:-4]
    with pytest.raises(InputError, match=f"initializer '{t.name}' declares shape"):
        read(_save(tmp_path, model))


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    from onnxcomp.reader import read

    model = mlp(4, [5], 3)
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    with pytest.raises(InputError, match="outside the model's folder"):
        read(_save(tmp_path, model))


def test_external_data_inside_the_folder_loads(tmp_path):
    from onnxcomp.reader import read

    model = mlp(16, [32], 3)
    onnx.save(mlp(16, [32], 3), tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    net = read(tmp_path / "ext.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (5, 16))
    assert_same(run_ort(model, x)[0], net.forward(x))


def test_duplicate_tensor_producers_are_refused(tmp_path):
    from onnxcomp.reader import read

    g = GraphBuilder(("N", 4))
    a = g.relu(g.input)
    g.nodes.append(helper.make_node("Sigmoid", [g.input], [a], name="again"))
    model = helper.make_model(helper.make_graph(g.nodes, "g", [helper.make_tensor_value_info("input", 1, ["N", 4])],
                                                [helper.make_tensor_value_info(a, 1, ["N", 4])]),
                              opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(InputError):
        read(_save(tmp_path, model))
