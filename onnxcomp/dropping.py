"""Removing whole hidden neurons (the ``drop`` pass's machinery): Dense_k(n) → Dense_k(n − m), Dense_{k+1} readjusted.

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

Each hidden layer keeps at least one neuron.  Strength (option ``drop``): a fraction ``0 < f < 1`` of
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
from .dependence import Dependence, affine_predictor
from .errors import UsageError
from .ir import Network

SOURCES = ("auto", "dependence", "fisher", "lap", "magnitude")
ANALYSIS_OF = {"dependence": "dependence", "fisher": "fisher", "lap": "lookahead"}


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
        raise UsageError(f"--drop {x:g}: expected a fraction 0 < f < 1 or a whole count of neurons")
    count = int(round(x * total)) if x < 1 else int(x)
    if count > cap:
        raise UsageError(f"--drop {x:g}: at most {cap} of the {total} hidden neurons can go (each layer keeps one)")
    return count


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


def ranking(net: Network, source: str, dep: Dependence | None, scores: dict) -> tuple[list[Candidate], str]:
    """All droppable hidden neurons, lossless ones first, in the order they would be dropped, and the score
    method used.  ``source`` is the ``--score`` value (``auto`` resolved by the caller's annotations),
    ``dep`` the ``dependence`` annotation when it describes ``net``, ``scores`` maps ``fisher``/``lap`` to
    their annotations (or ``None``)."""
    if source == "auto":
        source = "dependence" if dep is not None else next(
            (s for s in ("fisher", "lap") if scores.get(s) is not None), "magnitude")
    if source == "dependence" and dep is None:
        raise UsageError("--score dependence needs the 'dependence' analysis before this pass (e.g. -p lre)")
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
        method, neurons = neuron_scores(source, scores.get(source), net)
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
    return ordered, method


def drop_neurons(net: Network, calib: CalibrationSet, chosen: list[Candidate], dep: Dependence | None = None,
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
                mom = activation_moments(cur, calib, [k])[k]
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


def removals(net: Network, new: Network, order: list[Candidate], dep: Dependence | None) -> list[dict]:
    """Every hidden neuron of ``net`` missing from ``new``, in the original numbering, with the reason."""
    hidden = range(len(net.layers) - 1)
    kept_ids = {k: set(new.layers[k].neuron_ids) for k in hidden}
    kept = {k: {i for i, nid in enumerate(net.layers[k].neuron_ids) if nid in kept_ids[k]} for k in hidden}
    removed = []
    for c in order:
        layer = net.layers[c.k]
        nid = layer.neuron_ids[c.pos]
        if nid not in kept_ids[c.k]:
            why = _why_lossless(layer, dep.layers[c.k], c.pos, dep.samples, kept[c.k]) if c.lossless else c.why
            removed.append({"layer": layer.layer_id, "neuron": int(nid), "why": why, "lossless": c.lossless})
    return removed
