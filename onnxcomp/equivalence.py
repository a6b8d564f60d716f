"""Equivalence check of two ONNX models with onnxruntime, as a library function.

Both models are run on the same inputs: the ``--data`` rows, ``samples`` uniform points of the domain
box, and its corners (all of them when there are few, else a random subset).  Statistics are
accumulated batch by batch, so memory does not grow with the number of samples.

The check passes when, for every float output, ``max |ref - cand| <= atol + rtol * scale`` with
``scale = max |ref|`` over the samples (errors relative to the output scale, which is what float32
reassociation produces), and every integer output (e.g. a class label) is identical.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

import numpy as np
import onnx

from .data import iter_rows
from .errors import InputError
from .ir import Box
from .runtime import Runner

ATOL = 1e-5
RTOL = 1e-4
SAMPLES = 10000
CORNERS = 1024
BATCH = 4096


@dataclass
class VerifyResult:
    """Statistics of one comparison.  ``max_rel_err`` is ``max_abs_err`` over the output scale."""

    passed: bool
    max_abs_err: float
    mean_abs_err: float
    max_rel_err: float
    top1_agreement: float | None
    samples: int
    output_scale: float
    atol: float
    rtol: float
    worst_sample: int | None = None
    reason: str = ""
    against: str = ""
    """What the candidate was compared with, when that is not simply the reference file: a run's writer
    check compares the written file with the transformed network (``"transformed network (writer check)"``)."""
    formal: dict | None = field(default=None, repr=False)
    report: dict | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """The statistics (``formal`` and ``report``, which hold these, are left out; ``against`` when set)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("formal", "report") and not (k == "against" and not v)}

    def summary(self) -> str:
        top1 = "n/a" if self.top1_agreement is None else f"{100 * self.top1_agreement:.2f}%"
        if self.against.startswith("transformed"):
            from .formats import writer_line  # says what was compared, and never "PASSED" for it

            return writer_line(self.to_dict()) + (f" ({self.reason})" if self.reason else "")
        word = "PASSED" if self.passed else "FAILED"
        line = (f"{word}: {self.samples} samples, max abs err {self.max_abs_err:.3g}, mean abs err "
                f"{self.mean_abs_err:.3g}, max rel err {self.max_rel_err:.3g}, top-1 agreement {top1}")
        return line + (f" ({self.reason})" if self.reason else "")


def sample_inputs(
    box: Box | None,
    data: np.ndarray | None,
    samples: int = SAMPLES,
    corners: int = CORNERS,
    seed: int = 0,
    batch: int = BATCH,
    data_dtype=np.float64,
) -> Iterator[np.ndarray]:
    """Batches: the data rows (as ``data_dtype``), then uniform samples of the box, then its corners
    (float64)."""
    if data is not None:
        yield from iter_rows(data, batch, data_dtype)
    if box is None:
        return
    rng = np.random.default_rng(seed)
    remaining = samples
    while remaining > 0:
        n = min(batch, remaining)
        yield box.sample(n, rng)
        remaining -= n
    pts = box.corners(corners, rng)
    for start in range(0, pts.shape[0], batch):
        yield pts[start : start + batch]


class _Stats:
    """Streaming error statistics for one pair of outputs."""

    def __init__(self, is_float: bool):
        self.is_float = is_float
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.count = 0
        self.scale = 0.0
        self.mismatch = 0
        self.worst = None

    def update(self, a: np.ndarray, b: np.ndarray, offset: int) -> None:
        if a.shape != b.shape:
            raise InputError(f"output shapes differ: {a.shape[1:]} vs {b.shape[1:]} per sample")
        if not self.is_float:
            neq = np.any(a != b, axis=1)
            self.mismatch += int(neq.sum())
            if neq.any() and self.worst is None:
                self.worst = offset + int(np.flatnonzero(neq)[0])
            return
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        both_nan = np.isnan(a64) & np.isnan(b64)
        err = np.where(both_nan, 0.0, np.abs(a64 - b64))
        err = np.where(np.isnan(err), np.inf, err)
        finite_ref = np.where(np.isfinite(a64), np.abs(a64), 0.0)
        self.scale = max(self.scale, float(finite_ref.max(initial=0.0)))
        per_sample = err.max(axis=1, initial=0.0)
        if per_sample.size and per_sample.max() > self.max_abs:
            self.max_abs = float(per_sample.max())
            self.worst = offset + int(per_sample.argmax())
        self.sum_abs += float(err[np.isfinite(err)].sum())
        self.count += err.size


