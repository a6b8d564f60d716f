"""CI-shaped views of a report: Markdown for pull-request comments and step summaries, JUnit XML for test
dashboards, and the smallest tolerances under which a comparison would pass.

Pure functions over the report dictionary (``Report.to_dict()``, the JSON that ``--report`` writes; see
``onnxcomp/report.py``), so they work on a report read back from disk as well as on a fresh one.  Any
block may be missing or ``None`` (a ``verify`` report has no ``model`` sizes, an exact run no budget); the
views show what is there.  Non-finite numbers are ``None`` in the JSON and show as ``inf``/``n/a``.

The checks, as both views name them:

* **sampled equivalence** -- ``verification``: both files in onnxruntime on domain samples, corners and
  ``--data``; passes when ``max |ref - cand| <= atol + rtol * output_scale`` (``onnxcomp/verify.py``).
  ``verify --formal`` folds the formal verdict into ``verification.passed``/``reason``; the views take
  it out again, so each check stands for itself.
* **formal bound** -- ``formal`` (``verify --formal``): the certified ``max |f1 - f2|`` over the box
  against the same tolerance.
* **fidelity budget** -- ``fidelity.budget`` (lossy runs with ``--max-drop`` and friends): met on the
  held-out half of ``--data``.
* **fidelity to the original** -- ``fidelity.original`` (lossy runs): the written model against the
  original on the domain samples and ``--data``.  Judged only by what the user stated (a budget, a
  tolerance); without one its ``passed`` is ``None``: measured, not judged, shown as such and never as
  passed (a JUnit ``skipped`` case).  In an exact run the sampled equivalence is that check.

:func:`writer_line` and :func:`original_line` are the two lines every face prints for a run.
"""

from __future__ import annotations

import math
import os
import struct
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping

__all__ = ["append_step_summary", "budget_text", "checks", "junit", "markdown", "min_tolerances", "original_line",
           "passed", "writer_line"]


# ---- the checks --------------------------------------------------------------------------------------------------
def _num(value) -> float:
    """A report number as a float: ``None`` (how the JSON stores inf/NaN) becomes inf."""
    return math.inf if value is None else float(value)


def _sampled(report: Mapping) -> dict | None:
    """The sampled comparison alone: ``verify --formal`` appended the formal verdict to its reason and
    cleared ``passed``; undo that here."""
    v = report.get("verification")
    if not v:
        return None
    reason = v.get("reason") or ""
    ok = bool(v.get("passed"))
    formal = report.get("formal")
    if formal and not formal.get("passed") and formal.get("verdict"):
        parts = [p for p in reason.split("; ") if p and p != formal["verdict"]]
        reason = "; ".join(parts)
        ok = ok or not parts
    return dict(v, passed=ok, reason=reason)


