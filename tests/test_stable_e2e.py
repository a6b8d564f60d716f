"""``onnxcomp run -p stable`` end to end, as users run it (subprocess): a fixture MLP over 0:1 and ACAS Xu over
its vnnlib property shrink with proofs in the report (original numbering), verification passes, the stable
sets hold on dense samples of the domain, ``onnxcomp verify`` accepts the output; a domain where nothing is
stable changes nothing; the convolutional oval21 model shrinks with a certificate that ``verify --formal``
replays, and refuses with one line a pipeline with a pass that cannot read its convolutions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxcomp as onnxcomp_api
from builders import assert_same, run_ort
from onnxcomp.domain import parse_domain
from onnxcomp.reader import read

pytestmark = pytest.mark.slow  # end to end (subprocesses, solvers); `make test-fast` leaves these out

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits_2x32_l1.onnx"
ACAS = ROOT / "models" / "external" / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx"
PROP3 = ROOT / "models" / "external" / "acasxu" / "prop_3.vnnlib"
OVAL = ROOT / "models" / "external" / "oval21" / "cifar_base_kw.onnx"
CERTIFICATES = {"bounds", "bounds-epsilon", "milp", "split", "split-epsilon"}
PROOFS = CERTIFICATES | {"rank", "zero incoming weights", "zero outgoing weights", "linear layer folded"}


def onnxcomp(*args):
    proc = subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def run_stable(tmp_path: Path, model: Path, domain: str, *extra):
    out, report = tmp_path / "small.onnx", tmp_path / "r.json"
    code, stdout, stderr = onnxcomp("run", model, "-p", "stable", "--domain", domain, "-o", out, "--report", report,
                                    *extra)
    assert code == 0, stderr
    assert f"wrote {out}" in stdout and out.exists()
    return out, json.loads(report.read_text())


def check_report(r: dict, widths_before: list) -> None:
    """The report's stable section is consistent with itself and with the model summary."""
    before, after = r["model"]["before"], r["model"]["after"]
    assert before["widths"] == widths_before
    assert sum(after["widths"]) < sum(before["widths"]) and after["params"] < before["params"]
    v = r["verification"]
    assert v["passed"] and v["max_rel_err"] <= 1e-4 and v["against"] == "original" and v["samples"] >= 10_000
    stable = r["stable"]
    assert [layer["layer"] for layer in stable["layers"]] == list(range(len(widths_before)))
    removed = {(e["layer"], e["neuron"]): e for e in stable["removed"]}
    assert len(removed) == len(stable["removed"])  # no neuron removed twice
    for e in stable["removed"]:
        assert e["proof"] in PROOFS and 0 <= e["neuron"] < widths_before[e["layer"]]
    for layer in stable["layers"]:
        k, width = layer["layer"], layer["width"]
        inactive, active, undecided = set(layer["inactive"]), set(layer["active"]), set(layer["undecided"])
        assert width == widths_before[k]
        assert inactive.isdisjoint(active) and undecided.isdisjoint(inactive | active)
        assert all(0 <= i < width for i in inactive | active | undecided)
        # every stably inactive neuron is removed, with the proof that made it so; undecided ones are kept
        for i in inactive:
            assert removed[(k, i)]["state"] == "stably_inactive" and removed[(k, i)]["proof"] in CERTIFICATES
        assert not any((k, i) in removed for i in undecided)
        # removed active neurons were proven active (rank reduction or a folded layer)
        assert all(i in active for (kk, i), e in removed.items() if kk == k and e["state"] == "stably_active")
    totals = stable["totals"]
    assert totals["stably_inactive"] == sum(len(l["inactive"]) for l in stable["layers"])
    assert totals["stably_active"] == sum(len(l["active"]) for l in stable["layers"])
    assert totals["removed_neurons"] == len(removed) == sum(before["widths"]) - sum(after["widths"])


def check_stable_sets_on_samples(model: Path, r: dict, box, n: int = 100_000) -> None:
    """The claimed stable sets hold at dense samples and the corners of the domain (float64 forward)."""
    net = read(model)
    rng = np.random.default_rng(0)
    x = np.vstack([box.sample(n, rng), box.corners(1024, rng)])
    _, pres = net.forward(x, preactivations=True)
    for layer in r["stable"]["layers"]:
        y = pres[layer["layer"]]
        assert np.all(y[:, layer["inactive"]] <= 0) and np.all(y[:, layer["active"]] >= 0)


def test_digits_over_the_unit_box(tmp_path):
    out, r = run_stable(tmp_path, DIGITS, "0:1")
    check_report(r, [32, 32])
    assert any(e["proof"] == "bounds" for e in r["stable"]["removed"])
    box = parse_domain("0:1", 64, None)
    check_stable_sets_on_samples(DIGITS, r, box)
    assert read(out).widths == r["model"]["after"]["widths"]
    written = onnx.load(out)
    meta = {p.key: p.value for p in written.metadata_props}
    assert meta["onnxcomp.passes"] == "sample,bounds,falsify,milp,fold" and meta["onnxcomp.exact"] == "true"
    assert json.loads(meta["onnxcomp.stable"]) == r["stable"]["totals"]
    x = box.sample(4000, np.random.default_rng(1)).astype(np.float32)
    assert_same(run_ort(onnx.load(DIGITS), x)[0], run_ort(written, x)[0], what="digits")
    # the output verifies against the original on its own (domain read back from the metadata)
    code, stdout, stderr = onnxcomp("verify", DIGITS, out)
    assert code == 0 and "PASSED" in stdout, stdout + stderr


