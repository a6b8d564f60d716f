"""Lossy passes on convolution kernels: lookahead, magnitude and Fisher scores, unstructured pruning and
quantization of conv layers (issue 19).

Oracles: the LAP factors are recomputed here from the kernels by hand; the Fisher gradients from the
explicit (Toeplitz) matrix of the same convolution, whose entries are mapped back to the kernel weight
they copy; every written model is run in onnxruntime against the IR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import assert_same, run_ort
from onnxcomp.conv import Conv, average_pool, max_pool
from onnxcomp.ir import LINEAR, Dense, Network
from onnxcomp.params import Neighbours, tensor, tunable
from onnxcomp.writer import to_model

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "models" / "mnist_cnn_lenet.onnx"
BN_AVG = ROOT / "models" / "mnist_cnn_bn_avg.onnx"
CALIB = ROOT / "models" / "data" / "mnist_calib.npz"


def _random_cnn(rng, *, pool: str, group: int = 1) -> Network:
    """Conv(ReLU) [pool] Conv(ReLU) then a dense head (pool: none, avg or max)."""
    c0, side = int(rng.integers(1, 3)) * group, int(rng.integers(6, 9))
    c1, c2 = 2 * group, int(rng.integers(2, 4))
    layers = [Conv(rng.normal(size=(c1, c0 // group, 3, 3)), rng.normal(size=c1) * 0.3, (c0, side, side),
                   pads=(1, 1, 1, 1), group=group)]
    shape = layers[-1].out_shape
    if pool == "avg":
        layers.append(average_pool(shape, (2, 2), (2, 2), (0, 0, 0, 0)))
    elif pool == "max":
        layers += max_pool(shape, (2, 2), (2, 2), (0, 0, 0, 0), nonnegative=True)
    shape = layers[-1].out_shape
    layers.append(Conv(rng.normal(size=(c2, shape[0], 2, 2)), rng.normal(size=c2) * 0.3, shape))
    n = layers[-1].n_out
    layers += [Dense(rng.normal(size=(5, n)) / np.sqrt(n), rng.normal(size=5) * 0.3),
               Dense(rng.normal(size=(3, 5)), rng.normal(size=3), LINEAR)]
    return Network(tuple(layers), c0 * side * side)


# ---- scores -------------------------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from(["none", "avg", "max"]))
def test_lookahead_factors_on_conv_are_the_neighbouring_kernels(seed, pool):
    """LAP on a kernel weight K[k, j, y, x]: |w| · ‖previous layer's output kernel j‖ · ‖everything reading
    channel k‖ (the next kernel's input slice k, or the dense columns of channel k at every position),
    through the pooling layers between."""
    from onnxcomp.lookahead import lookahead_scores

    rng = np.random.default_rng(seed)
    net = _random_cnn(rng, pool=pool)
    convs = [k for k, l in enumerate(net.layers) if isinstance(l, Conv) and l.op == "Conv"]
    first, second = (net.layers[k] for k in convs)
    head = net.layers[convs[1] + 1]
    scores = lookahead_scores(net).weights
    for k, layer in enumerate(net.layers):
        assert (scores[k] is None) == (not tunable(layer))
    # first conv: no previous layer; next = the second conv's input-channel slices
    ahead = np.linalg.norm(second.kernel.reshape(second.kernel.shape[0], second.kernel.shape[1], -1), axis=(0, 2))
    assert np.allclose(scores[convs[0]], np.abs(first.kernel) * ahead[:, None, None, None])
    # second conv: previous = the first conv's output kernels; next = the head's columns of each channel
    back = np.linalg.norm(first.kernel.reshape(first.kernel.shape[0], -1), axis=1)
    cols = head.weight.reshape(head.n_out, second.out_channels, -1)
    ahead2 = np.linalg.norm(cols, axis=(0, 2))
    assert np.allclose(scores[convs[1]], np.abs(second.kernel) * ahead2[:, None, None, None] * back[None, :, None, None])
    # the head's first layer: each column's factor is its channel's kernel norm
    own = np.linalg.norm(second.kernel.reshape(second.out_channels, -1), axis=1)
    per_col = np.repeat(own, second.out_hw[0] * second.out_hw[1])
    nxt = np.linalg.norm(net.layers[-1].weight, axis=0)
    k_head = convs[1] + 1
    assert np.allclose(scores[k_head], np.abs(head.weight) * nxt[:, None] * per_col[None, :])


def test_lookahead_on_a_dense_network_is_unchanged():
    """On an MLP the conv-aware factors reduce to Eq. 5's row and column norms."""
    from onnxcomp.lookahead import lookahead_scores

    rng = np.random.default_rng(3)
    ws = [rng.normal(size=(6, 4)), rng.normal(size=(5, 6)), rng.normal(size=(2, 5))]
    net = Network(tuple(Dense(w, np.zeros(w.shape[0]), LINEAR if i == 2 else "relu") for i, w in enumerate(ws)), 4)
    s = lookahead_scores(net).weights
    assert np.allclose(s[1], np.abs(ws[1]) * np.linalg.norm(ws[2], axis=0)[:, None] * np.linalg.norm(ws[0], axis=1)[None, :])


def _kernel_index_matrix(layer: Conv):
    """The layer's explicit matrix with each entry replaced by the flat index of the kernel weight it copies."""
    from dataclasses import replace

    ids = replace(layer, kernel=np.arange(1, layer.kernel.size + 1, dtype=np.float64).reshape(layer.kernel.shape),
                  quant=None)
    return ids.weight.tocoo()


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from(["none", "avg", "max"]), st.sampled_from([1, 2]),
       st.sampled_from(["unsupervised", "gradient", "gradient+hessian"]))