def checks(report: Mapping) -> list[dict]:
    """The report's checks in a fixed order: ``[{id, name, passed, message, detail, seconds}]``.

    ``message`` is one line (why it failed, or the verdict); ``detail`` adds the numbers.  A check
    appears only when its block is in the report.
    """
    out = []
    v = _sampled(report)
    if v is not None:
        against = v.get("against")
        bound = _tolerance_line(v)
        msg = f"{v['reason']}: {bound}" if v["reason"] else bound
        detail = _error_line(v)
        tol = min_tolerances(v)
        if tol:
            detail += (f"; would pass with atol >= {_g(tol['atol'])} (rtol {_g(v.get('rtol'))}) "
                       f"or rtol >= {_g(tol['rtol'])} (atol {_g(v.get('atol'))})")
        out.append({"id": "sampled_equivalence",
                    "name": "sampled equivalence" + (f" ({_against(against)})" if against else ""),
                    "passed": v["passed"], "message": msg,
                    "detail": detail, "seconds": None})
    f = report.get("formal")
    if f:
        detail = (f"certified max |diff| {_g(f.get('certified_max_abs_diff'))}, largest found "
                  f"{_g(f.get('found_max_abs_diff'))}, tolerance {_g(f.get('tolerance'))}; solver "
                  f"{f.get('solver') or 'none'}, {'complete' if f.get('complete') else 'stopped early'}")
        out.append({"id": "formal_bound", "name": "formal bound", "passed": bool(f.get("passed")),
                    "message": f.get("verdict") or detail, "detail": detail, "seconds": f.get("seconds")})
    original = (report.get("fidelity") or {}).get("original")
    if original and original.get("judged_by") != ["equivalence"]:
        judged = "not judged: " if original.get("passed") is None else ""
        out.append({"id": "fidelity_original", "name": "fidelity to the original", "passed": original.get("passed"),
                    "message": f"{judged}{original.get('criterion')}: top-1 agreement "
                               f"{_pct(original.get('top1_agreement'))}, max abs err {_g(original.get('max_abs_err'))}",
                    "detail": f"{_error_line(original)} on {original.get('inputs')}; {original.get('criterion')}",
                    "seconds": None})
    budget = (report.get("fidelity") or {}).get("budget")
    if budget:
        held = budget.get("held_out") or {}
        violations = held.get("violations") or []
        flags = budget_text(budget.get("flags") or {})
        met = bool(budget.get("met_on_held_out"))
        msg = ("met on the held-out half: " + flags) if met else "not met on the held-out half: " + "; ".join(
            violations or ["(no violation recorded)"])
        out.append({"id": "fidelity_budget", "name": "fidelity budget", "passed": met, "message": msg,
                    "detail": f"budget {flags}; " + "; ".join(
                        f"{half.replace('_', '-')}: {_half_line(budget.get(half) or {})}"
                        for half in ("validation", "held_out")),
                    "seconds": None})
    return out


def passed(report: Mapping) -> bool:
    """No check failed and at least one passed (a check measured but not judged, ``passed`` ``None``,
    neither passes nor fails)."""
    cs = checks(report)
    return any(c["passed"] for c in cs) and not any(c["passed"] is False for c in cs)


# ---- the run's two lines -----------------------------------------------------------------------------------------
def writer_line(verification: Mapping) -> str:
    """What the writer check found: that the written file computes the transformed network (lossy runs),
    or that the written file itself was compared with the original (exact runs)."""
    if not str(verification.get("against", "")).startswith("transformed"):
        return "writer check: the written file itself is compared with the original (exact passes)"
    if verification.get("passed"):
        return f"writer check ok: the written file computes the transformed network ({_error_line(verification)})"
    return f"writer check FAILED: the written file differs from the transformed network ({_error_line(verification)})"


def original_line(original: Mapping) -> str:
    """The written model's fidelity to the original: PASSED or FAILED only when judged (equivalence for an
    exact run, a budget or tolerance the user stated for a lossy one), else the measured figures and that
    nothing was stated."""
    stats = f"{_error_line(original)} on {original.get('inputs') or 'the run inputs'}"
    if original.get("passed") is None:
        return (f"fidelity to the original (lossy, not judged: no budget set): {stats}; state a budget "
                f"(--min-agreement, --max-drop, --max-class-drop, on --data) or --atol/--rtol to judge it")
    word = "PASSED" if original["passed"] else "FAILED"
    return f"fidelity to the original {word} ({original.get('criterion')}): {stats}"


# ---- minimum tolerances ---------------------------------------------------------------------------------------------
def _bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def _from_bits(n: int) -> float:
    return struct.unpack("<d", struct.pack("<q", n))[0]


def _smallest(ok) -> float | None:
    """The smallest float ``t >= 0`` with ``ok(t)``, for ``ok`` monotone (false ... false, true ... true)
    over the non-negative floats; ``None`` when even ``inf`` fails.  Bisection over the bit patterns,
    which order non-negative floats like their values: exact in at most 64 steps."""
    lo, hi = 0, _bits(math.inf)
    if ok(0.0):
        return 0.0
    if not ok(math.inf):
        return None
    while hi - lo > 1:  # invariant: ok(from_bits(hi)) and not ok(from_bits(lo))
        mid = (lo + hi) // 2
        if ok(_from_bits(mid)):
            hi = mid
        else:
            lo = mid
    return _from_bits(hi)