def test_acas_xu_over_property_3(tmp_path):
    out, r = run_stable(tmp_path, ACAS, PROP3)
    check_report(r, [50] * 6)
    proofs = {e["proof"] for e in r["stable"]["removed"]}
    assert "bounds" in proofs and proofs & {"split", "split-epsilon", "milp"}  # the MILP/splitting stage settled more
    milp = next(p for p in r["passes"] if p["name"] == "milp")
    assert milp["undecided"] == 0 and milp.get("split_complete", True)
    check_stable_sets_on_samples(ACAS, r, parse_domain(str(PROP3), 5, None))
    code, stdout, stderr = onnxcomp("verify", ACAS, out, "--domain", PROP3)
    assert code == 0 and "PASSED" in stdout, stdout + stderr


def test_acas_xu_with_a_tiny_time_limit_keeps_what_it_could_not_prove(tmp_path):
    out, r = run_stable(tmp_path, ACAS, PROP3, "--time-limit", "0.01", "--samples", "3000")
    milp = next(p for p in r["passes"] if p["name"] == "milp")
    assert milp["undecided"] > 0
    assert milp.get("split_complete") is False or "timelimit" in str(milp.get("status"))
    assert r["verification"]["passed"]
    undecided = {(l["layer"], i) for l in r["stable"]["layers"] for i in l["undecided"]}
    assert len(undecided) == milp["undecided"]
    assert undecided.isdisjoint({(e["layer"], e["neuron"]) for e in r["stable"]["removed"]})
    check_stable_sets_on_samples(ACAS, r, parse_domain(str(PROP3), 5, None))


def test_a_domain_where_nothing_is_stable_changes_nothing(tmp_path):
    out, report = tmp_path / "same.onnx", tmp_path / "r.json"
    code, stdout, stderr = onnxcomp("run", DIGITS, "-p", "stable", "--domain", "-100:100", "-o", out, "--report", report,
                                    "--samples", "2000")
    assert code == 0, stderr
    r = json.loads(report.read_text())
    assert r["model"]["after"]["widths"] == [32, 32] and r["stable"]["removed"] == []
    assert all(not l["inactive"] and not l["active"] for l in r["stable"]["layers"])


