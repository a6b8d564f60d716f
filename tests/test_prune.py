"""``prune``: the requested sparsity is reached with the lowest-scored weights, the emitted file is smaller
and onnxruntime runs it exactly as the pruned IR computes; the sparse storage formats decode exactly."""

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

from onnxcomp.errors import UsageError
from onnxcomp.ir import LINEAR, Dense, Network
from onnxcomp.pipeline import Context, PassManager
from onnxcomp.reader import read
from onnxcomp.storage import candidate_formats, delta_gaps, encode_weight, materialize
from onnxcomp.writer import _Names, to_model
from onnxcomp.lookahead import lookahead_scores, sequential_masks
from onnxcomp.scores import FisherScores

from conftest import MODELS
from builders import random_network

DIGITS = MODELS / "data" / "digits_test.npz"


random_net = random_network


def run_passes(net, names, **options):
    ctx = Context(options=options, data=np.random.default_rng(0).normal(size=(20, net.input_size)))
    return PassManager().run(net, names, ctx), ctx


def ort_forward(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 0.95), st.sampled_from(["layer", "global"]))
def test_magnitude_pruning_zeroes_the_smallest_weights(seed, sparsity, granularity):
    rng = np.random.default_rng(seed)
    net = random_net(rng, int(rng.integers(2, 9)), [int(rng.integers(2, 9))], int(rng.integers(2, 5)))
    new, ctx = run_passes(net, ["prune"], sparsity=sparsity, granularity=granularity, score="magnitude")
    if granularity == "layer":
        for old, layer in zip(net.layers, new.layers):
            pruned = layer.weight == 0
            assert pruned.sum() == int(round(sparsity * old.weight.size))
            if pruned.any() and (~pruned).any():
                assert np.abs(old.weight[pruned]).max() <= np.abs(old.weight[~pruned]).min()
    else:
        old_w = np.concatenate([l.weight.ravel() for l in net.layers])
        new_w = np.concatenate([l.weight.ravel() for l in new.layers])
        assert (new_w == 0).sum() == int(round(sparsity * old_w.size))
        if (new_w == 0).any() and (new_w != 0).any():
            assert np.abs(old_w[new_w == 0]).max() <= np.abs(old_w[new_w != 0]).min()
    for old, layer in zip(net.layers, new.layers):
        kept = layer.weight != 0
        np.testing.assert_array_equal(layer.weight[kept], old.weight[kept])
        np.testing.assert_array_equal(layer.bias, old.bias)
    assert ctx.log[-1]["changed"] is True


def test_sparsity_zero_leaves_the_network_untouched():
    net = random_net(np.random.default_rng(1), 5, [6], 3)
    new, ctx = run_passes(net, ["prune"], sparsity=0.0)
    assert new is net
    assert ctx.log[-1]["changed"] is False


def test_already_zero_weights_count_towards_the_sparsity():
    rng = np.random.default_rng(2)
    net = random_net(rng, 10, [10], 4)
    w = net.layers[0].weight.copy()
    w[:, :6] = 0.0  # 60 % of the first layer already zero
    net = net.with_layers([replace(net.layers[0], weight=w), net.layers[1]])
    new, _ = run_passes(net, ["prune"], sparsity=0.3, score="magnitude")
    assert np.all(new.layers[0].weight == w)  # nothing more to prune there: 60 % >= 30 %
    assert np.sum(new.layers[1].weight == 0) == 12


def test_lap_pruning_removes_the_lowest_lookahead_scores():
    rng = np.random.default_rng(3)
    net = random_net(rng, 6, [8, 7], 3)
    new, ctx = run_passes(net, ["lookahead", "prune"], sparsity=0.5)
    scores = lookahead_scores(net, "full").weights
    assert ctx.log[-1]["score"] == "lap-full"
    for s, layer in zip(scores, new.layers):
        pruned = layer.weight == 0
        assert s[pruned].max() <= s[~pruned].min()
    magnitude, _ = run_passes(net, ["prune"], sparsity=0.5, score="magnitude")
    assert any(not np.array_equal(a.weight, b.weight) for a, b in zip(new.layers, magnitude.layers))


def test_ordered_lap_uses_the_sequential_masks():
    rng = np.random.default_rng(4)
    net = random_net(rng, 6, [8, 7], 3)
    new, _ = run_passes(net, ["lookahead", "prune"], sparsity=0.6, lap_variant="lap-backward-seq")
    masks = sequential_masks(net, 0.6, variant="backward-seq")
    for m, layer in zip(masks, new.layers):
        np.testing.assert_array_equal(layer.weight != 0, m)