def test_conv_fisher_equals_the_explicit_matrix_gradients(seed, pool, group, objective):
    """A kernel weight's Fisher importance sums the explicit matrix's per-entry gradients δ_o·a_i over the
    entries that copy it, per row and seed, before squaring; checked against that oracle for every
    objective, with grouped kernels and pooling between."""
    from onnxcomp.conv import dense_view
    from onnxcomp.fisher import _backward, fisher_scores, softmax

    rng = np.random.default_rng(seed)
    net = _random_cnn(rng, pool=pool, group=group)
    x = rng.uniform(0, 1, size=(7, net.input_size))
    labels = rng.integers(0, 3, size=7)
    got = fisher_scores(net, [x], labels if objective != "unsupervised" else None, objective)
    view = dense_view(net)
    out, pres = view.forward(x, preactivations=True)
    acts = [x] + [np.maximum(y, 0) if l.is_relu else y for l, y in zip(view.layers[:-1], pres[:-1])]
    f = softmax(out)
    c = f.shape[1]
    curv = _backward(view, pres, np.sqrt(f)[:, :, None] * (np.eye(c)[None] - f[:, None, :]))
    grad = _backward(view, pres, (f - np.eye(c)[labels])[:, None, :])
    for k, layer in enumerate(net.layers):
        if not (isinstance(layer, Conv) and tunable(layer)):
            continue
        m = _kernel_index_matrix(layer)
        q = m.data.astype(int) - 1

        def per_weight(deltas):  # (N, S, kernel.size): per row and seed, summed over the entries of each weight
            terms = deltas[:, :, m.row] * acts[k][:, None, m.col]
            out = np.zeros(terms.shape[:2] + (layer.kernel.size,))
            np.add.at(out, (slice(None), slice(None), q), terms)
            return out

        g_curv, g_grad = per_weight(curv[k]), per_weight(grad[k])
        if objective == "unsupervised":
            want = np.mean(np.sum(g_curv ** 2, axis=1), axis=0)
        else:
            want = np.mean(g_grad[:, 0] ** 2, axis=0)
        assert np.allclose(got.importance[k].ravel(), want, rtol=1e-9, atol=1e-12)
        if objective == "gradient+hessian":
            assert np.allclose(got.quartic[k].ravel(), np.mean(np.sum(g_curv ** 2, axis=1) ** 2, axis=0),
                               rtol=1e-9, atol=1e-12)
        assert got.neurons[k].shape == (layer.out_channels,)
    for k, layer in enumerate(net.layers):
        assert (got.weights[k] is None) == (not tunable(layer))


# ---- transforms on conv kernels -----------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from(["none", "avg", "max"]), st.sampled_from([0.3, 0.6, 0.9]),
       st.sampled_from(["layer", "global"]))
def test_pruned_conv_kernels_are_written_and_run(seed, pool, sparsity, granularity):
    """Pruning zeroes round(s·n) kernel weights per tunable layer (or s·N overall), leaves pooling alone, and
    the written model (sparse kernel storage where it is smaller) computes the pruned network."""
    from onnxcomp.pruning import prune_network, sequential_or_ranked_masks
    from onnxcomp.lookahead import lookahead_scores

    rng = np.random.default_rng(seed)
    net = _random_cnn(rng, pool=pool)
    new = prune_network(net, sequential_or_ranked_masks(net, lookahead_scores(net), sparsity, granularity, None))
    sizes = [tensor(l).size for l in net.layers if tunable(l)]
    zeros = [tensor(l).size - np.count_nonzero(tensor(l)) for l in new.layers if tunable(l)]
    if granularity == "layer":
        assert zeros == [int(round(sparsity * n)) for n in sizes]
    else:
        assert sum(zeros) == int(round(sparsity * sum(sizes)))
    for a, b in zip(net.layers, new.layers):
        if not tunable(a):
            assert b is a
    x = rng.uniform(0, 1, size=(50, net.input_size))
    (written,) = run_ort(to_model(new), x.astype(np.float32))
    assert_same(written, new(x), what="pruned CNN")


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from(["avg", "max"]), st.sampled_from([("int8", 8), ("kmeans", 2),
                                                                                   ("kmeans", 5)]))
