"""The three faces of one declaration: the command line, a ``--config`` file and ``onnxcomp.compress``.

The same settings by flags, by file and by keywords give byte-identical models; a misspelt or bad option
fails loudly in each, named in that face's vocabulary; a pass added from outside (one module, one
declaration: tests/plugins/example_permute.py) appears in all three with no edit elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxcomp
from onnxcomp.errors import InputError, OptionError, UsageError

pytestmark = pytest.mark.slow  # end to end (subprocesses, solvers); `make test-fast` leaves these out

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits_2x32_l1.onnx"
DIGITS_DATA = ROOT / "models" / "data" / "digits_calib.npz"
PLUGINS = Path(__file__).resolve().parent / "plugins"


def cli(*args, cwd=ROOT, env=None):
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env=full_env)
    return proc.returncode, proc.stdout, proc.stderr


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxcomp: error: ") and "Traceback" not in stderr, stderr
    return lines[0]


CASES = {
    "stable": ("stable", {"domain": "0:1", "samples": 2000, "time_limit": 60}, {}),
    "lap": ("lap", {"data": str(DIGITS_DATA), "sparsity": 0.5, "samples": 500, "corners": 8}, {}),
    "per-pass": ("fisher,quantize", {"data": str(DIGITS_DATA), "samples": 500, "corners": 8},
                 {"quantize": {"bits": 3}, "fisher": {"fisher_objective": "unsupervised"}}),
}


def _flags(settings: dict, per_pass: dict) -> list:
    out = []
    for key, value in list(settings.items()) + [kv for table in per_pass.values() for kv in table.items()]:
        out += ["--" + key.replace("_", "-"), str(value)]
    return out


def _toml_value(value) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _config(path: Path, passes: str, settings: dict, per_pass: dict, output: str) -> Path:
    lines = [f'model = "{DIGITS}"', f'passes = "{passes}"', f'output = "{output}"']
    lines += [f"{k} = {_toml_value(v)}" for k, v in settings.items()]
    for name, table in per_pass.items():
        lines.append(f"[pass.{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_flags_config_and_python_give_identical_bytes(case, tmp_path):
    passes, settings, per_pass = CASES[case]
    by_flags, by_file = tmp_path / "flags.onnx", tmp_path / "file.onnx"
    code, _, stderr = cli("run", DIGITS, "-p", passes, "-o", by_flags, *_flags(settings, per_pass))
    assert code == 0, stderr
    cfg = _config(tmp_path / "pipeline.toml", passes, settings, per_pass, str(by_file))
    code, _, stderr = cli("run", "--config", cfg)
    assert code == 0, stderr
    inputs = {k: settings[k] for k in ("domain", "data") if k in settings}
    rest = {k: v for k, v in settings.items() if k not in inputs}
    result = onnxcomp.compress(str(DIGITS), passes, pass_options=per_pass, **inputs, **rest)
    api_bytes = result.model.SerializeToString()
    assert by_flags.read_bytes() == by_file.read_bytes() == api_bytes
    assert not (tmp_path / "api.onnx").exists()  # nothing written unless asked
    result.save(tmp_path / "api.onnx")
    assert (tmp_path / "api.onnx").read_bytes() == api_bytes
    assert result.report["output"] == str(tmp_path / "api.onnx")


def test_flags_override_the_config_file(tmp_path):
    cfg = _config(tmp_path / "p.toml", "sample", {"domain": "0:1", "samples": 100, "seed": 1}, {},
                  str(tmp_path / "from_file.onnx"))
    report = tmp_path / "r.json"
    code, _, stderr = cli("run", "--config", cfg, "--samples", 300, "-o", tmp_path / "from_flag.onnx",
                          "--report", report)
    assert code == 0, stderr
    assert (tmp_path / "from_flag.onnx").exists() and not (tmp_path / "from_file.onnx").exists()
    r = json.loads(report.read_text())
    assert r["passes"][0]["sources"]["uniform"] == 300  # the flag won over the file's 100


# ---- misspelt and bad options fail loudly in every face ------------------------------------------------------
def test_a_misspelt_flag_is_refused(tmp_path):
    code, _, stderr = cli("run", DIGITS, "-p", "lap", "--sparsty", 0.5, "--data", DIGITS_DATA, "-o", tmp_path / "o.onnx")
    assert code == 2 and "--sparsty" in one_line_error(stderr)
    assert not (tmp_path / "o.onnx").exists()


def test_a_misspelt_config_key_names_key_and_file(tmp_path):
    cfg = tmp_path / "pipeline.toml"
    cfg.write_text(f'model = "{DIGITS}"\npasses = "lap"\noutput = "o.onnx"\nsparsty = 0.5\n')
    code, _, stderr = cli("run", "--config", cfg)
    assert code == 2
    assert one_line_error(stderr) == f"onnxcomp: error: {cfg}: sparsty: unknown key"
    assert not (tmp_path / "o.onnx").exists()


def test_a_misspelt_keyword_is_refused_naming_it():
    with pytest.raises(OptionError, match="^sparsty: unknown option$"):
        onnxcomp.compress(str(DIGITS), "lap", data=str(DIGITS_DATA), sparsty=0.5)
    with pytest.raises(OptionError, match="^formall: unknown option$"):
        onnxcomp.verify(str(DIGITS), str(DIGITS), domain="0:1", formall=True)


@pytest.mark.parametrize("line,fragment", [
    ("sparsity = 1.5", "sparsity 1.5: expected a number >= 0 and < 1"),
    ('sparsity = "half"', "sparsity: expected a number >= 0 and < 1, got the string 'half'"),
    ("time_limit = 0", "time_limit 0: expected a number > 0"),
    ('granularity = "block"', "granularity 'block': expected one of layer, global"),
    ("samples = [1, 2]", "samples: expected a whole number >= 0, got a list"),
    ("[pass.prune]\nbits = 4", "pass.prune.bits: not an option of pass 'prune'"),
    ("[pass.nosuch]\nx = 1", "[pass.nosuch]: unknown pass"),
    ('passes = 3', "passes: expected a string"),
    ('format = "html"', "format 'html': expected one of text, json, md, junit"),
])
def test_a_bad_config_value_is_one_line_naming_key_and_file(tmp_path, line, fragment):
    cfg = tmp_path / "pipeline.toml"
    head = [f'model = "{DIGITS}"', 'output = "o.onnx"', f'data = "{DIGITS_DATA}"']
    if not line.startswith("passes"):
        head.insert(1, 'passes = "lap"')
    cfg.write_text("\n".join(head + [line]) + "\n")
    code, _, stderr = cli("run", "--config", cfg)
    assert code == 2
    message = one_line_error(stderr)
    assert f"{cfg}: " in message and fragment in message, message


def test_a_choice_checked_when_the_pass_runs_still_names_the_config_key(tmp_path):
    # score is shared by prune, quantize and drop; 'dependence' is valid for drop only
    cfg = tmp_path / "pipeline.toml"
    cfg.write_text(f'model = "{DIGITS}"\npasses = "lap"\noutput = "o.onnx"\ndata = "{DIGITS_DATA}"\n'
                   f'sparsity = 0.5\nscore = "dependence"\n')
    code, _, stderr = cli("run", "--config", cfg)
    assert code == 2
    assert one_line_error(stderr) == (f"onnxcomp: error: {cfg}: score 'dependence': expected one of magnitude, "
                                      f"lap, fisher")


def test_missing_required_keys_are_named(tmp_path):
    cfg = tmp_path / "pipeline.toml"
    cfg.write_text('passes = "sample"\ndomain = "0:1"\n')
    code, _, stderr = cli("run", "--config", cfg, "-o", tmp_path / "o.onnx")
    assert code == 2 and "missing MODEL" in one_line_error(stderr)
    cfg.write_text(f'model = "{DIGITS}"\npasses = "sample"\ndomain = "0:1"\n')
    code, _, stderr = cli("run", "--config", cfg)
    assert code == 2 and f"missing option -o / --output (or output = ... in {cfg})" in one_line_error(stderr)


def test_config_paths_are_relative_to_the_config_file(tmp_path):
    folder = tmp_path / "ci"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(DIGITS.read_bytes())
    cfg = folder / "pipeline.toml"
    cfg.write_text('model = "model.onnx"\npasses = "sample"\ndomain = "0:1"\nsamples = 100\n'
                   'output = "small.onnx"\nreport = "report.json"\n')
    code, _, stderr = cli("run", "--config", cfg, cwd=tmp_path)
    assert code == 0, stderr
    assert (folder / "small.onnx").exists() and (folder / "report.json").exists()


def test_an_unreadable_config_is_a_one_line_error(tmp_path):
    code, _, stderr = cli("run", "--config", tmp_path / "none.toml")
    assert code == 2 and "none.toml: no such file" in one_line_error(stderr)
    bad = tmp_path / "bad.toml"
    bad.write_text("model = \n")
    code, _, stderr = cli("run", "--config", bad)
    assert code == 2 and "not valid TOML" in one_line_error(stderr)


def test_python_domain_forms_are_equivalent():
    box_string = onnxcomp.compress(str(DIGITS), "sample", domain="0:1", samples=100)
    box_pair = onnxcomp.compress(str(DIGITS), "sample", domain=(0.0, 1.0), samples=100)
    box_arrays = onnxcomp.compress(str(DIGITS), "sample", domain=(np.zeros(64), np.ones(64)), samples=100)
    assert box_string.model.SerializeToString() == box_pair.model.SerializeToString()
    assert box_arrays.report["domain"]["lo"] == box_string.report["domain"]["lo"]
    assert box_arrays.verification.samples == box_string.verification.samples


def test_python_takes_a_model_proto_and_arrays_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = onnx.load(DIGITS)
    d = np.load(DIGITS_DATA)
    result = onnxcomp.compress(model, "lap", data=d["x"], labels=d["y"], sparsity=0.3, samples=0, corners=0)
    assert list(tmp_path.iterdir()) == []
    assert result.verification.passed and result.report["passes"][-1]["name"] == "prune"
    assert result.report["fidelity"]["measured"] is True
    check = onnxcomp.verify(model, result.model, data=d["x"], samples=0, corners=0)
    assert check.report["command"] == "verify" and check.formal is None


def test_python_bad_inputs_are_typed_errors():
    with pytest.raises(UsageError, match="expected an onnx.ModelProto or a path"):
        onnxcomp.compress(42, "sample", domain="0:1")
    with pytest.raises(InputError, match="domain: .*lo > hi"):
        onnxcomp.compress(str(DIGITS), "sample", domain=(1.0, 0.0))
    with pytest.raises(InputError, match="data: samples have 3 features"):
        onnxcomp.compress(str(DIGITS), "sample", data=np.zeros((5, 3)))
    with pytest.raises(OptionError, match="time_limit -1: expected a number > 0"):
        onnxcomp.compress(str(DIGITS), "sample", domain="0:1", time_limit=-1)


# ---- a pass from outside: one module, one declaration ---------------------------------------------------------
PLUGIN_ENV = {"ONNXCOMP_PASSES": "example_permute", "PYTHONPATH": str(PLUGINS)}


def test_a_new_pass_appears_in_every_face_with_no_edit_elsewhere(tmp_path):
    code, stdout, stderr = cli("passes", "permute", env=PLUGIN_ENV)
    assert code == 0, stderr
    assert "--permute-seed / permute_seed" in stdout and "exact transform" in stdout
    code, stdout, _ = cli("run", "--help", env=PLUGIN_ENV)
    assert "--permute-seed" in stdout
    flags, by_file = tmp_path / "flags.onnx", tmp_path / "file.onnx"
    code, _, stderr = cli("run", DIGITS, "-p", "permute", "--permute-seed", 7, "--domain", "0:1", "--samples", 200,
                          "-o", flags, env=PLUGIN_ENV)
    assert code == 0, stderr
    cfg = _config(tmp_path / "p.toml", "permute", {"domain": "0:1", "samples": 200, "permute_seed": 7}, {}, str(by_file))
    code, _, stderr = cli("run", "--config", cfg, env=PLUGIN_ENV)
    assert code == 0, stderr
    script = ("import onnxcomp, sys; r = onnxcomp.compress(sys.argv[1], 'permute', domain='0:1', samples=200, "
              "permute_seed=7); sys.stdout.buffer.write(r.model.SerializeToString())")
    proc = subprocess.run([sys.executable, "-c", script, str(DIGITS)], capture_output=True,
                          env=dict(os.environ, **PLUGIN_ENV), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert flags.read_bytes() == by_file.read_bytes() == proc.stdout
    other = tmp_path / "seed8.onnx"
    code, _, _ = cli("run", DIGITS, "-p", "permute", "--permute-seed", 8, "--domain", "0:1", "--samples", 200,
                     "-o", other, env=PLUGIN_ENV)
    assert code == 0 and other.read_bytes() != flags.read_bytes()  # the option reached the pass


def test_a_plugin_that_cannot_be_imported_is_named():
    code, _, stderr = cli("passes", env={"ONNXCOMP_PASSES": "no_such_module_xyz"})
    assert code == 2 and "$ONNXCOMP_PASSES: cannot import pass module 'no_such_module_xyz'" in one_line_error(stderr)
