"""What a lossy compression did to the model's behaviour, beyond its size.

Both models are run with onnxruntime on the same ``--data`` rows (the whole graph, prefix and suffix
included) and compared class by class: accuracy before/after (with labels), top-1 agreement with the
original, mean KL divergence of the output distributions, per-class accuracy and agreement with the
worst class named, and the indices of the inputs whose prediction flipped.  Compression can hurt some
classes far more than the average (compression-beyond-size §2.4), so the per-class view is part of
every lossy report, and ``--max-class-drop`` can bound it.

A ``Budget`` (``--max-drop`` accuracy points, ``--min-agreement`` % top-1 agreement,
``--max-class-drop`` points for the worst class) is checked on a deterministic split of the data into
a validation half (where a lossy pass searches its setting) and a held-out half (where the chosen
setting is checked again and reported).  Latency is measured with onnxruntime at batch 1 and a large
batch, median of repeats.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx

from .errors import UsageError
from .runtime import Runner

FLIPPED_LIMIT = 1000
"""At most this many flipped indices are listed (``flipped_count`` has the total)."""

LARGE_BATCH = 1024


@dataclass(frozen=True)
class Budget:
    """The user's fidelity budget; ``None`` fields are not constrained.  All values in percent."""

    max_drop: float | None = None
    min_agreement: float | None = None
    max_class_drop: float | None = None

    @classmethod
    def from_options(cls, options: dict) -> "Budget":
        def get(key):
            value = options.get(key)
            return None if value is None else float(value)

        budget = cls(get("max_drop"), get("min_agreement"), get("max_class_drop"))
        for flag, value in (("--max-drop", budget.max_drop), ("--max-class-drop", budget.max_class_drop)):
            if value is not None and not (0 <= value <= 100):
                raise UsageError(f"{flag} {value:g}: expected accuracy points between 0 and 100")
        if budget.min_agreement is not None and not (0 <= budget.min_agreement <= 100):
            raise UsageError(f"--min-agreement {budget.min_agreement:g}: expected a percentage between 0 and 100")
        return budget

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.max_drop, self.min_agreement, self.max_class_drop))

    @property
    def needs_labels(self) -> bool:
        return self.max_drop is not None or self.max_class_drop is not None

    def flags(self) -> dict:
        return {k: v for k, v in (("max_drop", self.max_drop), ("min_agreement", self.min_agreement),
                                  ("max_class_drop", self.max_class_drop)) if v is not None}

    def check_usage(self, lossy_passes: list[str], has_data: bool, has_labels: bool) -> None:
        """Refuse budgets that cannot be evaluated (before any pass runs)."""
        if not self.active:
            return
        given = ", ".join("--" + k.replace("_", "-") for k in self.flags())
        if not lossy_passes:
            raise UsageError(f"{given}: a fidelity budget needs a lossy pass (e.g. -p prune or -p quantize); "
                             f"the passes given are exact")
        if not has_data:
            raise UsageError(f"{given}: a fidelity budget is measured on --data rows; give --data")
        if self.needs_labels and not has_labels:
            flag = "--max-drop" if self.max_drop is not None else "--max-class-drop"
            raise UsageError(f"{flag} needs labels (--labels, or 'y' in the --data .npz); "
                             f"--min-agreement needs none")

    def violations(self, metrics: dict) -> list[str]:
        """Why ``metrics`` (from :func:`compare`) break the budget; empty when it holds."""
        out = []
        if self.max_drop is not None:
            drop = 100 * (metrics["accuracy_before"] - metrics["accuracy_after"])
            if drop > self.max_drop + 1e-9:
                out.append(f"accuracy drop {drop:.2f} pts > {self.max_drop:g}")
        if self.min_agreement is not None:
            agree = 100 * metrics["top1_agreement"]
            if agree < self.min_agreement - 1e-9:
                out.append(f"top-1 agreement {agree:.2f}% < {self.min_agreement:g}%")
        if self.max_class_drop is not None:
            worst = max((100 * (c["accuracy_before"] - c["accuracy_after"]) for c in metrics["per_class"]
                         if c["accuracy_before"] is not None), default=0.0)
            if worst > self.max_class_drop + 1e-9:
                out.append(f"worst class drop {worst:.2f} pts > {self.max_class_drop:g}")
        return out