def _pair_outputs(ref: onnx.ModelProto, cand: onnx.ModelProto) -> tuple[list[str], list[str]]:
    r = [o.name for o in ref.graph.output]
    c = [o.name for o in cand.graph.output]
    if len(r) != len(c):
        raise InputError(f"the models have {len(r)} and {len(c)} outputs")
    if set(r) == set(c):
        return r, r
    return r, c


def compare(
    ref: onnx.ModelProto,
    cand: onnx.ModelProto,
    batches: Iterable[np.ndarray],
    atol: float = ATOL,
    rtol: float = RTOL,
    device: str = "auto",
) -> VerifyResult:
    """Run both models on ``batches`` and compare every output."""
    ref_names, cand_names = _pair_outputs(ref, cand)
    r_run = Runner.create(ref, device, ref_names)
    c_run = Runner.create(cand, device, cand_names)
    if r_run.features != c_run.features:
        raise InputError(f"the models take {r_run.features} and {c_run.features} input features")
    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
    out_types = {o.name: o.type.tensor_type.elem_type for o in ref.graph.output}
    stats = [_Stats(out_types.get(n) in float_types) for n in ref_names]
    agree = total = 0
    top1_output = None
    seen = 0
    for x in batches:
        if x.shape[0] == 0:
            continue
        ra = r_run.run(x)
        ca = c_run.run(x)
        for j, st in enumerate(stats):
            st.update(ra[j], ca[j], seen)
            if top1_output is None and st.is_float and ra[j].shape[1] > 1:
                top1_output = j
        if top1_output is not None:
            agree += int(np.sum(ra[top1_output].argmax(axis=1) == ca[top1_output].argmax(axis=1)))
            total += x.shape[0]
        seen += x.shape[0]
    if seen == 0:
        raise InputError("verification needs inputs: give --domain or --data")
    floats = [s for s in stats if s.is_float]
    max_abs = max((s.max_abs for s in floats), default=0.0)
    count = sum(s.count for s in floats)
    mean_abs = sum(s.sum_abs for s in floats) / count if count else 0.0
    rel = max((s.max_abs / max(s.scale, 1e-30) for s in floats), default=0.0)
    scale = max((s.scale for s in floats), default=0.0)
    failing = [s for s in floats if not (s.max_abs <= atol + rtol * s.scale)]
    mismatched = [s for s in stats if not s.is_float and s.mismatch]
    reason = ""
    if failing:
        reason = f"error exceeds atol {atol:g} + rtol {rtol:g} x output scale"
    if mismatched:
        reason = (reason + "; " if reason else "") + f"{mismatched[0].mismatch} samples with a different integer output"
    worst = next((s.worst for s in failing + mismatched if s.worst is not None), None)
    if worst is None and floats:
        worst = max(floats, key=lambda s: s.max_abs).worst
    return VerifyResult(
        passed=not failing and not mismatched,
        max_abs_err=max_abs,
        mean_abs_err=mean_abs,
        max_rel_err=rel,
        top1_agreement=(agree / total) if total else None,
        samples=seen,
        output_scale=scale,
        atol=atol,
        rtol=rtol,
        worst_sample=worst,
        reason=reason,
    )


def verify_models(
    ref: onnx.ModelProto,
    cand: onnx.ModelProto,
    *,
    box: Box | None = None,
    data: np.ndarray | None = None,
    samples: int = SAMPLES,
    corners: int = CORNERS,
    seed: int = 0,
    atol: float = ATOL,
    rtol: float = RTOL,
    device: str = "auto",
) -> VerifyResult:
    """Compare two models on data + domain samples + domain corners (see module docstring)."""
    if box is None and data is None:
        raise InputError("verification needs inputs: give --domain or --data")
    batches = sample_inputs(box, data, samples, corners, seed)
    return compare(ref, cand, batches, atol, rtol, device)
