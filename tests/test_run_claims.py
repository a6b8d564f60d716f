"""What a run says it verified (issue 21): the writer check and the fidelity to the ORIGINAL, each named as
what it is, in the text output, the JSON report, Markdown, JUnit and the Python API; a lossy run is never
announced as PASSED against the original unless it met a budget or tolerance the user stated; a written
model larger than its input is one warning line (``--fail-on-growth`` makes it exit 1, from the flag, the
config file or the API)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from onnxcomp import api, formats
from onnxcomp.errors import OutputGrew, VerificationFailed

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits_2x100_l1.onnx"
SMALL = ROOT / "models" / "digits_2x32_l1.onnx"
CALIB = ROOT / "models" / "data" / "digits_calib.npz"


def onnxcomp(*args):
    proc = subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def two_bit(tmp_path_factory):
    """The issue's run: 2-bit k-means of the digits network over [0, 1], no budget."""
    d = tmp_path_factory.mktemp("q2")
    out, report = d / "q2.onnx", d / "q2.json"
    code, stdout, stderr = onnxcomp("run", DIGITS, "-p", "quantize", "--bits", "2", "--domain", "0:1", "-o", out,
                                    "--report", report)
    assert code == 0, stderr
    return out, json.loads(report.read_text()), stdout


def agreement(line: str) -> float:
    return float(re.search(r"top-1 agreement ([0-9.]+)%", line).group(1))


def test_a_lossy_run_without_a_budget_reports_its_fidelity_and_never_says_passed(two_bit):
    out, report, stdout = two_bit
    assert "PASSED" not in stdout
    (line,) = [x for x in stdout.splitlines() if x.startswith("fidelity to the original")]
    assert line.startswith("fidelity to the original (lossy, not judged: no budget set): ")
    assert agreement(line) < 100
    (writer,) = [x for x in stdout.splitlines() if x.startswith("writer check")]
    assert writer.startswith("writer check ok: the written file computes the transformed network")
    orig = report["fidelity"]["original"]
    assert orig["passed"] is None and orig["judged_by"] == [] and orig["exact"] is False
    assert agreement(line) == pytest.approx(100 * orig["top1_agreement"], abs=0.005)
    # the same figures as an independent `onnxcomp verify` of the written file against the original
    check = api.verify(DIGITS, out)
    assert not check.passed and orig["samples"] == check.samples
    assert orig["top1_agreement"] == check.top1_agreement and orig["max_abs_err"] == check.max_abs_err
    assert report["verification"]["passed"] is True and report["verification"]["max_abs_err"] == 0


def test_markdown_and_junit_say_measured_not_passed(two_bit):
    _, report, _ = two_bit
    md = formats.markdown(report)
    head = md.splitlines()[0]
    assert "PASSED" not in head and "not judged" in head
    assert "| fidelity to the original | ⚠️ measured, not judged |" in md
    assert f"{100 * report['fidelity']['original']['top1_agreement']:.2f}%" in md
    suite = ET.fromstring(formats.junit(report))[0]
    cases = {c.get("name").split(" [")[0]: c for c in suite.findall("testcase")}
    assert cases["fidelity to the original"].find("skipped") is not None
    assert cases["fidelity to the original"].find("failure") is None
    assert suite.get("skipped") == "1" and suite.get("failures") == "0"
    assert formats.passed(report)  # nothing failed: the run did write a checked file


def test_json_format_carries_the_fidelity_to_the_original(tmp_path):
    code, stdout, stderr = onnxcomp("run", DIGITS, "-p", "quantize", "--bits", "2", "--domain", "0:1", "-o",
                                    tmp_path / "q.onnx", "--format", "json", "--samples", "500")
    assert code == 0, stderr
    orig = json.loads(stdout)["fidelity"]["original"]
    assert orig["passed"] is None and orig["top1_agreement"] < 1 and orig["inputs"] == "domain samples and corners"


def test_the_python_summary_says_the_same_two_things():
    result = api.compress(str(DIGITS), "quantize", bits=2, domain="0:1", samples=2000)
    writer, fidelity = result.summary().splitlines()
    assert writer == formats.writer_line(result.report["verification"]) == result.verification.summary()
    assert fidelity == formats.original_line(result.report["fidelity"]["original"])
    assert "PASSED" not in result.summary() and agreement(fidelity) < 100