def test_quantized_conv_kernels_are_written_and_run(seed, pool, how):
    """int8 keeps one scale per output channel of a kernel; k-means at most 2^bits values per kernel; the
    written file decodes them (DequantizeLinear / codebook Gather) into what the IR computes."""
    from onnxcomp.quantization import int8_layer, kmeans_layer

    quant, bits = how
    rng = np.random.default_rng(seed)
    net = _random_cnn(rng, pool=pool)
    layers = [int8_layer(l, np.float32) if quant == "int8" else kmeans_layer(l, bits, None, np.float32)
              for l in net.layers]
    new = net.with_layers(layers)
    for a, b in zip(net.layers, new.layers):
        if not tunable(a):
            assert b is a
            continue
        t = tensor(b)
        if quant == "int8":
            peak = np.abs(tensor(a)).reshape(t.shape[0], -1).max(axis=1)
            assert np.all(np.abs(t - tensor(a)).reshape(t.shape[0], -1) <= peak[:, None] / 254 + 1e-6)
        else:
            assert np.unique(t).size <= 2 ** bits
    x = rng.uniform(0, 1, size=(50, net.input_size))
    model = to_model(new)
    (written,) = run_ort(model, x.astype(np.float32))
    assert_same(written, new(x), what=f"{quant} CNN")
    ops = {n.op_type for n in model.graph.node}
    assert ("DequantizeLinear" if quant == "int8" else "Gather") in ops


# ---- end to end on the CNN fixtures -------------------------------------------------------------------
def _run(tmp_path, model, *args):
    from typer.testing import CliRunner

    from onnxcomp.cli import app

    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(app, ["run", str(model), *args, "--data", str(CALIB), "-o", str(out),
                                      "--report", str(report)])
    assert result.exit_code == 0, result.output
    return out, json.loads(report.read_text())


def _entry(report, name):
    return next(p for p in report["passes"] if p["name"] == name)


@pytest.mark.parametrize("pipeline", [["-p", "lap"], ["-p", "prune", "--score", "magnitude"], ["-p", "fisher"]])
def test_pruning_reaches_the_conv_kernels(tmp_path, pipeline):
    """Fires: on a CNN the lossy pipeline lowers the convolutions and prunes their kernels too (the report's
    layers include the conv ones), and the file shrinks."""
    out, report = _run(tmp_path, LENET, *pipeline, "--sparsity", "0.6")
    layers = _entry(report, "prune")["layers"]
    conv = [l for l in layers if l["kind"] == "conv"]
    assert len(conv) == 2 and all(abs(l["sparsity"] - 0.6) < 0.01 for l in conv)
    assert out.stat().st_size < LENET.stat().st_size * 0.75


def test_sparsity_zero_leaves_a_cnn_as_it_was(tmp_path):
    """Doesn't fire: sparsity 0 prunes nothing; the model computes what the original does."""
    out, report = _run(tmp_path, LENET, "-p", "lap", "--sparsity", "0")
    assert _entry(report, "prune")["changed"] is False
    x = np.load(CALIB)["x"][:20].reshape(-1, 1, 28, 28).astype(np.float32)
    (a,) = run_ort(onnx.load(LENET), x)
    (b,) = run_ort(onnx.load(out), x)
    assert_same(a, b, what="unpruned CNN")


@pytest.mark.parametrize("args", [["--quant", "int8"], ["--bits", "4"]])
def test_quantize_reaches_the_conv_kernels(tmp_path, args):
    out, report = _run(tmp_path, BN_AVG, "-p", "quantize", *args)
    layers = _entry(report, "quantize")["layers"]
    assert [l["kind"] for l in layers] == ["conv", "conv", "dense", "dense"]
    if "int8" in args:
        assert all(l["format"].endswith("/int8") for l in layers)
    else:
        assert all(l["distinct_values"] <= 16 and l["format"].endswith("/codebook4") for l in layers)
    assert out.stat().st_size < BN_AVG.stat().st_size * 0.5


