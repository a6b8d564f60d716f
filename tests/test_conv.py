"""Convolution layers of the IR: the sparse operator, the reader's lowering, the writer and the bounds.

Every exactness claim is checked against onnxruntime running the real ONNX op (Conv, AveragePool,
BatchNormalization, Pad) or against a dense-matrix copy of the same network (the Toeplitz oracle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from builders import assert_same, run_ort
from onnxcomp.bounds import alpha_crown_bounds, crown_bounds, interval_bounds
from onnxcomp.conv import Conv, average_pool, conv_output_hw
from onnxcomp.ir import LINEAR, RELU, Dense, Network
from onnxcomp.reader import lower, read
from onnxcomp.writer import to_model

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT / "models" / "external" / "oval21" / "cifar_base_kw.onnx"


# ---- building real ONNX models -------------------------------------------------------------------
def _model(nodes, inits, in_shape, out_name):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", "C", "H", "W"])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


geometry = st.fixed_dictionaries({
    "c_in": st.sampled_from([1, 2, 4]), "groups": st.sampled_from([1, 2]), "c_out_per_group": st.integers(1, 3),
    "h": st.integers(3, 7), "w": st.integers(3, 7), "kh": st.integers(1, 3), "kw": st.integers(1, 3),
    "sh": st.integers(1, 2), "sw": st.integers(1, 2), "pads": st.tuples(*[st.integers(0, 2)] * 4),
    "dh": st.integers(1, 2), "dw": st.integers(1, 2), "seed": st.integers(0, 2**16),
})


def _conv_case(g):
    group = g["groups"] if g["c_in"] % g["groups"] == 0 else 1
    c_out = g["c_out_per_group"] * group
    ho, wo = conv_output_hw((g["h"], g["w"]), (g["kh"], g["kw"]), (g["sh"], g["sw"]), g["pads"], (g["dh"], g["dw"]))
    if ho <= 0 or wo <= 0:
        return None
    rng = np.random.default_rng(g["seed"])
    kernel = rng.normal(size=(c_out, g["c_in"] // group, g["kh"], g["kw"])).astype(np.float32)
    bias = rng.normal(size=c_out).astype(np.float32)
    layer = Conv(kernel, bias, (g["c_in"], g["h"], g["w"]), (g["sh"], g["sw"]), g["pads"], (g["dh"], g["dw"]),
                 group=group, activation=LINEAR)
    node = helper.make_node("Conv", ["x", "k", "b"], ["y"], strides=[g["sh"], g["sw"]], pads=list(g["pads"]),
                            dilations=[g["dh"], g["dw"]], group=group)
    model = _model([node], {"k": kernel, "b": bias}, (g["c_in"], g["h"], g["w"]), "y")
    return layer, model, rng


@settings(max_examples=60, deadline=None)
@given(geometry)
def test_sparse_operator_is_onnxruntime_conv(g):
    """The CSR operator built from the kernel taps computes exactly ONNX's Conv, for any stride, padding,
    dilation and group count; the writer's Conv node does too."""
    case = _conv_case(g)
    if case is None:
        return
    layer, model, rng = case
    x = rng.normal(size=(5, layer.n_in))
    (want,) = run_ort(model, x.astype(np.float32))
    assert layer.weight.shape == (layer.n_out, layer.n_in)
    assert layer.weight.nnz <= layer.kernel[0].size * layer.n_out
    assert_same(layer.preactivation(x), want, what="sparse operator vs onnxruntime Conv")
    net = Network((layer, Dense(rng.normal(size=(2, layer.n_out)), np.zeros(2), LINEAR)), layer.n_in)
    (written,) = run_ort(to_model(net), x.astype(np.float32))
    assert_same(written, net(x), what="written Conv model vs the IR")
    # the transposed product (CROWN's back-substitution) is the adjoint of the forward one
    v = rng.normal(size=(3, layer.n_out))
    assert np.allclose(np.asarray(v @ layer.weight) @ x.T, v @ np.asarray(x @ layer.weight.T).T)
    # the direct (im2col) convolution and its transpose, used for large batches, are the same products,
    # also for a subset of emitted units and a permuted input
    from dataclasses import replace

    perm = tuple(int(i) for i in rng.permutation(layer.n_in))
    keep = tuple(int(u) for u in np.flatnonzero(rng.uniform(size=layer.n_full) < 0.6)) or (0,)
    for variant in (layer, replace(layer, in_perm=perm), replace(layer, units=keep)):
        xs = rng.normal(size=(20, variant.n_in))
        assert np.allclose(variant.convolve(xs), np.asarray(xs @ variant.weight.T), rtol=1e-12, atol=1e-12)
        ds = rng.normal(size=(20, variant.n_out))
        assert np.allclose(variant.transpose_convolve(ds), np.asarray((variant.weight.T @ ds.T).T), rtol=1e-12,
                           atol=1e-12)


