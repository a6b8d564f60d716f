"""onnxcomp.formats: Markdown, JUnit XML, minimum tolerances and the GitHub step summary, on reports the real
CLI wrote (tests/data/reports/, made by tests/data/reports/regenerate.sh)."""

from __future__ import annotations

import copy
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from onnxcomp import formats

REPORTS = Path(__file__).parent / "data" / "reports"

# name -> (every check passed, {check id: passed})
EXPECTED = {
    "run_exact": (True, {"sampled_equivalence": True}),
    "run_lossy": (True, {"sampled_equivalence": True, "fidelity_budget": True}),
    "run_budget_failed": (False, {"sampled_equivalence": True, "fidelity_budget": False}),
    "verify_failed": (False, {"sampled_equivalence": False}),
    "verify_formal": (True, {"sampled_equivalence": True, "formal_bound": True}),
    "verify_formal_failed": (False, {"sampled_equivalence": False, "formal_bound": False}),
}


def load(name: str) -> dict:
    return json.loads((REPORTS / f"{name}.json").read_text())


def passes(err: float, atol: float, rtol: float, scale: float) -> bool:
    """The comparison of onnxcomp/verify.py, term for term."""
    return err <= atol + rtol * scale


# ---- checks ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_checks_match_the_report(name):
    ok, by_id = EXPECTED[name]
    report = load(name)
    got = {c["id"]: c["passed"] for c in formats.checks(report)}
    assert got == by_id
    assert formats.passed(report) is ok


def test_formal_verdict_is_taken_out_of_the_sampled_check():
    report = load("verify_formal_failed")
    verdict = report["formal"]["verdict"]
    assert verdict in report["verification"]["reason"]  # the CLI folded it in
    sampled, formal = formats.checks(report)
    assert verdict not in sampled["message"] and sampled["message"].startswith("error exceeds")
    assert formal["message"] == verdict
    # sampling alone passing, formal failing: the sampled check passes, the formal one fails
    report["verification"].update(passed=False, reason=verdict, max_abs_err=0.0)
    sampled, formal = formats.checks(report)
    assert sampled["passed"] and not formal["passed"]
    assert not formats.passed(report)


def test_a_report_without_checks_never_passes():
    report = load("run_exact")
    report["verification"] = None
    assert formats.checks(report) == []
    assert not formats.passed(report)
    assert "FAILED" in formats.markdown(report).splitlines()[0]


# ---- Markdown ----------------------------------------------------------------------------------------------------
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def tables(md: str) -> list[list[list[str]]]:
    """The Markdown tables of ``md``: rows of cells, split on unescaped pipes."""
    out, current = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in _UNESCAPED_PIPE.split(line)[1:-1]]
            if current is None:
                current = []
                out.append(current)
            current.append(cells)
        else:
            current = None
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_markdown_headline_and_well_formed_tables(name):
    ok, by_id = EXPECTED[name]
    md = formats.markdown(load(name))
    headline = md.splitlines()[0]
    assert headline.startswith("### onnxcomp ")
    assert ("PASSED" in headline) is ok and ("FAILED" in headline) is (not ok)
    found = tables(md)
    assert found, md
    for table in found:
        assert len({len(row) for row in table}) == 1, table  # no cell split by a stray pipe
        assert set(table[1]) <= {"---", "---:"}
    checks_table = found[0]
    assert len(checks_table) == 2 + len(by_id)
    assert md.count("<details>") == md.count("</details>")


def test_markdown_exact_run_shows_sizes_errors_and_stable_totals():
    report = load("run_exact")
    md = formats.markdown(report)
    before, after = report["model"]["before"], report["model"]["after"]
    assert f"| hidden widths | {before['widths']} | {after['widths']} |" in md
    assert f"| params | {before['params']:,} | {after['params']:,} |" in md
    t = report["stable"]["totals"]
    assert f"{t['stably_inactive']} stably inactive, {t['stably_active']} stably active" in md
    assert f"{report['verification']['samples']:,}" in md
    assert "**Fidelity**" not in md and "**Budget**" not in md and "**Formal bound**" not in md


def test_markdown_lossy_run_shows_fidelity_and_budget():
    report = load("run_lossy")
    md = formats.markdown(report)
    fid = report["fidelity"]
    assert f"| accuracy | {100 * fid['accuracy_before']:.2f}% | {100 * fid['accuracy_after']:.2f}% |" in md
    assert f"| flipped predictions |  | {fid['flipped_count']} |" in md
    assert f"worst class ({fid['worst_class']['class']})" in md
    assert "met on the held-out half" in md and "not met" not in md
    per_class = [t for t in tables(md) if t[0][0] == "class"]
    assert len(per_class) == 1 and len(per_class[0]) == 2 + len(fid["per_class"])


