"""Shared by the lossy transforms: apply an explicit setting, or search the strongest one a fidelity
budget allows.

A lossy pass describes itself by ``build(level) -> Network`` and its ``levels`` ordered from weakest to
strongest (sparsity 0 … 0.99, bits 8 … 1).  Without budget flags the user's explicit setting is applied.
With a budget (``--max-drop``, ``--min-agreement``, ``--max-class-drop``; see ``onnxcomp.fidelity``) the
``--data`` rows are split deterministically (seeded, stratified by label) into a validation half and a
held-out half; bisection over the levels finds the strongest one that meets the budget on validation
(assuming fidelity falls monotonically with strength, which bisection needs and which holds for these
passes up to noise), and that level is then evaluated on held-out and both results are reported.

Every candidate is evaluated with onnxruntime on the model the writer would emit, so nodes outside the
chain (a Softmax, an ArgMax) take part, and it is compared with the *original* model the user gave, so
the budget covers every lossy pass that ran before.  ``compile_model`` checks the budget again on the
final model's held-out half and writes nothing if it fails there.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from onnxcomp.errors import BudgetNotMet, UsageError
from onnxcomp.fidelity import Budget, class_scores, compare, split_halves, summary_line
from onnxcomp.ir import Network
from onnxcomp.pipeline import Context
from onnxcomp.writer import to_model

REFERENCE_KEY = "lossy_reference_scores"
"""``ctx.extra`` key caching the original model's scores on ``ctx.data`` (computed once per run)."""


def reference_scores(ctx: Context) -> np.ndarray:
    """The original model's class scores on every ``--data`` row (onnxruntime, cached in ``ctx.extra``)."""
    cached = ctx.extra.get(REFERENCE_KEY)
    if cached is None:
        cached = class_scores(to_model(ctx.original), ctx.data, ctx.device)
        ctx.extra[REFERENCE_KEY] = cached
    return cached


def evaluate(net: Network, ctx: Context, rows: np.ndarray) -> dict:
    """Fidelity of ``net`` (as emitted) to the original model on the ``--data`` rows ``rows``."""
    ref = reference_scores(ctx)
    scores = class_scores(to_model(net), np.asarray(ctx.data)[rows], ctx.device)
    labels = None if ctx.labels is None else ctx.labels[rows]
    return compare(ref[rows], scores, labels, rows)


def _brief(metrics: dict) -> dict:
    keep = ("samples", "accuracy_before", "accuracy_after", "top1_agreement", "mean_kl", "flipped_count")
    out = {k: metrics[k] for k in keep}
    out["worst_class"] = metrics["worst_class"]
    return out


def apply_with_budget(net: Network, ctx: Context, build: Callable[[object], Network], levels: Sequence,
                      what: str, default=None, parse: Callable | None = None) -> Network:
    """``build(level)`` for the user's explicit ``--<what>`` setting, or the strongest level meeting the budget.

    ``what`` is the option key of the pass's strength (``sparsity``, ``bits``); ``levels`` run from
    weakest to strongest.  ``default`` is used when neither the setting nor a budget is given (``None``:
    the setting is required); ``parse`` checks and converts the explicit value.  Raises ``UsageError``
    for an explicit setting together with a budget and ``BudgetNotMet`` when even the weakest level
    breaks the budget on validation.
    """
    budget = Budget.from_options(ctx.options)
    explicit = ctx.options.get(what)
    flag = "--" + what.replace("_", "-")
    if explicit is not None and parse is not None:
        explicit = parse(explicit)
    if not budget.active:
        if explicit is None:
            if default is None:
                raise UsageError(f"give {flag} or a fidelity budget (--max-drop, --min-agreement, --max-class-drop)")
            explicit = default
        ctx.entry[what] = explicit
        return build(explicit)
    if explicit is not None:
        given = ", ".join("--" + k.replace("_", "-") for k in budget.flags())
        raise UsageError(f"{flag} {explicit} and {given} contradict each other: with a budget the pass searches "
                         f"{flag} itself; drop one of them")
    budget.check_usage(["lossy"], ctx.data is not None, ctx.labels is not None)
    if reference_scores(ctx).shape[1] < 2:
        raise UsageError("a fidelity budget compares class predictions, but the model's output has a single column")
    val, held = split_halves(int(ctx.data.shape[0]), ctx.labels, ctx.seed)
    trials: list[dict] = []
    cache: dict[int, tuple[Network, dict, list]] = {}

    def meets(i: int) -> bool:
        if i not in cache:
            cand = build(levels[i])
            metrics = evaluate(cand, ctx, val)
            cache[i] = (cand, metrics, budget.violations(metrics))
            trials.append({what: levels[i], "meets": not cache[i][2], "validation": summary_line(metrics)})
        return not cache[i][2]

    if not meets(0):
        raise BudgetNotMet(f"even the weakest setting {flag} {levels[0]} breaks the budget on the validation half "
                           f"({'; '.join(cache[0][2])}); nothing written")
    lo, hi = 0, len(levels)  # invariant: levels[lo] meets; levels[hi:] are known (or assumed) to fail
    if meets(len(levels) - 1):
        lo = len(levels) - 1
    else:
        hi = len(levels) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if meets(mid):
                lo = mid
            else:
                hi = mid
    chosen, val_metrics, _ = cache[lo]
    held_metrics = evaluate(chosen, ctx, held)
    held_violations = budget.violations(held_metrics)
    ctx.entry[what] = levels[lo]
    ctx.entry["budget"] = {
        "flags": budget.flags(),
        "level": levels[lo],
        "split": {"validation": int(val.size), "held_out": int(held.size), "seed": ctx.seed,
                  "stratified": ctx.labels is not None},
        "validation": _brief(val_metrics),
        "held_out": _brief(held_metrics),
        "held_out_meets": not held_violations,
        "held_out_violations": held_violations,
        "search": trials,
    }
    return chosen


