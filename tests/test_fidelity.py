"""Fidelity metrics against hand-computed values, the budget checks, latency, and the run report keys
(lossy runs report the change, exact runs report none and say so)."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import MODELS
from onnxcomp.api import compress
from onnxcomp.fidelity import Budget, compare, measure_latency, probabilities, score_output

DIGITS = MODELS / "data" / "digits_test.npz"


def test_compare_by_hand():
    before = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 2.0], [2.0, 0.0, 1.0]])
    after = np.array([[3.0, 1.0, 0.0], [2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.5, 1.0]])
    labels = np.array([0, 1, 2, 2])
    m = compare(before, after, labels, rows=np.array([10, 11, 12, 13]))
    assert m["accuracy_before"] == pytest.approx(0.75)   # row 3 predicted 0, label 2
    assert m["accuracy_after"] == pytest.approx(0.75)    # row 1 now wrong, row 3 now right
    assert m["top1_agreement"] == pytest.approx(0.5)
    assert m["flipped"] == [11, 13] and m["flipped_count"] == 2
    per = {c["class"]: c for c in m["per_class"]}
    assert per[1]["accuracy_before"] == 1.0 and per[1]["accuracy_after"] == 0.0 and per[1]["agreement"] == 0.0
    assert per[2]["accuracy_before"] == 0.5 and per[2]["accuracy_after"] == 1.0 and per[2]["samples"] == 2
    assert m["worst_class"]["class"] == 1 and m["worst_class"]["drop_pts"] == pytest.approx(100.0)
    p, q = probabilities(before), probabilities(after)
    kl = np.mean(np.sum(p * np.log(p / q), axis=1))
    assert m["mean_kl"] == pytest.approx(kl, rel=1e-12)
    ce = -np.mean(np.log(p[np.arange(4), labels]))
    assert m["cross_entropy_before"] == pytest.approx(ce, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 50), st.integers(2, 6))
def test_identical_outputs_show_no_change(seed, n, classes):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, classes))
    labels = rng.integers(0, classes, n)
    m = compare(scores, scores.copy(), labels)
    assert m["top1_agreement"] == 1.0 and m["flipped"] == [] and m["mean_kl"] == pytest.approx(0.0, abs=1e-12)
    assert m["accuracy_before"] == m["accuracy_after"]
    assert Budget(0.0, 100.0, 0.0).violations(m) == []


def test_probabilities_keep_a_softmax_output_and_normalise_logits():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    p = probabilities(logits)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(probabilities(p), p)  # already a distribution: not squashed again


def test_budget_violations_name_each_limit():
    m = compare(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]),
                np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]), np.array([0, 0, 1, 1]))
    assert Budget(max_drop=30).violations(m) == []
    assert "accuracy drop 25.00 pts" in Budget(max_drop=20).violations(m)[0]
    assert "agreement 75.00%" in Budget(min_agreement=80).violations(m)[0]
    assert "worst class drop 50.00 pts" in Budget(max_class_drop=40).violations(m)[0]


def test_latency_is_measured_at_batch_1_and_a_large_batch():
    model = onnx.load(str(MODELS / "digits_2x32_l1.onnx"))
    lat = measure_latency(model, np.load(DIGITS)["x"], "cpu", seconds=0.05)
    assert set(lat) == {"batch_1", "batch_1024"}
    assert 0 < lat["batch_1"] < lat["batch_1024"]


def test_score_output_is_the_probability_output_of_a_softmax_classifier():
    model = onnx.load(str(MODELS / "digits_mlp_sklearn.onnx"))
    assert score_output(model) == "probabilities"


def test_exact_run_reports_zero_change(tmp_path):
    out = compress(str(MODELS / "digits_2x32_l1.onnx"), "", data=str(DIGITS), samples=200, corners=16)
    out.save(tmp_path / "o.onnx")
    report, result = out.report, out.verification
    fid = report["fidelity"]
    assert result.passed and fid["exact"] is True and "exact" in fid["note"]
    assert fid["top1_agreement"] == 1.0 and fid["flipped"] == [] and fid["accuracy_before"] == fid["accuracy_after"]
    assert fid["mean_kl"] < 1e-9
    assert report["latency_ms"] is None


def test_lossy_run_report_has_the_fidelity_keys(tmp_path):
    rep = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "onnxcomp", "run", str(MODELS / "digits_mlp_sklearn.onnx"), "-p", "prune",
         "--sparsity", "0.9", "--data", str(DIGITS), "-o", str(tmp_path / "o.onnx"), "--report", str(rep)],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(rep.read_text())
    fid = r["fidelity"]
    for key in ("accuracy_before", "accuracy_after", "top1_agreement", "mean_kl", "per_class", "worst_class", "flipped"):
        assert key in fid
    assert fid["exact"] is False and fid["top1_agreement"] < 1.0 and fid["flipped"]
    assert len(fid["per_class"]) == 10
    assert {"class", "accuracy_before", "accuracy_after", "agreement"} <= set(fid["per_class"][0])
    assert fid["worst_class"]["drop_pts"] == max(100 * (c["accuracy_before"] - c["accuracy_after"]) for c in fid["per_class"])
    assert set(r["latency_ms"]["before"]) == {"batch_1", "batch_1024"} == set(r["latency_ms"]["after"])
    assert r["verification"]["against"].startswith("transformed")
    after = r["model"]["after"]
    assert after["nonzero_params"] < r["model"]["before"]["nonzero_params"] and after["file_bytes"] < r["model"]["before"]["file_bytes"]
    # the label output (ArgMax suffix) of the written model agrees with the probabilities it reports
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "o.onnx"), providers=["CPUExecutionProvider"])
    d = np.load(DIGITS)
    probs, label = sess.run(["probabilities", "label"], {sess.get_inputs()[0].name: d["x"]})
    np.testing.assert_array_equal(probs.argmax(axis=1), label.reshape(-1))
    assert np.mean(label.reshape(-1) == d["y"]) == pytest.approx(fid["accuracy_after"])


def test_single_output_models_get_no_class_metrics_and_no_budget(tmp_path):
    from onnxcomp.ir import LINEAR, RELU, Dense, Network
    from onnxcomp.writer import to_model

    rng = np.random.default_rng(0)
    net = Network((Dense(rng.normal(size=(8, 4)), rng.normal(size=8), RELU), Dense(rng.normal(size=(1, 8)), [0.0], LINEAR)), 4)
    onnx.save(to_model(net), str(tmp_path / "reg.onnx"))
    np.save(tmp_path / "x.npy", rng.normal(size=(50, 4)).astype(np.float32))
    base = [sys.executable, "-m", "onnxcomp", "run", str(tmp_path / "reg.onnx"), "-p", "prune", "--sparsity", "0.5",
            "--data", str(tmp_path / "x.npy"), "-o", str(tmp_path / "o.onnx"), "--report", str(tmp_path / "r.json")]
    proc = subprocess.run(base, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    fid = json.loads((tmp_path / "r.json").read_text())["fidelity"]
    assert fid["measured"] is False and "single column" in fid["reason"] and fid["max_abs_change"] > 0
    budget = [a for a in base if a not in ("--sparsity", "0.5")] + ["--min-agreement", "99"]
    proc = subprocess.run(budget, capture_output=True, text=True)
    assert proc.returncode == 2 and "single column" in proc.stderr