def _small_cnn(seed=0, pad_node=True, transpose_head=False):
    """Conv(stride 2) BatchNormalization Relu [Pad] Conv Relu AveragePool, then Flatten (or the TF-style
    Transpose + Reshape) Gemm Relu Gemm, on 2 x 9 x 9 inputs."""
    rng = np.random.default_rng(seed)
    inits = {"k1": rng.normal(size=(4, 2, 3, 3)) * 0.5, "b1": rng.normal(size=4) * 0.1,
             "s": rng.uniform(0.5, 2, 4), "t": rng.normal(size=4) * 0.2, "m": rng.normal(size=4) * 0.1,
             "v": rng.uniform(0.5, 2, 4), "k2": rng.normal(size=(3, 4, 3, 3)) * 0.3, "b2": rng.normal(size=3) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "k1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "s", "t", "m", "v"], ["bn"], epsilon=1e-5),
             helper.make_node("Relu", ["bn"], ["r1"])]
    cur = "r1"  # 4 x 5 x 5
    if pad_node:
        inits["pads"] = np.array([0, 0, 1, 1, 0, 0, 1, 1])
        nodes.append(helper.make_node("Pad", ["r1", "pads_i"], ["p1"]))
        cur = "p1"  # 4 x 7 x 7
    nodes += [helper.make_node("Conv", [cur, "k2", "b2"], ["c2"]),
              helper.make_node("Relu", ["c2"], ["r2"]),
              helper.make_node("AveragePool", ["r2"], ["ap"], kernel_shape=[2, 2], strides=[1, 1])]
    side = 4 if pad_node else 2
    flat = 3 * side * side
    if transpose_head:
        inits["shape"] = np.array([-1, flat])
        nodes += [helper.make_node("Transpose", ["ap"], ["tp"], perm=[0, 2, 3, 1]),
                  helper.make_node("Reshape", ["tp", "shape_i"], ["fl"])]
    else:
        nodes.append(helper.make_node("Flatten", ["ap"], ["fl"]))
    inits.update({"w3": rng.normal(size=(8, flat)) * 0.5, "b3": rng.normal(size=8) * 0.1,
                  "w4": rng.normal(size=(3, 8)), "b4": rng.normal(size=3)})
    nodes += [helper.make_node("Gemm", ["fl", "w3", "b3"], ["g3"], transB=1),
              helper.make_node("Relu", ["g3"], ["r3"]),
              helper.make_node("Gemm", ["r3", "w4", "b4"], ["y"], transB=1)]
    ints = {k: v for k, v in inits.items() if k in ("pads", "shape")}
    floats = {k: v for k, v in inits.items() if k not in ints}
    graph_inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in floats.items()]
    graph_inits += [numpy_helper.from_array(np.asarray(v, np.int64), k + "_i") for k, v in ints.items()]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], graph_inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("pad_node", [True, False])
@pytest.mark.parametrize("transpose_head", [False, True])
def test_reader_lowers_a_cnn_from_its_input(pad_node, transpose_head):
    """Conv, BatchNormalization, Pad, AveragePool and a Flatten or Transpose+Reshape head all become IR layers
    (nothing left before the chain), and the IR and the written model compute what the original computes."""
    model = _small_cnn(1, pad_node, transpose_head)
    net = lower(model, source="cnn", conv=True)
    assert not net.onnx.prefix_ops
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds[:3] == ["Conv", "Conv", "Conv"] and kinds[-2:] == ["Dense", "Dense"]
    assert net.layers[2].op == "AveragePool" and net.layers[2].is_plain_average_pool
    x = np.random.default_rng(2).uniform(-1, 1, size=(16, net.input_size))
    (want,) = run_ort(model, x.astype(np.float32))
    assert_same(net(x), want, what="IR vs the original model")
    (written,) = run_ort(to_model(net), x.astype(np.float32))
    assert_same(written, want, what="written model vs the original model")
    # pre-activations exposed for sampling are the IR's, unit for unit
    exposed = to_model(net, expose_preactivations=True)
    outs = run_ort(exposed, x.astype(np.float32))
    _, pres = net.forward(x, preactivations=True)
    for got, ref in zip(outs[1:], pres):
        assert_same(got, ref, what="exposed pre-activation")


