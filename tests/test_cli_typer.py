"""The command line on typer: help panels made from the declarations, shell completion, ``--version``,
help on a bare ``onnxcomp``, and a start that imports neither the passes nor a runtime or a solver."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from onnxcomp.api import RunSettings, VerifySettings
from onnxcomp.options import specs
from onnxcomp.pipeline import all_option_specs

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("onnxruntime", "onnx", "pyscipopt", "highspy", "gurobipy", "scipy", "ray", "onnxcomp.api",
         "onnxcomp.pipeline", "onnxcomp.passes")


def onnxcomp(*args, env=None):
    proc = subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env=dict(os.environ, **(env or {})))
    return proc.returncode, proc.stdout, proc.stderr


def panels(help_text: str) -> dict[str, set[str]]:
    """The long flags shown in each rich help panel (``╭─ Name ───``) of ``help_text``."""
    found: dict[str, set[str]] = {}
    current = None
    for line in help_text.splitlines():
        head = re.match(r"╭─ (.+?) ─", line)
        if head:
            current = found.setdefault(head[1], set())
        elif current is not None and line.startswith("│"):
            current.update(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line.split("│")[1][:60]))
    return found


def test_run_help_groups_the_generated_flags_in_panels():
    code, stdout, stderr = onnxcomp("run", "--help")
    assert code == 0, stderr
    shown = panels(stdout)
    assert {"Input and output", "Run settings", "Pass options"} <= set(shown)
    assert {"--passes", "--output", "--config", "--report", "--format"} <= shown["Input and output"]
    assert {s.flag for s in specs(RunSettings)} <= shown["Run settings"]
    assert {s.flag for s in all_option_specs().values()} <= shown["Pass options"]
    assert not shown["Run settings"] & shown["Pass options"]
    # the owner tag and the range reach the help text, and a long flag is not cut off a terminal
    assert "[pass: milp]" in stdout and "(a number > 0)" in stdout and "…" not in stdout


def test_verify_help_has_its_own_panel_and_required_arguments():
    code, stdout, _ = onnxcomp("verify", "--help")
    assert code == 0
    shown = panels(stdout)
    assert {s.flag for s in specs(VerifySettings)} <= shown["Verification"]
    assert "--passes" not in stdout
    code, _, stderr = onnxcomp("verify", "a.onnx")
    assert code == 2 and stderr.strip() == "onnxcomp: error: Missing argument 'CANDIDATE'."


def test_version_and_a_bare_command():
    code, stdout, _ = onnxcomp("--version")
    assert code == 0 and stdout.strip() == "onnxcomp 0.1.0"
    code, stdout, stderr = onnxcomp()
    assert code == 2 and stdout == ""
    assert "Usage: onnxcomp" in stderr and all(c in stderr for c in ("inspect", "passes", "run", "verify"))


def test_unknown_flag_and_command_are_one_line_usage_errors():
    code, _, stderr = onnxcomp("run", "m.onnx", "--no-such-flag")
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert stderr.startswith("onnxcomp: error: No such option: --no-such-flag")
    code, _, stderr = onnxcomp("nosuch")
    assert code == 2 and stderr.strip() == "onnxcomp: error: No such command 'nosuch'."


def test_shell_completion_names_commands_and_generated_flags():
    code, stdout, _ = onnxcomp("--show-completion", "bash")
    assert code == 0 and "_ONNXCOMP_COMPLETE" in stdout
    code, stdout, _ = onnxcomp(env={"_ONNXCOMP_COMPLETE": "complete_bash", "COMP_WORDS": "onnxcomp ver",
                                    "COMP_CWORD": "1"})
    assert code == 0 and stdout.split() == ["verify"]
    code, stdout, _ = onnxcomp(env={"_ONNXCOMP_COMPLETE": "complete_bash", "COMP_WORDS": "onnxcomp run --split-m",
                                    "COMP_CWORD": "2"})
    assert code == 0 and stdout.split() == ["--split-min-width"]


def test_install_completion_writes_the_script_and_sources_it(tmp_path):
    code, stdout, stderr = onnxcomp("--install-completion", "bash", env={"HOME": str(tmp_path), "SHELL": "/bin/bash"})
    assert code == 0, stderr
    script = tmp_path / ".bash_completions" / "onnxcomp.sh"
    assert "_ONNXCOMP_COMPLETE" in script.read_text() and str(script) in (tmp_path / ".bashrc").read_text()


@pytest.mark.parametrize("argv", [[], ["--help"], ["passes", "--help"], ["inspect", "--help"]])
def test_start_imports_no_runtime_solver_or_pass(argv):
    """``import onnxcomp.cli`` and the help of the group and of the light commands load none of the heavy
    modules (``run --help`` needs the declarations, so the passes)."""
    script = ("import sys, json, contextlib, io\n"
              "import onnxcomp.cli as cli\n"
              f"argv = {argv!r}\n"
              "if argv:\n"
              "    with contextlib.redirect_stdout(io.StringIO()):\n"
              "        assert cli.main(argv) == 0\n"
              f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


MODEL = str(ROOT / "models" / "digits_2x32_l1.onnx")
SOLVERS = ("pyscipopt", "highspy", "gurobipy", "ray")


@pytest.mark.parametrize("argv,absent", [
    (["inspect", MODEL], ("onnxruntime", "scipy", *SOLVERS)),
    (["passes"], ("onnxruntime", "scipy", *SOLVERS)),
    (["passes", "milp"], ("onnxruntime", "scipy", *SOLVERS)),
    (["run", MODEL, "-p", "lre", "--data", str(ROOT / "models/data/digits_calib.npz"), "-o", "{tmp}/lre.onnx"],
     SOLVERS),
    (["verify", MODEL, MODEL, "--domain", "0:1", "--samples", "200"], SOLVERS),
])
def test_commands_import_only_what_they_use(argv, absent, tmp_path):
    """What a command does not use is not imported: no session for inspect and passes, no MILP backend for
    a lossy pipeline or a verify without --formal."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    script = ("import sys, json, contextlib, io\n"
              "import onnxcomp.cli as cli\n"
              "with contextlib.redirect_stdout(io.StringIO()):\n"
              f"    code = cli.main({argv!r})\n"
              f"print(json.dumps([code, [m for m in {absent!r} if m in sys.modules]]))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [0, []]