CIFAR = ROOT / "models" / "external" / "oval21" / "cifar_base_kw.onnx"
CIFAR_BOX = next((ROOT / "models" / "external" / "oval21").glob("*.vnnlib"))


def test_stable_then_lap_on_a_cnn_folds_first_then_prunes_the_kernels(tmp_path):
    """``-p stable,lap`` on a CNN: the exact passes fold what is provably stable over the box (dead
    channels, constant head inputs), then lookahead prunes the kernels and weights that are left."""
    from typer.testing import CliRunner

    from onnxcomp.cli import app

    out, report_path = tmp_path / "c.onnx", tmp_path / "c.json"
    result = CliRunner().invoke(app, ["run", str(CIFAR), "-p", "stable,lap", "--sparsity", "0.5", "--domain",
                                      str(CIFAR_BOX), "-o", str(out), "--report", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    names = [p["name"] for p in report["passes"]]
    assert names.index("fold") < names.index("lookahead") < names.index("prune")
    fold = _entry(report, "fold")
    assert report["model"]["after"]["widths"][1] < report["model"]["before"]["widths"][1]
    prune = _entry(report, "prune")["layers"]
    assert [l["kind"] for l in prune] == ["conv", "conv", "dense", "dense"]
    # the prune pass sees the folded network: fewer weights than the original's
    assert sum(l["weights"] for l in prune) < report["model"]["before"]["params"]
    assert all(abs(l["sparsity"] - 0.5) < 0.01 for l in prune)
    assert fold["removed_neurons"] > 0 and "channels removed" in fold["message"]


def test_a_budget_picks_the_strongest_kernel_pruning_that_meets_it_on_a_cnn(tmp_path):
    """--max-drop on a CNN: the sparsity chosen meets the budget on the held-out half, a stronger one
    does not on some half, and the report's per-class table covers the CNN's ten classes."""
    test_data = ROOT / "models" / "data" / "mnist_test.npz"
    from typer.testing import CliRunner

    from onnxcomp.cli import app

    out, report_path = tmp_path / "b.onnx", tmp_path / "b.json"
    result = CliRunner().invoke(app, ["run", str(LENET), "-p", "lap", "--max-drop", "1", "--data", str(test_data),
                                      "-o", str(out), "--report", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    budget = _entry(report, "prune")["budget"]
    assert budget["held_out_meets"] and 0 < budget["level"] < 0.99
    stronger = [t for t in budget["search"] if t["sparsity"] > budget["level"]]
    assert stronger and not all(t["meets"] for t in stronger)
    fidelity = report["fidelity"]
    assert len(fidelity["per_class"]) == 10
    held = budget["held_out"]
    assert held["accuracy_before"] - held["accuracy_after"] <= 0.01 + 1e-9


def test_lookahead_multiplies_in_an_unfolded_batchnorm_scale():
    """LAP Eq. 9: a BatchNormalization kept as a per-channel scaling ``a`` between two convolutions scales
    both factors by ``|a|`` (the next kernel reads ``a * x``): here as if the scale were folded into the
    next kernel's input slices (for the previous layer) and into the previous kernels (for the next)."""
    from onnxcomp.conv import affine_channels
    from onnxcomp.lookahead import lookahead_scores

    rng = np.random.default_rng(5)
    first = Conv(rng.normal(size=(3, 1, 3, 3)), rng.normal(size=3), (1, 6, 6))
    a = np.array([0.5, -2.0, 3.0])
    scale = affine_channels(first.out_shape, a, rng.normal(size=3))
    second = Conv(rng.normal(size=(2, 3, 2, 2)), rng.normal(size=2), scale.out_shape)
    head = Dense(rng.normal(size=(4, second.n_out)), np.zeros(4), LINEAR)
    net = Network((first, scale, second, head), first.n_in)
    s = lookahead_scores(net).weights
    assert s[1] is None
    # the same factors with the scale moved into the neighbouring kernels' norms
    ahead = np.linalg.norm((second.kernel * np.abs(a)[None, :, None, None]).transpose(1, 0, 2, 3).reshape(3, -1), axis=1)
    assert np.allclose(s[0], np.abs(first.kernel) * ahead[:, None, None, None])
    back = np.linalg.norm(first.kernel.reshape(3, -1), axis=1) * np.abs(a)
    cols = np.linalg.norm(head.weight.reshape(4, 2, -1), axis=(0, 2))
    assert np.allclose(s[2], np.abs(second.kernel) * back[None, :, None, None] * cols[:, None, None, None])