def test_conv_lowering_is_opt_in():
    """Without ``conv=True`` the convolutional prefix stays opaque (the dense-only behaviour is unchanged)."""
    net = lower(_small_cnn(), source="cnn")
    assert "Conv" in net.onnx.prefix_ops
    assert all(isinstance(layer, Dense) for layer in net.layers)


def test_cifar_base_kw_lowers_and_round_trips():
    net = read(CIFAR, conv=True)
    assert [type(layer).__name__ for layer in net.layers] == ["Conv", "Conv", "Dense", "Dense"]
    assert [layer.n_out for layer in net.layers] == [2048, 1024, 100, 10]
    model = onnx.load(CIFAR)
    x = np.random.default_rng(0).uniform(0, 1, size=(8, net.input_size))
    (want,) = run_ort(model, x.astype(np.float32))
    assert_same(net(x), want, what="IR vs cifar_base_kw")
    (written,) = run_ort(to_model(net), x.astype(np.float32))
    assert_same(written, want, what="written vs cifar_base_kw")


def _dense_oracle(net: Network) -> Network:
    """The same network with every convolution as its explicit (Toeplitz) matrix."""
    return Network(tuple(Dense(layer.weight.toarray(), layer.bias, layer.activation) if isinstance(layer, Conv)
                         else layer for layer in net.layers), net.input_size)


@pytest.mark.parametrize("method", ["interval", "crown", "alpha"])
def test_bounds_through_convolutions_are_sound_and_match_the_dense_oracle(method):
    net = lower(_small_cnn(3), source="cnn", conv=True)
    rng = np.random.default_rng(4)
    centre = rng.uniform(0.2, 0.8, net.input_size)
    lo, hi = centre - 0.05, centre + 0.05
    run = {"interval": interval_bounds, "crown": crown_bounds,
           "alpha": lambda n, a, b: alpha_crown_bounds(n, a, b, iterations=5)}[method]
    got, ref = run(net, lo, hi), run(_dense_oracle(net), lo, hi)
    ibp = interval_bounds(net, lo, hi)
    x = rng.uniform(lo, hi, size=(2000, net.input_size))
    _, pres = net.forward(np.vstack([x, lo, hi]), preactivations=True)
    for k, pre in enumerate(pres):
        assert np.all(got.lower[k].reshape(-1) <= pre.min(axis=0) + 1e-9), f"layer {k} lower bound above a sample"
        assert np.all(got.upper[k].reshape(-1) >= pre.max(axis=0) - 1e-9), f"layer {k} upper bound below a sample"
        # units intervals already decide keep their interval bounds on a convolutional network (their
        # relaxation does not depend on them); every other one gets exactly the dense oracle's bound
        # (alpha-CROWN optimises its slopes from those bounds, so it is only checked for soundness)
        open_ = {"crown": (ibp.lower[k] < 0) & (ibp.upper[k] > 0), "interval": np.ones_like(ibp.lower[k], bool),
                 "alpha": np.zeros_like(ibp.lower[k], bool)}[method]
        assert np.allclose(got.lower[k][open_], ref.lower[k][open_], rtol=1e-9, atol=1e-9)
        assert np.allclose(got.upper[k][open_], ref.upper[k][open_], rtol=1e-9, atol=1e-9)
    if method != "interval":  # back-substitution through the convolutions is tighter than intervals
        ibp = interval_bounds(net, lo, hi)
        assert np.sum(ibp.upper[-1] - ibp.lower[-1]) > np.sum(got.upper[-1] - got.lower[-1])


