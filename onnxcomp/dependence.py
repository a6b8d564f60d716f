"""Linear redundancy of hidden activations (LRE, paper §3.2): the ``dependence`` analysis's machinery.

For every hidden layer ``k`` with post-activations ``Z`` (one row per neuron) we ask how well each neuron is
predicted linearly by the other neurons of the same layer on sample inputs::

    A_k = argmin E‖Z − A Z − c‖²   subject to diag(A) = 0

The intercept ``c`` is our one addition to the paper's problem: the next layer has a bias that absorbs it
for free, and without it a constant neuron (an always-active neuron with no incoming weights outputs
``relu(b)`` on every input) could not be predicted.  Regressing with an intercept is regressing the
centred activations, so everything below works on the covariance ``Σ`` and mean ``μ`` of ``Z``.  Row ``l``
of the solution is ``u = Σ⁻¹[:, l] / Σ⁻¹[l, l]`` (paper §3.2); we compute it on the correlation matrix with
a 1e-10 ridge so that the singular case -- exactly the case we are looking for -- stays well defined, and
then measure the residual of that predictor directly on the samples in a second pass (no cancellation
from ``uᵀΣu``), giving per neuron:

* ``residual_abs``: RMS of ``z_l − ẑ_l`` (activation units), ``residual_rel``: that over RMS(``z_l``);
* ``exact``: ``residual_abs <= tol · RMS(layer)`` (``tol``, option ``dependence_tol``, default 1e-6; float64
  arithmetic leaves ~1e-15, so only genuinely dependent neurons pass: duplicates, positive multiples,
  zero and constant neurons, affine combinations of others), or no outgoing weights at all;
* ``proof``: a reason that holds for *every* input, when the weights show one (a positive multiple of another
  neuron's incoming weights and bias, no incoming weights, no outgoing weights); otherwise exactness was only
  observed on the samples, and verification on independent samples is what backs the removal.

The greedy elimination ``order`` is what ``drop`` consumes: it repeatedly removes the neuron whose removal
changes the next layer's input least, ``cost = ‖W_{k+1}[:, l]‖ · residual`` (with least-squares
readjustment the next layer's input changes by ``W_{k+1}[:, l] · (z_l − ẑ_l)``), re-fitting the predictors
among the neurons still kept after every removal (constant neurons and neurons without outgoing weights
go first, so no predictor relies on them).  ``n_exact`` is the length of the lossless prefix of that order:
the summed costs of its removals stay within ``tol`` of the RMS of the next layer's input (each neuron in
it is, up to that, an affine function of the neurons kept; exact dependence leaves ~1e-15).

Samples: a :class:`~onnxcomp.calibration.CalibrationSet` (data rows and domain samples).  The activations
are computed in float64 on the IR (numpy), not through onnxruntime: exactness is decided at the 1e-6 level
and float32 activations already differ by ~1e-7 between a neuron and its scaled copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .calibration import CalibrationSet, activation_moments, chain_input_batches, hidden_activations
from .channels import Span, outgoing_norms, spans, unit_batches, unit_count, unit_ids, unit_moments, unit_view
from .conv import is_conv
from .ir import Network

RIDGE = 1e-10
"""Ridge on the correlation matrix: keeps the singular (exactly dependent) case solvable; its effect on a
predictor is ~1e-10 relative, far below the exactness tolerance."""
LSTSQ_RCOND = 1e-12
"""Relative singular-value cut-off of the readjustment least squares (directions below it are collinear)."""
DEFAULT_TOL = 1e-6
REFRESH = 16
"""Re-invert the kept block every this many greedy removals (and after every exact one) to stop drift."""


# ---- least squares ------------------------------------------------------------------------------------------
def _standardise(cov: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sd = np.sqrt(np.maximum(np.diag(cov)[idx], 0.0))
    r = cov[np.ix_(idx, idx)] / np.outer(sd, sd)
    return r, sd


def affine_predictor(mean: np.ndarray, cov: np.ndarray, keep, drop) -> tuple[np.ndarray, np.ndarray]:
    """Best affine prediction ``z_drop ≈ U z_keep + c`` in the least-squares sense, from the moments.

    This is the LRE transformation T of paper §3.3 for a removed set (for exact dependence the paper's
    composition of the rows of A gives the same map); it is the best linear unbiased predictor, so it
    minimises ``E‖M (z_drop − ẑ_drop)‖²`` for every matrix M, in particular for the next layer's weights.
    Kept neurons with zero variance are constants absorbed by ``c``.
    """
    keep, drop = np.asarray(keep, dtype=int), np.asarray(drop, dtype=int)
    u = np.zeros((drop.size, keep.size))
    var = np.diag(cov)
    live = keep[var[keep] > 0.0]
    if live.size and drop.size:
        r, sd = _standardise(cov, live)
        rhs = cov[np.ix_(live, drop)] / sd[:, None]
        # SVD least squares without a ridge: an exact dependence gets its exact coefficients (a ridge would
        # bias them along the small eigen-directions of the kept neurons' correlation)
        coef = np.linalg.lstsq(r, rhs, rcond=LSTSQ_RCOND)[0] / sd[:, None]
        pos = {n: i for i, n in enumerate(keep)}
        u[:, [pos[n] for n in live]] = coef.T
    c = mean[drop] - u @ mean[keep]
    return u, c


# ---- the annotation -----------------------------------------------------------------------------------------
@dataclass
class LayerDependence:
    """Linear dependence of the neurons of hidden layer ``layer`` (index into ``net.layers``).

    Arrays are indexed by the layer's current neuron position; ``neuron_ids`` maps to original numbering.
    ``proof[l]`` is a reason valid on every input ('' if none), ``twins[l]`` the positions of the neurons
    that are positive multiples of ``l`` (see ``structural_proofs``).  ``order`` is the greedy elimination
    order; ``order_residual`` / ``order_cost`` are the residual (activation units) and the next layer's
    input change at the moment each neuron is eliminated, ``order_cost_rel`` the latter over the RMS of the
    next layer's input (``next_scale``); ``n_exact`` is the lossless prefix length, ``scale`` the layer's
    RMS activation.  ``mean``/``cov`` are the activation moments the predictors were fitted on.
    """

    layer: int
    layer_id: int
    neuron_ids: tuple
    rms: np.ndarray
    residual_abs: np.ndarray
    residual_rel: np.ndarray
    exact: np.ndarray
    proof: list
    twins: list
    outgoing: np.ndarray
    order: np.ndarray
    order_residual: np.ndarray
    order_cost: np.ndarray
    order_cost_rel: np.ndarray
    n_exact: int
    scale: float
    next_scale: float
    mean: np.ndarray
    cov: np.ndarray
    unit: str = "neuron"
    """What a unit is: ``neuron`` (a dense layer), or ``channel`` (a convolution: the arrays are over its
    output channels, the moments over samples × positions of the map the next tunable layer reads, and
    ``neuron_ids`` holds the original channel ids)."""

    @property
    def exact_neurons(self) -> list[int]:
        """Positions removable together losslessly (the exact prefix of the elimination order)."""
        return [int(i) for i in self.order[: self.n_exact]]


@dataclass
class Dependence:
    """LRE analysis of every layer whose units can be removed (``onnxcomp.channels.spans``): on a dense
    network ``layers[k]`` describes ``net.layers[k]``; in general :meth:`of` finds a layer's entry."""

    layers: list
    samples: int
    sources: dict = field(default_factory=dict)
    tol: float = DEFAULT_TOL
    fingerprint: str = ""

    def matches(self, net: Network) -> bool:
        return self.fingerprint == net.fingerprint()

    def of(self, k: int) -> LayerDependence | None:
        """The entry of ``net.layers[k]`` (``None`` when its units were not analysed)."""
        return next((d for d in self.layers if d.layer == k), None)

    def summary(self) -> list[dict]:
        return [
            {"layer": d.layer_id, **({"unit": d.unit} if d.unit != "neuron" else {}), "width": len(d.neuron_ids), "exact": int(np.sum(d.exact)), "removable": d.n_exact,
             "proved": int(sum(1 for p in d.proof if p)),
             "median_residual_rel": float(np.median(d.residual_rel)) if d.residual_rel.size else 0.0}
            for d in self.layers
        ]


