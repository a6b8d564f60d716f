"""The library side of the pre-commit hook: which changed ONNX files to verify against which references.

A small TOML file (``onnxcomp-verify.toml`` by default; ``examples/onnxcomp-verify.toml`` is one) lists
checks::

    [[check]]
    candidate = "models/small.onnx"      # a path or a glob (models/*_small.onnx, models/**/*.onnx)
    reference = "models/original.onnx"
    domain = "0:1"                        # optional; default: the domain onnxcomp recorded in the candidate
    data = "data/test.npz"                # optional
    formal = false                        # optional
    atol = 1e-5                           # optional (also rtol, time_limit)

Paths (candidate, reference, data, and a domain that names a ``.vnnlib``/``.npz`` file) are relative to
the folder of the config file.  :func:`load_config` refuses unknown keys and wrong types with a one-line
``InputError`` naming the file, the check and the key.  :func:`checks_for` expands the globs and picks the
checks whose candidate or reference is among the changed files (pre-commit passes the staged files'
paths, relative to the repository root, which is the working folder).  ``onnxcomp precommit`` runs the
verify command once per picked check (:meth:`Check.verify_options` holds its keyword arguments).
"""

from __future__ import annotations

import glob
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli
    try:
        import tomli as tomllib
    except ImportError:  # pragma: no cover - depends on the interpreter
        tomllib = None

DEFAULT_CONFIG = "onnxcomp-verify.toml"

_DOMAIN_FILES = (".vnnlib", ".npz", ".npy")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class CheckSpec:
    """One ``[[check]]`` table as written (paths already joined to the config's folder)."""

    index: int  # 1-based position in the file, for messages
    candidate: str  # a path or a glob
    reference: Path
    domain: str | None = None
    data: Path | None = None
    formal: bool = False
    atol: float | None = None
    rtol: float | None = None
    time_limit: float | None = None

    @property
    def is_glob(self) -> bool:
        return any(c in _GLOB_CHARS for c in self.candidate)