def test_a_stated_tolerance_judges_the_fidelity_to_the_original():
    loose = api.compress(str(DIGITS), "quantize", bits=2, domain="0:1", samples=2000, atol=1000)
    assert loose.report["fidelity"]["original"]["judged_by"] == ["tolerance"]
    assert loose.summary().splitlines()[1].startswith("fidelity to the original PASSED (stated tolerance atol 1000")
    with pytest.raises(VerificationFailed, match="fidelity to the original FAILED") as exc:
        api.compress(str(DIGITS), "quantize", bits=2, domain="0:1", samples=2000, atol=0.5)
    assert exc.value.report["fidelity"]["original"]["passed"] is False
    assert [c["passed"] for c in formats.checks(exc.value.report) if c["id"] == "fidelity_original"] == [False]


def test_a_lossy_run_that_fails_a_stated_tolerance_exits_1_and_writes_nothing(tmp_path):
    out = tmp_path / "q.onnx"
    code, stdout, stderr = onnxcomp("run", DIGITS, "-p", "quantize", "--bits", "2", "--domain", "0:1", "-o", out,
                                    "--atol", "0.5", "--samples", "500")
    assert code == 1 and not out.exists()
    assert stderr.startswith("onnxcomp: error: nothing written: fidelity to the original FAILED")


def test_a_met_budget_is_what_the_passed_names():
    result = api.compress(str(DIGITS), "quantize", domain="0:1", data=str(CALIB), min_agreement=80, samples=2000)
    orig = result.report["fidelity"]["original"]
    assert orig["judged_by"] == ["budget"] and orig["passed"] is True
    assert result.summary().splitlines()[1].startswith(
        "fidelity to the original PASSED (budget top-1 agreement >= 80% met on the held-out half of --data)")
    assert orig["inputs"] == "--data rows, domain samples and corners"


def test_an_exact_run_names_both_checks_and_passes_on_equivalence(tmp_path):
    code, stdout, stderr = onnxcomp("run", DIGITS, "-p", "stable", "--domain", "0:1", "-o", tmp_path / "s.onnx",
                                    "--samples", "2000")
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert "writer check: the written file itself is compared with the original (exact passes)" in lines
    (line,) = [x for x in lines if x.startswith("fidelity to the original")]
    assert line.startswith("fidelity to the original PASSED (exact passes: equivalent within atol 1e-05")
    assert "larger than its input" not in stderr and "undecided" not in stderr  # it shrank, and every neuron is decided


# ---- growth ---------------------------------------------------------------------------------------------------
def test_a_model_that_grows_gets_one_warning_with_both_sizes(tmp_path):
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    code, _, stderr = onnxcomp("run", SMALL, "-p", "sample", "--domain", "0:1", "-o", out, "--report", report,
                               "--samples", "200")
    assert code == 0, stderr
    before, after = SMALL.stat().st_size, out.stat().st_size
    assert after > before
    warning = (f"the written model is larger than its input: {before:,} -> {after:,} bytes "
               f"(+{100 * (after - before) / before:.1f}%)")
    assert stderr.splitlines() == [f"onnxcomp: warning: {warning}"]
    r = json.loads(report.read_text())
    assert warning in r["warnings"] and r["model"]["after"]["file_bytes"] == after


@pytest.mark.parametrize("how", ["flag", "config"])
def test_fail_on_growth_exits_1_and_writes_nothing(tmp_path, how):
    out = tmp_path / "o.onnx"
    if how == "flag":
        args = ["run", SMALL, "-p", "sample", "--domain", "0:1", "-o", out, "--samples", "200", "--fail-on-growth"]
    else:
        cfg = tmp_path / "p.toml"
        cfg.write_text(f'model = "{SMALL}"\npasses = ["sample"]\noutput = "{out}"\ndomain = "0:1"\nsamples = 200\n'
                       f"fail_on_growth = true\n")
        args = ["run", "--config", cfg]
    code, _, stderr = onnxcomp(*args)
    assert code == 1 and not out.exists()
    assert stderr.strip().splitlines()[-1].startswith("onnxcomp: error: the written model is larger than its input: ")
    assert stderr.strip().endswith("nothing written (--fail-on-growth)")


def test_fail_on_growth_from_python_and_not_when_it_shrinks():
    with pytest.raises(OutputGrew) as exc:
        api.compress(str(SMALL), "sample", domain="0:1", samples=200, fail_on_growth=True)
    assert any("larger than its input" in w for w in exc.value.report["warnings"])
    shrunk = api.compress(str(DIGITS), "quantize", bits=4, domain="0:1", samples=200, fail_on_growth=True)
    assert not any("larger" in w for w in shrunk.report["warnings"])