def test_structural_edits_keep_neuron_identity():
    rng = np.random.default_rng(5)
    layer = Conv(rng.normal(size=(4, 2, 3, 3)), rng.normal(size=4), (2, 5, 5), pads=(1, 1, 1, 1), activation=RELU)
    x = rng.normal(size=(3, layer.n_in))
    keep = np.array([True, False, True, True])
    fewer = layer.keep_channels(keep)
    hw = 25
    assert fewer.channel_ids == (0, 2, 3)
    assert fewer.neuron_ids[:hw] == tuple(range(hw)) and fewer.neuron_ids[hw] == 2 * hw
    full = layer.apply(x).reshape(3, 4, hw)
    assert np.allclose(fewer.apply(x).reshape(3, 3, hw), full[:, keep])
    units = np.zeros(fewer.n_out, bool)
    units[[0, 30, 74]] = True
    picked = fewer.keep_units(units)
    assert picked.neuron_ids == (0, 55, 99) and picked.unit_label(55) == "channel 2, row 1, column 0"
    assert np.allclose(picked.apply(x), fewer.apply(x)[:, units])
    pool = average_pool((2, 4, 4), (2, 2), (2, 2), (0, 0, 0, 0))
    y = rng.normal(size=(2, 32))
    assert np.allclose(pool.apply(y), y.reshape(2, 2, 2, 2, 2, 2).mean(axis=(3, 5)).reshape(2, -1))


# ---- the exact fold of convolutional networks --------------------------------------------------------
def _random_cnn(rng, *, pool: bool, bias_shift: float) -> Network:
    """Conv(ReLU) [AveragePool] Conv(ReLU) then a dense head, with biases shifted so that whole channels die."""
    c0, side = int(rng.integers(1, 3)), int(rng.integers(5, 8))
    c1, c2 = int(rng.integers(2, 5)), int(rng.integers(2, 5))
    layers = [Conv(rng.normal(size=(c1, c0, 3, 3)) * 0.5, rng.normal(size=c1) + bias_shift, (c0, side, side),
                   pads=(1, 1, 1, 1))]
    shape = layers[-1].out_shape
    if pool:
        layers.append(average_pool(shape, (2, 2), (1, 1), (0, 0, 0, 0)))
        shape = layers[-1].out_shape
    layers.append(Conv(rng.normal(size=(c2, shape[0], 2, 2)) * 0.5, rng.normal(size=c2) + bias_shift, shape,
                       strides=(2, 2)))
    n = layers[-1].n_out
    layers += [Dense(rng.normal(size=(6, n)) / np.sqrt(n), rng.normal(size=6) + bias_shift),
               Dense(rng.normal(size=(3, 6)), rng.normal(size=3), LINEAR)]
    return Network(tuple(layers), c0 * side * side)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**16), st.booleans(), st.sampled_from([-1.5, -0.5, 0.5]), st.sampled_from([0.05, 0.3]))
def test_conv_fold_is_exact_on_the_domain(seed, pool, shift, radius):
    """Folding what sound bounds prove (dead channels, constant head inputs, the head's stable neurons) gives
    a network equal to the original on the box, whose written ONNX model computes it; the certificate's
    claims rebuild exactly the same network (what ``verify --formal`` replays)."""
    from onnxcomp.certificate import claimed_state, issue
    from onnxcomp.ir import Box
    from onnxcomp.leo import fold
    from onnxcomp.replay import compare_structure
    from onnxcomp.stability.by_bounds import certify, domain_bounds
    from onnxcomp.stability.state import merge

    rng = np.random.default_rng(seed)
    net = _random_cnn(rng, pool=pool, bias_shift=shift)
    centre = rng.uniform(0, 1, net.input_size)
    box = Box(centre - radius, centre + radius)
    found, _ = certify(net, domain_bounds(net, box, "crown"))
    st = merge(net, [found])
    new, report = fold(net, st)
    x = np.vstack([rng.uniform(box.lo, box.hi, size=(400, net.input_size)), box.lo, box.hi])
    assert np.allclose(new(x), net(x), rtol=1e-9, atol=1e-9)
    assert new.nonzero_params <= net.nonzero_params
    (written,) = run_ort(to_model(new), x.astype(np.float32))
    assert_same(written, new(x), what="written folded CNN")
    again, _ = fold(net, claimed_state(net, issue(net, st)))
    assert compare_structure(again, new, 1e-12) == ""
    # everything removed from a conv layer is named by its original (channel, row, column)
    for entry in report["removed"]:
        if "unit" in entry:
            assert entry["unit"].startswith("channel ")


