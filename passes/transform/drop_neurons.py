"""``drop``: remove whole hidden neurons · Dense_k(n) → Dense_k(n − m), Dense_{k+1} readjusted.

Removing the set ``J`` of neurons of hidden layer ``k`` (keeping ``H``) deletes their rows of ``W_k, b_k``
and replaces their contribution to the next layer by its best affine prediction from the kept neurons,
``z_J ≈ U z_H + c`` (least squares on the calibration activations; the LRE transformation T of paper §3.3):

    W'_{k+1} = W_{k+1}[:, H] + W_{k+1}[:, J] U,      b'_{k+1} = b_{k+1} + W_{k+1}[:, J] c

so the next layer's input changes as little as a linear map allows.  For neurons ``dependence`` found
exactly dependent (duplicates, positive multiples, zero or constant neurons, exact affine combinations)
the prediction is exact and the removal changes nothing but float rounding.

Which neurons, in which order: one fixed ranking of all hidden neurons, so that dropping more always
drops a superset (what a budget search needs).  The lossless neurons of ``dependence`` (the exact prefix of
its greedy order) always come first; the rest follow the score ``ctx.opt("score", "auto")``:

* ``dependence`` -- LRE's greedy order, by how much each removal changes the next layer's input relative
  to that input's RMS (comparable across layers);
* ``fisher`` -- the Fisher gate saliency of each neuron (already in units of the output distortion);
* ``lap`` / ``magnitude`` -- the lookahead / magnitude neuron score divided by its layer's mean, since those
  scores are in the units of each layer's own weights and would not compare across layers otherwise;
* ``auto`` -- ``dependence`` when it ran, else ``fisher``, else ``lap``, else ``magnitude``.

Each hidden layer keeps at least one neuron.  Strength (``ctx.opt("drop")``): a fraction ``0 < f < 1`` of
the hidden neurons or a count ``>= 1``; with a fidelity budget the strongest count meeting it is searched
(``lossy.apply_with_budget``); with neither, only the lossless neurons are dropped.  Layers are readjusted
first to last, each on the activations of the network as already changed; the statistics are fitted on
the data rows (only the validation half under a budget) plus domain samples, like ``dependence``.  New
layers keep the ``neuron_ids`` of their survivors, and ``ctx.entry["removed"]`` lists every removed neuron
in the original numbering with the reason (``ctx.entry["all_lossless"]`` says whether every removal was).
The moment and least-squares helpers are shared with ``passes.analysis.dependence`` (imported as library
functions); ``drop`` reads that analysis' annotation but never runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from onnxcomp.errors import UsageError
from onnxcomp.ir import Network
from onnxcomp.pipeline import TRANSFORM, Context, register
from passes.analysis.dependence import Dependence, activation_moments, affine_predictor

from .lossy import apply_with_budget

SOURCES = ("auto", "dependence", "fisher", "lap", "magnitude")
ANNOTATION = {"dependence": "dependence", "fisher": "fisher", "lap": "lookahead"}


@dataclass(frozen=True)
class Candidate:
    """One hidden neuron in the drop ranking: layer index ``k``, position ``pos`` in the input network."""

    k: int
    pos: int
    key: float
    lossless: bool
    why: str


def parse_drop(value, total: int, cap: int) -> int:
    """``--drop`` as a number of neurons: a fraction of ``total`` hidden neurons, or a count."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--drop {value!r}: expected a fraction 0 < f < 1 or a count of neurons") from None
    if not np.isfinite(x) or x < 0 or (x >= 1 and x != int(x)):
        raise UsageError(f"--drop {value}: expected a fraction 0 < f < 1 or a whole count of neurons")
    count = int(round(x * total)) if x < 1 else int(x)
    if count > cap:
        raise UsageError(f"--drop {value}: at most {cap} of the {total} hidden neurons can go (each layer keeps one)")
    return count


def _dependence(net: Network, ctx: Context, explicit: bool) -> Dependence | None:
    dep = ctx.annotations.get("dependence")
    if dep is None:
        if explicit:
            raise UsageError("--score dependence needs the 'dependence' analysis before this pass (e.g. -p lre)")
        return None
    if not dep.matches(net):
        msg = "the 'dependence' analysis was computed on a network a later transform changed"
        if explicit:
            raise UsageError(msg + "; run it right before 'drop'")
        ctx.warn(msg + "; drop ignores it")
        return None
    return dep


