"""The command line as users run it (``python -m onnxcomp ...`` in a subprocess): exit codes 0/1/2,
the ``--report`` JSON keys, one-line errors without tracebacks, nothing written on failure, and
``verify`` reading the domain back from the candidate's metadata."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from builders import GraphBuilder, perturb_initializer

pytestmark = pytest.mark.slow  # end to end (subprocesses, solvers); `make test-fast` leaves these out

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "models" / "digits_2x32_l1.onnx")


def onnxcomp(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(stderr: str, *fragments):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("onnxcomp: error: ")
    assert "Traceback" not in stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """One verified round trip with a report, shared by the tests that read its outputs."""
    d = tmp_path_factory.mktemp("run")
    out, report = d / "out.onnx", d / "report.json"
    code, stdout, stderr = onnxcomp("run", DIGITS, "-p", "sample", "--domain", "0:1", "-o", out, "--report", report,
                                    "--samples", "2000")
    return code, stdout, stderr, out, report


def test_run_round_trip_exits_0_and_writes_the_model(compiled):
    code, stdout, stderr, out, _ = compiled
    assert code == 0, stderr
    # an analysis-only run writes the same network plus onnxcomp's metadata: a little larger, and it says so
    before, after = (ROOT / "models" / "digits_2x32_l1.onnx").stat().st_size, out.stat().st_size
    assert stderr.splitlines() == [f"onnxcomp: warning: the written model is larger than its input: {before:,} -> "
                                   f"{after:,} bytes (+{100 * (after - before) / before:.1f}%)"]
    assert "PASSED" in stdout and f"wrote {out}" in stdout
    onnx.checker.check_model(onnx.load(out))


def test_run_report_has_the_stable_keys(compiled):
    _, _, _, out, report = compiled
    r = json.loads(report.read_text())
    for side in ("before", "after"):
        m = r["model"][side]
        assert m["widths"] == [32, 32] and m["params"] == 3466 and m["macs"] == 3392
        assert isinstance(m["file_bytes"], int) and m["file_bytes"] > 0
    assert r["model"]["before"]["file_bytes"] == Path(DIGITS).stat().st_size
    assert r["model"]["after"]["file_bytes"] == out.stat().st_size
    assert [p["name"] for p in r["passes"]] == ["sample"] and r["passes"][0]["seconds"] >= 0
    v = r["verification"]
    assert v["passed"] is True and v["samples"] >= 2000 and v["top1_agreement"] == 1.0
    assert v["max_abs_err"] >= 0 and v["max_rel_err"] >= 0
    assert r["domain"]["source"] == "0:1" and r["domain"]["lo"] == [0.0] * 64 and r["domain"]["hi"] == [1.0] * 64


def test_verify_reads_the_domain_from_the_candidate_metadata(compiled, tmp_path):
    out = compiled[3]
    report = tmp_path / "v.json"
    code, stdout, stderr = onnxcomp("verify", DIGITS, out, "--samples", "1000", "--report", report)
    assert code == 0, stderr
    assert stdout.startswith("PASSED")
    r = json.loads(report.read_text())
    assert r["domain"]["source"].startswith("metadata") and r["domain"]["hi"] == [1.0] * 64


def test_verify_failure_exits_1(compiled, tmp_path):
    bad = tmp_path / "bad.onnx"
    model = onnx.load(compiled[3])
    last_bias = [t.name for t in model.graph.initializer if t.name.endswith(".bias")][-1]
    onnx.save(perturb_initializer(model, last_bias, (0,), 0.5), bad)
    report = tmp_path / "v.json"
    code, stdout, stderr = onnxcomp("verify", DIGITS, bad, "--samples", "1000", "--report", report)
    assert code == 1
    assert stdout.startswith("FAILED") and "max abs err" in stdout
    # after FAILED: the smallest tolerances that would pass (each with the other one as given)
    lines = stdout.strip().splitlines()
    v = json.loads(report.read_text())["verification"]
    hint = re.search(r"; would pass with atol >= (\S+) \(rtol (\S+)\) or rtol >= (\S+) \(atol (\S+)\)$", lines[1])
    assert lines[0].startswith("FAILED") and hint, lines
    assert float(hint[2]) == v["rtol"] and float(hint[4]) == v["atol"]
    assert float(hint[1]) == pytest.approx(v["max_abs_err"] - v["rtol"] * v["output_scale"], rel=5e-3)
    assert float(hint[3]) == pytest.approx((v["max_abs_err"] - v["atol"]) / v["output_scale"], rel=5e-3)


def test_verify_without_any_domain_is_a_usage_error():
    code, _, stderr = onnxcomp("verify", DIGITS, DIGITS)
    assert code == 2
    assert_one_line_error(stderr, "--domain or --data")


def test_verification_failure_exits_1_and_writes_no_model(tmp_path):
    # With zero tolerance the float32 rounding of the folded BatchNormalization is a failure.
    model = ROOT / "models/external/marabou/linear2-3_bn1-linear3-1.onnx"
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code, stdout, stderr = onnxcomp("run", model, "--domain", "-1:1", "-o", out, "--atol", 0, "--rtol", 0,
                                    "--report", report)
    assert code == 1
    assert_one_line_error(stderr, "verification failed, nothing written")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    r = json.loads(report.read_text())
    assert r["verification"]["passed"] is False and r["output"] is None


def test_unknown_pass_exits_2_listing_the_available_ones(tmp_path):
    code, _, stderr = onnxcomp("run", DIGITS, "-p", "nosuchpass", "--domain", "0:1", "-o", tmp_path / "o.onnx")
    assert code == 2
    assert_one_line_error(stderr, "unknown pass 'nosuchpass'", "available:", "sample")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("args,fragments", [
    (["run", "missing.onnx", "--domain", "0:1", "-o", "{tmp}/o.onnx"], ["missing.onnx: no such file"]),
    (["run", DIGITS, "--domain", "1:0", "-o", "{tmp}/o.onnx"], ["lo > hi"]),
    (["run", "{tmp}/sigmoid.onnx", "--domain", "0:1", "-o", "{tmp}/o.onnx"], ["Sigmoid node 'act'"]),
    (["inspect", "{tmp}/garbage.onnx"], ["garbage.onnx: not an ONNX model"]),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, fragments):
    g = GraphBuilder(("N", 4))
    y = g.unary(g.input, "Sigmoid")
    g.nodes[-1].name = "act"
    onnx.save(g.build(y), tmp_path / "sigmoid.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07garbage")
    code, stdout, stderr = onnxcomp(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2
    assert_one_line_error(stderr, *fragments)
    assert not (tmp_path / "o.onnx").exists()


def test_debug_shows_the_traceback():
    code, _, stderr = onnxcomp("--debug", "inspect", "missing.onnx")
    assert code == 2 and "Traceback" in stderr and "missing.onnx: no such file" in stderr


def test_missing_option_is_a_usage_error():
    code, _, stderr = onnxcomp("run", DIGITS, "--domain", "0:1")
    assert code == 2
    assert_one_line_error(stderr, "-o")


def test_inspect_and_passes_exit_0():
    code, stdout, stderr = onnxcomp("inspect", "--json", ROOT / "models/digits_mlp_sklearn.onnx")
    assert code == 0 and stderr == ""
    info = json.loads(stdout)
    assert [layer["out"] for layer in info["chain"]["layers"]] == [32, 32, 10]
    assert info["suffix_ops"][:2] == ["Softmax", "Identity"] and info["prefix_ops"] == []
    code, stdout, _ = onnxcomp("passes")
    assert code == 0 and "sample" in stdout and "composite" in stdout


def test_output_over_the_input_is_refused(tmp_path):
    model = tmp_path / "in.onnx"
    model.write_bytes(Path(DIGITS).read_bytes())
    code, _, stderr = onnxcomp("run", model, "--domain", "0:1", "-o", model)
    assert code == 2
    assert_one_line_error(stderr, "same file as the input")
    assert model.read_bytes() == Path(DIGITS).read_bytes()
