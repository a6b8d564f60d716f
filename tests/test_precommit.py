"""onnxcomp.precommit (config file, picking checks for changed files) and the files that wire onnxcomp into
pre-commit (.pre-commit-hooks.yaml) and GitHub Actions (action.yml)."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from onnxcomp.errors import InputError
from onnxcomp.precommit import Check, checks_for, load_config, unchecked

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "onnxcomp-verify.toml"
MODELS = ROOT / "models"
SMALL = MODELS / "external" / "vnncomp-test" / "test_small"

def _cli_flags() -> dict:
    """The subcommands and flags the CLI really has (the hook and the action may use only these)."""
    from onnxcomp import cli

    group = cli.command()
    commands = {name: group.get_command(None, name) for name in group.list_commands(None)}
    return {name: {o for p in cmd.params for o in p.opts + p.secondary_opts if o.startswith("-")} | {"-h", "--help"}
            for name, cmd in commands.items()}


KNOWN = _cli_flags()


# ---- the example config and real model files ------------------------------------------------------------------------
@pytest.fixture
def project(tmp_path, monkeypatch):
    """A repository laid out as the example config expects, with real ONNX files; the working folder is its
    root (pre-commit runs hooks there)."""
    files = {
        "models/mnist_2x100_l1.onnx": MODELS / "mnist_2x100_l1.onnx",
        "models/mnist_exact.onnx": MODELS / "mnist_2x100_l1.onnx",
        "models/digits_2x100_l1.onnx": MODELS / "digits_2x100_l1.onnx",
        "models/digits/a_exact.onnx": MODELS / "digits_2x100_l1.onnx",
        "models/digits/b_exact.onnx": MODELS / "digits_2x100_l1.onnx",
        "models/digits/c_pruned.onnx": MODELS / "digits_2x100_l1.onnx",
        "models/test_small.onnx": SMALL.with_suffix(".onnx"),
        "models/test_small_exact.onnx": SMALL.with_suffix(".onnx"),
        "boxes/test_small.vnnlib": SMALL.with_suffix(".vnnlib"),
        "data/mnist_test.npz": MODELS / "data" / "mnist_test.npz",
        "onnxcomp-verify.toml": EXAMPLE,
    }
    for rel, src in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, tmp_path / rel)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_example_config_parses(project):
    config = load_config("onnxcomp-verify.toml")
    assert len(config.checks) == 3
    mnist, digits, small = config.checks
    assert (mnist.candidate, mnist.reference, mnist.data, mnist.domain) == (
        "models/mnist_exact.onnx", Path("models/mnist_2x100_l1.onnx"), Path("data/mnist_test.npz"), None)
    assert digits.is_glob and digits.domain == "0:1" and digits.atol == 1e-6 and digits.rtol is None
    assert small.formal is True and small.time_limit == 30.0
    assert small.domain == str(Path("boxes/test_small.vnnlib"))  # a domain file is relative to the config
    for spec in config.checks:
        assert spec.reference.is_file()


def test_changed_candidate_picks_its_check(project):
    config = load_config("onnxcomp-verify.toml")
    (check,) = checks_for(config, ["models/digits/a_exact.onnx"])
    assert check == Check(candidate=Path("models/digits/a_exact.onnx"), reference=Path("models/digits_2x100_l1.onnx"),
                          domain="0:1", atol=1e-6, source="onnxcomp-verify.toml, check 2")
    assert check.verify_options() == {"formal": False, "domain": "0:1", "atol": 1e-6}
    (mnist,) = checks_for(config, ["models/mnist_exact.onnx"])
    assert mnist.verify_options() == {"formal": False, "data": "data/mnist_test.npz"}
    assert checks_for(config, ["models/digits/c_pruned.onnx"]) == []  # not matched by the glob


def test_changed_reference_rechecks_every_candidate(project):
    config = load_config("onnxcomp-verify.toml")
    picked = checks_for(config, ["models/digits_2x100_l1.onnx", "models/digits/b_exact.onnx"])
    assert [c.candidate for c in picked] == [Path("models/digits/a_exact.onnx"), Path("models/digits/b_exact.onnx")]
    every = checks_for(config, [p.relative_to(project) for p in project.rglob("*.onnx")])
    assert [c.source[-7:] for c in every] == ["check 1", "check 2", "check 2", "check 3"]
    small = every[-1]
    assert small.verify_options() == {"formal": True, "domain": str(Path("boxes/test_small.vnnlib")),
                                      "time_limit": 30.0}


def test_unchecked_files_are_reported(project):
    config = load_config("onnxcomp-verify.toml")
    changed = ["models/digits/c_pruned.onnx", "models/test_small.onnx", "models/new.onnx"]
    assert unchecked(config, changed) == [Path("models/digits/c_pruned.onnx"), Path("models/new.onnx")]


def test_paths_are_relative_to_the_config_folder(project, monkeypatch):
    (project / "ci").mkdir()
    (project / "ci" / "verify.toml").write_text(
        '[[check]]\ncandidate = "../models/digits/*.onnx"\nreference = "../models/digits_2x100_l1.onnx"\n')
    monkeypatch.chdir(project / "models")  # changed files are given relative to the working folder
    config = load_config("../ci/verify.toml")
    picked = checks_for(config, ["digits/c_pruned.onnx", str(project / "models" / "digits" / "a_exact.onnx")])
    assert sorted(c.candidate.name for c in picked) == ["a_exact.onnx", "c_pruned.onnx"]
    for c in picked:
        assert c.candidate.is_file() and c.reference.is_file()


def test_a_glob_that_matches_its_reference_skips_it(project):
    (project / "all.toml").write_text('[[check]]\ncandidate = "models/**/*.onnx"\nreference = "models/test_small.onnx"\n')
    picked = checks_for(load_config("all.toml"), ["models/test_small.onnx"])
    names = [c.candidate.as_posix() for c in picked]
    assert "models/test_small.onnx" not in names
    assert "models/digits/a_exact.onnx" in names and len(names) == len(set(names)) == 7


# ---- refusals: one line naming the file and the key ----------------------------------------------------------------
BAD = [
    ('[[check]]\ncandidate = "a.onnx"\nreference = "b.onnx"\natoll = 1e-5\n', "'atoll'"),
    ('[[check]]\ncandidate = "a.onnx"\nreference = "b.onnx"\natol = "1e-5"\n', "'atol' must be a number"),
    ('[[check]]\ncandidate = "a.onnx"\nreference = "b.onnx"\natol = -1.0\n', "'atol' must be >= 0"),
    ('[[check]]\ncandidate = "a.onnx"\nreference = "b.onnx"\nformal = "yes"\n', "'formal' must be true or false"),
    ('[[check]]\ncandidate = "a.onnx"\nreference = "b.onnx"\ntime_limit = 0\n', "'time_limit' must be > 0"),
    ('[[check]]\ncandidate = "a.onnx"\nreference = "b.onnx"\nrtol = true\n', "'rtol' must be a number"),
    ('[[check]]\ncandidate = "a.onnx"\n', "'reference' is missing"),
    ('[[check]]\ncandidate = 3\nreference = "b.onnx"\n', "'candidate' must be a non-empty string"),
    ('[[check]]\ncandidate = "a.onnx"\nreference = "*.onnx"\n', "'reference' must name one file"),
    ('[[check]]\ncandidate = "a.onnx"\nreference = "b.onnx"\ndomain = 1\n', "'domain' must be a non-empty string"),
    ('check = "a.onnx"\n', "'check' must be an array of tables"),
    ('[settings]\njobs = 2\n', "unknown key 'settings'"),
    ("", "no [[check]] table"),
    ('[[check]\ncandidate = "a.onnx"\n', "not valid TOML"),
]


@pytest.mark.parametrize("text,expected", BAD)
def test_bad_config_is_one_line_naming_file_and_key(tmp_path, text, expected):
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_config(path)
    message = str(info.value)
    assert expected in message
    assert message.startswith(str(path))
    assert "\n" not in message
    if "check" in text and "[[check]]\n" in text:
        assert "check 1" in message


def test_second_check_is_named_and_missing_file(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text('[[check]]\ncandidate = "a.onnx"\nreference = "b.onnx"\n'
                    '[[check]]\ncandidate = "a.onnx"\nreference = "b.onnx"\nsamples = 5\n')
    with pytest.raises(InputError, match=r"cfg\.toml, check 2: unknown key 'samples'"):
        load_config(path)
    with pytest.raises(InputError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


# ---- .pre-commit-hooks.yaml and action.yml ---------------------------------------------------------------------------
def test_pre_commit_hook_runs_a_real_command():
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    (hook,) = [h for h in hooks if h["id"] == "onnxcomp-verify"]
    assert hook["language"] == "python"
    assert hook["pass_filenames"] is True
    program, command, *flags = hook["entry"].split()
    assert program == "onnxcomp" and command in KNOWN
    assert set(flags) <= KNOWN[command]
    files = re.compile(hook["files"])
    assert files.search("models/small.onnx") and files.search("a/b/c.onnx")
    assert not files.search("model.onnx.bak") and not files.search("onnxcomp-verify.toml")
    for key in hook:  # keys pre-commit knows (a typo would be ignored silently by older versions)
        assert key in {"id", "name", "description", "entry", "language", "files", "types", "pass_filenames",
                       "require_serial", "args", "exclude", "types_or", "stages", "always_run", "verbose",
                       "minimum_pre_commit_version", "additional_dependencies", "language_version"}


def _action():
    return yaml.safe_load((ROOT / "action.yml").read_text())


def _onnxcomp_step(action) -> dict:
    (step,) = [s for s in action["runs"]["steps"] if s.get("id") == "onnxcomp"]
    return step


def test_action_runs_real_commands_and_flags():
    action = _action()
    assert action["runs"]["using"] == "composite"
    assert {"command", "arguments", "python-version", "version"} <= set(action["inputs"])
    assert action["inputs"]["command"]["default"] in KNOWN
    for step in action["runs"]["steps"]:
        if "run" in step:
            assert "${{" not in step["run"], "inputs must reach scripts through env, not be pasted into them"
            assert step.get("shell"), "composite steps need a shell"
    step = _onnxcomp_step(action)
    tree = ast.parse(step["run"])
    commands = [ast.literal_eval(n.comparators[0]) for n in ast.walk(tree)
                if isinstance(n, ast.Compare) and isinstance(n.ops[0], ast.NotIn)]
    assert commands == [("verify", "run")]
    (argv,) = [n.value for n in ast.walk(tree) 
              if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "argv"]
    literal = [e.value for e in argv.elts if isinstance(e, ast.Constant)]
    assert literal[0] == "onnxcomp"
    flags = {a for a in literal if a.startswith("-")}
    assert flags == {"--format", "--report"}
    assert "md" in literal
    for command in commands[0]:
        assert flags <= KNOWN[command]
    install = [s for s in action["runs"]["steps"] if s.get("name") == "Install onnxcomp"]
    assert install and "pip install" in install[0]["run"] and "ONNXCOMP_SPEC" in install[0]["env"]


def _run_action_step(tmp_path, command: str, arguments: str):
    """Run the action's onnxcomp step as GitHub would: its script with the step's environment, the inputs
    substituted, and the runner's GITHUB_OUTPUT / GITHUB_STEP_SUMMARY files."""
    step = _onnxcomp_step(_action())
    script = tmp_path / "step.py"
    script.write_text(step["run"])
    inputs = {"command": command, "arguments": arguments, "report": str(tmp_path / "onnxcomp-report.json")}
    env = dict(os.environ)
    for key, value in step["env"].items():
        env[key] = re.sub(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}", lambda m: inputs[m.group(1)], value)
    env["GITHUB_OUTPUT"] = str(tmp_path / "output")
    env["GITHUB_STEP_SUMMARY"] = str(tmp_path / "summary.md")
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    return proc, tmp_path / "output", tmp_path / "summary.md", Path(inputs["report"])


@pytest.mark.slow
def test_action_step_runs_onnxcomp_for_real(tmp_path):
    onnx, box = SMALL.with_suffix(".onnx").relative_to(ROOT), SMALL.with_suffix(".vnnlib").relative_to(ROOT)
    proc, output, summary, report = _run_action_step(tmp_path, "verify", f"{onnx} '{onnx}' --domain {box}")
    assert proc.returncode == 0, proc.stderr
    assert output.read_text().splitlines() == [f"report={report}", "exit-code=0"]
    assert summary.read_text().startswith("### onnxcomp verify: ✅ PASSED")
    assert json.loads(report.read_text())["verification"]["passed"] is True


def test_action_step_refuses_other_commands(tmp_path):
    proc, output, _, _ = _run_action_step(tmp_path, "inspect", "models/mnist_2x100_l1.onnx")
    assert proc.returncode == 2
    assert "::error::onnxcomp action: command must be verify or run" in proc.stdout
    assert not output.exists()
