"""Lossy strength: apply an explicit setting, or search the strongest one a fidelity budget allows.

A lossy pass describes itself by ``build(level) -> Network`` and its ``levels`` ordered from weakest to
strongest (sparsity 0 … 0.99, bits 8 … 1).  Without budget flags the user's explicit setting is applied.
With a budget (``--max-drop``, ``--min-agreement``, ``--max-class-drop``; see ``onnxcomp.fidelity``) the
``--data`` rows are split deterministically (seeded, stratified by label) into a validation half and a
held-out half:

1. bisection over the levels finds the strongest one that meets the budget on validation (assuming
   fidelity falls monotonically with strength, which bisection needs and which holds for these passes up
   to noise);
2. that level is evaluated on the held-out half;
3. if it fails there, the search **backs off**: it looks for the strongest weaker level that meets the
   budget on both halves (bisection between the weakest level and the failed one, every candidate
   checked on both halves).  Only when even the weakest level fails is the budget not met.

Every trial is reported.  So is what the sample size can resolve: with ``n`` held-out rows one flipped
prediction moves top-1 agreement (and accuracy) by ``100/n`` %; a budget finer than that is warned about,
since it can only be met by a setting that flips nothing there.

Every candidate is evaluated with onnxruntime on the model the writer would emit, so nodes outside the
chain (a Softmax, an ArgMax) take part, and it is compared with the *original* model the user gave, so
the budget covers every lossy pass that ran before.  ``compress`` checks the budget again on the final
model's held-out half and writes nothing if it fails there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .errors import BudgetNotMet, UsageError
from .fidelity import Budget, class_scores, compare, split_halves, summary_line
from .ir import Network
from .scores import WeightScores, magnitude_scores
from .writer import to_model


class FidelityProbe:
    """Fidelity of candidate networks, as emitted, to the ``original`` model on rows of ``data``.

    The original's scores are computed once (the first time they are needed)."""

    def __init__(self, original: Network, data: np.ndarray, labels: np.ndarray | None, device: str = "auto"):
        self.original, self.data, self.labels, self.device = original, data, labels, device
        self._reference: np.ndarray | None = None

    @property
    def reference(self) -> np.ndarray:
        if self._reference is None:
            self._reference = class_scores(to_model(self.original), self.data, self.device)
        return self._reference

    def evaluate(self, net: Network, rows: np.ndarray) -> dict:
        scores = class_scores(to_model(net), np.asarray(self.data)[rows], self.device)
        labels = None if self.labels is None else self.labels[rows]
        return compare(self.reference[rows], scores, labels, rows)


def _brief(metrics: dict) -> dict:
    keep = ("samples", "accuracy_before", "accuracy_after", "top1_agreement", "mean_kl", "flipped_count")
    out = {k: metrics[k] for k in keep}
    out["worst_class"] = metrics["worst_class"]
    return out


def resolution(budget: Budget, n_validation: int, n_held: int) -> tuple[dict, list[str]]:
    """What the halves can resolve (one flip, in % / points) and warnings for budgets finer than that."""
    one_flip = 100.0 / max(n_held, 1)
    info = {"validation_rows": int(n_validation), "held_out_rows": int(n_held),
            "one_flip_pct": round(one_flip, 4)}
    warnings = []
    slack = {"--min-agreement": None if budget.min_agreement is None else 100.0 - budget.min_agreement,
             "--max-drop": budget.max_drop}
    for flag, allowed in slack.items():
        if allowed is not None and 0 < allowed < one_flip:
            warnings.append(f"{flag} allows {allowed:g} % but one flipped prediction on the {n_held} held-out rows "
                            f"is {one_flip:.3g} %: the budget is finer than the data resolves, so only settings "
                            f"that flip nothing there can meet it (give more --data rows)")
    return info, warnings


@dataclass
class Choice:
    """The outcome of :func:`choose`: the network, its level, the report entry fields and warnings."""

    network: Network
    level: object
    entry: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


