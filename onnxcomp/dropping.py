"""Removing whole hidden units (the ``drop`` pass's machinery): Dense_k(n) → Dense_k(n − m), Dense_{k+1} readjusted;
on a convolutional network also Conv_k(C) → Conv_k(C − m), output channels with their pooling, the next
tunable layer readjusted channel-wise (``onnxcomp.channels`` holds the removal and its algebra).

Removing the set ``J`` of neurons of hidden layer ``k`` (keeping ``H``) deletes their rows of ``W_k, b_k``
and replaces their contribution to the next layer by its best affine prediction from the kept neurons,
``z_J ≈ U z_H + c`` (least squares on the calibration activations; the LRE transformation T of paper §3.3):

    W'_{k+1} = W_{k+1}[:, H] + W_{k+1}[:, J] U,      b'_{k+1} = b_{k+1} + W_{k+1}[:, J] c

so the next layer's input changes as little as a linear map allows.  For neurons ``dependence`` found
exactly dependent (duplicates, positive multiples, zero or constant neurons, exact affine combinations)
the prediction is exact and the removal changes nothing but float rounding.

Which neurons, in which order: one fixed ranking of all hidden neurons, so that dropping more always
drops a superset (what a budget search needs).  The lossless neurons of ``dependence`` (the exact prefix of
its greedy order) always come first; the rest follow the score (option ``score``):

* ``dependence`` -- LRE's greedy order, by how much each removal changes the next layer's input relative
  to that input's RMS (comparable across layers);
* ``fisher`` -- the Fisher gate saliency of each neuron (already in units of the output distortion);
* ``lap`` / ``magnitude`` -- the lookahead / magnitude neuron score divided by its layer's mean, since those
  scores are in the units of each layer's own weights and would not compare across layers otherwise;
* ``auto`` -- ``dependence`` when it ran, else ``fisher``, else ``lap``, else ``magnitude``.

On a CNN the ranking holds dense neurons and conv output channels together (``channels.spans``: every
tunable layer but the last whose units can go), scores normalised per layer as above; a channel's
statistics are over samples × positions of the map the next tunable layer reads.

Each hidden layer keeps at least one neuron (channel).  Strength (option ``drop``): a fraction ``0 < f < 1`` of
the hidden neurons or a count ``>= 1``; with a fidelity budget the strongest count meeting it is searched
(``lossy.apply_with_budget``); with neither, only the lossless neurons are dropped.  Layers are readjusted
first to last, each on the activations of the network as already changed; the statistics are fitted on
the data rows (only the validation half under a budget) plus domain samples, like ``dependence``.  New
layers keep the ``neuron_ids`` of their survivors, and :func:`removals` lists every removed neuron in the
original numbering with the reason (and whether every removal was lossless).
The moment and least-squares helpers are shared with ``onnxcomp.dependence``; ``drop`` reads that
analysis' annotation but never runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .calibration import CalibrationSet, activation_moments
from .channels import Span, remove_units, spans, unit_count, unit_ids, unit_moments
from .conv import is_conv
from .dependence import Dependence, affine_predictor, unit_rows
from .errors import UsageError
from .ir import Network

SOURCES = ("auto", "dependence", "fisher", "lap", "magnitude")
UNITS = ("all", "channels", "neurons")
"""Which units ``drop`` may remove: every hidden unit, conv output channels only (what removes a CNN's
MACs), or dense neurons only."""
ANALYSIS_OF = {"dependence": "dependence", "fisher": "fisher", "lap": "lookahead"}


@dataclass(frozen=True)
class Candidate:
    """One hidden neuron in the drop ranking: layer index ``k``, position ``pos`` in the input network."""

    k: int
    pos: int
    key: float
    lossless: bool
    why: str


def parse_drop(value, total: int, cap: int, noun: str = "neurons") -> int:
    """``--drop`` as a number of units: a fraction of ``total`` hidden units (``noun``), or a count."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--drop {value!r}: expected a fraction 0 < f < 1 or a count of {noun}") from None
    if not np.isfinite(x) or x < 0 or (x >= 1 and x != int(x)):
        raise UsageError(f"--drop {x:g}: expected a fraction 0 < f < 1 or a whole count of {noun}")
    count = int(round(x * total)) if x < 1 else int(x)
    if count > cap:
        raise UsageError(f"--drop {x:g}: at most {cap} of the {total} hidden {noun} can go (each layer keeps one)")
    return count


def droppable(net: Network, units: str = "all") -> list[Span]:
    """The layers whose units ``drop`` may remove, with the layer that reads them (``channels.spans``): on a
    dense network every hidden layer; on a convolutional one also each convolution's output channels
    (``units``: only the convolutions' or only the dense layers', see :data:`UNITS`)."""
    return [sp for sp in spans(net) if units == "all" or sp.conv == (units == "channels")]