# ---- structural facts (hold for every input) ----------------------------------------------------------------
def unit_rows(layer) -> np.ndarray:
    """Each unit's incoming parameters as one row: (weights, bias) of a neuron, (kernel, per-position
    bias) of a convolution's output channel."""
    if is_conv(layer):
        return np.hstack([layer.kernel.reshape(layer.out_channels, -1), layer.unit_bias.reshape(layer.out_channels, -1)])
    return np.hstack([layer.weight, layer.bias[:, None]])


def structural_proofs(net: Network, k: int, rel_tol: float = 1e-12, sp: Span | None = None
                      ) -> tuple[list[str], list[list[int]]]:
    """Per unit of hidden layer k: a reason it is removable on every input (or ''), and its twins.

    Twins are the other units whose (incoming weights, bias) are a positive multiple of its own:
    ``relu(a·y) = a·relu(y)`` for ``a > 0``, so any one of them reproduces the others exactly.  "Multiple"
    is checked as cosine >= 1 − 1e-12 (rows equal up to ~1e-6 relative: float32 storage rounding passes,
    a genuinely different neuron does not).  For a convolution's channels (``sp`` its span) the same holds
    through pooling layers between it and its reader (they commute with positive scaling and keep zero
    maps zero); through a per-channel scaling, whose shift a padded pooling would make position-dependent,
    no structural reason is given and the samples decide.
    """
    sp = sp or Span(k, k + 1, False)
    layer = net.layers[k]
    rows = unit_rows(layer)
    norms = np.linalg.norm(rows, axis=1)
    incoming = np.linalg.norm(rows[:, :-1] if not sp.conv else layer.kernel.reshape(layer.out_channels, -1), axis=1)
    outgoing = outgoing_norms(net, sp)
    ids = unit_ids(layer)
    n = unit_count(layer)
    proofs, twins = [""] * n, [[] for _ in range(n)]
    if sp.conv and any(net.layers[m].op not in ("AveragePool", "MaxPool") for m in range(sp.k + 1, sp.j)):
        return proofs, twins
    what_unit = "channel" if sp.conv else "neuron"
    unit = np.divide(rows, norms[:, None], out=np.zeros_like(rows), where=norms[:, None] > 0)
    cos = unit @ unit.T
    for l in range(n):
        twins[l] = [int(m) for m in np.flatnonzero(cos[l] >= 1.0 - rel_tol) if m != l and incoming[m] > 0]
        if outgoing[l] == 0.0:
            proofs[l] = "no outgoing weights"
        elif incoming[l] == 0.0:
            bias = rows[l, -1] if not sp.conv else layer.unit_bias[l]
            value = np.maximum(bias, 0.0) if layer.is_relu else bias
            if not sp.conv:
                what = "zero neuron" if value == 0.0 else f"constant {value:.6g}"
                proofs[l] = f"{what} (no incoming weights)"
            elif not np.any(value):
                proofs[l] = "zero channel (no incoming weights)"
        elif twins[l]:
            m = twins[l][0]
            proofs[l] = f"duplicate of {what_unit} {ids[m]} (x{norms[l] / norms[m]:.6g})"
    return proofs, twins