def test_bad_settings_are_usage_errors():
    net = random_net(np.random.default_rng(5), 4, [4], 2)
    for opts in ({"sparsity": 1.0}, {"sparsity": -0.1}, {"sparsity": 0.5, "granularity": "row"}, {}):
        with pytest.raises(UsageError):
            run_passes(net, ["prune"], **opts)
    # --score fisher without the fisher analysis inserts it (its provider) before prune
    new, ctx = run_passes(net, ["prune"], sparsity=0.5, score="fisher")
    assert [e["name"] for e in ctx.log] == ["fisher", "prune"]
    assert ctx.log[-1]["score"] == ctx.get(FisherScores).method == "fisher-unsupervised"
    named, _ = run_passes(net, ["fisher", "prune"], sparsity=0.5, score="fisher")
    for a, b in zip(new.layers, named.layers):
        np.testing.assert_array_equal(a.weight, b.weight)
    for layer in new.layers:
        assert (layer.weight == 0).sum() == int(round(0.5 * layer.weight.size))


def _decode(enc, shape):
    out = helper.make_tensor_value_info("W", TensorProto.FLOAT, list(shape))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    nodes = enc.nodes + [helper.make_node("Identity", [enc.name], ["W"])]
    g = helper.make_graph(nodes, "decode", [x], [out], initializer=enc.inits, sparse_initializer=enc.sparse)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(m)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.zeros(1, np.float32)})[0]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 1.0), st.integers(1, 40), st.integers(1, 700))
def test_sparse_formats_decode_exactly_in_onnxruntime(seed, density, rows, cols):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(rows, cols)).astype(np.float32).astype(np.float64)
    w[rng.random(w.shape) >= density] = 0.0
    layer = Dense(w, np.zeros(rows), LINEAR)
    model = to_model(Network((layer,), cols))
    for fmt in candidate_formats(layer, 13):
        enc = encode_weight(layer, 0, np.float32, _Names(model), 13, positions=fmt)
        np.testing.assert_array_equal(_decode(enc, w.shape), w.astype(np.float32), err_msg=fmt)


def test_delta_gaps_bridge_long_runs():
    positions = np.array([0, 3, 700, 701, 2000])
    gaps, which = delta_gaps(positions)
    assert gaps.max() <= 255 and gaps.min() >= 1
    stored = np.cumsum(gaps.astype(np.int64)) - 1
    np.testing.assert_array_equal(stored[which >= 0], positions)


def test_pruned_file_is_smaller_in_proportion_and_runs_as_the_ir(tmp_path):
    net = read(str(MODELS / "mnist_2x100_l1.onnx"))
    dense_bytes = len(to_model(net).SerializeToString())
    x = np.load(MODELS / "data" / "mnist_test.npz")["x"][:200]
    sizes = {}
    for sparsity in (0.5, 0.8, 0.95):
        new, _ = run_passes(net, ["prune"], sparsity=sparsity, score="magnitude")
        model = to_model(new)
        sizes[sparsity] = len(model.SerializeToString())
        np.testing.assert_allclose(ort_forward(model, x), new.forward(x), rtol=1e-4, atol=1e-4)
        dense = materialize(model)
        weights = [onnx.numpy_helper.to_array(t) for t in dense.graph.initializer if t.name.endswith(".weight")]
        assert len(weights) == 3
        for w in weights:
            assert np.mean(w == 0) >= sparsity - 1e-9
    # float32 survivors cost 4 bytes + position: at most ~1.3 x (survivors x 4 bytes) + the biases
    for sparsity, size in sizes.items():
        assert size < dense_bytes * ((1 - sparsity) * 1.3 + 0.05), (sparsity, size, dense_bytes)
    assert sizes[0.95] < sizes[0.8] < sizes[0.5]


@pytest.mark.slow
def test_cli_lap_prune_end_to_end(tmp_path, repo_root):
    out, rep = tmp_path / "small.onnx", tmp_path / "report.json"
    src = repo_root / "models" / "digits_2x100_l1.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "onnxcomp", "run", str(src), "-p", "lap", "--sparsity", "0.8",
         "--data", str(DIGITS), "--labels", str(DIGITS), "-o", str(out), "--report", str(rep)],
        capture_output=True, text=True, cwd=repo_root)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size < 0.4 * src.stat().st_size
    report = json.loads(rep.read_text())
    prune_entry = [p for p in report["passes"] if p["name"] == "prune"][0]
    assert prune_entry["score"] == "lap-full"
    assert all(layer["sparsity"] >= 0.8 - 1e-9 for layer in prune_entry["layers"])
    fid = report["fidelity"]
    assert fid["exact"] is False and fid["accuracy_before"] == pytest.approx(0.9722, abs=1e-3)
    assert 0.5 < fid["accuracy_after"] <= 1.0
    assert report["verification"]["passed"] is True
    d = np.load(DIGITS)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    acc = np.mean(sess.run(None, {"input": d["x"]})[0].argmax(axis=1) == d["y"])
    assert acc == pytest.approx(fid["accuracy_after"])
