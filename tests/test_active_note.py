"""The run says what became of its stably active neurons (folded into the next layer, or kept and why), in the
text table and the Markdown summary."""

from __future__ import annotations

import io
import json
from pathlib import Path

from onnxcomp import cli
from onnxcomp.formats import active_note, markdown

ROOT = Path(__file__).resolve().parents[1]


def report(active: int, removed: list, passes=("bounds", "fold")) -> dict:
    return {"passes": [{"name": p} for p in passes],
            "stable": {"totals": {"stably_active": active}, "removed": removed}}


def removed(n: int, proof: str, state: str = "stably_active") -> list:
    return [{"layer": 0, "neuron": i, "state": state, "proof": proof} for i in range(n)]


def test_the_note_counts_folded_and_kept_neurons():
    assert active_note(report(12, removed(30, "bounds", "stably_inactive"))).startswith("12 stably active, all kept: ")
    note = active_note(report(28, removed(5, "rank") + removed(40, "split", "stably_inactive")))
    assert note.startswith("28 stably active: 5 folded into the next layer (their weight rows are linear ")
    assert "; 23 kept: a stably active neuron is linear on the domain" in note
    note = active_note(report(10, removed(10, "bounds")))
    assert note == ("10 stably active: 10 folded into the next layer with their whole layer (every neuron of it "
                    "active)")
    assert active_note(report(0, [])) == ""
    assert active_note(report(12, [], passes=("bounds",))) == ""  # nothing folded: nothing became of them yet


def test_the_main_job_says_what_became_of_its_stably_active_neurons(tmp_path):
    buf = io.StringIO()
    cli.out.file = buf
    try:
        assert cli.main(["run", str(ROOT / "models/digits_2x100_l1.onnx"), "-p", "stable", "--domain", "0:1",
                         "-o", str(tmp_path / "o.onnx"), "--report", str(tmp_path / "r.json")]) == 0
    finally:
        cli.out.file = None
    r = json.loads((tmp_path / "r.json").read_text())
    active = r["stable"]["totals"]["stably_active"]
    kept = active - sum(1 for x in r["stable"]["removed"] if x["state"] == "stably_active")
    lines = buf.getvalue().splitlines()
    fold = next(i for i, line in enumerate(lines) if line.lstrip().startswith("pass fold"))
    assert lines[fold + 1].strip() == active_note(r) and f"{active} stably active" in lines[fold + 1]
    assert kept == 0 or (" all kept: " if kept == active else f" {kept} kept: ") in lines[fold + 1]
    assert active_note(r)[1:] in markdown(r)