def _neuron_scores(net: Network, ctx: Context, source: str):
    """(method, per-layer neuron scores) for a weight-score source, refusing scores of another network."""
    from passes.analysis.scores import magnitude_scores

    if source == "magnitude":
        return "magnitude", magnitude_scores(net).neurons
    name = ANNOTATION[source]
    scores = ctx.annotations.get(name)
    if scores is None:
        raise UsageError(f"--score {source} needs the '{name}' analysis before this pass")
    if not scores.matches(net) or scores.neurons is None:
        raise UsageError(f"the '{name}' scores belong to a network a later transform changed; "
                         f"run '{name}' right before 'drop'")
    return scores.method, scores.neurons


def _why_lossless(layer, d, pos: int, samples: int, kept: set) -> str:
    """Why removing lossless neuron ``pos`` of ``layer`` (analysed in ``d``) changes nothing, given the
    positions ``kept`` in the final network (a duplicate is explained by a twin that stayed)."""
    twin = next((m for m in d.twins[pos] if m in kept), None)
    if twin is not None:
        rows = np.hstack([layer.weight, layer.bias[:, None]])
        scale = np.linalg.norm(rows[pos]) / np.linalg.norm(rows[twin])
        return f"duplicate of neuron {layer.neuron_ids[twin]} (x{scale:.6g}); removal is exact on every input"
    if d.proof[pos] and not d.twins[pos]:
        return f"{d.proof[pos]}; removal is exact on every input"
    if d.rms[pos] == 0.0:
        return f"zero (never active) on all {samples} samples"
    if d.cov[pos, pos] == 0.0:
        return f"constant {d.mean[pos]:.6g} on all {samples} samples (folded into the next bias)"
    if d.exact[pos]:
        return (f"linearly dependent on the other neurons on {samples} samples (residual {d.residual_rel[pos]:.1e} "
                f"of its RMS); removal exact on those samples")
    t = int(np.flatnonzero(d.order == pos)[0])
    return (f"removal changes the next layer's input by {d.order_cost_rel[t]:.1e} of its RMS on {samples} samples "
            f"(outgoing weights {d.outgoing[pos]:.1e})")


def ranking(net: Network, ctx: Context) -> tuple[list[Candidate], str, Dependence | None]:
    """All droppable hidden neurons, lossless ones first, in the order they would be dropped; the score
    method used; and the ``dependence`` annotation when it applies to ``net``."""
    source = str(ctx.opt("score", "auto"))
    if source not in SOURCES:
        raise UsageError(f"--score {source!r} for drop: expected one of {', '.join(SOURCES)}")
    dep = _dependence(net, ctx, explicit=source == "dependence")
    if source == "auto":
        source = "dependence" if dep is not None else next(
            (s for s in ("fisher", "lap") if ANNOTATION[s] in ctx.annotations), "magnitude")
    hidden = range(len(net.layers) - 1)
    cands: list[Candidate] = []
    lossless: set = set()
    if dep is not None:
        for d in dep.layers:
            for pos in d.exact_neurons:
                cands.append(Candidate(d.layer, pos, 0.0, True, ""))  # explained once the kept set is known
                lossless.add((d.layer, pos))
    rest: list[Candidate] = []
    if source == "dependence":
        method = "dependence"
        for d in dep.layers:
            # keys made non-decreasing along each layer's greedy order, so the global sort keeps that order
            keys = np.maximum.accumulate(d.order_cost_rel)
            for t, pos in enumerate(d.order):
                if (d.layer, int(pos)) not in lossless:
                    why = f"LRE: removal changes the next layer's input by {d.order_cost_rel[t]:.2g} of its RMS"
                    rest.append(Candidate(d.layer, int(pos), float(keys[t]), False, why))
    else:
        method, neurons = _neuron_scores(net, ctx, source)
        for k in hidden:
            s = np.asarray(neurons[k], dtype=np.float64)
            norm = s if source == "fisher" else s / max(float(np.mean(s)), np.finfo(float).tiny)
            for pos in np.argsort(norm, kind="stable"):
                if (k, int(pos)) not in lossless:
                    rest.append(Candidate(k, int(pos), float(norm[pos]), False, f"{method} neuron score {s[pos]:.3g}"))
    rest.sort(key=lambda c: c.key)  # stable: ties keep the per-layer order
    left = {k: net.layers[k].n_out for k in hidden}
    ordered = []
    for c in cands + rest:
        if left[c.k] > 1:
            ordered.append(c)
            left[c.k] -= 1
    return ordered, method, dep