def test_dead_channels_leave_the_convolution_and_the_next_one():
    """A channel proven dead at every position goes, with the next convolution's input slice for it (fewer
    MACs), and the head's columns of constant units go (fewer parameters)."""
    from onnxcomp.ir import Box
    from onnxcomp.leo import fold
    from onnxcomp.stability.by_bounds import certify, domain_bounds
    from onnxcomp.stability.state import merge

    rng = np.random.default_rng(7)
    k1 = rng.normal(size=(3, 1, 3, 3))
    b1 = np.array([0.1, -50.0, 0.2])  # channel 1 is dead on any input of [0, 1]
    net = Network((Conv(k1, b1, (1, 6, 6)), Conv(rng.normal(size=(2, 3, 2, 2)), np.zeros(2), (3, 4, 4)),
                   Dense(rng.normal(size=(4, 18)), np.zeros(4)), Dense(rng.normal(size=(2, 4)), np.zeros(2), LINEAR)),
                  36)
    box = Box(np.zeros(36), np.ones(36))
    found, _ = certify(net, domain_bounds(net, box, "crown"))
    new, report = fold(net, merge(net, [found]))
    assert new.layers[0].channel_ids == (0, 2) and new.layers[1].kernel.shape[1] == 2
    assert new.macs < net.macs
    assert report["layers"][0]["channels_removed"] == 1
    x = rng.uniform(0, 1, size=(100, 36))
    assert np.allclose(new(x), net(x))


@pytest.mark.parametrize("batch", [1, "N"])
def test_a_pytorch_style_view_flatten_is_read(batch):
    """``x.view(x.size(0), -1)`` exports as Shape -> Gather -> Unsqueeze -> Concat -> Reshape; the Shape is a
    constant (a symbolic batch stands as a marker only a Reshape's batch entry may use), so the chain runs
    through it into the head."""
    rng = np.random.default_rng(9)
    floats = {"k": rng.normal(size=(2, 3, 3, 3)), "b": np.zeros(2), "w": rng.normal(size=(4, 72)), "c": np.zeros(4)}
    ints = {"zero": np.array(0), "m1": np.array([-1]), "ax": np.array([0])}
    nodes = [helper.make_node("Conv", ["x", "k", "b"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Shape", ["r1"], ["sh"]), helper.make_node("Gather", ["sh", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]), helper.make_node("Concat", ["n1", "m1"], ["shp"], axis=0),
             helper.make_node("Reshape", ["r1", "shp"], ["f"]), helper.make_node("Gemm", ["f", "w", "c"], ["y"], transB=1)]
    inits = ([numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in floats.items()]
             + [numpy_helper.from_array(np.asarray(v, np.int64), k) for k, v in ints.items()])
    graph = helper.make_graph(nodes, "view", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    net = lower(model, source="view", conv=True)
    assert not net.onnx.prefix_ops and not net.onnx.suffix_ops
    assert [type(layer).__name__ for layer in net.layers] == ["Conv", "Dense"]
    x = rng.uniform(0, 1, size=(3 if batch == "N" else 1, 192))
    (want,) = run_ort(model, x.astype(np.float32))
    assert_same(net(x), want)
    written = to_model(net)
    assert "Shape" not in [n.op_type for n in written.graph.node]
    (got,) = run_ort(written, x.astype(np.float32))
    assert_same(got, want)


@pytest.mark.parametrize("batch", [1, "N"])
def test_an_nhwc_input_with_its_transpose_is_read_from_the_input(batch):
    """A TF-style model: NHWC input, per-channel normalisation, Transpose(0, 3, 1, 2), Conv.  The convolution
    reads the permuted input (written back as a Gather of the flattened input), and the file read back gives
    the same layers."""
    from onnxcomp.replay import compare_structure

    rng = np.random.default_rng(11)
    floats = {"k": rng.normal(size=(2, 3, 3, 3)), "b": rng.normal(size=2), "w": rng.normal(size=(4, 72)),
              "c": np.zeros(4), "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    nodes = [helper.make_node("Sub", ["x", "mean"], ["s"]), helper.make_node("Div", ["s", "std"], ["d"]),
             helper.make_node("Transpose", ["d"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "k", "b"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Flatten", ["r1"], ["f"]), helper.make_node("Gemm", ["f", "w", "c"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "nhwc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8, 8, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in floats.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    net = lower(model, source="nhwc", conv=True)
    assert not net.onnx.prefix_ops and net.layers[0].in_perm is not None
    x = rng.uniform(0, 1, size=(1, 192))
    (want,) = run_ort(model, x.astype(np.float32))
    assert_same(net(x), want)
    written = to_model(net)
    (got,) = run_ort(written, x.astype(np.float32))
    assert_same(got, want)
    back = lower(written, source="written", conv=True)
    assert compare_structure(net, back, 1e-6) == ""
