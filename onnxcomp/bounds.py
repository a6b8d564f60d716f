"""Sound pre-activation bounds of a ReLU network over input boxes.

Two propagations, both vectorised over a batch of boxes (the input-splitting search reuses them):

* interval arithmetic (IBP): ``y in [W+ l + W- u + b, W+ u + W- l + b]``;
* a linear relaxation with back-substitution (DeepPoly / CROWN): each ReLU with bounds ``l < 0 < u``
  is enclosed between ``a*y`` (``a`` = 1 if ``u >= -l`` else 0) and ``u (y - l) / (u - l)``, and every
  layer's pre-activation is bounded by substituting these linear bounds back to the input box.

The final bound of every neuron is the intersection of the two.  A neuron with ``upper <= 0`` is proven
stably inactive, ``lower >= 0`` stably active.

Outward rounding: numpy has no directed rounding, so every bound is widened by a margin that dominates
float64 error.  Each computed value is a sum of terms no larger in magnitude than the entries of the
absolute-value forward pass ``R_k = |W_k| R_{k-1} + |b_k|`` (``R_0 = max(|lo|, |hi|)``; ReLU slopes are in
[0, 1]), and the rounding error of such sums is below ``n * 2^-53 * R`` for ``n`` terms.  We widen by
``1e-9 * R_k + 1e-12``, orders of magnitude above that, so float error can never turn an unstable
neuron into a "proven" stable one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ir import Network

REL_MARGIN = 1e-9
ABS_MARGIN = 1e-12


@dataclass
class Bounds:
    """Pre-activation bounds of every layer: ``lower[k]``, ``upper[k]`` of shape (B, n_k).

    ``coef[k]`` and ``const[k]`` (only when asked for) are the linear bounds themselves, shapes
    (B, 2 n_k, n0) and (B, 2 n_k): rows ``[:n_k]`` give ``y <= coef x + const``, rows ``[n_k:]`` give
    ``-y <= coef x + const`` for every ``x`` of the box (before widening and intersection with IBP).
    """

    lower: list
    upper: list
    coef: list | None = None
    const: list | None = None


def magnitudes(net: Network, lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:
    """``R_k``: bounds on the magnitude of every partial sum computed for layer k (for margins)."""
    r = np.maximum(np.abs(lo), np.abs(hi))
    out = []
    for layer in net.layers:
        r = r @ np.abs(layer.weight).T + np.abs(layer.bias)
        out.append(r)
    return out


def _widen(lo: np.ndarray, hi: np.ndarray, mag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    margin = REL_MARGIN * mag + ABS_MARGIN
    return lo - margin, hi + margin


def interval_bounds(net: Network, lo: np.ndarray, hi: np.ndarray) -> Bounds:
    """IBP bounds for a batch of boxes ``lo``, ``hi`` of shape (B, n0)."""
    lo = np.atleast_2d(np.asarray(lo, dtype=np.float64))
    hi = np.atleast_2d(np.asarray(hi, dtype=np.float64))
    mags = magnitudes(net, lo, hi)
    lows, ups = [], []
    a_lo, a_hi = lo, hi
    for k, layer in enumerate(net.layers):
        wp, wn = np.maximum(layer.weight, 0), np.minimum(layer.weight, 0)
        y_lo = a_lo @ wp.T + a_hi @ wn.T + layer.bias
        y_hi = a_hi @ wp.T + a_lo @ wn.T + layer.bias
        y_lo, y_hi = _widen(y_lo, y_hi, mags[k])
        lows.append(y_lo)
        ups.append(y_hi)
        if layer.is_relu:
            a_lo, a_hi = np.maximum(y_lo, 0), np.maximum(y_hi, 0)
        else:
            a_lo, a_hi = y_lo, y_hi
    return Bounds(lows, ups)


def _relaxation(l: np.ndarray, u: np.ndarray):
    """Slopes/intercepts of the linear ReLU bounds: lower ``sl*y``, upper ``su*y + tu``."""
    active = l >= 0
    inactive = u <= 0
    unstable = ~active & ~inactive
    denom = np.where(unstable, u - l, 1.0)
    su = np.where(active, 1.0, np.where(unstable, u / denom, 0.0))
    tu = np.where(unstable, -u * l / denom, 0.0)
    sl = np.where(active, 1.0, np.where(unstable, (u >= -l).astype(np.float64), 0.0))
    return sl, su, tu


def crown_bounds(net: Network, lo: np.ndarray, hi: np.ndarray, upto: int | None = None,
                 with_coef: bool = False) -> Bounds:
    """Back-substitution bounds (intersected with IBP) for a batch of boxes (B, n0).

    ``upto`` limits the computation to the first ``upto`` layers (all by default); ``with_coef`` also
    returns the input coefficients of the linear bounds (used to choose which input to split).
    """
    lo = np.atleast_2d(np.asarray(lo, dtype=np.float64))
    hi = np.atleast_2d(np.asarray(hi, dtype=np.float64))
    ibp = interval_bounds(net, lo, hi)
    mags = magnitudes(net, lo, hi)
    layers = net.layers if upto is None else net.layers[:upto]
    lows: list[np.ndarray] = []
    ups: list[np.ndarray] = []
    relax: list[tuple] = []
    coefs: list[np.ndarray] = []
    consts: list[np.ndarray] = []
    centre, radius = (hi + lo) / 2.0, (hi - lo) / 2.0
    for k, layer in enumerate(layers):
        if k == 0:
            y_lo, y_hi = ibp.lower[0], ibp.upper[0]
            if with_coef:
                coefs.append(np.broadcast_to(np.concatenate([layer.weight, -layer.weight])[None], (lo.shape[0], 2 * layer.n_out, lo.shape[1])))
                consts.append(np.broadcast_to(np.concatenate([layer.bias, -layer.bias])[None], (lo.shape[0], 2 * layer.n_out)))
        else:
            y_lo, y_hi, a, c = _back_substitute(net, k, relax, centre, radius)
            if with_coef:
                coefs.append(a)
                consts.append(c)
            y_lo, y_hi = _widen(y_lo, y_hi, mags[k])
            y_lo = np.maximum(y_lo, ibp.lower[k])
            y_hi = np.minimum(y_hi, ibp.upper[k])
        lows.append(y_lo)
        ups.append(y_hi)
        if layer.is_relu:
            relax.append(_relaxation(y_lo, y_hi))
        else:
            ones = np.ones_like(y_lo)
            relax.append((ones, ones, np.zeros_like(y_lo)))
    return Bounds(lows, ups, coefs if with_coef else None, consts if with_coef else None)


def _back_substitute(net: Network, k: int, relax: list, centre: np.ndarray, radius: np.ndarray):
    """Lower and upper bounds of layer k's pre-activation via the relaxations of layers < k (and the
    input coefficients of the bounding linear functions).

    Both are computed as upper bounds: of ``y`` (rows ``[:n]``) and of ``-y`` (rows ``[n:]``), so one
    rule serves both: a positive coefficient takes a ReLU's upper relaxation, a negative one its lower.
    """
    layer = net.layers[k]
    n = layer.n_out
    a = np.concatenate([layer.weight, -layer.weight])[None, :, :]  # (1 or B, 2n, n_j)
    c = np.concatenate([layer.bias, -layer.bias])[None, :]
    batch = centre.shape[0]
    for j in range(k - 1, -1, -1):
        sl, su, tu = relax[j]  # each (B, n_j)
        pos = np.maximum(a, 0.0)
        c = c + np.matmul(pos, tu[:, :, None])[:, :, 0]
        a = a * sl[:, None, :] + pos * (su - sl)[:, None, :]
        w, b = net.layers[j].weight, net.layers[j].bias
        flat = a.reshape(-1, a.shape[2])  # one large GEMM instead of B small ones
        c = c + (flat @ b).reshape(batch, -1)
        a = (flat @ w).reshape(batch, -1, w.shape[1])
    upper = np.matmul(a, centre[:, :, None])[:, :, 0] + np.matmul(np.abs(a), radius[:, :, None])[:, :, 0] + c
    return -upper[:, n:], upper[:, :n], a, c


def prove(net: Network, bounds: Bounds, row: int = 0) -> tuple[list, list]:
    """(proven_inactive, proven_active) masks per layer from the bounds of box ``row``."""
    inactive, active = [], []
    for k, layer in enumerate(net.layers):
        if layer.is_relu:
            inactive.append(bounds.upper[k][row] <= 0)
            active.append(bounds.lower[k][row] >= 0)
        else:
            inactive.append(np.zeros(layer.n_out, dtype=bool))
            active.append(np.zeros(layer.n_out, dtype=bool))
    return inactive, active


def row_scales(net: Network, bounds: Bounds, lo: np.ndarray, hi: np.ndarray, row: int = 0) -> list[np.ndarray]:
    """Per neuron, the magnitude of the terms its pre-activation sums, ``|W_k| max|x_{k-1}| + |b_k|``, with
    ``|x_{k-1}|`` bounded by the previous layer's computed bounds (the box for the first layer).  Unlike
    ``magnitudes`` this does not compound over depth: it is the scale of one MILP row."""
    prev = np.maximum(np.abs(np.asarray(lo, dtype=np.float64)), np.abs(np.asarray(hi, dtype=np.float64))).reshape(-1)
    out = []
    for k, layer in enumerate(net.layers):
        out.append(np.abs(layer.weight) @ prev + np.abs(layer.bias))
        l, u = bounds.lower[k][row], bounds.upper[k][row]
        if layer.is_relu:
            l, u = np.maximum(l, 0.0), np.maximum(u, 0.0)
        prev = np.maximum(np.abs(l), np.abs(u))
    return out