def unit_noun(net: Network, units: str = "all") -> str:
    if units == "channels":
        return "conv channels"
    return "units (neurons and channels)" if net.has_conv and units == "all" else "neurons"


def neuron_scores(source: str, scores, net: Network):
    """(method, per-layer neuron scores) of a weight-score ``source``; refuses scores of another network."""
    from .scores import magnitude_scores

    if source == "magnitude":
        return "magnitude", magnitude_scores(net).neurons
    name = ANALYSIS_OF[source]
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
    where = " at every position" if d.unit == "channel" else ""
    if twin is not None:
        rows = unit_rows(layer)
        scale = np.linalg.norm(rows[pos]) / np.linalg.norm(rows[twin])
        return f"duplicate of {d.unit} {unit_ids(layer)[twin]} (x{scale:.6g}); removal is exact on every input"
    if d.proof[pos] and not d.twins[pos]:
        return f"{d.proof[pos]}; removal is exact on every input"
    if d.rms[pos] == 0.0:
        return f"zero (never active) on all {samples} samples{where}"
    if d.cov[pos, pos] == 0.0:
        return f"constant {d.mean[pos]:.6g} on all {samples} samples{where} (folded into the next bias)"
    if d.exact[pos]:
        return (f"linearly dependent on the other {d.unit}s on {samples} samples{where} (residual "
                f"{d.residual_rel[pos]:.1e} of its RMS); removal exact on those samples")
    t = int(np.flatnonzero(d.order == pos)[0])
    return (f"removal changes the next layer's input by {d.order_cost_rel[t]:.1e} of its RMS on {samples} samples "
            f"(outgoing weights {d.outgoing[pos]:.1e})")


def ranking(net: Network, source: str, dep: Dependence | None, scores: dict,
            units: str = "all") -> tuple[list[Candidate], str]:
    """All droppable hidden units (neurons, and output channels of convolutions), lossless ones first, in
    the order they would be dropped, and the score method used.  ``source`` is the ``--score`` value
    (``auto`` resolved by the caller's annotations), ``dep`` the ``dependence`` annotation when it describes
    ``net``, ``scores`` maps ``fisher``/``lap`` to their annotations (or ``None``); ``units`` restricts
    the candidates (:data:`UNITS`)."""
    if source == "auto":
        source = "dependence" if dep is not None else next(
            (s for s in ("fisher", "lap") if scores.get(s) is not None), "magnitude")
    if source == "dependence" and dep is None:
        raise UsageError("--score dependence needs the 'dependence' analysis before this pass (e.g. -p lre)")
    hidden = [sp.k for sp in droppable(net, units)]
    cands: list[Candidate] = []
    lossless: set = set()
    analysed = [d for d in dep.layers if d.layer in hidden] if dep is not None else []
    if dep is not None:
        for d in analysed:
            for pos in d.exact_neurons:
                cands.append(Candidate(d.layer, pos, 0.0, True, ""))  # explained once the kept set is known
                lossless.add((d.layer, pos))
    rest: list[Candidate] = []
    if source == "dependence":
        method = "dependence"
        for d in analysed:
            # keys made non-decreasing along each layer's greedy order, so the global sort keeps that order
            keys = np.maximum.accumulate(d.order_cost_rel)
            for t, pos in enumerate(d.order):
                if (d.layer, int(pos)) not in lossless:
                    why = f"LRE: removal changes the next layer's input by {d.order_cost_rel[t]:.2g} of its RMS"
                    rest.append(Candidate(d.layer, int(pos), float(keys[t]), False, why))
    else:
        method, neurons = neuron_scores(source, scores.get(source), net)
        for k in hidden:
            if neurons[k] is None or len(neurons[k]) != unit_count(net.layers[k]):
                raise UsageError(f"the '{method}' scores have no per-channel entry for layer "
                                 f"{net.layers[k].layer_id}; --score magnitude or dependence can drop its channels")
            s = np.asarray(neurons[k], dtype=np.float64)
            norm = s if source == "fisher" else s / max(float(np.mean(s)), np.finfo(float).tiny)
            what = "channel" if is_conv(net.layers[k]) else "neuron"
            for pos in np.argsort(norm, kind="stable"):
                if (k, int(pos)) not in lossless:
                    rest.append(Candidate(k, int(pos), float(norm[pos]), False, f"{method} {what} score {s[pos]:.3g}"))
    rest.sort(key=lambda c: c.key)  # stable: ties keep the per-layer order
    left = {k: unit_count(net.layers[k]) for k in hidden}
    ordered = []
    for c in cands + rest:
        if left[c.k] > 1:
            ordered.append(c)
            left[c.k] -= 1
    return ordered, method


