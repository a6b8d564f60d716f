"""Every command in README.md is run here, so the README cannot rot.

Shell blocks are executed line by line in a scratch folder that sees the repository's ``models/``;
``onnxcomp`` runs as ``python -m onnxcomp`` of this interpreter.  ``make`` targets are checked with a dry
run (``make -n``), except that the part after ``make install &&`` in the first command is run for real.
A ``toml`` block whose first line is ``# FILE`` is written to that file first, and ``python`` blocks are
run as scripts, all in the order the README shows them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end to end (subprocesses, solvers); `make test-fast` leaves these out

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```sh\n(.*?)```", README, flags=re.S)
STEPS = re.findall(r"```(sh|toml|python)\n(.*?)```", README, flags=re.S)


def commands() -> list[str]:
    out = []
    for block in BLOCKS:
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip() if line.strip().startswith("make") else line.strip()
            if line:
                out.append(line)
    return out


def test_readme_opens_with_exactly_two_setup_commands():
    first = BLOCKS[0].strip().splitlines()
    assert README.lstrip().startswith("# onnxcomp\n\n```sh\n")
    assert len(first) == 2
    assert first[0].startswith("make install && onnxcomp run models/")
    assert first[1] == "make test"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make install" in ci


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("readme")
    (d / "models").symlink_to(ROOT / "models")
    return d


def run_line(line: str, cwd: Path) -> subprocess.CompletedProcess:
    parts = [p.strip() for p in line.split("&&")]
    result = None
    for part in parts:
        argv = shlex.split(part)
        if argv[0] == "make":
            argv = ["make", "-n", "-C", str(ROOT), *argv[1:]]
        elif argv[0] == "onnxcomp":
            argv = [sys.executable, "-m", "onnxcomp", *argv[1:]]
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))
        if result.returncode != 0:
            return result
    return result


def test_every_readme_command_succeeds(scratch):
    lines = commands()
    assert len(lines) >= 12
    ran = 0
    for lang, body in STEPS:
        if lang == "toml":
            first = body.splitlines()[0]
            assert first.startswith("# "), f"a toml block names its file on its first line: {first}"
            (scratch / first[2:].strip()).write_text(body)
            continue
        if lang == "python":
            result = subprocess.run([sys.executable, "-c", body], cwd=scratch, capture_output=True, text=True,
                                    timeout=900, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            assert result.returncode == 0, f"{body}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            continue
        for line in body.splitlines():
            line = line.split("#", 1)[0].strip() if line.strip().startswith("make") else line.strip()
            if not line:
                continue
            result = run_line(line, scratch)
            ran += 1
            assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert ran == len(lines)
    # the tour's claims about its own outputs
    assert (scratch / "digits_small.onnx").exists() and (scratch / "exact.json").exists()
    assert (scratch / "mnist_pruned.onnx").stat().st_size < (ROOT / "models/mnist_2x100_l1.onnx").stat().st_size
    assert (scratch / "mnist_4bit.onnx").stat().st_size < (ROOT / "models/mnist_2x100_l1.onnx").stat().st_size / 4
    # the CNN paragraph's figures are the report's
    import json

    cifar = json.loads((scratch / "cifar.json").read_text())
    text = README.replace("\n", " ")
    assert f"`{cifar['model']['after']['widths']}`" in text
    conv = [layer for layer in cifar["stable"]["layers"] if layer.get("kind") == "conv"]
    assert f"{conv[0]['channels_removed']} of the 8 first-layer channels and {conv[1]['channels_removed']} of the 16" in text
    assert f"{1024 - cifar['model']['after']['widths'][1]} of the 1024 head inputs are constant" in text
    assert f"to {cifar['model']['after']['file_bytes'] / 1024:.1f} KB" in text
    assert cifar["stable"]["totals"]["undecided"] == 0
    # the lossy CNN example's figures are its report's
    lenet = json.loads((scratch / "lenet.json").read_text())
    quant = next(p for p in lenet["passes"] if p["name"] == "quantize")
    assert {layer["kind"] for layer in quant["layers"]} == {"conv", "dense"}
    assert (f"{quant['bits']} bits, and the file goes from {lenet['model']['before']['file_bytes'] / 1024:.1f} KB to "
            f"{lenet['model']['after']['file_bytes'] / 1024:.1f} KB") in text


def test_acas_numbers_quoted_in_readme_are_what_the_tool_reports(scratch):
    import json

    report = scratch / "acas.json"
    line = ("onnxcomp run models/external/acasxu/ACASXU_run2a_1_1_batch_2000.onnx -p stable --domain "
            f"models/external/acasxu/prop_1.vnnlib -o acas_check.onnx --report {report}")
    assert run_line(line, scratch).returncode == 0
    r = json.loads(report.read_text())
    widths = r["model"]["after"]["widths"]
    assert f"`{widths}`".replace("'", "") in README.replace("'", "")
    totals = r["stable"]["totals"]
    assert f"{totals['stably_inactive']} neurons are proven stably inactive and {totals['stably_active']}" in README.replace("\n", " ")


def test_quoted_run_output_is_what_the_tool_prints(scratch):
    """A ``text`` block that starts with ``$ onnxcomp ...`` quotes that command's output: every line of it but
    ``...`` is a line the command prints."""
    blocks = [b for b in re.findall(r"```text\n(.*?)```", README, flags=re.S) if b.startswith("$ onnxcomp ")]
    assert len(blocks) >= 2
    for block in blocks:
        command, *quoted = block.strip().splitlines()
        result = run_line(command[2:], scratch)
        assert result.returncode == 0, result.stderr
        printed = [line.rstrip() for line in result.stdout.splitlines()]  # rich pads lines with spaces
        for line in quoted:
            if line != "...":
                assert line in printed, (command, line, result.stdout[-2000:])