def test_markdown_failed_budget_names_the_violation():
    report = load("run_budget_failed")
    md = formats.markdown(report)
    violation = report["fidelity"]["budget"]["held_out"]["violations"][0]
    assert "**not met**" in md and violation in md
    assert "nothing written" in md


def test_markdown_formal_bound_and_minimum_tolerances():
    md = formats.markdown(load("verify_formal"))
    assert "**Formal bound**: certified max \\|diff\\| 1e-12 (tolerance 0.00786)" in md
    assert "**Model**" not in md  # a verify report has no sizes
    failed = load("verify_failed")
    md = formats.markdown(failed)
    tol = formats.min_tolerances(failed["verification"])
    assert f"atol {tol['atol']:.3g} (with rtol" in md
    # an infinite certified bound (null in the JSON) reads as inf
    assert "certified max \\|diff\\| inf" in formats.markdown(load("verify_formal_failed"))


def test_markdown_escapes_pipes_and_backticks():
    report = load("verify_failed")
    report["output"] = "odd`name|x.onnx"
    report["verification"]["reason"] = "a | b"
    md = formats.markdown(report)
    assert "`` odd`name|x.onnx ``" in md
    for table in tables(md):
        assert len({len(row) for row in table}) == 1


# ---- JUnit -------------------------------------------------------------------------------------------------------
def check_junit_shape(root: ET.Element) -> None:
    """The common JUnit schema (Jenkins / GitLab / GitHub test reporters): testsuites > testsuite[name, tests,
    failures, errors, time] > testcase[classname, name, time] > failure[message] | error[message]."""
    assert root.tag == "testsuites"
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for suite in root:
        assert suite.tag == "testsuite"
        for attr in ("name", "tests", "failures", "errors", "time"):
            assert attr in suite.attrib, attr
        float(suite.get("time"))
        cases = [c for c in suite if c.tag == "testcase"]
        assert {c.tag for c in suite} <= {"properties", "testcase", "system-out", "system-err"}
        for prop in suite.iter("property"):
            assert set(prop.attrib) == {"name", "value"}
        failures = errors = 0
        for case in cases:
            for attr in ("classname", "name", "time"):
                assert case.get(attr), attr
            float(case.get("time"))
            assert {c.tag for c in case} <= {"failure", "error", "skipped", "system-out", "system-err"}
            for bad in case:
                if bad.tag in ("failure", "error"):
                    assert bad.get("message")
            failures += len(case.findall("failure"))
            errors += len(case.findall("error"))
        assert int(suite.get("tests")) == len(cases)
        assert int(suite.get("failures")) == failures
        assert int(suite.get("errors")) == errors
        for key in totals:
            totals[key] += int(suite.get(key))
    for key, value in totals.items():
        assert int(root.get(key)) == value


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_junit_one_testcase_per_check(name):
    _, by_id = EXPECTED[name]
    report = load(name)
    xml = formats.junit(report)
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(xml)
    check_junit_shape(root)
    (suite,) = root
    cases = suite.findall("testcase")
    assert len(cases) == len(by_id)
    assert int(suite.get("failures")) == sum(not v for v in by_id.values())
    failed = {c.find("failure").get("type"): c.find("failure").get("message") for c in cases
              if c.find("failure") is not None}
    assert set(failed) == {k for k, v in by_id.items() if not v}
    if "fidelity_budget" in failed:
        assert report["fidelity"]["budget"]["held_out"]["violations"][0] in failed["fidelity_budget"]
    if "formal_bound" in failed:
        assert failed["formal_bound"] == report["formal"]["verdict"]
    if "sampled_equivalence" in failed:
        assert failed["sampled_equivalence"].startswith("error exceeds atol")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["onnxcomp.input"] == report["input"]


def test_junit_formal_testcase_carries_the_solver_time():
    root = ET.fromstring(formats.junit(load("verify_formal_failed")))
    (case,) = [c for c in root.iter("testcase") if c.get("name").startswith("formal bound")]
    assert float(case.get("time")) == pytest.approx(load("verify_formal_failed")["formal"]["seconds"], abs=1e-3)