def aligned(net: Network, chosen: list[Candidate], multiple: int) -> list[Candidate]:
    """``chosen`` with fewer channels dropped from a convolution whose channel count is a multiple of
    ``multiple``, so that its count stays one: onnxruntime runs such convolutions in blocks of 8 or 16
    channels (its NCHWc layout; 16 with AVX-512), a layer of 24 runs as slowly as one of 32, and one of 26
    more slowly still, so removing channels saves time only a block at a time (see ``bench/lossy.py``).
    Per layer the kept count is rounded up to a multiple, and the drops kept are the first ones in
    ``chosen``'s order, so dropping more still drops a superset (what a budget search needs).  Layers of
    other counts (which onnxruntime does not block) and dense neurons are not touched."""
    if multiple <= 1:
        return list(chosen)
    count: dict[int, int] = {}
    for c in chosen:
        count[c.k] = count.get(c.k, 0) + 1
    allowed = {}
    for k, r in count.items():
        layer = net.layers[k]
        if not is_conv(layer):
            allowed[k] = r
            continue
        total = unit_count(layer)
        kept = -(-(total - r) // multiple) * multiple if total % multiple == 0 else total - r
        allowed[k] = total - kept
    out, used = [], {}
    for c in chosen:
        if used.get(c.k, 0) < allowed[c.k]:
            out.append(c)
            used[c.k] = used.get(c.k, 0) + 1
    return out


def _unit_moments(net: Network, calib: CalibrationSet, sp: Span):
    if not net.has_conv:
        mom = activation_moments(net, calib, [sp.k])[sp.k]
    else:
        mom = unit_moments(net, calib, [sp])[sp.k]
    return mom.mean, mom.cov


def drop_neurons(net: Network, calib: CalibrationSet, chosen: list[Candidate], dep: Dependence | None = None,
                 cache: dict | None = None, readjust: bool = True) -> Network:
    """``net`` without the ``chosen`` hidden units, each next tunable layer readjusted by least squares
    (``readjust=False``: plain removal, for comparison)."""
    by_layer: dict[int, list[int]] = {}
    for c in chosen:
        by_layer.setdefault(c.k, []).append(c.pos)
    exact_sets = {d.layer: set(d.exact_neurons) for d in dep.layers} if dep is not None else {}
    by_k = {sp.k: sp for sp in droppable(net)}
    cur = net
    unchanged_upstream = True  # every drop so far was lossless, so activations equal the analysed ones
    history: tuple = ()
    for k in sorted(by_layer):
        sp = by_k[k]
        drop = np.array(sorted(by_layer[k]), dtype=int)
        keep = np.setdiff1d(np.arange(unit_count(net.layers[k])), drop)
        u = c = None
        if readjust:
            if unchanged_upstream and dep is not None and dep.of(k) is not None:
                mean, cov = dep.of(k).mean, dep.of(k).cov
            else:
                key = (k, history)
                if cache is not None and key in cache:
                    mean, cov = cache[key]
                else:
                    mean, cov = _unit_moments(cur, calib, sp)
                    if cache is not None:
                        cache[key] = (mean, cov)
            u, c = affine_predictor(mean, cov, keep, drop)
        mask = np.zeros(unit_count(net.layers[k]), bool)
        mask[keep] = True
        cur = remove_units(cur, sp, mask, u, c)
        history += ((k, tuple(drop)),)
        if not set(drop.tolist()) <= exact_sets.get(k, set()):
            unchanged_upstream = False
    return cur


def removals(net: Network, new: Network, order: list[Candidate], dep: Dependence | None) -> list[dict]:
    """Every hidden unit of ``net`` missing from ``new``, in the original numbering, with the reason (a
    convolution's entries name the ``channel``, a dense layer's the ``neuron``)."""
    hidden = {c.k for c in order}
    kept_ids = {k: set(unit_ids(new.layers[k])) for k in hidden}
    kept = {k: {i for i, nid in enumerate(unit_ids(net.layers[k])) if nid in kept_ids[k]} for k in hidden}
    removed = []
    for c in order:
        layer = net.layers[c.k]
        nid = unit_ids(layer)[c.pos]
        if nid not in kept_ids[c.k]:
            why = _why_lossless(layer, dep.of(c.k), c.pos, dep.samples, kept[c.k]) if c.lossless else c.why
            what = {"channel": int(nid), "unit": f"channel {int(nid)}"} if is_conv(layer) else {"neuron": int(nid)}
            removed.append({"layer": layer.layer_id, **what, "why": why, "lossless": c.lossless})
    return removed
