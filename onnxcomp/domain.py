"""Input domains: ``LO:HI`` for every input, a ``.vnnlib`` file (its box), a ``.npz`` with ``lo``/``hi``,
or ``data`` (the bounding box of the ``--data`` samples).

The ``vnnlib`` package on PyPI rejects the VNN-COMP 2021/2022 files, so the input constraints are read
here with a small s-expression reader: bounds ``(<= X_i c)`` / ``(>= X_i c)`` (either argument order),
combined with ``and`` / ``or``; output constraints (``Y_j``) are ignored.  A disjunction of several
boxes is replaced by their hull, and the box says so in its ``note``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .data import iter_rows
from .errors import InputError
from .ir import Box

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_XVAR = re.compile(r"^X_(\d+)$")


def parse_domain(spec: str, n_features: int, data: np.ndarray | None = None) -> Box:
    """Turn a ``--domain`` value into a ``Box`` of ``n_features`` entries (``InputError`` if bad)."""
    spec = str(spec).strip()
    if spec == "data":
        if data is None:
            raise InputError("--domain data: needs --data")
        box = data_hull(data)
    elif spec.lower().endswith(".vnnlib"):
        box = read_vnnlib(spec, n_features)
    elif spec.lower().endswith(".npz"):
        box = _read_npz(spec, n_features)
    else:
        box = _read_range(spec, n_features)
    check_box(box, n_features, f"--domain {spec}")
    return box


def check_box(box: Box, n_features: int, what: str) -> None:
    if box.size != n_features:
        raise InputError(f"{what}: domain has {box.size} inputs but the model takes {n_features}")
    bad = np.flatnonzero(~np.isfinite(box.lo) | ~np.isfinite(box.hi))
    if bad.size:
        i = int(bad[0])
        kind = "NaN" if np.isnan(box.lo[i]) or np.isnan(box.hi[i]) else "unbounded"
        raise InputError(f"{what}: input {i} is {kind} ([{box.lo[i]}, {box.hi[i]}])")
    inverted = np.flatnonzero(box.lo > box.hi)
    if inverted.size:
        i = int(inverted[0])
        raise InputError(f"{what}: lo > hi at input {i} ({box.lo[i]} > {box.hi[i]})")


def _read_range(spec: str, n: int) -> Box:
    m = re.fullmatch(r"\s*([^:]+):([^:]+)\s*", spec)
    if not m:
        raise InputError(f"--domain {spec}: expected LO:HI (e.g. 0:1), a .vnnlib file, a .npz with lo/hi, or 'data'")
    try:
        lo, hi = float(m.group(1)), float(m.group(2))
    except ValueError:
        raise InputError(f"--domain {spec}: LO and HI must be numbers") from None
    return Box(np.full(n, lo), np.full(n, hi), source=spec)


def _read_npz(spec: str, n: int) -> Box:
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"--domain {spec}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "lo" not in z or "hi" not in z:
                raise InputError(f"--domain {spec}: the .npz needs arrays 'lo' and 'hi' (has {', '.join(z.files) or 'none'})")
            lo, hi = np.asarray(z["lo"]), np.asarray(z["hi"])
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"--domain {spec}: cannot read .npz ({type(exc).__name__})") from None
    for arr, key in ((lo, "lo"), (hi, "hi")):
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise InputError(f"--domain {spec}: '{key}' has dtype {arr.dtype}, expected numbers")
    lo = np.broadcast_to(lo.astype(np.float64), (n,)) if lo.size == 1 else lo.astype(np.float64).reshape(-1)
    hi = np.broadcast_to(hi.astype(np.float64), (n,)) if hi.size == 1 else hi.astype(np.float64).reshape(-1)
    if lo.size != hi.size:
        raise InputError(f"--domain {spec}: 'lo' has {lo.size} entries but 'hi' has {hi.size}")
    return Box(lo, hi, source=str(path))


def data_hull(data: np.ndarray, chunk: int = 65536) -> Box:
    """Bounding box of the samples (streamed in chunks, so memory-mapped data stays on disk)."""
    lo = hi = None
    for part in iter_rows(data, chunk):
        part = part.reshape(part.shape[0], -1)
        plo, phi = part.min(axis=0), part.max(axis=0)
        lo = plo if lo is None else np.minimum(lo, plo)
        hi = phi if hi is None else np.maximum(hi, phi)
    return Box(lo, hi, source="data hull")


# ---- vnnlib ------------------------------------------------------------------------------------
def _parse_sexprs(text: str, name: str) -> list:
    text = re.sub(r";[^\n]*", " ", text)
    stack: list[list] = [[]]
    for tok in _TOKEN.findall(text):
        if tok == "(":
            stack.append([])
        elif tok == ")":
            if len(stack) == 1:
                raise InputError(f"{name}: unbalanced ')' in vnnlib")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise InputError(f"{name}: unbalanced '(' in vnnlib")
    return stack[0]


def _num(tok) -> float | None:
    if isinstance(tok, list):
        if len(tok) == 2 and tok[0] == "-":
            v = _num(tok[1])
            return None if v is None else -v
        return None
    try:
        return float(tok)
    except ValueError:
        return None


def _boxes(expr, n: int, ignored: list) -> list[tuple[np.ndarray, np.ndarray]]:
    """Input boxes whose union over-approximates the input part of ``expr``.

    A constraint on inputs that is not a bound of one input (e.g. ``(<= (+ X_0 X_1) 1)``) is dropped,
    which only makes the box larger (still sound); it is appended to ``ignored`` so the user is told.
    """
    free = [(np.full(n, -np.inf), np.full(n, np.inf))]
    if not isinstance(expr, list) or not expr:
        return free
    head = expr[0]
    if head == "and":
        result = free
        for sub in expr[1:]:
            parts = _boxes(sub, n, ignored)
            result = _unique([(np.maximum(alo, blo), np.minimum(ahi, bhi)) for alo, ahi in result for blo, bhi in parts])
        return result
    if head == "or":
        out = []
        for sub in expr[1:]:
            out.extend(_boxes(sub, n, ignored))
        return _unique(out) or free
    if head in ("<=", ">=", "<", ">") and len(expr) == 3:
        a, b = expr[1], expr[2]
        upper = head in ("<=", "<")  # a <= b
        for var, val, var_is_left in ((a, _num(b), True), (b, _num(a), False)):
            m = _XVAR.match(var) if isinstance(var, str) else None
            if m and val is not None:
                i = int(m.group(1))
                if i >= n:
                    raise _BadVnnlib(f"constraint on X_{i} beyond the {n} inputs")
                if np.isnan(val):
                    raise _BadVnnlib(f"bound on X_{i} is NaN")
                lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
                if upper == var_is_left:
                    hi[i] = val
                else:
                    lo[i] = val
                return [(lo, hi)]
    if _mentions_input(expr):
        ignored.append(expr)
    return free


def _mentions_input(expr) -> bool:
    if isinstance(expr, list):
        return any(_mentions_input(e) for e in expr)
    return isinstance(expr, str) and _XVAR.match(expr) is not None


def _unique(boxes: list) -> list:
    seen, out = set(), []
    for lo, hi in boxes:
        key = (lo.tobytes(), hi.tobytes())
        if key not in seen:
            seen.add(key)
            out.append((lo, hi))
    return out


class _BadVnnlib(Exception):
    """A constraint we must refuse (raised deep in the recursion, reported with the file name)."""


def read_vnnlib(path: str, n_features: int) -> Box:
    """The input box of a vnnlib property (the hull when it is a disjunction of boxes)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--domain {path}: no such file")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--domain {path}: cannot read ({type(exc).__name__})") from None
    exprs = _parse_sexprs(text, str(p))
    declared = sorted(int(m.group(1)) for e in exprs if isinstance(e, list) and len(e) >= 2 and e[0] == "declare-const"
                      for m in [_XVAR.match(str(e[1]))] if m)
    if not declared:
        raise InputError(f"--domain {path}: declares no inputs X_i")
    if len(declared) != n_features:
        raise InputError(f"--domain {path}: declares {len(declared)} inputs but the model takes {n_features}")
    asserts = [e[1] for e in exprs if isinstance(e, list) and len(e) == 2 and e[0] == "assert"]
    ignored: list = []
    try:
        boxes = _boxes(["and", *asserts], n_features, ignored)
    except _BadVnnlib as exc:
        raise InputError(f"--domain {path}: {exc}") from None
    boxes = [(lo, hi) for lo, hi in boxes if np.all(lo <= hi)]
    if not boxes:
        raise InputError(f"--domain {path}: the input constraints are empty (no point satisfies them)")
    lo = np.min([b[0] for b in boxes], axis=0)
    hi = np.max([b[1] for b in boxes], axis=0)
    if np.all(~np.isfinite(lo) & ~np.isfinite(hi)):
        raise InputError(f"--domain {path}: no input bounds found")
    unbounded = np.flatnonzero(~np.isfinite(lo) | ~np.isfinite(hi))
    if unbounded.size:
        raise InputError(f"--domain {path}: input X_{int(unbounded[0])} is unbounded")
    notes = []
    if len(boxes) > 1:
        notes.append(f"vnnlib has {len(boxes)} input boxes (or); using their hull")
    if ignored:
        notes.append(f"{len(ignored)} input constraint(s) that are not bounds of one input ignored "
                     f"(the box over-approximates the domain)")
    return Box(lo, hi, source=str(p), note="; ".join(notes))
