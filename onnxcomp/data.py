"""``--data`` / ``--labels`` loading and validation.

``.npy`` files are memory-mapped (a million-row file is never read whole); ``.npz`` files use the
array ``x`` (or their only array) for data and ``y`` (or their only array) for labels.  Samples may be
given flattened (N, features) or in the model's own per-sample shape (N, ...).  Every problem is an
``InputError`` naming the flag and the file.
"""

from __future__ import annotations

import mmap
from math import prod
from pathlib import Path

import numpy as np

from .errors import InputError

CHUNK = 65536


def _open_array(path: str, flag: str, prefer: str) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{flag} {path}: no such file")
    if p.is_dir():
        raise InputError(f"{flag} {path}: is a directory")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(p, mmap_mode="r", allow_pickle=False)
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                if prefer in z.files:
                    return np.asarray(z[prefer])
                if len(z.files) == 1:
                    return np.asarray(z[z.files[0]])
                raise InputError(f"{flag} {path}: .npz has arrays {', '.join(z.files)}; expected '{prefer}'")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{flag} {path}: cannot read ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    raise InputError(f"{flag} {path}: expected a .npy or .npz file")


def load_data(path: str, n_features: int, sample_shape: tuple | None = None) -> np.ndarray:
    """Samples as an (N, n_features) array (a memory map for .npy, converted lazily by consumers)."""
    return check_data(_open_array(path, "--data", "x"), n_features, f"--data {path}")


def check_data(arr: np.ndarray, n_features: int, what: str = "data") -> np.ndarray:
    """``arr`` (file contents or an array given in Python) as (N, n_features) rows, refused (one
    ``InputError`` line starting with ``what``) unless numeric, non-empty, of the model's size and finite."""
    arr = arr if isinstance(arr, np.ndarray) else np.asarray(arr)
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{what}: dtype {arr.dtype} is not numeric (expected float)")
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise InputError(f"{what}: has no rows")
    per_sample = int(prod(arr.shape[1:])) if arr.ndim > 1 else 1
    if per_sample != n_features:
        if arr.ndim == 1 and arr.size == n_features:
            raise InputError(f"{what}: a single sample of shape {arr.shape}; give shape (N, {n_features})")
        raise InputError(f"{what}: samples have {per_sample} features (shape {arr.shape}) but the model takes {n_features}")
    flat = arr.reshape(arr.shape[0], n_features)
    for start in range(0, flat.shape[0], CHUNK):
        part = np.asarray(flat[start : start + CHUNK])
        if part.dtype.kind == "f" and not np.all(np.isfinite(part)):
            row = start + int(np.flatnonzero(~np.all(np.isfinite(part), axis=1))[0])
            raise InputError(f"{what}: row {row} contains NaN or Inf")
        release(flat)
    return flat


def load_labels(path: str, n_rows: int) -> np.ndarray:
    """Integer class labels, one per data row."""
    return check_labels(_open_array(path, "--labels", "y"), n_rows, f"--labels {path}")


def check_labels(arr: np.ndarray, n_rows: int, what: str = "labels") -> np.ndarray:
    """Integer class labels, one per data row (refused with one ``InputError`` line starting with ``what``)."""
    arr = np.asarray(arr)
    arr = arr.reshape(-1) if arr.ndim <= 1 or (arr.ndim == 2 and arr.shape[1] == 1) else arr
    if arr.ndim != 1:
        raise InputError(f"{what}: expected one label per row, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError(f"{what}: labels must be whole class numbers")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise InputError(f"{what}: dtype {arr.dtype} is not an integer class label")
    if arr.shape[0] != n_rows:
        raise InputError(f"{what}: has {arr.shape[0]} labels for {n_rows} data rows")
    if arr.size and arr.min() < 0:
        raise InputError(f"{what}: negative class label {int(arr.min())}")
    return arr.astype(np.int64)


def labels_from_data_file(path: str, n_rows: int) -> np.ndarray | None:
    """Labels stored beside the samples (array ``y`` in the ``--data`` .npz), if any."""
    if Path(path).suffix.lower() != ".npz":
        return None
    with np.load(path, allow_pickle=False) as z:
        if "y" not in z.files or "x" not in z.files:
            return None
    return load_labels(path, n_rows)


def iter_rows(data: np.ndarray, batch: int = CHUNK, dtype=np.float64):
    """Batches of a (possibly memory-mapped) array, as ``dtype``; a memory map keeps only about one
    batch of the file resident."""
    for start in range(0, data.shape[0], batch):
        part = np.array(data[start : start + batch], dtype=dtype)
        release(data)
        yield part


def release(data: np.ndarray) -> None:
    """Drop the pages of a read-only memory-mapped array from this process's resident memory (they
    stay in the OS file cache and are read back on the next access).  Reading a mapped file maps
    every page it touches, so without this one pass over a 10 GB ``--data`` file would hold 10 GB
    resident although only one batch is in use at a time."""
    mm = getattr(data, "_mmap", None)  # numpy.memmap's mapping (None for in-memory arrays)
    # Only read-only maps: on a copy-on-write map ('c') dropping pages would drop changes.
    if mm is None or getattr(data, "mode", None) != "r" or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # closed or not allowed: only a memory optimisation
        pass
