"""``dependence``: linear redundancy of hidden activations (LRE, paper §3.2) · Network -> Dependence.

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
* ``exact``: ``residual_abs <= tol · RMS(layer)`` (``tol`` = ``ctx.opt("dependence_tol", 1e-6)``; float64
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

Samples: the ``--data`` rows (only the validation half when a fidelity budget is active, see
``fitting_rows``) plus, with a domain box, uniform samples and corners of the box (the same kinds
verification uses, drawn with a different seed so that verification stays an independent check).  The
activations are computed in float64 on the IR (numpy), not through onnxruntime: exactness is decided at
the 1e-6 level and float32 activations already differ by ~1e-7 between a neuron and its scaled copy.  An
opaque ONNX prefix (when the chain does not start at the model input) is run with onnxruntime to get the
chain's inputs.  Moments are accumulated batch by batch (Chan's update), so memory does not depend on
the number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import onnx
from onnx import helper

from onnxcomp.errors import InputError, UsageError
from onnxcomp.ir import Network
from onnxcomp.pipeline import ANALYSIS, Context, register
from onnxcomp.verify import CORNERS, SAMPLES

BATCH = 4096
RIDGE = 1e-10
"""Ridge on the correlation matrix: keeps the singular (exactly dependent) case solvable; its effect on a
predictor is ~1e-10 relative, far below the exactness tolerance."""
LSTSQ_RCOND = 1e-12
"""Relative singular-value cut-off of the readjustment least squares (directions below it are collinear)."""
DEFAULT_TOL = 1e-6
SAMPLE_SALT = 4171
"""Salt of the domain samples drawn here, so they differ from the ones verification draws."""
REFRESH = 16
"""Re-invert the kept block every this many greedy removals (and after every exact one) to stop drift."""


# ---- inputs of the chain ------------------------------------------------------------------------------
def _prefix_runner(net: Network, device: str):
    from onnxcomp.reader import COLS
    from onnxcomp.runtime import Runner

    ctx = net.onnx
    if ctx.input_layout == COLS:
        raise InputError(f"{ctx.source}: the chain input '{ctx.chain_input}' is in column layout after an opaque "
                         f"prefix; calibration statistics need rows")
    model = onnx.ModelProto()
    model.CopyFrom(ctx.model)
    if ctx.chain_input not in {o.name for o in model.graph.output}:
        model.graph.output.append(helper.make_tensor_value_info(ctx.chain_input, ctx.dtype, None))
    return Runner.create(model, device, [ctx.chain_input])


def chain_input_batches(net: Network, batches, device: str = "auto") -> Iterator[np.ndarray]:
    """Float64 inputs of the dense chain for batches of model inputs (N, model features).

    Without a prefix they are the model inputs themselves (the reader folded any input normalisation into
    the first layer); with one, onnxruntime computes them.
    """
    from onnxcomp.reader import has_prefix

    runner = _prefix_runner(net, device) if has_prefix(net) else None
    for x in batches:
        x = np.asarray(x, dtype=np.float64)
        if runner is None:
            yield x.reshape(x.shape[0], net.input_size)
        else:
            h = runner.run(x, x.shape[0])[0].astype(np.float64)
            if h.shape[1] != net.input_size:
                raise InputError(f"the model's prefix produced {h.shape[1]} features; the chain reads {net.input_size}")
            yield h


def fitting_rows(ctx: Context) -> np.ndarray | None:
    """The ``--data`` rows statistics may be fitted on: all of them, or only the validation half when a
    fidelity budget is active -- the held-out half must stay unseen for its report to be honest."""
    if ctx.data is None:
        return None
    from onnxcomp.fidelity import Budget, split_halves

    n = int(ctx.data.shape[0])
    if not Budget.from_options(ctx.options).active or n < 2:
        return np.arange(n)
    return split_halves(n, ctx.labels, ctx.seed)[0]


def data_batches(ctx: Context, batch: int = BATCH) -> Iterator[np.ndarray]:
    """Float64 batches of the fitting rows of ``--data`` (see ``fitting_rows``), in row order."""
    rows = fitting_rows(ctx)
    if rows is None:
        return
    contiguous = rows.size == ctx.data.shape[0]
    for start in range(0, rows.size, batch):
        part = ctx.data[start:start + batch] if contiguous else ctx.data[rows[start:start + batch]]
        yield np.asarray(part, dtype=np.float64)


def sample_batches(ctx: Context, salt: int = SAMPLE_SALT, use_box: bool = True) -> Iterator[np.ndarray]:
    """Model-input batches: the fitting data rows, then (with a box) uniform samples and corners, reproducibly."""
    yield from data_batches(ctx)
    if ctx.box is None or not use_box:
        return
    rng = ctx.rng(salt)
    remaining = int(ctx.opt("samples", SAMPLES))
    while remaining > 0:
        n = min(BATCH, remaining)
        yield ctx.box.sample(n, rng)
        remaining -= n
    corners = ctx.box.corners(int(ctx.opt("corners", CORNERS)), rng)
    for start in range(0, corners.shape[0], BATCH):
        yield corners[start:start + BATCH]


def sample_sources(ctx: Context) -> dict:
    rows = fitting_rows(ctx)
    n_data = 0 if rows is None else int(rows.size)
    if ctx.box is None:
        return {"data": n_data, "uniform": 0, "corners": 0}
    n_corners = len(ctx.box.corners(int(ctx.opt("corners", CORNERS)), ctx.rng(SAMPLE_SALT)))
    return {"data": n_data, "uniform": int(ctx.opt("samples", SAMPLES)), "corners": n_corners}


def hidden_activations(net: Network, h: np.ndarray, upto: int | None = None) -> list[np.ndarray]:
    """Post-activations of the hidden layers 0..upto (all hidden layers by default) for chain inputs ``h``."""
    last = len(net.layers) - 2 if upto is None else upto
    out = []
    for layer in net.layers[: last + 1]:
        h = layer.apply(h)
        out.append(h)
    return out


# ---- streaming moments ----------------------------------------------------------------------------------
@dataclass
class Moments:
    """Mean and centred second moment of a stream of vectors, merged batch by batch (Chan et al.)."""

    width: int
    count: int = 0
    mean: np.ndarray = None
    m2: np.ndarray = None

    def __post_init__(self) -> None:
        if self.mean is None:
            self.mean = np.zeros(self.width)
        if self.m2 is None:
            self.m2 = np.zeros((self.width, self.width))

    def update(self, z: np.ndarray) -> None:
        nb = z.shape[0]
        if nb == 0:
            return
        mb = z.mean(axis=0)
        zc = z - mb
        delta = mb - self.mean
        total = self.count + nb
        self.m2 += zc.T @ zc + np.outer(delta, delta) * (self.count * nb / total)
        self.mean = self.mean + delta * (nb / total)
        self.count = total

    @property
    def cov(self) -> np.ndarray:
        return self.m2 / max(self.count, 1)

    @property
    def second(self) -> np.ndarray:
        """E[z_l²] per neuron."""
        return np.diag(self.cov) + self.mean ** 2


def activation_moments(net: Network, ctx: Context, layers: list[int] | None = None, salt: int = SAMPLE_SALT) -> dict:
    """``{k: Moments}`` of the post-activations of hidden layers ``layers`` over the calibration samples."""
    if ctx.data is None and ctx.box is None:
        raise UsageError("needs --data (calibration samples) or --domain")
    wanted = list(range(len(net.layers) - 1)) if layers is None else sorted(layers)
    moments = {k: Moments(net.layers[k].n_out) for k in wanted}
    if not wanted:
        return moments
    for h in chain_input_batches(net, sample_batches(ctx, salt), ctx.device):
        acts = hidden_activations(net, h, wanted[-1])
        for k in wanted:
            moments[k].update(acts[k])
    return moments


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

    @property
    def exact_neurons(self) -> list[int]:
        """Positions removable together losslessly (the exact prefix of the elimination order)."""
        return [int(i) for i in self.order[: self.n_exact]]


@dataclass
class Dependence:
    """LRE analysis of every hidden layer (``layers[k]`` describes ``net.layers[k]``)."""

    layers: list
    samples: int
    sources: dict = field(default_factory=dict)
    tol: float = DEFAULT_TOL
    fingerprint: str = ""

    def matches(self, net: Network) -> bool:
        return self.fingerprint == net.fingerprint()

    def summary(self) -> list[dict]:
        return [
            {"layer": d.layer_id, "width": len(d.neuron_ids), "exact": int(np.sum(d.exact)), "removable": d.n_exact,
             "proved": int(sum(1 for p in d.proof if p)),
             "median_residual_rel": float(np.median(d.residual_rel)) if d.residual_rel.size else 0.0}
            for d in self.layers
        ]


# ---- structural facts (hold for every input) ----------------------------------------------------------------
def structural_proofs(net: Network, k: int, rel_tol: float = 1e-12) -> tuple[list[str], list[list[int]]]:
    """Per neuron of hidden layer k: a reason it is removable on every input (or ''), and its twins.

    Twins are the other neurons whose (incoming weights, bias) are a positive multiple of its own:
    ``relu(a·y) = a·relu(y)`` for ``a > 0``, so any one of them reproduces the others exactly.  "Multiple"
    is checked as cosine >= 1 − 1e-12 (rows equal up to ~1e-6 relative: float32 storage rounding passes,
    a genuinely different neuron does not).
    """
    layer, nxt = net.layers[k], net.layers[k + 1]
    rows = np.hstack([layer.weight, layer.bias[:, None]])
    norms = np.linalg.norm(rows, axis=1)
    incoming = np.linalg.norm(layer.weight, axis=1)
    outgoing = np.linalg.norm(nxt.weight, axis=0)
    ids = layer.neuron_ids
    proofs, twins = [""] * layer.n_out, [[] for _ in range(layer.n_out)]
    unit = np.divide(rows, norms[:, None], out=np.zeros_like(rows), where=norms[:, None] > 0)
    cos = unit @ unit.T
    for l in range(layer.n_out):
        twins[l] = [int(m) for m in np.flatnonzero(cos[l] >= 1.0 - rel_tol) if m != l and incoming[m] > 0]
        if outgoing[l] == 0.0:
            proofs[l] = "no outgoing weights"
        elif incoming[l] == 0.0:
            value = max(layer.bias[l], 0.0) if layer.is_relu else layer.bias[l]
            what = "zero neuron" if value == 0.0 else f"constant {value:.6g}"
            proofs[l] = f"{what} (no incoming weights)"
        elif twins[l]:
            m = twins[l][0]
            proofs[l] = f"duplicate of neuron {ids[m]} (x{norms[l] / norms[m]:.6g})"
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


def analyse_layers(net: Network, ctx: Context, moments: dict, tol: float) -> list[LayerDependence]:
    """One-shot residuals, greedy order and exactness of every hidden layer, from ``moments``."""
    plans = {}
    for k, mom in moments.items():
        layer, nxt = net.layers[k], net.layers[k + 1]
        cov, mean = mom.cov, mom.mean
        d = layer.n_out
        outgoing = np.linalg.norm(nxt.weight, axis=0)
        var = np.diag(cov)
        # one-shot predictors: each neuron from all the others
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
    sq = {k: np.zeros(2 * net.layers[k].n_out) for k in moments}
    count = 0
    if plans:
        for h in chain_input_batches(net, sample_batches(ctx), ctx.device):
            acts = hidden_activations(net, h, max(plans))
            for k, (mean, pred, _, _) in plans.items():
                e = (acts[k] - mean) @ pred
                sq[k] += np.einsum("ij,ij->j", e, e)
            count += h.shape[0]
    result = []
    for k, (mean, pred, order, outgoing) in plans.items():
        layer, nxt = net.layers[k], net.layers[k + 1]
        mom = moments[k]
        d = layer.n_out
        res = np.sqrt(sq[k] / max(count, 1))
        rms = np.sqrt(mom.second)
        scale = float(np.sqrt(np.mean(mom.second))) if d else 0.0
        residual_abs = res[:d]
        residual_rel = np.divide(residual_abs, rms, out=np.zeros(d), where=rms > 0)
        exact = (residual_abs <= tol * scale) | (outgoing == 0.0)
        order_arr = np.asarray(order, dtype=int)
        order_res = res[d:][: len(order)]
        order_cost = order_res * outgoing[order_arr]
        y_second = np.einsum("ij,jk,ik->i", nxt.weight, mom.cov, nxt.weight) + (nxt.weight @ mom.mean + nxt.bias) ** 2
        next_scale = float(np.sqrt(np.mean(y_second)))
        # lossless prefix: removing all of it changes the next layer's input by at most tol of its RMS
        # (triangle inequality over the per-neuron changes)
        ok = np.cumsum(order_cost) <= tol * next_scale
        n_exact = int(np.argmin(ok)) if not ok.all() else len(order)
        cost_rel = order_cost / next_scale if next_scale > 0 else order_cost
        proofs, twins = structural_proofs(net, k)
        result.append(LayerDependence(
            layer=k, layer_id=layer.layer_id, neuron_ids=layer.neuron_ids, rms=rms, residual_abs=residual_abs,
            residual_rel=residual_rel, exact=exact, proof=proofs, twins=twins, outgoing=outgoing,
            order=order_arr, order_residual=order_res, order_cost=order_cost, order_cost_rel=cost_rel,
            n_exact=n_exact, scale=scale, next_scale=next_scale, mean=mom.mean, cov=mom.cov,
        ))
    return result


@register("dependence", ANALYSIS, "linear dependence of hidden activations (LRE): residual per neuron, exact flags",
          paper="LRE-AMC §3.2")
def run(net: Network, ctx: Context) -> Dependence:
    tol = float(ctx.opt("dependence_tol", DEFAULT_TOL))
    if not tol >= 0.0:
        raise UsageError(f"dependence_tol {tol}: expected a non-negative number")
    moments = activation_moments(net, ctx)
    samples = next(iter(moments.values())).count if moments else 0
    dep = Dependence(analyse_layers(net, ctx, moments, tol), samples, sample_sources(ctx), tol, net.fingerprint())
    ctx.entry["samples"] = samples
    ctx.entry["sources"] = dep.sources
    ctx.entry["layers"] = dep.summary()
    n_exact = sum(d.n_exact for d in dep.layers)
    n_hidden = sum(len(d.neuron_ids) for d in dep.layers)
    ctx.entry["message"] = (f"{n_exact} of {n_hidden} hidden neurons exactly linearly dependent on {samples} samples "
                            f"({sum(1 for d in dep.layers for p in d.proof if p)} proved for every input)")
    return dep