# ---- the greedy elimination ----------------------------------------------------------------------------------
def _elimination(cov: np.ndarray, outgoing: np.ndarray, first: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
    """Greedy LRE order: returns (order, predictors G (width × width, column t predicts order[t]), est. cost).

    ``first`` marks neurons eliminated before any other (zero variance or no outgoing weights) so that
    no later predictor relies on them.
    """
    d = cov.shape[0]
    var = np.diag(cov)
    order: list[int] = []
    est = np.zeros(d)
    g = np.zeros((d, d))
    t = 0
    for l in np.flatnonzero(first | (var <= 0.0)):
        order.append(int(l))
        g[l, t] = 1.0
        t += 1
    alive = np.array([i for i in range(d) if i not in set(order)], dtype=int)
    if alive.size == 0:
        return order, g, est
    r, sd = _standardise(cov, alive)

    def invert(idx_local):
        return np.linalg.inv(r[np.ix_(idx_local, idx_local)] + RIDGE * np.eye(idx_local.size))

    local = np.arange(alive.size)
    p = invert(local)
    since = 0
    while local.size:
        diag = np.diag(p)
        # residual variance of the ridge predictor u = P e_l / P_ll under the true R:
        # u'(R + λI)u = 1/P_ll, so u'Ru = 1/P_ll − λ‖u‖² (no ridge bias in the estimate)
        resid_var = 1.0 / diag - RIDGE * np.einsum("ij,ij->j", p, p) / diag ** 2
        resid = np.sqrt(np.maximum(resid_var, 0.0)) * sd[local]  # activation units
        cost = resid * outgoing[alive[local]]
        j = int(np.argmin(cost))
        l_local = local[j]
        l = int(alive[l_local])
        coef = p[:, j] / p[j, j]  # correlation units; coef[j] == 1
        g[alive[local], t] = coef * sd[l_local] / sd[local]
        order.append(l)
        est[t] = cost[j]
        t += 1
        rest = np.delete(np.arange(local.size), j)
        local = local[rest]
        since += 1
        if local.size == 0:
            break
        if since >= REFRESH or resid[j] <= 1e-4 * sd[l_local]:
            p, since = invert(local), 0
        else:
            p = p[np.ix_(rest, rest)] - np.outer(p[rest, j], p[j, rest]) / p[j, j]
    return order, g, est


def _dense_residuals(net: Network, calib: CalibrationSet, plans: dict) -> tuple[dict, dict]:
    """Mean squared residuals of the predictors ``plans`` on the samples of a dense network (the next
    layer's scale comes from the moments: no measured one)."""
    sq = {k: np.zeros(2 * net.layers[k].n_out) for k in plans}
    count = 0
    if plans:
        for h in chain_input_batches(net, calib.batches(), calib.device):
            acts = hidden_activations(net, h, max(plans))
            for k, (mean, pred, _, _) in plans.items():
                e = (acts[k] - mean) @ pred
                sq[k] += np.einsum("ij,ij->j", e, e)
            count += h.shape[0]
    return {k: sq[k] / max(count, 1) for k in plans}, {}


def _unit_residuals(net: Network, calib: CalibrationSet, plans: dict, by_k: dict) -> tuple[dict, dict]:
    """Mean squared residuals (per observation: sample × position) of the predictors ``plans`` over the
    unit views, and per span the RMS of the next tunable layer's pre-activation."""
    sq = {k: np.zeros(2 * unit_count(net.layers[k])) for k in plans}
    y_sq = {k: 0.0 for k in plans}
    count = {k: 0 for k in plans}
    samples = 0
    wanted = [by_k[k] for k in plans]
    for n, out in unit_batches(net, calib, wanted):
        for k, (mean, pred, _, _) in plans.items():
            sp = by_k[k]
            view = unit_view(net, sp, out[sp.read])
            e = (view - mean) @ pred
            sq[k] += np.einsum("ij,ij->j", e, e)
            count[k] += view.shape[0]
            y = net.layers[sp.j].preactivation(out[sp.read])
            y_sq[k] += float(np.sum(np.square(y))) / y.shape[1]
        samples += n
    next_scale = {k: float(np.sqrt(y_sq[k] / max(samples, 1))) for k in plans}
    return {k: sq[k] / max(count[k], 1) for k in plans}, next_scale


def analyse_layers(net: Network, calib: CalibrationSet, moments: dict, tol: float,
                   sps: list[Span] | None = None) -> list[LayerDependence]:
    """One-shot residuals, greedy order and exactness of every layer in ``moments`` (keyed by layer index;
    ``sps`` their spans, dense ``k -> k + 1`` by default), from those moments."""
    by_k = {sp.k: sp for sp in sps} if sps is not None else {k: Span(k, k + 1, False) for k in moments}
    plans = {}
    for k, mom in moments.items():
        cov, mean = mom.cov, mom.mean
        d = cov.shape[0]
        outgoing = outgoing_norms(net, by_k[k])
        var = np.diag(cov)
        # one-shot predictors: each unit from all the others
        one = np.zeros((d, d))
        live = np.flatnonzero(var > 0.0)
        one[np.flatnonzero(var <= 0.0), np.flatnonzero(var <= 0.0)] = 1.0
        if live.size:
            r, sd = _standardise(cov, live)
            p = np.linalg.inv(r + RIDGE * np.eye(live.size))
            one[np.ix_(live, live)] = (p / np.diag(p)[None, :]) * sd[None, :] / sd[:, None]
        order, greedy, _ = _elimination(cov, outgoing, outgoing == 0.0)
        plans[k] = (mean, np.hstack([one, greedy]), order, outgoing)
    # second pass: residuals measured directly on the samples (no cancellation from u'Σu)
    if any(sp.conv for sp in by_k.values()):
        mean_sq, measured_scale = _unit_residuals(net, calib, plans, by_k)
    else:
        mean_sq, measured_scale = _dense_residuals(net, calib, plans)
    result = []
    for k, (mean, pred, order, outgoing) in plans.items():
        layer, sp = net.layers[k], by_k[k]
        nxt = net.layers[sp.j]
        mom = moments[k]
        d = mom.cov.shape[0]
        res = np.sqrt(mean_sq[k])
        rms = np.sqrt(mom.second)
        scale = float(np.sqrt(np.mean(mom.second))) if d else 0.0
        residual_abs = res[:d]
        residual_rel = np.divide(residual_abs, rms, out=np.zeros(d), where=rms > 0)
        exact = (residual_abs <= tol * scale) | (outgoing == 0.0)
        order_arr = np.asarray(order, dtype=int)
        order_res = res[d:][: len(order)]
        order_cost = order_res * outgoing[order_arr]
        if k in measured_scale:
            next_scale = measured_scale[k]
        else:
            y_second = (np.einsum("ij,jk,ik->i", nxt.weight, mom.cov, nxt.weight)
                        + (nxt.weight @ mom.mean + nxt.bias) ** 2)
            next_scale = float(np.sqrt(np.mean(y_second)))
        # lossless prefix: removing all of it changes the next layer's input by at most tol of its RMS
        # (triangle inequality over the per-unit changes)
        ok = np.cumsum(order_cost) <= tol * next_scale
        n_exact = int(np.argmin(ok)) if not ok.all() else len(order)
        cost_rel = order_cost / next_scale if next_scale > 0 else order_cost
        proofs, twins = structural_proofs(net, k, sp=sp)
        result.append(LayerDependence(
            layer=k, layer_id=layer.layer_id, neuron_ids=unit_ids(layer), rms=rms, residual_abs=residual_abs,
            residual_rel=residual_rel, exact=exact, proof=proofs, twins=twins, outgoing=outgoing,
            order=order_arr, order_residual=order_res, order_cost=order_cost, order_cost_rel=cost_rel,
            n_exact=n_exact, scale=scale, next_scale=next_scale, mean=mom.mean, cov=mom.cov,
            unit="channel" if sp.conv else "neuron",
        ))
    return result


def analyse(net: Network, calib: CalibrationSet, tol: float = DEFAULT_TOL) -> Dependence:
    """LRE analysis of every layer of ``net`` whose units can be removed, on the calibration set (a dense
    network: every hidden layer; a convolutional one also each convolution's output channels)."""
    if not net.has_conv:
        moments = activation_moments(net, calib)
        samples = next(iter(moments.values())).count if moments else 0
        return Dependence(analyse_layers(net, calib, moments, tol), samples, calib.sources(), tol, net.fingerprint())
    sps = spans(net)
    moments = unit_moments(net, calib, sps)
    layers = analyse_layers(net, calib, moments, tol, sps)
    first = next((sp for sp in sps if not sp.conv), None) or (sps[0] if sps else None)
    samples = 0
    if first is not None:
        per_sample = 1 if not first.conv else net.layers[first.read].n_out // net.layers[first.read].out_channels
        samples = moments[first.k].count // per_sample
    return Dependence(layers, samples, calib.sources(), tol, net.fingerprint())