def strength_levels(start: float, stop: float, step: float) -> list[float]:
    """Evenly spaced levels rounded to 6 digits (so reports show 0.85, not 0.8500000000000001)."""
    count = int(round((stop - start) / step)) + 1
    return [round(start + i * step, 6) for i in range(count)]


SCORE_ANALYSES = {"lap": "lookahead", "fisher": "fisher"}
"""``--score`` value -> the analysis whose annotation holds those scores."""


def weight_scores(net: Network, ctx: Context, default_order: Sequence[str] = ("lookahead", "fisher")):
    """The ``WeightScores`` a lossy transform ranks weights by.

    ``--score magnitude|lap|fisher`` picks one explicitly; otherwise the first of ``default_order`` whose
    analysis ran, else ``None`` (the caller falls back to magnitude or to unweighted).  Scores computed on
    another network are refused (ignored with a warning when not asked for by ``--score``), unless this
    one is that network with more weights zeroed (``record_pruning``).
    """
    from passes.analysis.scores import magnitude_scores

    choice = ctx.opt("score")
    if choice is not None and choice not in ("magnitude", *SCORE_ANALYSES):
        raise UsageError(f"--score {choice!r}: expected magnitude, lap or fisher")
    if choice == "magnitude":
        return magnitude_scores(net)
    if choice is not None:
        name = SCORE_ANALYSES[choice]
        if name not in ctx.annotations:
            composite = "lap" if choice == "lap" else "fisher"
            raise UsageError(f"--score {choice} needs the '{name}' analysis before this pass (e.g. -p {composite})")
        candidates = [name]
    else:
        candidates = [n for n in default_order if n in ctx.annotations]
    if not candidates:
        return None
    scores = ctx.annotations[candidates[0]]
    if not (scores.matches(net) or _pruned_from(net, scores.fingerprint, ctx)):
        if choice is None:
            ctx.warn(f"the '{candidates[0]}' scores describe the network before a later transform changed "
                     f"it; this pass does not use them (run '{candidates[0]}' right before it)")
            return None
        raise UsageError(f"the '{candidates[0]}' scores were computed on a network that a later transform changed; "
                         f"run '{candidates[0]}' right before this pass")
    return scores


LINEAGE_KEY = "pruned_from"
"""``ctx.extra`` key: fingerprint of a pruned network -> fingerprint of the network it was pruned from."""


def record_pruning(ctx: Context, parent: Network, child: Network) -> None:
    """Note that ``child`` is ``parent`` with some weights zeroed (same shapes, same neurons), so scores
    computed on ``parent`` still describe every weight of ``child`` (``-p fisher,prune,quantize``)."""
    if child is not parent:
        ctx.extra.setdefault(LINEAGE_KEY, {})[child.fingerprint()] = parent.fingerprint()


def _pruned_from(net: Network, fingerprint: str, ctx: Context) -> bool:
    lineage = ctx.extra.get(LINEAGE_KEY, {})
    current = net.fingerprint()
    while current in lineage:
        current = lineage[current]
        if current == fingerprint:
            return True
    return False
