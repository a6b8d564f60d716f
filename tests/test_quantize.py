"""``quantize``: (weighted) k-means against its defining properties, at most 2**bits distinct weights per
layer in the emitted file, packed codes decoded exactly by onnxruntime, smaller files, int8 bounds."""

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from conftest import MODELS
from onnxcomp.errors import UsageError
from onnxcomp.ir import LINEAR, RELU, Dense, Network, Quantization
from onnxcomp.pipeline import Context, PassManager
from onnxcomp.reader import read
from onnxcomp.storage import candidate_formats, encode_weight, materialize, pack_bits, unpack_bits
from onnxcomp.writer import _Names, to_model
from onnxcomp.quantization import kmeans_layer, weighted_kmeans_1d
from onnxcomp.scores import FisherScores
from builders import random_network

DIGITS = MODELS / "data" / "digits_test.npz"


random_net = random_network


def run_passes(net, names, data=None, labels=None, **options):
    ctx = Context(options=options, data=data, labels=labels)
    return PassManager().run(net, names, ctx), ctx


def file_weights(model):
    """The dense weight matrices onnxruntime reconstructs from a written model."""
    dense = materialize(model)
    return {t.name: onnx.numpy_helper.to_array(t) for t in dense.graph.initializer if t.name.endswith(".weight")}


def objective(v, c, codes, w=None, q=None):
    d = v - c[codes]
    w = np.ones_like(v) if w is None else w
    return float(np.sum(w * d ** 2) + (0.0 if q is None else np.sum(q * d ** 4)))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(1, 400), st.booleans())
def test_weighted_kmeans_is_a_lloyd_fixed_point(seed, bits, n, weighted):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=n) * rng.uniform(0.01, 2)
    w = rng.uniform(0, 3, size=n) if weighted else None
    k = 2 ** bits
    c, codes = weighted_kmeans_1d(v, w, k)
    assert c.size <= k and np.all(np.diff(c) > 0)
    # every value sits at its nearest centre
    nearest = np.abs(v[:, None] - c[None, :]).min(axis=1)
    np.testing.assert_allclose(np.abs(v - c[codes]), nearest, rtol=0, atol=1e-12)
    if np.unique(v).size <= k:
        np.testing.assert_array_equal(c[codes], v)
    else:
        ww = np.ones(n) if w is None else np.maximum(w, 1e-9 * max(w.mean(), 1e-300))
        for j in range(c.size):
            sel = codes == j
            assert sel.any()
            assert c[j] == pytest.approx(np.sum(ww[sel] * v[sel]) / np.sum(ww[sel]), rel=1e-9, abs=1e-12)


def test_weighting_lowers_the_weighted_distortion():
    rng = np.random.default_rng(0)
    v = rng.laplace(size=5000)
    imp = rng.uniform(0, 1, size=5000) ** 4
    imp[v > 1] *= 100.0  # the positive tail matters most
    for k in (2, 4, 8, 16):
        cw, aw = weighted_kmeans_1d(v, imp, k)
        cp, ap = weighted_kmeans_1d(v, None, k)
        assert objective(v, cw, aw, imp) < objective(v, cp, ap, imp)
        assert objective(v, cp, ap) <= objective(v, cw, aw) + 1e-12


def test_quartic_kmeans_lowers_its_objective():
    rng = np.random.default_rng(1)
    v = rng.normal(size=3000)
    imp, quart = rng.uniform(size=3000), rng.uniform(size=3000) * 50
    c, a = weighted_kmeans_1d(v, imp, 8, quart)
    c2, a2 = weighted_kmeans_1d(v, imp, 8)
    assert objective(v, c, a, imp, quart) < objective(v, c2, a2, imp, quart)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.lists(st.integers(0, 255), min_size=1, max_size=300))
def test_bit_packing_round_trips(bits, raw):
    codes = np.asarray(raw) % (2 ** bits)
    packed = pack_bits(codes, bits)
    assert packed.size == -(-codes.size * bits // 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits, codes.size), codes)


def _decode(enc, shape):
    out = helper.make_tensor_value_info("W", TensorProto.FLOAT, list(shape))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    g = helper.make_graph(enc.nodes + [helper.make_node("Identity", [enc.name], ["W"])], "decode", [x], [out],
                          initializer=enc.inits, sparse_initializer=enc.sparse)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(m)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.zeros(1, np.float32)})[0]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 8), st.floats(0.0, 1.0), st.integers(1, 30), st.integers(1, 300))
def test_codebook_and_int8_storage_decode_exactly(seed, bits, density, rows, cols):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(rows, cols))
    w[rng.random(w.shape) >= density] = 0.0
    base = Dense(w, np.zeros(rows), LINEAR)
    quantized = kmeans_layer(base, bits, None, np.float32)
    scale = np.where(np.abs(w).max(1) > 0, np.abs(w).max(1) / 127, 1.0).astype(np.float32)
    codes = np.round(w / scale[:, None]).astype(np.int8)
    int8 = replace(base, weight=(scale[:, None] * codes.astype(np.float32)).astype(np.float64),
                   quant=Quantization("int8", codes, None, scale.astype(np.float64), 8))
    model = to_model(Network((base,), cols))
    for layer in (quantized, int8):
        for fmt in candidate_formats(layer, 13):
            enc = encode_weight(layer, 0, np.float32, _Names(model), 13, positions=fmt)
            np.testing.assert_array_equal(_decode(enc, w.shape), layer.weight.astype(np.float32), err_msg=fmt)


