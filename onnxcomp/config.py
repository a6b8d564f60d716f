"""``onnxcomp run --config pipeline.toml``: the pipeline as a checked-in file.

Keys are the long option names, the same as the flags without ``--`` and the keywords of
``onnxcomp.compress``::

    model = "models/net.onnx"          # paths are relative to this file's folder
    passes = "stable,lap"              # or a list: ["stable", "lap"]
    output = "build/net_small.onnx"
    report = "build/report.json"
    domain = "0:1"
    data = "data/calib.npz"
    max_drop = 1.0                     # a budget
    time_limit = 300

    [pass.prune]                       # options for one pass only
    granularity = "global"

An unknown key, a value of the wrong type or out of range, or a missing required key is a one-line
``InputError`` naming the key and the file (exit code 2).  Flags given on the command line override
the file.  The same settings by file and by flags give byte-identical output.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError, OptionError
from .options import OptionSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FILE_KEYS = ("model", "passes", "output", "report", "format")
"""Keys that are not options: what to compile and where to write it."""
PATH_KEYS = ("model", "output", "report", "data", "labels")


@dataclass
class Config:
    """A loaded config file: ``values`` by long name (paths made relative to the caller's folder),
    ``per_pass`` options of ``[pass.NAME]`` tables, and the file (for messages)."""

    path: Path
    values: dict = field(default_factory=dict)
    per_pass: dict = field(default_factory=dict)

    def label(self, key: str, pass_name: str | None = None) -> str:
        return f"{self.path}: {'pass.' + pass_name + '.' if pass_name else ''}{key}"


def _resolve(folder: Path, value: str) -> str:
    p = Path(value)
    return value if p.is_absolute() or str(folder) in ("", ".") else str(folder / p)


def _is_domain_file(value: str) -> bool:
    return value.lower().endswith((".vnnlib", ".npz"))


def load(path: str | Path, settings: dict[str, OptionSpec], pass_specs: dict[str, dict[str, OptionSpec]],
         file_choices: dict[str, tuple] | None = None) -> Config:
    """Read and check ``path``.  ``settings``: the command's own options by name (run settings and every
    pass option, merged); ``pass_specs``: pass name -> its options, for ``[pass.NAME]`` tables."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--config {path}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from None
    cfg = Config(p)
    folder = p.parent
    for key, value in raw.items():
        if key == "pass":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise InputError(f"{path}: pass: expected tables [pass.NAME]")
            for name, table in value.items():
                if name not in pass_specs:
                    raise InputError(f"{path}: [pass.{name}]: unknown pass; passes: {', '.join(sorted(pass_specs))}")
                checked = {}
                for k, v in table.items():
                    spec = pass_specs[name].get(k)
                    if spec is None:
                        raise InputError(f"{cfg.label(k, name)}: not an option of pass '{name}'")
                    checked[k] = _check(cfg, spec, v, name)
                cfg.per_pass[name] = checked
            continue
        if key in FILE_KEYS:
            cfg.values[key] = _file_key(cfg, key, value, (file_choices or {}).get(key))
        elif key in settings:
            cfg.values[key] = _check(cfg, settings[key], value)
        else:
            raise InputError(f"{cfg.label(key)}: unknown key")
        if key in PATH_KEYS and isinstance(cfg.values[key], str):
            cfg.values[key] = _resolve(folder, cfg.values[key])
        if key == "domain" and isinstance(cfg.values[key], str) and _is_domain_file(cfg.values[key]):
            cfg.values[key] = _resolve(folder, cfg.values[key])
    return cfg


def _check(cfg: Config, spec: OptionSpec, value, pass_name: str | None = None):
    if isinstance(value, (dict, list)):
        raise InputError(f"{cfg.label(spec.name, pass_name)}: expected {spec.expectation()}, got a "
                         f"{'table' if isinstance(value, dict) else 'list'}")
    if isinstance(value, str) and spec.type in (int, float, bool):
        raise InputError(f"{cfg.label(spec.name, pass_name)}: expected {spec.expectation()}, got the string {value!r}")
    try:
        return spec.check(value)
    except OptionError as exc:
        raise InputError(str(exc.relabel(cfg.label(spec.name, pass_name)))) from None


def _file_key(cfg: Config, key: str, value, choices: tuple | None):
    if key == "passes":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return ",".join(value)
        if isinstance(value, str):
            return value
        raise InputError(f"{cfg.label(key)}: expected a string like \"stable,lap\" or a list of pass names")
    if not isinstance(value, str):
        raise InputError(f"{cfg.label(key)}: expected a string, got {type(value).__name__}")
    if choices is not None and value not in choices:
        raise InputError(f"{cfg.label(key)} {value!r}: expected one of {', '.join(choices)}")
    return value