def test_a_conv_prefix_with_a_pass_that_cannot_read_it_is_refused_with_one_line(tmp_path):
    """Every built-in pass reads convolutions; a plugin pass that does not declare ``conv=True`` (the
    example ``permute``, which edits dense weights) keeps the prefix opaque, and the exact passes, which
    need the chain from the input, refuse in one line naming it."""
    out = tmp_path / "never.onnx"
    env = dict(os.environ, ONNXCOMP_PASSES="example_permute", PYTHONPATH=str(ROOT / "tests" / "plugins"))
    proc = subprocess.run([sys.executable, "-m", "onnxcomp", "run", str(OVAL), "-p", "stable,permute", "--domain",
                           "0:1", "-o", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxcomp: error: ") and "Traceback" not in proc.stderr
    assert "Conv" in lines[0] and "cifar_base_kw.onnx" in lines[0] and "permute" in lines[0]
    assert not out.exists()


OVAL_BOX = OVAL.parent / "cifar_base_kw-img1598-eps0.0026143790849673205.vnnlib"


def test_cifar_cnn_over_its_box_shrinks_with_a_certificate_formal_verify_replays(tmp_path):
    """The convolutional oval21 model: dead channels and constant head inputs go, the head folds, the file
    is at least 30 % smaller, every removal names its proof, and ``verify --formal`` replays the certificate."""
    out, r = run_stable(tmp_path, OVAL, str(OVAL_BOX), "--time-limit", "300")
    before, after = r["model"]["before"], r["model"]["after"]
    assert after["file_bytes"] <= 0.7 * before["file_bytes"] and after["nonzero_params"] < before["nonzero_params"]
    assert after["macs"] < before["macs"]  # dead channels leave the convolutions
    assert r["verification"]["passed"] and r["verification"]["against"] == "original"
    stable = r["stable"]
    conv_layers = [l for l in stable["layers"] if l.get("kind") == "conv"]
    assert [l["layer"] for l in conv_layers] == [0, 1] and conv_layers[0]["shape"] == [8, 16, 16]
    assert conv_layers[0].get("channels_removed", 0) >= 1
    by_layer = {l["layer"]: l for l in stable["layers"]}
    for e in stable["removed"]:
        layer = by_layer[e["layer"]]
        if e["state"] == "stably_inactive":
            assert e["neuron"] in layer["inactive"] and e["proof"] in CERTIFICATES
        if layer.get("kind") == "conv":
            assert e["unit"].startswith("channel ") and e["state"] in ("stably_inactive", "constant", "unused")
    head = by_layer[2]  # every stably inactive head neuron is removed
    assert set(head["inactive"]) <= {e["neuron"] for e in stable["removed"] if e["layer"] == 2}
    net = read(OVAL, conv=True)
    box = parse_domain(str(OVAL_BOX), net.input_size)
    rng = np.random.default_rng(0)
    x = np.vstack([box.sample(2000, rng), box.corners(64, rng)])
    _, pres = net.forward(x, preactivations=True)
    for layer in stable["layers"]:
        y = pres[layer["layer"]]
        assert np.all(y[:, layer["inactive"]] <= 0) and np.all(y[:, layer["active"]] >= 0)
    (want,) = run_ort(onnx.load(OVAL), x.astype(np.float32))
    (got,) = run_ort(onnx.load(out), x.astype(np.float32))
    assert_same(got, want, rtol=1e-4)
    code, stdout, stderr = onnxcomp("verify", OVAL, out, "--formal", "--time-limit", "120")
    assert code == 0, stderr
    assert "certificate replay" in stdout and "certified max |diff|" in stdout


NANO = ROOT / "models" / "external" / "vnncomp-test" / "test_nano.onnx"  # one Gemm + Relu: no hidden layer


@pytest.mark.parametrize("method", ["auto", "feasibility", "split", "isa", "per-neuron"])
def test_a_network_without_hidden_neurons_passes_through_every_method(tmp_path, method):
    """Nothing to prove is not an error: a chain whose only ReLU is on the output (VNN-COMP's test_nano)
    used to crash the input split with an empty concatenation."""
    out, r = run_stable(tmp_path, NANO, str(NANO.with_suffix(".vnnlib")), "--stability-method", method)
    assert r["model"]["after"]["widths"] == r["model"]["before"]["widths"] == []
    milp = next(p for p in r["passes"] if p["name"] == "milp")
    assert milp["undecided"] == 0 and milp["status"] == "nothing to prove"
    assert r["verification"]["passed"]


@pytest.mark.parametrize("op", ["Sigmoid", "Add"])
def test_a_cnn_with_an_op_the_ir_cannot_hold_is_refused_naming_it(tmp_path, op):
    """A Sigmoid, or a residual Add reading the same map twice, inside the convolutional prefix: the chain
    cannot start at the input, and the one-line refusal says where the path from the input stops."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    mid = (helper.make_node("Sigmoid", ["r1"], ["m"], name="squash") if op == "Sigmoid"
           else helper.make_node("Add", ["r1", "r1"], ["m"], name="residual"))
    # (a dense head with more layers than the prefix, so the longest chain is the head's)
    nodes = [helper.make_node("Conv", ["x", "k", "b"], ["c1"], name="conv1"), helper.make_node("Relu", ["c1"], ["r1"]),
             mid, helper.make_node("Flatten", ["m"], ["f"]), helper.make_node("Gemm", ["f", "w", "c"], ["g"], transB=1),
             helper.make_node("Relu", ["g"], ["h"]), helper.make_node("Gemm", ["h", "w2", "c2"], ["y"], transB=1)]
    inits = {"k": rng.normal(size=(2, 1, 3, 3)), "b": np.zeros(2), "w": rng.normal(size=(4, 72)), "c": np.zeros(4),
             "w2": rng.normal(size=(3, 4)), "c2": np.zeros(3)}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path, out = tmp_path / "cnn.onnx", tmp_path / "never.onnx"
    onnx.save(model, path)
    before = path.read_bytes()
    code, stdout, stderr = onnxcomp("run", path, "-p", "stable", "--domain", "0:1", "-o", out)
    assert code == 2 and not out.exists() and path.read_bytes() == before
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr
    assert ("node 'squash'" in lines[0]) if op == "Sigmoid" else ("tensor 'r1', which feeds 2 nodes" in lines[0])
    # the lossy passes still work on the head, the prefix passed through untouched
    code, stdout, stderr = onnxcomp("run", path, "-p", "quantize", "--bits", "8", "--domain", "0:1", "-o", out)
    assert code == 0, stderr


def test_what_the_milp_stage_proves_on_a_cnn_is_what_the_fold_uses():
    """On a CNN the MILP stage works on an explicit view of the convolutions; its proofs must come back to the
    network (and what the bounds proved must reach it): the stable section's undecided count is the MILP
    line's, and some conv unit is removed on a proof the MILP stage found."""
    r = onnxcomp_api.compress(str(ROOT / "models" / "mnist_cnn_bn_avg.onnx"), "stable",
                              domain=str(ROOT / "models" / "boxes" / "mnist_cnn_img0_eps0.01.vnnlib"),
                              time_limit=300).report
    entries = {e["name"]: e for e in r["passes"]}
    totals = r["stable"]["totals"]
    assert totals["undecided"] == entries["milp"]["undecided"]
    assert totals["stably_inactive"] == entries["milp"]["stably_inactive"]
    assert any(e["proof"] not in ("bounds", "bounds-epsilon") for e in r["stable"]["removed"] if "unit" in e)
