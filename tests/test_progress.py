"""Live progress of a run: what the passes tell ``ctx.progress`` (stages, neurons decided / open per layer)
and the command line's display of it, shown on a terminal only and never with --format json|md|junit."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from rich.console import Console

import onnxcomp
from onnxcomp import cli
from onnxcomp.errors import InputError
from onnxcomp.interrupt import BEFORE_EXIT
from onnxcomp.pipeline import Progress
from onnxcomp.timing import Deadline

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits_2x100_l1.onnx"  # the README's main job: milp runs the per-side proofs
STAGES = ["sample", "bounds", "falsify", "milp", "fold", "verify"]


class Recorder(Progress):
    """Every call, with the stage it came in."""

    def __init__(self) -> None:
        self.stages: list[str] = []
        self.updates: list[tuple[str, list]] = []
        self.tasks: list[tuple[str, int]] = []
        self.advanced = 0
        self.dones = 0

    def stage(self, name, deadline=None):
        assert isinstance(deadline, Deadline)
        self.stages.append(name)

    def layers(self, counts):
        self.updates.append((self.stages[-1], [tuple(c) for c in counts]))

    def start(self, description, total):
        self.tasks.append((description, total))

    def advance(self, n):
        self.advanced += n

    def done(self):
        self.dones += 1


def test_the_passes_report_stages_and_layer_counts_through_ctx_progress():
    rec = Recorder()
    result = onnxcomp.compress(str(MODEL), "stable", domain="0:1", samples=3000, progress=rec)
    assert rec.stages == STAGES and rec.dones == 1
    assert rec.tasks and rec.advanced == rec.tasks[0][1]  # the sampling rows, counted to the end
    in_milp = [counts for stage, counts in rec.updates if stage == "milp"]
    assert len(in_milp) >= 2, rec.updates  # at its start, and as the per-side proofs go
    widths = result.report["model"]["before"]["widths"]
    for counts in in_milp:
        assert [k for k, _, _ in counts] == [0, 1] and [d + o for _, d, o in counts] == widths
    decided = [sum(d for _, d, _ in counts) for counts in in_milp]
    assert decided == sorted(decided) and decided[-1] > decided[0]  # only ever more decided
    totals = result.report["stable"]["totals"]
    assert sum(o for _, _, o in in_milp[-1]) == totals["undecided"] == 0


def test_done_is_called_when_the_run_fails():
    rec = Recorder()
    try:
        onnxcomp.compress(str(MODEL), "stable", domain="1:0", progress=rec)
    except InputError:
        pass
    else:
        raise AssertionError("a reversed domain must be refused")
    assert rec.dones == 1


def test_the_display_shows_stage_time_left_layers_and_a_bar_on_a_terminal():
    buf = io.StringIO()
    shown = cli._RichProgress(Console(file=buf, force_terminal=True, width=160))
    shown.stage("milp", Deadline(60))
    shown.layers([(0, 180, 20), (2, 150, 50)])
    text = "\n".join(shown.lines())
    assert text.startswith("milp  0 s  ·  ") and "s left of --time-limit" in text
    assert "layer 0: 180 decided, 20 open  ·  layer 2: 150 decided, 50 open" in text
    shown.start("sampling activations", 60_000)
    shown.advance(30_000)
    assert shown.lines()[-1] == "  sampling activations: 30,000 / 60,000"
    shown.layers([(k, 1, 2) for k in range(10)])
    assert shown.lines()[1].endswith("layer 7: 1 decided, 2 open  ·  2 more layers: 4 open")
    shown.stop()
    assert shown._give_back_terminal in BEFORE_EXIT  # a Ctrl-C would show the cursor again
    shown.done()
    assert "layer 0: 180 decided" in buf.getvalue()  # it was drawn on the terminal
    assert shown._give_back_terminal not in BEFORE_EXIT and buf.getvalue().endswith("\x1b[2K")
    shown.done()  # twice is harmless


def test_an_interrupted_display_gives_the_cursor_back():
    buf = io.StringIO()
    shown = cli._RichProgress(Console(file=buf, force_terminal=True, width=160))
    shown.stage("milp", Deadline(60))
    assert "\x1b[?25l" in buf.getvalue()  # the live display hides the cursor
    for fn in list(BEFORE_EXIT):  # what onnxcomp.interrupt's watcher runs before it ends the process
        fn()
    assert buf.getvalue().endswith("\x1b[?25h\n")
    shown.done()


def test_the_display_shows_nothing_off_a_terminal():
    buf = io.StringIO()
    shown = cli._RichProgress(Console(file=buf))
    shown.stage("milp", Deadline(60))
    shown.layers([(0, 1, 2)])
    shown.start("sampling activations", 10)
    shown.done()
    assert buf.getvalue() == "" and shown.lines() == []


def _run_with_terminal_stderr(tmp_path, *extra) -> tuple[int, str]:
    buf = io.StringIO()
    saved_err, saved_out = cli.err, cli.out.file
    cli.err = Console(file=buf, force_terminal=True, width=160, highlight=False, soft_wrap=True)
    cli.out.file = io.StringIO()
    try:
        code = cli.main(["run", str(MODEL), "-p", "stable", "--domain", "0:1", "--samples", "3000",
                         "-o", str(tmp_path / "o.onnx"), *extra])
    finally:
        cli.err, cli.out.file = saved_err, saved_out
    return code, buf.getvalue()


def test_a_run_on_a_terminal_shows_every_stage_and_the_layers(tmp_path):
    code, shown = _run_with_terminal_stderr(tmp_path)
    assert code == 0
    for stage in STAGES:
        assert f"{stage}  " in shown, stage
    assert "layer 0: " in shown and " decided, " in shown and "s left of --time-limit" in shown


def test_machine_formats_show_no_progress(tmp_path):
    for fmt in ("json", "md"):
        code, shown = _run_with_terminal_stderr(tmp_path, "--format", fmt)
        assert code == 0 and shown == "", (fmt, shown)
    code, shown = _run_with_terminal_stderr(tmp_path, "--format", "junit", "--report", str(tmp_path / "r.xml"))
    assert code == 0 and shown == ""


def test_a_run_whose_stderr_is_not_a_terminal_prints_no_progress(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "onnxcomp", "run", str(MODEL), "-p", "stable", "--domain", "0:1",
                           "--samples", "3000", "-o", str(tmp_path / "o.onnx")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_verify_formal_reports_its_stages(tmp_path):
    """verify --formal tells the display what it is doing: the sampled check, the certificate's replay (a
    file onnxcomp wrote carries one) and, only when the replay does not settle it, the formal bounds."""
    small = tmp_path / "small.onnx"
    onnxcomp.compress(str(MODEL), "stable", domain="0:1").save(small)
    rec = Recorder()
    result = onnxcomp.verify(str(MODEL), str(small), formal=True, progress=rec)
    assert result.passed and rec.dones == 1
    assert rec.stages[:2] == ["samples", "formal: certificate replay"]
    assert ("formal: bounds" in rec.stages) == (result.formal["replay"] is None
                                                or not result.formal["replay"].get("certified"))
    plain = Recorder()
    onnxcomp.verify(str(MODEL), str(MODEL), domain="0:1", formal=True, progress=plain)
    assert plain.stages == ["samples", "formal: bounds"] and plain.dones == 1