def test_quantize_fires_with_at_most_2_to_the_bits_values_per_layer():
    net = read(str(MODELS / "mnist_2x100_l1.onnx"))
    x = np.load(MODELS / "data" / "mnist_test.npz")["x"][:300]
    original_bytes = len(to_model(net).SerializeToString())
    previous = None
    for bits in (2, 3, 4, 6):
        new, ctx = run_passes(net, ["quantize"], bits=bits)
        model = to_model(new)
        size = len(model.SerializeToString())
        assert size < original_bytes * (bits / 32 + 0.06)
        if previous is not None:
            assert size > previous
        previous = size
        for w, layer in zip(file_weights(model).values(), new.layers):
            assert np.unique(w).size <= 2 ** bits
            np.testing.assert_array_equal(w, layer.weight.astype(np.float32))
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(sess.run(None, {"input": x})[0], new.forward(x), rtol=1e-4, atol=1e-4)
        entry = ctx.log[-1]
        assert entry["bits"] == bits and entry["bits_per_weight"] < bits + 0.2
        assert all(layer["distinct_values"] <= 2 ** bits for layer in entry["layers"])


def test_quantize_does_not_change_layers_with_few_distinct_values():
    rng = np.random.default_rng(2)
    levels = np.array([-0.5, -0.1, 0.0, 0.2, 0.7], dtype=np.float32).astype(np.float64)  # float32 model
    layers = [Dense(rng.choice(levels, size=(6, 5)), rng.normal(size=6), RELU),
              Dense(rng.choice(levels, size=(3, 6)), rng.normal(size=3), LINEAR)]
    net = Network(tuple(layers), 5)
    new, _ = run_passes(net, ["quantize"], bits=3)
    for old, layer in zip(net.layers, new.layers):
        np.testing.assert_array_equal(layer.weight, old.weight)


def test_quantizing_after_pruning_keeps_the_zeros():
    net = random_net(np.random.default_rng(3), 30, [40], 5)
    new, _ = run_passes(net, ["prune", "quantize"], sparsity=0.7, bits=2, score="magnitude")
    pruned, _ = run_passes(net, ["prune"], sparsity=0.7, score="magnitude")
    for a, b in zip(pruned.layers, new.layers):
        np.testing.assert_array_equal(a.weight == 0, b.weight == 0)
        assert np.unique(b.weight).size <= 4


def test_int8_per_channel_error_is_at_most_half_a_step():
    net = random_net(np.random.default_rng(4), 12, [9], 4)
    new, ctx = run_passes(net, ["quantize"], quant="int8")
    for old, layer in zip(net.layers, new.layers):
        step = np.abs(old.weight).max(axis=1) / 127
        assert np.all(np.abs(layer.weight - old.weight) <= step[:, None] * 0.5 + 1e-6)
        assert layer.quant.kind == "int8" and np.abs(layer.quant.codes).max() <= 127
    model = to_model(new)
    assert sum(n.op_type == "DequantizeLinear" for n in model.graph.node) == 2
    with pytest.raises(UsageError):
        run_passes(net, ["quantize"], quant="int8", bits=4)


def test_fisher_weighting_is_used_when_fisher_ran_and_lowers_its_distortion():
    net = read(str(MODELS / "digits_2x32_l1.onnx"))
    d = np.load(DIGITS)
    fisher_q, ctx = run_passes(net, ["fisher", "quantize"], data=d["x"], bits=3, fisher_objective="unsupervised")
    assert "weighted k-means (fisher-unsupervised)" in ctx.log[-1]["objective"]
    imp = ctx.get(FisherScores).importance
    plain_q, ctx2 = run_passes(net, ["quantize"], bits=3)
    assert ctx2.log[-1]["objective"].startswith("plain")
    for k, old in enumerate(net.layers):
        dist = lambda q: float(np.sum(imp[k] * (old.weight - q.layers[k].weight) ** 2))  # noqa: E731
        assert dist(fisher_q) < dist(plain_q)


def test_bad_bits_are_usage_errors():
    net = random_net(np.random.default_rng(5), 4, [4], 2)
    for opts in ({"bits": 0}, {"bits": 9}, {"bits": 2.5}, {"quant": "fp4", "bits": 4}, {}):
        with pytest.raises(UsageError):
            run_passes(net, ["quantize"], **opts)


@pytest.mark.slow
def test_cli_lap_then_quantize_composes(tmp_path, repo_root):
    out, rep = tmp_path / "q.onnx", tmp_path / "r.json"
    src = repo_root / "models" / "digits_2x100_l1.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "onnxcomp", "run", str(src), "-p", "lap,quantize", "--sparsity", "0.7", "--bits", "3",
         "--data", str(DIGITS), "-o", str(out), "--report", str(rep)], capture_output=True, text=True, cwd=repo_root)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(rep.read_text())
    assert [p["name"] for p in report["passes"]] == ["lookahead", "prune", "quantize"]
    assert out.stat().st_size < 0.2 * src.stat().st_size
    for w in file_weights(onnx.load(str(out))).values():
        assert np.unique(w).size <= 8 and np.mean(w == 0) >= 0.7 - 1e-9
    assert report["latency_ms"]["before"]["batch_1"] > 0 and report["latency_ms"]["after"]["batch_1024"] > 0