def min_tolerances(verification: Mapping) -> dict | None:
    """The smallest tolerances under which the sampled comparison would pass (as Polygraphy reports).

    The check is ``max_abs_err <= atol + rtol * output_scale`` evaluated in float64 exactly as
    ``onnxcomp/verify.py`` does.  Returns ``{"atol", "rtol"}``: ``atol`` is the smallest atol that passes
    with the verification's ``rtol``, ``rtol`` the smallest rtol that passes with its ``atol`` (``None``
    when none does: a zero output scale with an error above atol).  Any smaller value fails.  ``None``
    altogether when the error is not finite (no tolerance passes) or the numbers are missing.

    With several float outputs the report keeps the largest error and the largest scale, and verify checks
    each output against its own scale; the result is then a lower bound of what every output needs.
    """
    try:
        err = verification["max_abs_err"]
        scale = verification["output_scale"]
        atol = float(verification["atol"])
        rtol = float(verification["rtol"])
    except (KeyError, TypeError):
        return None
    if err is None or scale is None or not math.isfinite(err) or not math.isfinite(scale):
        return None
    err, scale = float(err), float(scale)
    return {
        "atol": _smallest(lambda a: err <= a + rtol * scale),
        "rtol": _smallest(lambda r: err <= atol + r * scale),
    }