def split_halves(n: int, labels: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (validation, held-out) row indices: half each, stratified by label when given.

    Within a class of odd size the extra row goes to validation and to held-out alternately, so the
    halves differ in size by at most one row overall.
    """
    if n < 2:
        raise UsageError(f"a fidelity budget needs at least 2 --data rows (got {n})")
    rng = np.random.default_rng([seed, 0xB1D6E7])
    if labels is None:
        perm = rng.permutation(n)
        return np.sort(perm[: (n + 1) // 2]), np.sort(perm[(n + 1) // 2:])
    val, held = [], []
    odd = 0
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        cut = rows.size // 2 + (rows.size % 2) * (1 - odd)
        odd ^= rows.size % 2
        val.append(rows[:cut])
        held.append(rows[cut:])
    return np.sort(np.concatenate(val)), np.sort(np.concatenate(held))


def score_output(model: onnx.ModelProto) -> str:
    """The output compared class by class: the first float output with more than one column."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
    for out in model.graph.output:
        tt = out.type.tensor_type
        if tt.elem_type in floats:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            if len(dims) >= 1 and (dims[-1] is None or dims[-1] > 1):
                return out.name
    return model.graph.output[0].name


def class_scores(model: onnx.ModelProto, data: np.ndarray, device: str = "auto") -> np.ndarray:
    """onnxruntime outputs (N, classes) of ``model``'s score output on ``data`` rows, float64."""
    runner = Runner.create(model, device, [score_output(model)])
    return np.asarray(runner.run(np.asarray(data))[0], dtype=np.float64)


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows of ``scores`` as distributions: kept when they already are (a Softmax suffix), else softmax."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size and np.all(s >= 0) and np.allclose(s.sum(axis=1), 1.0, atol=1e-3):
        return s / s.sum(axis=1, keepdims=True)
    z = s - s.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of ``labels`` under the distributions of ``scores``."""
    p = probabilities(scores)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-300, None))))


def compare(before: np.ndarray, after: np.ndarray, labels: np.ndarray | None = None,
            rows: np.ndarray | None = None) -> dict:
    """Fidelity of ``after`` to ``before`` (scores (N, classes) on the same rows).

    ``rows`` gives the original data-row index of each row, so ``flipped`` names rows of ``--data``.
    Accuracies are fractions; ``worst_class`` is the class with the largest accuracy drop (with
    labels) or the lowest agreement (without).
    """
    before = np.asarray(before, dtype=np.float64)
    after = np.asarray(after, dtype=np.float64)
    n = before.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows)
    pb, pa = before.argmax(axis=1), after.argmax(axis=1)
    agree = pb == pa
    p, q = probabilities(before), probabilities(after)
    kl = np.sum(np.where(p > 0, p * (np.log(np.clip(p, 1e-300, None)) - np.log(np.clip(q, 1e-300, None))), 0.0), axis=1)
    flipped = rows[~agree]
    metrics = {
        "samples": int(n),
        "accuracy_before": None,
        "accuracy_after": None,
        "top1_agreement": float(agree.mean()) if n else None,
        "mean_kl": float(kl.mean()) if n else None,
        "cross_entropy_before": None,
        "cross_entropy_after": None,
        "per_class": [],
        "worst_class": None,
        "flipped": flipped[:FLIPPED_LIMIT].tolist(),
        "flipped_count": int(flipped.size),
    }
    group = pb if labels is None else np.asarray(labels)
    if labels is not None:
        correct_b, correct_a = pb == group, pa == group
        metrics["accuracy_before"] = float(correct_b.mean())
        metrics["accuracy_after"] = float(correct_a.mean())
        metrics["cross_entropy_before"] = cross_entropy(before, group)
        metrics["cross_entropy_after"] = cross_entropy(after, group)
    for c in np.unique(group):
        sel = group == c
        entry = {"class": int(c), "samples": int(sel.sum()), "accuracy_before": None, "accuracy_after": None,
                 "agreement": float(agree[sel].mean())}
        if labels is not None:
            entry["accuracy_before"] = float(correct_b[sel].mean())
            entry["accuracy_after"] = float(correct_a[sel].mean())
        metrics["per_class"].append(entry)
    if metrics["per_class"]:
        if labels is not None:
            worst = max(metrics["per_class"], key=lambda e: (e["accuracy_before"] - e["accuracy_after"], -e["agreement"]))
            worst = dict(worst, drop_pts=100 * (worst["accuracy_before"] - worst["accuracy_after"]))
        else:
            worst = min(metrics["per_class"], key=lambda e: e["agreement"])
        metrics["worst_class"] = worst
    return metrics


def summary_line(metrics: dict) -> str:
    """One human line of :func:`compare`'s result."""
    parts = []
    if metrics.get("accuracy_before") is not None:
        parts.append(f"accuracy {100 * metrics['accuracy_before']:.2f}% -> {100 * metrics['accuracy_after']:.2f}%")
    if metrics.get("top1_agreement") is not None:
        parts.append(f"top-1 agreement {100 * metrics['top1_agreement']:.2f}%")
    if metrics.get("mean_kl") is not None:
        parts.append(f"mean KL {metrics['mean_kl']:.3g}")
    w = metrics.get("worst_class")
    if w is not None:
        if w.get("drop_pts") is not None:
            parts.append(f"worst class {w['class']} ({w['drop_pts']:+.1f} pts drop)")
        else:
            parts.append(f"worst class {w['class']} ({100 * w['agreement']:.1f}% agreement)")
    parts.append(f"{metrics.get('flipped_count', 0)} flipped")
    return ", ".join(parts)


def measure_latency(model: onnx.ModelProto | bytes, data: np.ndarray, device: str = "auto",
                    batches: tuple = (1, LARGE_BATCH), seconds: float = 0.3, max_repeats: int = 200) -> dict:
    """Median onnxruntime wall time (ms) of one ``run`` call per batch size, rows taken (cycled) from
    ``data``.  Each size is warmed up, then repeated until ``seconds`` or ``max_repeats``."""
    m = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(model)
    runner = Runner.create(m, device)  # every graph output, as a deployed model computes them
    out = {}
    for size in batches:
        if not runner.batchable and size > 1:
            continue
        idx = np.arange(size) % data.shape[0]
        x = np.asarray(data[idx], dtype=np.float64)  # only the rows timed (data may be a memory map)
        runner.run(x, batch_size=size)
        times = []
        start = time.perf_counter()
        while len(times) < max_repeats and (len(times) < 5 or time.perf_counter() - start < seconds):
            t0 = time.perf_counter()
            runner.run(x, batch_size=size)
            times.append(time.perf_counter() - t0)
        out[f"batch_{size}"] = round(1000 * float(np.median(times)), 4)
    return out


@dataclass
class RunAssessment:
    """What ``compile_model`` reports for a run: ``fidelity`` and ``latency_ms`` dicts, and the budget's
    violations on the held-out half (empty when it holds or there is no budget)."""

    fidelity: dict
    latency_ms: dict | None
    violations: list


def assess_run(original: onnx.ModelProto, candidate: onnx.ModelProto, data: np.ndarray | None,
               labels: np.ndarray | None, budget: Budget, *, exact: bool, seed: int = 0, device: str = "auto",
               latency_inputs: np.ndarray | None = None) -> RunAssessment:
    """Compare the emitted ``candidate`` with the ``original`` model on ``data`` (all rows, and the
    validation / held-out halves when a budget is set) and time both (lossy runs only)."""
    fid: dict = {"exact": exact}
    if exact:
        fid["note"] = "exact passes only: outputs equal the original within float tolerance (see verification)"
    if data is None:
        fid["measured"] = False
        fid["reason"] = "no --data rows to compare predictions on"
    else:
        before = class_scores(original, data, device)
        after = class_scores(candidate, data, device)
        if before.shape[1] < 2:
            fid["measured"] = False
            fid["reason"] = "the model's output has a single column: class metrics do not apply"
            fid["max_abs_change"] = float(np.abs(before - after).max(initial=0.0))
        else:
            fid["measured"] = True
            fid.update(compare(before, after, labels))
            fid["summary"] = summary_line(fid)
    violations: list = []
    if budget.active and not fid["measured"]:
        raise UsageError(f"a fidelity budget compares class predictions, but {fid['reason']}")
    if budget.active:
        val, held = split_halves(int(data.shape[0]), labels, seed)
        halves = {}
        for name, rows in (("validation", val), ("held_out", held)):
            m = compare(before[rows], after[rows], None if labels is None else labels[rows], rows)
            halves[name] = {k: m[k] for k in ("samples", "accuracy_before", "accuracy_after", "top1_agreement",
                                              "mean_kl", "worst_class", "flipped_count")}
            halves[name]["violations"] = budget.violations(m)
        violations = halves["held_out"]["violations"]
        fid["budget"] = {"flags": budget.flags(), "met_on_held_out": not violations, **halves}
        if violations and not halves["validation"]["violations"]:
            # The search met the budget on the validation half; say so, and what would help.
            violations = violations + ["it holds on the validation half, so the setting is borderline: loosen the "
                                       "budget, give more --data rows, or set the strength explicitly"]
    latency = None
    if not exact:
        x = latency_inputs if latency_inputs is not None else data
        if x is not None and len(x):
            latency = {"before": measure_latency(original, x, device), "after": measure_latency(candidate, x, device),
                       "unit": "ms per onnxruntime run call, median"}
    return RunAssessment(fid, latency, violations)


STAT_KEYS = ("samples", "max_abs_err", "mean_abs_err", "max_rel_err", "top1_agreement", "output_scale", "atol", "rtol")


def against_original(stats: dict, *, exact: bool, inputs: str, budget: Budget, budget_met: bool | None,
                     tolerance_stated: bool) -> dict:
    """The report's ``fidelity.original`` block: how the written model compares with the ORIGINAL on the
    run's inputs (``stats``: :class:`~onnxcomp.equivalence.VerifyResult` fields of that comparison), and
    whether that was judged, by what.

    An exact run is judged by equivalence (the comparison's own tolerance).  A lossy run is judged only
    by what the user stated: a fidelity budget (met on the held-out half of ``--data``) and/or a
    tolerance (``--atol``/``--rtol`` given), each of which must hold; with neither, ``passed`` is
    ``None``: measured, not judged, and never shown as passed."""
    block = {k: stats.get(k) for k in STAT_KEYS}
    block.update(exact=exact, inputs=inputs)
    if exact:
        block.update(judged_by=["equivalence"], passed=bool(stats.get("passed")),
                     criterion=f"exact passes: equivalent within atol {stats['atol']:g} + rtol {stats['rtol']:g} "
                               f"x output scale")
        return block
    judged, verdicts, criteria = [], [], []
    if budget.active:
        judged.append("budget")
        verdicts.append(bool(budget_met))
        from .formats import budget_text

        criteria.append(f"budget {budget_text(budget.flags())} {'met' if budget_met else 'not met'} on the held-out "
                        f"half of --data")
    if tolerance_stated:
        judged.append("tolerance")
        verdicts.append(bool(stats.get("passed")))
        criteria.append(f"stated tolerance atol {stats['atol']:g} + rtol {stats['rtol']:g} x output scale")
    block.update(judged_by=judged, passed=all(verdicts) if judged else None,
                 criterion="; ".join(criteria) if criteria else "no budget or tolerance set")
    return block