def choose(build: Callable[[object], Network], levels: Sequence, what: str, *, explicit=None, default=None,
           budget: Budget | None = None, probe: FidelityProbe | None = None, labels: np.ndarray | None = None,
           seed: int = 0) -> Choice:
    """``build(level)`` for the explicit ``--<what>`` setting, or the strongest level meeting the budget.

    ``what`` is the option name of the pass's strength (``sparsity``, ``bits``, ``drop``); ``levels`` run
    from weakest to strongest.  ``default`` is used when neither a setting nor a budget is given (``None``:
    the setting is required).  Raises ``UsageError`` for an explicit setting together with a budget and
    ``BudgetNotMet`` when even the weakest level breaks the budget (see the module docstring)."""
    flag = "--" + what.replace("_", "-")
    if budget is None or not budget.active:
        if explicit is None:
            if default is None:
                raise UsageError(f"give {flag} or a fidelity budget (--max-drop, --min-agreement, --max-class-drop)")
            explicit = default
        return Choice(build(explicit), explicit, {what: explicit})
    if explicit is not None:
        given = ", ".join("--" + k.replace("_", "-") for k in budget.flags())
        raise UsageError(f"{flag} {explicit} and {given} contradict each other: with a budget the pass searches "
                         f"{flag} itself; drop one of them")
    if probe.reference.shape[1] < 2:
        raise UsageError("a fidelity budget compares class predictions, but the model's output has a single column")
    val, held = split_halves(int(probe.data.shape[0]), labels, seed)
    info, warnings = resolution(budget, val.size, held.size)
    trials: list[dict] = []
    built: dict[int, Network] = {}
    results: dict[tuple, list] = {}

    def candidate(i: int) -> Network:
        if i not in built:
            built[i] = build(levels[i])
        return built[i]

    def violations(i: int, half: str) -> list:
        key = (i, half)
        if key not in results:
            metrics = probe.evaluate(candidate(i), val if half == "validation" else held)
            results[key] = [budget.violations(metrics), metrics]
            trials.append({what: levels[i], "half": half, "meets": not results[key][0],
                           "summary": summary_line(metrics)})
        return results[key][0]

    def meets(i: int, halves=("validation",)) -> bool:
        return all(not violations(i, h) for h in halves)

    def refuse(half: str) -> BudgetNotMet:
        err = BudgetNotMet(f"even the weakest setting {flag} {levels[0]} breaks the budget on the {half} half "
                           f"({'; '.join(violations(0, half.replace('-', '_')))}); nothing written")
        err.entry = {"budget": {"flags": budget.flags(), "resolution": info, "search": trials}}
        return err

    if not meets(0):
        raise refuse("validation")
    lo = _strongest(meets, 0, len(levels) - 1)
    chosen = lo
    backed_off = False
    if not meets(lo, ("held_out",)):
        backed_off = True
        both = ("validation", "held_out")
        if not meets(0, both):
            raise refuse("held-out")
        chosen = _strongest(lambda i: meets(i, both), 0, lo - 1)
    val_metrics = results[(chosen, "validation")][1]
    held_metrics = results[(chosen, "held_out")][1]
    entry = {what: levels[chosen], "budget": {
        "flags": budget.flags(),
        "level": levels[chosen],
        "split": {"validation": int(val.size), "held_out": int(held.size), "seed": seed,
                  "stratified": labels is not None},
        "resolution": info,
        "validation": _brief(val_metrics),
        "held_out": _brief(held_metrics),
        "held_out_meets": not results[(chosen, "held_out")][0],
        "held_out_violations": results[(chosen, "held_out")][0],
        "backed_off_from": levels[lo] if backed_off else None,
        "search": trials,
    }}
    if backed_off:
        warnings.append(f"{flag} {levels[lo]} met the budget on the validation half but not on the held-out half; "
                        f"backed off to {flag} {levels[chosen]}, which meets it on both")
    return Choice(candidate(chosen), levels[chosen], entry, warnings)


def _strongest(ok: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest ``i`` in ``[lo, hi]`` with ``ok(i)``, by bisection, given ``ok(lo)`` (and assuming
    ``ok`` falls monotonically with ``i``)."""
    if hi <= lo:
        return lo
    if ok(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def strength_levels(start: float, stop: float, step: float) -> list[float]:
    """Evenly spaced levels rounded to 6 digits (so reports show 0.85, not 0.8500000000000001)."""
    count = int(round((stop - start) / step)) + 1
    return [round(start + i * step, 6) for i in range(count)]


SCORE_PASSES = {"lap": "lookahead", "fisher": "fisher"}
"""``--score`` value -> the analysis whose annotation holds those scores."""


def pick_scores(net: Network, choice: str | None, available: dict, default_order: Sequence[str] = ("lap", "fisher"),
                warn: Callable[[str], None] = lambda _: None) -> WeightScores | None:
    """The ``WeightScores`` a lossy transform ranks weights by.

    ``choice`` (``--score``) ``magnitude``, ``lap`` or ``fisher`` picks one explicitly; otherwise the first of
    ``default_order`` present in ``available`` (``{"lap": LookaheadScores | None, "fisher": ...}``), else
    ``None`` (the caller falls back to magnitude or to unweighted).  Scores that do not describe ``net``
    (computed before a later transform changed it, except by zeroing weights) are refused: ignored with a
    warning when not asked for, a usage error when asked for."""
    if choice == "magnitude":
        return magnitude_scores(net)
    names = [choice] if choice is not None else [n for n in default_order if available.get(n) is not None]
    if not names:
        return None
    scores = available.get(names[0])
    analysis = SCORE_PASSES[names[0]]
    if scores is None:
        raise UsageError(f"--score {names[0]} needs the '{analysis}' analysis before this pass")
    if not scores.describes(net):
        if choice is None:
            warn(f"the '{analysis}' scores describe the network before a later transform changed it; this pass "
                 f"does not use them (run '{analysis}' right before it)")
            return None
        raise UsageError(f"the '{analysis}' scores were computed on a network that a later transform changed; "
                         f"run '{analysis}' right before this pass")
    return scores