# ---- Markdown ------------------------------------------------------------------------------------------------------
def _g(x, digits: int = 3) -> str:
    if x is None:
        return "inf"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _size(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _change(before, after) -> str:
    if before in (None, 0) or after is None:
        return ""
    if before == after:
        return "="
    return f"{100 * (after - before) / before:+.1f}%"


def _cell(text) -> str:
    """Text that stays inside one Markdown table cell (``|diff|`` would split it)."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(text) -> str:
    """Inline code that survives backticks in a file name."""
    text = str(text)
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if fence == "`" else f"{fence} {text} {fence}"


def _against(against: str) -> str:
    return "writer check" if against.startswith("transformed") else f"against the {against}"


def _tolerance_line(v: Mapping) -> str:
    """``max abs err E <= atol + rtol x scale = T`` (or ``>``), the inequality the check tests."""
    err, atol, rtol, scale = v.get("max_abs_err"), v.get("atol"), v.get("rtol"), v.get("output_scale")
    if None in (atol, rtol, scale):
        return f"max abs err {_g(err)}"
    tol = atol + rtol * scale
    op = "<=" if err is not None and err <= tol else ">"
    return f"max abs err {_g(err)} {op} {_g(atol)} + {_g(rtol)} x {_g(scale)} = {_g(tol)}"


def _error_line(v: Mapping) -> str:
    return (f"{_g(v.get('samples'))} samples, max abs err {_g(v.get('max_abs_err'))}, mean abs err "
            f"{_g(v.get('mean_abs_err'))}, max rel err {_g(v.get('max_rel_err'))}, top-1 agreement "
            f"{_pct(v.get('top1_agreement'))}")


def budget_text(flags: Mapping) -> str:
    """``top-1 agreement >= 98%, accuracy drop <= 1 pts`` for a budget's flags."""
    names = {"max_drop": ("accuracy drop", "<=", " pts"), "min_agreement": ("top-1 agreement", ">=", "%"),
             "max_class_drop": ("worst-class drop", "<=", " pts")}
    parts = []
    for key, value in flags.items():
        label, op, unit = names.get(key, (key, "=", ""))
        parts.append(f"{label} {op} {_g(value)}{unit}")
    return ", ".join(parts) or "none"


def _half_line(half: Mapping) -> str:
    if not half:
        return "n/a"
    drop = None
    if half.get("accuracy_before") is not None and half.get("accuracy_after") is not None:
        drop = 100 * (half["accuracy_before"] - half["accuracy_after"])
    worst = half.get("worst_class") or {}
    line = (f"{_g(half.get('samples'))} samples, accuracy {_pct(half.get('accuracy_before'))} -> "
            f"{_pct(half.get('accuracy_after'))}" + (f" (drop {drop:.2f} pts)" if drop is not None else "")
            + f", agreement {_pct(half.get('top1_agreement'))}")
    if worst.get("drop_pts") is not None:
        line += f", worst class {worst.get('class')} (drop {worst['drop_pts']:.1f} pts)"
    return line


def _mark(ok: bool | None) -> str:
    if ok is None:
        return "⚠️ measured, not judged"
    return "✅ passed" if ok else "❌ failed"


def _table(header: list[str], rows: Iterable[list], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def active_note(report: Mapping) -> str:
    """What became of the stably active neurons of a run that folded (``""`` when it proved none or did not
    fold): a newcomer reads "12 stably active" and sees the widths move only by the inactive ones."""
    stable = report.get("stable") or {}
    active = (stable.get("totals") or {}).get("stably_active") or 0
    if not active or not any(p.get("name") == "fold" for p in report.get("passes") or []):
        return ""
    removed = [r for r in stable.get("removed") or [] if r.get("state") == "stably_active"]
    by_rank = sum(1 for r in removed if r.get("proof") == "rank")
    with_layer = len(removed) - by_rank
    kept = active - len(removed)
    parts = []
    if by_rank:
        parts.append(f"{by_rank:,} folded into the next layer (their weight rows are linear combinations of the "
                     f"other active neurons')")
    if with_layer:
        parts.append(f"{with_layer:,} folded into the next layer with their whole layer (every neuron of it active)")
    if kept:
        parts.append(f"{'all' if kept == active else f'{kept:,}'} kept: a stably active neuron is linear on the domain, but the next layer still "
                     f"needs its direction unless its weight row depends on the other active neurons' or its whole "
                     f"layer is active")
    return f"{active:,} stably active" + (", " if kept == active else ": ") + "; ".join(parts)


def markdown(report: Mapping) -> str:
    """A compact Markdown summary for a pull-request comment or ``$GITHUB_STEP_SUMMARY``: a PASSED/FAILED
    headline, one row per check, the error statistics (and the smallest passing tolerances), the formal
    bound, sizes before/after for ``run``, the fidelity table and budget for lossy runs, stable totals.
    Long tables (per class, passes) are folded in ``<details>``."""
    cs = checks(report)
    ok = passed(report)
    command = report.get("command") or "onnxcomp"
    head = "✅ PASSED" if ok else "❌ FAILED"
    if ok and any(c["passed"] is None for c in cs):
        head = "✅ written; ⚠️ fidelity to the original measured, not judged (no budget set)"
    lines = [f"### onnxcomp {command}: {head}", ""]
    src, dst = report.get("input"), report.get("output")
    if src:
        if command == "verify":
            lines.append(f"Reference {_code(src)}, candidate {_code(dst)}.")
        elif dst:
            lines.append(f"{_code(src)} → {_code(dst)}.")
        else:
            lines.append(f"{_code(src)} → nothing written.")
        dom = report.get("domain") or {}
        if dom.get("source"):
            lines[-1] += f" Domain: {_cell(dom['source'])}."
        lines.append("")
    if not cs:
        lines += ["No check in this report (no `verification`, `formal` or budget block).", ""]
    else:
        lines += _table(["check", "result", ""], [[c["name"], _mark(c["passed"]), c["message"]] for c in cs],
                        "lll")
        lines.append("")

    v = report.get("verification")
    if v:
        lines += ["**Errors**" + (f" ({_against(v['against'])})" if v.get("against") else ""), ""]
        lines += _table(["max abs", "mean abs", "max rel", "top-1 agreement", "samples", "output scale",
                         "tolerance"],
                        [[_g(v.get("max_abs_err")), _g(v.get("mean_abs_err")), _g(v.get("max_rel_err")),
                          _pct(v.get("top1_agreement")), _g(v.get("samples")), _g(v.get("output_scale")),
                          f"{_g(v.get('atol'))} + {_g(v.get('rtol'))} × scale"]], "rrrrrrr")
        tol = min_tolerances(v)
        if tol is not None:
            rt = "none passes (zero output scale)" if tol["rtol"] is None else _g(tol["rtol"])
            lines += ["", (f"Smallest passing tolerance: atol {_g(tol['atol'])} (with rtol {_g(v.get('rtol'))}) "
                           f"or rtol {rt} (with atol {_g(v.get('atol'))}).")]
        lines.append("")

    f = report.get("formal")
    if f:
        lines += [f"**Formal bound**: certified max \\|diff\\| {_g(f.get('certified_max_abs_diff'))} "
                  f"(tolerance {_g(f.get('tolerance'))}), largest found {_g(f.get('found_max_abs_diff'))}; "
                  f"{_cell(f.get('solver', '?'))}, {_g(f.get('seconds'))} s"
                  + ("" if f.get("complete", True) else ", stopped at the time limit") + ".", ""]

    model = report.get("model") or {}
    before, after = model.get("before"), model.get("after")
    if before and after:
        rows = [["hidden widths", str(before.get("widths")), str(after.get("widths")), ""]]
        for key, label in (("params", "params"), ("nonzero_params", "nonzero params"), ("macs", "MACs / sample")):
            rows.append([label, _g(before.get(key)), _g(after.get(key)), _change(before.get(key), after.get(key))])
        rows.append(["file size", _size(before.get("file_bytes")), _size(after.get("file_bytes")),
                     _change(before.get("file_bytes"), after.get("file_bytes"))])
        lines += ["**Model**", ""] + _table(["", "before", "after", "change"], rows) + [""]

    stable = report.get("stable")
    if stable and stable.get("totals"):
        t = stable["totals"]
        line = (f"**Stable neurons**: {_g(t.get('stably_inactive'))} stably inactive, "
                f"{_g(t.get('stably_active'))} stably active, {_g(t.get('unstable'))} unstable, "
                f"{_g(t.get('undecided'))} undecided; {_g(t.get('removed_neurons'))} removed")
        if stable.get("epsilon_error_bound"):
            line += f"; ε error bound {_g(stable['epsilon_error_bound'])}"
        lines += [line + ".", ""]
        note = active_note(report)
        if note:
            lines += [_cell(note[0].upper() + note[1:]) + ".", ""]

    fid = report.get("fidelity") or {}
    orig = fid.get("original") or {}
    if orig and not orig.get("exact"):
        judged = "not judged: " if orig.get("passed") is None else ""
        lines += [f"**Errors against the original** ({_cell(orig.get('inputs'))}; {judged}{_cell(orig.get('criterion'))})",
                  ""]
        lines += _table(["max abs", "mean abs", "max rel", "top-1 agreement", "samples", "output scale"],
                        [[_g(orig.get("max_abs_err")), _g(orig.get("mean_abs_err")), _g(orig.get("max_rel_err")),
                          _pct(orig.get("top1_agreement")), _g(orig.get("samples")), _g(orig.get("output_scale"))]],
                        "rrrrrr") + [""]
    if fid.get("measured"):
        worst = fid.get("worst_class") or {}
        rows = [["accuracy", _pct(fid.get("accuracy_before")), _pct(fid.get("accuracy_after"))],
                ["top-1 agreement", "", _pct(fid.get("top1_agreement"))],
                ["mean KL", "", _g(fid.get("mean_kl"))],
                ["flipped predictions", "", _g(fid.get("flipped_count", len(fid.get("flipped") or [])))]]
        if worst:
            rows.append([f"worst class ({worst.get('class')})", _pct(worst.get("accuracy_before")),
                         _pct(worst.get("accuracy_after"))])
        lines += [f"**Fidelity on --data** ({_g(fid.get('samples'))} rows, class predictions against the original)",
                  ""]
        lines += _table(["", "before", "after"], rows) + [""]
        budget = fid.get("budget")
        if budget:
            lines += [f"**Budget** ({budget_text(budget.get('flags') or {})}): "
                      + ("met on the held-out half" if budget.get("met_on_held_out") else "**not met** on the held-out half")
                      + ".", ""]
            for half in ("validation", "held_out"):
                h = budget.get(half) or {}
                viol = "; ".join(h.get("violations") or [])
                lines.append(f"- {half.replace('_', '-')}: {_half_line(h)}" + (f" — {viol}" if viol else ""))
            lines.append("")
        per_class = fid.get("per_class") or []
        if per_class:
            rows = [[str(c.get("class")), _g(c.get("samples")), _pct(c.get("accuracy_before")),
                     _pct(c.get("accuracy_after")), _pct(c.get("agreement"))] for c in per_class]
            lines += ["<details><summary>per class</summary>", ""]
            lines += _table(["class", "samples", "accuracy before", "accuracy after", "agreement"], rows)
            lines += ["", "</details>", ""]

    passes = report.get("passes") or []
    if passes:
        rows = [[p.get("name", "?"), _g(p.get("seconds")), p.get("message") or ""] for p in passes]
        total = sum(p.get("seconds") or 0 for p in passes)
        lines += [f"<details><summary>passes ({len(passes)}, {_g(total)} s)</summary>", ""]
        lines += _table(["pass", "seconds", ""], rows, "lrl") + ["", "</details>", ""]

    for w in report.get("warnings") or []:
        lines.append(f"> ⚠️ {_cell(w)}")
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


# ---- JUnit XML -----------------------------------------------------------------------------------------------------
def _secs(x) -> str:
    return f"{(x or 0.0):.3f}"


def _suite(report: Mapping) -> ET.Element:
    command = report.get("command") or "onnxcomp"
    target = report.get("output") or report.get("input") or ""
    cs = checks(report)
    failures = sum(c["passed"] is False for c in cs)
    skipped = sum(c["passed"] is None for c in cs)
    seconds = sum(p.get("seconds") or 0 for p in report.get("passes") or [])
    seconds += sum(c["seconds"] or 0 for c in cs)
    name = f"onnxcomp {command}" + (f" {target}" if target else "")
    suite = ET.Element("testsuite", {"name": name, "tests": str(len(cs)), "failures": str(failures),
                                     "errors": "0", "skipped": str(skipped), "time": _secs(seconds)})
    props = ET.SubElement(suite, "properties")
    for key in ("version", "command", "input", "output"):
        if report.get(key) is not None:
            ET.SubElement(props, "property", {"name": f"onnxcomp.{key}", "value": str(report[key])})
    classname = f"onnxcomp.{command}"
    for c in cs:
        case = ET.SubElement(suite, "testcase", {"classname": classname,
                                                 "name": c["name"] + (f" [{target}]" if target else ""),
                                                 "time": _secs(c["seconds"])})
        if c["passed"] is None:  # measured, not judged: neither a pass nor a failure
            ET.SubElement(case, "skipped", {"message": c["message"]})
            ET.SubElement(case, "system-out").text = c["detail"]
        elif not c["passed"]:
            fail = ET.SubElement(case, "failure", {"message": c["message"], "type": c["id"]})
            fail.text = c["detail"]
        else:
            ET.SubElement(case, "system-out").text = c["detail"]
    if not cs:
        # a report without any check is a failure of the run, not a pass: say so as an error
        suite.set("tests", "1")
        suite.set("errors", "1")
        case = ET.SubElement(suite, "testcase", {"classname": classname, "name": "report", "time": "0.000"})
        ET.SubElement(case, "error", {"message": "the report holds no check (no verification block)",
                                      "type": "no_checks"})
    return suite


def junit(report: Mapping | Iterable[Mapping], name: str = "onnxcomp") -> str:
    """JUnit XML: ``<testsuites>`` with one ``<testsuite>`` per report and one ``<testcase>`` per check
    (sampled equivalence, formal bound, fidelity budget); a failed check carries ``<failure
    message=...>`` with its reason, and its numbers as text.  Pass a list of reports (e.g. one per
    pre-commit check) to get one suite each.  Readable by GitHub test reporters, GitLab and Jenkins."""
    reports = [report] if isinstance(report, Mapping) else list(report)
    root = ET.Element("testsuites", {"name": name})
    suites = [_suite(r) for r in reports]
    for key in ("tests", "failures", "errors", "skipped"):
        root.set(key, str(sum(int(s.get(key)) for s in suites)))
    root.set("time", _secs(sum(float(s.get("time")) for s in suites)))
    root.extend(suites)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ---- GitHub step summary -------------------------------------------------------------------------------------------
def append_step_summary(md: str, env: Mapping[str, str] = os.environ) -> bool:
    """Append ``md`` to the file named by ``$GITHUB_STEP_SUMMARY`` (GitHub Actions shows it on the run's
    page); True when written, False when the variable is unset or empty."""
    path = env.get("GITHUB_STEP_SUMMARY")
    if not path:
        return False
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(md if md.endswith("\n") else md + "\n")
    return True