def test_junit_several_reports_and_xml_escaping():
    odd = load("verify_failed")
    odd["output"] = 'a<b>&"c".onnx'
    odd["verification"]["reason"] = "x < y & z"
    reports = [load("run_exact"), odd, load("run_budget_failed")]
    root = ET.fromstring(formats.junit(reports))
    check_junit_shape(root)
    assert len(root) == 3
    assert root.get("tests") == "4" and root.get("failures") == "2"
    (case,) = root[1].findall("testcase")
    assert case.get("name") == 'sampled equivalence [a<b>&"c".onnx]'
    assert case.find("failure").get("message").startswith("x < y & z")


def test_junit_report_without_checks_is_an_error():
    report = load("run_exact")
    report["verification"] = None
    root = ET.fromstring(formats.junit(report))
    check_junit_shape(root)
    assert root.get("errors") == "1" and root.get("tests") == "1"


# ---- minimum tolerances -------------------------------------------------------------------------------------------
def test_min_tolerances_on_a_real_failure():
    v = load("verify_failed")["verification"]
    tol = formats.min_tolerances(v)
    err, scale = v["max_abs_err"], v["output_scale"]
    assert not passes(err, v["atol"], v["rtol"], scale)
    assert passes(err, tol["atol"], v["rtol"], scale)
    assert passes(err, v["atol"], tol["rtol"], scale)
    assert tol["atol"] == pytest.approx(err - v["rtol"] * scale)
    assert tol["rtol"] == pytest.approx((err - v["atol"]) / scale)


def test_min_tolerances_edge_cases():
    base = {"max_abs_err": 0.0, "output_scale": 3.0, "atol": 1e-5, "rtol": 1e-4}
    assert formats.min_tolerances(base) == {"atol": 0.0, "rtol": 0.0}
    zero_scale = dict(base, max_abs_err=1.0, output_scale=0.0)
    assert formats.min_tolerances(zero_scale)["rtol"] is None  # no rtol helps
    assert formats.min_tolerances(zero_scale)["atol"] == 1.0
    assert formats.min_tolerances(dict(base, max_abs_err=None)) is None  # an infinite error: nothing passes
    assert formats.min_tolerances({"max_abs_err": 1.0}) is None


finite = st.floats(min_value=0.0, max_value=1e300, allow_nan=False, allow_infinity=False)


@given(err=finite, scale=finite, atol=finite, rtol=finite)
@example(err=1e10 + 2e-6, scale=1e10, atol=1e-5, rtol=1.0)  # atol absorbed by rounding of a large sum
@example(err=0.30000000000000004, scale=1.0, atol=0.1, rtol=0.2)
@example(err=5e-324, scale=0.0, atol=0.0, rtol=0.0)
def test_min_tolerances_are_the_smallest_that_pass(err, scale, atol, rtol):
    tol = formats.min_tolerances({"max_abs_err": err, "output_scale": scale, "atol": atol, "rtol": rtol})
    a = tol["atol"]
    assert a is not None and a >= 0 and passes(err, a, rtol, scale)
    if a > 0:
        assert not passes(err, math.nextafter(a, 0.0), rtol, scale)
    r = tol["rtol"]
    if r is None:
        assert not passes(err, atol, math.inf, scale)
    else:
        assert r >= 0 and passes(err, atol, r, scale)
        if r > 0:
            assert not passes(err, atol, math.nextafter(r, 0.0), scale)


@given(err=finite, scale=finite, atol=finite, rtol=finite)
def test_min_tolerances_agree_with_the_given_ones(err, scale, atol, rtol):
    """The given tolerances pass exactly when they are at least the minimum ones."""
    assume(scale > 0)
    tol = formats.min_tolerances({"max_abs_err": err, "output_scale": scale, "atol": atol, "rtol": rtol})
    assert passes(err, atol, rtol, scale) == (atol >= tol["atol"]) == (rtol >= tol["rtol"])


# ---- GitHub step summary ------------------------------------------------------------------------------------------
def test_append_step_summary(tmp_path):
    target = tmp_path / "summary.md"
    target.write_text("earlier step\n")
    md = formats.markdown(load("run_exact"))
    assert formats.append_step_summary(md, env={"GITHUB_STEP_SUMMARY": str(target)})
    assert formats.append_step_summary("second", env={"GITHUB_STEP_SUMMARY": str(target)})
    assert target.read_text() == "earlier step\n" + md + "second\n"
    assert not formats.append_step_summary(md, env={})
    assert not formats.append_step_summary(md, env={"GITHUB_STEP_SUMMARY": ""})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.md"]


def test_views_do_not_change_the_report():
    report = load("run_lossy")
    kept = copy.deepcopy(report)
    formats.markdown(report)
    formats.junit(report)
    formats.checks(report)
    assert report == kept
