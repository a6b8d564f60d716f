"""Round trip ONNX -> IR -> ONNX of every shipped model and of random networks.

Every fixture in ``models/*.onnx`` and every external model in ``models/external/*/*.onnx`` is lowered
and written back; the two files are run in plain onnxruntime on the dataset rows (fixtures) or on
uniform samples and corners of the model's vnnlib domain (external models), and must agree to float32
rounding.  Where the chain is the whole model, the float64 IR must agree with onnxruntime as well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import F32_RTOL, GraphBuilder, assert_same, input_features, run_ort
from onnxcomp.domain import read_vnnlib
from onnxcomp.ir import Box
from onnxcomp.onnxio import load_model
from onnxcomp.reader import lower, model_input_features
from onnxcomp.writer import to_model

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = sorted((ROOT / "models").glob("*.onnx"))
EXTERNAL = sorted((ROOT / "models" / "external").glob("*/*.onnx"))

# The input domain of each external model: its vnnlib file, else a box matching how it is used.
VNNLIB = {
    "ACASXU_run2a_1_1_batch_2000.onnx": ["prop_1.vnnlib", "prop_3.vnnlib"],
    "ACASXU_run2a_1_9_batch_2000.onnx": ["prop_3.vnnlib"],
    "ACASXU_run2a_2_1_batch_2000.onnx": ["prop_4.vnnlib"],
    "ACASXU_run2a_3_3_batch_2000.onnx": ["prop_2.vnnlib"],
    "ACASXU_run2a_5_9_batch_2000.onnx": ["prop_1.vnnlib"],
    "mnist-net_256x2.onnx": ["prop_0_0.03.vnnlib"],
    "mnist-net_256x4.onnx": ["prop_1_0.03.vnnlib"],
    "mnist-net_256x6.onnx": ["prop_1_0.05.vnnlib"],
    "mnist_relu_9_200.onnx": ["mnist_spec_idx_8098_eps_0.01500.vnnlib"],
    "cartpole.onnx": ["cartpole_case_unsafe_0.vnnlib"],
    "dubinsrejoin.onnx": ["dubinsrejoin_case_safe_0.vnnlib"],
    "lunarlander.onnx": ["lunarlander_case_safe_0.vnnlib"],
    "robot.onnx": ["robot_0.vnnlib"],
    "tll_n2_N16_instance_1_0.onnx": ["property_N16_0.vnnlib"],
    "cifar_base_kw.onnx": ["cifar_base_kw-img1598-eps0.0026143790849673205.vnnlib"],
    "tll_n2_N8_instance_0_0.onnx": ["property_N8_0.vnnlib"],
    "test_nano.onnx": ["test_nano.vnnlib"],
    "test_tiny.onnx": ["test_tiny.vnnlib"],
    "test_small.onnx": ["test_small.vnnlib"],
}
BOX = {"mnist2x10.onnx": (0.0, 1.0), "fc1.onnx": (-1.0, 1.0), "fc_2-2-3.onnx": (-1.0, 1.0),
       "linear2-3_bn1-linear3-1.onnx": (-1.0, 1.0)}


def test_every_model_has_inputs_for_the_round_trip():
    assert len(FIXTURES) >= 10 and len(EXTERNAL) >= 11
    for path in EXTERNAL:
        assert path.name in VNNLIB or path.name in BOX, f"add a domain for {path.name}"


def _check(model, net, x, ir_rtol=1e-4):
    out = to_model(net)
    ref, new = run_ort(model, x), run_ort(out, x)
    assert len(ref) == len(new) == len(model.graph.output)
    for k, (a, b) in enumerate(zip(ref, new)):
        assert_same(a, b, rtol=F32_RTOL, what=f"output {k}")
    if not net.onnx.prefix_ops and not net.onnx.suffix_ops:
        # The float64 IR against float32 onnxruntime: float32 accumulation error only.
        assert_same(ref[0], net.forward(x), rtol=ir_rtol, what="IR forward")


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_fixture_round_trip_on_data(path):
    model = load_model(path)
    net = lower(model, str(path))
    dataset = "digits" if path.name.startswith("digits") else "mnist"
    with np.load(ROOT / "models" / "data" / f"{dataset}_test.npz") as z:
        x = z["x"][:200]
    assert x.shape[1] == model_input_features(net) == input_features(model)
    _check(model, net, x)
    box = Box(np.zeros(x.shape[1]), np.ones(x.shape[1]))
    rng = np.random.default_rng(0)
    _check(model, net, np.vstack([box.sample(100, rng), box.corners(16, rng)]))


@pytest.mark.parametrize("path", EXTERNAL, ids=lambda p: p.name)
def test_external_round_trip_on_domain_samples(path):
    model = load_model(path)
    net = lower(model, str(path))
    n = model_input_features(net)
    boxes = [read_vnnlib(str(path.parent / v), n) for v in VNNLIB.get(path.name, [])]
    if path.name in BOX:
        lo, hi = BOX[path.name]
        boxes.append(Box(np.full(n, lo), np.full(n, hi)))
    rng = np.random.default_rng(1)
    few = n > 1000  # the CIFAR model runs one image per onnxruntime call
    for box in boxes:
        x = np.vstack([box.sample(16 if few else 200, rng), box.corners(8 if few else 64, rng)])
        _check(model, net, x)


def test_external_mlps_lower_completely_and_cifar_keeps_its_convolutions():
    for path in EXTERNAL:
        net = lower(load_model(path), str(path))
        if path.name == "cifar_base_kw.onnx":
            assert net.onnx.prefix_ops == ["Conv", "Relu", "Conv", "Relu"]
            assert [layer.n_out for layer in net.layers] == [100, 10]
        else:
            assert net.onnx.prefix_ops == [], path.name
            assert net.onnx.suffix_ops == [], path.name
            assert net.input_size == model_input_features(net)


# ---- property: random networks round-trip exactly -------------------------------------------------------
@st.composite
def networks(draw):
    """A random ReLU/linear MLP in any mix of Gemm (any transA/transB/alpha/beta) and MatMul(+Add)
    forms, with the weights on the right or (for the whole network) on the left, optionally preceded
    by input normalisation (Sub/Div/Mul/Add by constants, BatchNormalization)."""
    seed = draw(st.integers(0, 2**31 - 1))
    n_in = draw(st.integers(1, 12))
    widths = draw(st.lists(st.integers(1, 16), min_size=0, max_size=4)) + [draw(st.integers(1, 6))]
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float64]))
    g = GraphBuilder(("N", n_in), seed=seed, dtype=dtype, const_nodes=draw(st.booleans()))
    h = g.input
    for op in draw(st.lists(st.sampled_from(["Sub", "Div", "Mul", "Add", "BN"]), max_size=3)):
        if op == "BN":
            h = g.batchnorm(h)
        else:
            shape = draw(st.sampled_from([(), (n_in,), (1, n_in)]))
            value = g.rng.uniform(0.5, 2.0, shape) * g.rng.choice([-1.0, 1.0], shape)
            h = g.elementwise(h, op, value)
    # Weight on the left: the layers read [features, N] (Transpose in, Transpose back out).
    left = draw(st.booleans())
    if left:
        h = g.transpose(h, (1, 0))
    acts = []
    for k, width in enumerate(widths):
        alpha, beta = draw(st.sampled_from([1.0, 0.5, -2.0])), draw(st.sampled_from([1.0, 0.25]))
        if draw(st.booleans()) and left:
            h = g.gemm(h, width, weight_left=True, transA=draw(st.integers(0, 1)), transB=0, alpha=alpha, beta=beta,
                       bias=draw(st.sampled_from(["col", "scalar", None])))
        elif draw(st.booleans()) or left:
            h = g.gemm(h, width, transB=draw(st.integers(0, 1)), alpha=alpha, beta=beta,
                       bias=draw(st.sampled_from(["vector", "row", None]))) if not left else \
                g.matmul(h, width, weight_left=True, bias=draw(st.booleans()), bias_first=draw(st.booleans()))
        else:
            h = g.matmul(h, width, bias=draw(st.booleans()), bias_first=draw(st.booleans()))
        relu = k < len(widths) - 1 and draw(st.booleans())
        if relu:
            h = g.relu(h)
        acts.append("relu" if relu else "linear")
    if left:
        h = g.transpose(h, (1, 0))
    return g.build(h), n_in, widths, acts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks(), st.integers(0, 2**31 - 1))
def test_random_networks_round_trip_exactly(case, seed):
    model, n_in, widths, acts = case
    net = lower(model)
    assert [layer.n_out for layer in net.layers] == widths
    assert [layer.activation for layer in net.layers] == acts
    assert net.input_size == n_in
    x = np.random.default_rng(seed).uniform(-3, 3, (64, n_in))
    double = model.graph.input[0].type.tensor_type.elem_type == 11
    ref, new = run_ort(model, x)[0], run_ort(to_model(net), x)[0]
    assert_same(ref, new, rtol=1e-12 if double else F32_RTOL)
    assert_same(ref, net.forward(x), rtol=1e-12 if double else F32_RTOL)