def drop_neurons(net: Network, ctx: Context, chosen: list[Candidate], dep: Dependence | None = None,
                 cache: dict | None = None) -> Network:
    """``net`` without the ``chosen`` hidden neurons, each next layer readjusted by least squares."""
    by_layer: dict[int, list[int]] = {}
    for c in chosen:
        by_layer.setdefault(c.k, []).append(c.pos)
    exact_sets = {d.layer: set(d.exact_neurons) for d in dep.layers} if dep is not None else {}
    layers = list(net.layers)
    cur = net
    unchanged_upstream = True  # every drop so far was lossless, so activations equal the analysed ones
    history: tuple = ()
    for k in sorted(by_layer):
        drop = np.array(sorted(by_layer[k]), dtype=int)
        keep = np.setdiff1d(np.arange(layers[k].n_out), drop)
        if unchanged_upstream and dep is not None:
            mean, cov = dep.layers[k].mean, dep.layers[k].cov
        else:
            key = (k, history)
            if cache is not None and key in cache:
                mean, cov = cache[key]
            else:
                mom = activation_moments(cur, ctx, [k])[k]
                mean, cov = mom.mean, mom.cov
                if cache is not None:
                    cache[key] = (mean, cov)
        u, c = affine_predictor(mean, cov, keep, drop)
        layer, nxt = layers[k], layers[k + 1]
        w_j = nxt.weight[:, drop]
        layers[k] = replace(layer, weight=layer.weight[keep], bias=layer.bias[keep],
                            neuron_ids=tuple(layer.neuron_ids[i] for i in keep), quant=None)
        layers[k + 1] = replace(nxt, weight=nxt.weight[:, keep] + w_j @ u, bias=nxt.bias + w_j @ c, quant=None)
        cur = net.with_layers(layers)
        history += ((k, tuple(drop)),)
        if not set(drop.tolist()) <= exact_sets.get(k, set()):
            unchanged_upstream = False
    return cur


@register("drop", TRANSFORM, "remove whole hidden neurons, the next layer readjusted by least squares (LRE)",
          paper="LRE-AMC §3.3", exact=False)
def run(net: Network, ctx: Context) -> Network:
    hidden = list(range(len(net.layers) - 1))
    total = sum(net.layers[k].n_out for k in hidden)
    order, method, dep = ranking(net, ctx)
    n_lossless = sum(1 for c in order if c.lossless)
    cache: dict = {}

    def build(level: int) -> Network:
        return drop_neurons(net, ctx, order[:level], dep, cache) if level else net

    levels = list(range(n_lossless, len(order) + 1))
    new = apply_with_budget(net, ctx, build, levels, "drop", default=n_lossless,
                            parse=lambda v: parse_drop(v, total, len(order)))
    kept_ids = {k: set(new.layers[k].neuron_ids) for k in hidden}
    kept = {k: {i for i, nid in enumerate(net.layers[k].neuron_ids) if nid in kept_ids[k]} for k in hidden}
    removed = []
    for c in order:
        layer = net.layers[c.k]
        nid = layer.neuron_ids[c.pos]
        if nid not in kept_ids[c.k]:
            why = _why_lossless(layer, dep.layers[c.k], c.pos, dep.samples, kept[c.k]) if c.lossless else c.why
            removed.append({"layer": layer.layer_id, "neuron": int(nid), "why": why, "lossless": c.lossless})
    n_exact_removed = sum(1 for r in removed if r["lossless"])
    ctx.entry.update({
        "score": method,
        "widths_before": net.widths,
        "widths_after": new.widths,
        "removed": removed,
        "lossless_removed": n_exact_removed,
        "lossless_available": n_lossless,
        # every removal was lossless: the output equals the input network's up to float rounding
        "all_lossless": n_exact_removed == len(removed),
        "changed": new is not net,
    })
    if not removed:
        hint = "" if dep is not None else " (run 'dependence' first, e.g. -p lre, to find lossless ones)"
        ctx.entry["message"] = f"no neuron dropped{hint}"
    else:
        lossy = len(removed) - n_exact_removed
        ctx.entry["message"] = (f"dropped {len(removed)} of {total} hidden neurons ({n_exact_removed} lossless, "
                                f"{lossy} by {method} score): widths {net.widths} -> {new.widths}")
    return new