@dataclass(frozen=True)
class Config:
    """A parsed config file: where it is and its checks, in file order."""

    path: Path
    checks: tuple[CheckSpec, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Check:
    """One concrete verification: a candidate file against its reference."""

    candidate: Path
    reference: Path
    domain: str | None = None
    data: Path | None = None
    formal: bool = False
    atol: float | None = None
    rtol: float | None = None
    time_limit: float | None = None
    source: str = ""  # "onnxcomp-verify.toml, check 2", for messages

    def verify_options(self) -> dict:
        """Keyword arguments for the verify function of ``onnxcomp.api`` (only those the config set, so
        the function's defaults apply to the rest)."""
        out: dict = {"formal": self.formal}
        for key in ("domain", "atol", "rtol", "time_limit"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.data is not None:
            out["data"] = str(self.data)
        return out


# ---- the config file -------------------------------------------------------------------------------------------------
def _type_name(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _number(where: str, key: str, value, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: '{key}' must be a number, got {_type_name(value)} ({value!r})")
    if math.isnan(value) or value < 0 or (positive and value == 0):
        raise InputError(f"{where}: '{key}' must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _string(where: str, key: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: '{key}' must be a non-empty string, got {_type_name(value)} ({value!r})")
    return value


_KEYS = {"candidate", "reference", "domain", "data", "formal", "atol", "rtol", "time_limit"}


def _spec(table, index: int, base: Path, where: str) -> CheckSpec:
    if not isinstance(table, dict):
        raise InputError(f"{where}: each [[check]] must be a table, got {_type_name(table)}")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(_KEYS))})")
    for key in ("candidate", "reference"):
        if key not in table:
            raise InputError(f"{where}: '{key}' is missing")
    candidate = _string(where, "candidate", table["candidate"])
    reference = _string(where, "reference", table["reference"])
    if any(c in _GLOB_CHARS for c in reference):
        raise InputError(f"{where}: 'reference' must name one file, not a glob ({reference!r})")
    domain = table.get("domain")
    if domain is not None:
        domain = _string(where, "domain", domain)
        if domain.lower().endswith(_DOMAIN_FILES):
            domain = str(base / domain)
    data = table.get("data")
    if data is not None:
        data = base / _string(where, "data", data)
    formal = table.get("formal", False)
    if not isinstance(formal, bool):
        raise InputError(f"{where}: 'formal' must be true or false, got {_type_name(formal)} ({formal!r})")
    return CheckSpec(
        index=index,
        candidate=str(base / candidate),
        reference=base / reference,
        domain=domain,
        data=data,
        formal=formal,
        atol=None if "atol" not in table else _number(where, "atol", table["atol"], positive=False),
        rtol=None if "rtol" not in table else _number(where, "rtol", table["rtol"], positive=False),
        time_limit=None if "time_limit" not in table else _number(where, "time_limit", table["time_limit"],
                                                                  positive=True),
    )


def load_config(path: str | Path) -> Config:
    """Parse and check a config file; ``InputError`` (one line, naming the file and the key) when it is
    missing, not TOML, or has an unknown key or a value of the wrong type."""
    path = Path(path)
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise InputError(f"{path}: reading TOML on Python 3.10 needs the tomli package: pip install tomli")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such config file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 text file") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"check"})
    if unknown:
        raise InputError(f"{path}: unknown key '{unknown[0]}' (a config has [[check]] tables only)")
    tables = doc.get("check")
    if tables is None:
        raise InputError(f"{path}: no [[check]] table")
    if not isinstance(tables, list):
        raise InputError(f"{path}: 'check' must be an array of tables ([[check]]), got {_type_name(tables)}")
    base = path.parent
    specs = tuple(_spec(t, i, base, f"{path}, check {i}") for i, t in enumerate(tables, 1))
    return Config(path=path, checks=specs)


# ---- picking the checks for the changed files ---------------------------------------------------------------------
def _key(p: str | Path) -> Path:
    """A path's identity for matching (absolute, symlinks resolved)."""
    return Path(p).resolve()


def _candidates(spec: CheckSpec) -> list[Path]:
    if not spec.is_glob:
        return [Path(spec.candidate)]
    return sorted(Path(p) for p in glob.glob(spec.candidate, recursive=True) if Path(p).is_file())


def checks_for(config: Config, changed_files: Iterable[str | Path]) -> list[Check]:
    """The checks to run for ``changed_files``: one per (config entry, candidate file) whose candidate or
    reference changed.  A changed reference re-checks every candidate of its entry (for a glob, every
    file it matches now).  A candidate equal to its reference is skipped (a glob that also matches the
    reference).  Order: config order, then candidate path; no duplicates."""
    changed = {_key(f) for f in changed_files}
    out: list[Check] = []
    seen: set[tuple[Path, Path]] = set()
    for spec in config.checks:
        ref_changed = _key(spec.reference) in changed
        for cand in _candidates(spec):
            ident = (_key(cand), _key(spec.reference))
            if ident[0] == ident[1] or ident in seen:
                continue
            if ref_changed or ident[0] in changed:
                seen.add(ident)
                out.append(Check(candidate=cand, reference=spec.reference, domain=spec.domain, data=spec.data,
                                 formal=spec.formal, atol=spec.atol, rtol=spec.rtol, time_limit=spec.time_limit,
                                 source=f"{config.path}, check {spec.index}"))
    return out


def unchecked(config: Config, changed_files: Iterable[str | Path]) -> list[Path]:
    """The changed files (in the given order) that no entry names as candidate or reference: the hook can
    say that they were not verified instead of passing silently."""
    covered = set()
    for spec in config.checks:
        covered.add(_key(spec.reference))
        covered.update(_key(c) for c in _candidates(spec))
    return [Path(f) for f in changed_files if _key(f) not in covered]
