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
        r = r @ layer.weight_abs.T + np.abs(layer.bias)
        out.append(r)
    return out


def _dense(layer) -> np.ndarray:
    """All rows of a layer's linear map as a dense array: the starting coefficients of a back-substitution
    (CROWN's coefficient matrices are dense whatever the layer; a convolution's operator stays sparse)."""
    return layer.rows(np.arange(layer.n_out))


def _widen(lo: np.ndarray, hi: np.ndarray, mag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    margin = REL_MARGIN * mag + ABS_MARGIN
    return lo - margin, hi + margin


def interval_bounds(net: Network, lo: np.ndarray, hi: np.ndarray, clip: tuple | None = None) -> Bounds:
    """IBP bounds for a batch of boxes ``lo``, ``hi`` of shape (B, n0).  ``clip``: see :func:`crown_bounds`."""
    lo = np.atleast_2d(np.asarray(lo, dtype=np.float64))
    hi = np.atleast_2d(np.asarray(hi, dtype=np.float64))
    mags = magnitudes(net, lo, hi)
    lows, ups = [], []
    a_lo, a_hi = lo, hi
    for k, layer in enumerate(net.layers):
        wp, wn = layer.weight_pos, layer.weight_neg
        y_lo = a_lo @ wp.T + a_hi @ wn.T + layer.bias
        y_hi = a_hi @ wp.T + a_lo @ wn.T + layer.bias
        y_lo, y_hi = _widen(y_lo, y_hi, mags[k])
        y_lo, y_hi = _clip(y_lo, y_hi, clip, k)
        lows.append(y_lo)
        ups.append(y_hi)
        if layer.is_relu:
            a_lo, a_hi = np.maximum(y_lo, 0), np.maximum(y_hi, 0)
        else:
            a_lo, a_hi = y_lo, y_hi
    return Bounds(lows, ups)


def _clip(y_lo: np.ndarray, y_hi: np.ndarray, clip: tuple | None, k: int):
    """Intersect layer ``k``'s bounds with the proven ones in ``clip`` = (lower, upper) lists (or None)."""
    if clip is None:
        return y_lo, y_hi
    if clip[0][k] is not None:
        y_lo = np.maximum(y_lo, clip[0][k])
    if clip[1][k] is not None:
        y_hi = np.minimum(y_hi, clip[1][k])
    return y_lo, y_hi


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
                 with_coef: bool = False, clip: tuple | None = None) -> Bounds:
    """Back-substitution bounds (intersected with IBP) for a batch of boxes (B, n0).

    ``upto`` limits the computation to the first ``upto`` layers (all by default); ``with_coef`` also
    returns the input coefficients of the linear bounds (used to choose which input to split).
    ``clip``: ``(lower, upper)``, per layer a 1-D array (or ``None``) of bounds already proven by other
    means (e.g. "no input reaches ``y >= eps``" gives ``upper = eps``); every layer's bounds are
    intersected with them before the layers after it are relaxed.
    """
    lo = np.atleast_2d(np.asarray(lo, dtype=np.float64))
    hi = np.atleast_2d(np.asarray(hi, dtype=np.float64))
    ibp = interval_bounds(net, lo, hi, clip)
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
                coefs.append(np.broadcast_to(np.concatenate([_dense(layer), -_dense(layer)])[None], (lo.shape[0], 2 * layer.n_out, lo.shape[1])))
                consts.append(np.broadcast_to(np.concatenate([layer.bias, -layer.bias])[None], (lo.shape[0], 2 * layer.n_out)))
        else:
            rows = None
            if net.has_conv and not with_coef:
                # tens of thousands of conv units: back-substitute only the ones intervals leave unstable
                # (a stable unit's relaxation is the same whatever its bounds), the others keep IBP's
                open_ = np.flatnonzero(((ibp.lower[k] < 0) & (ibp.upper[k] > 0)).any(axis=0))
                rows = open_ if open_.size < layer.n_out else None
            if rows is not None and rows.size == 0:
                y_lo, y_hi = ibp.lower[k], ibp.upper[k]
            else:
                y_lo, y_hi, a, c = _back_substitute(net, k, relax, centre, radius, rows)
                if with_coef:
                    coefs.append(a)
                    consts.append(c)
                y_lo, y_hi = _widen(y_lo, y_hi, mags[k] if rows is None else mags[k][:, rows])
                if rows is not None:  # the other units keep their interval bounds
                    lo_k, hi_k = ibp.lower[k].copy(), ibp.upper[k].copy()
                    lo_k[:, rows], hi_k[:, rows] = y_lo, y_hi
                    y_lo, y_hi = lo_k, hi_k
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


def _back_substitute(net: Network, k: int, relax: list, centre: np.ndarray, radius: np.ndarray,
                     rows: np.ndarray | None = None):
    """Lower and upper bounds of layer k's pre-activation (only its neurons ``rows``, when given) via the
    relaxations of layers < k (and the input coefficients of the bounding linear functions).

    Both are computed as upper bounds: of ``y`` (rows ``[:n]``) and of ``-y`` (rows ``[n:]``), so one
    rule serves both: a positive coefficient takes a ReLU's upper relaxation, a negative one its lower.
    """
    layer = net.layers[k]
    w_k = _dense(layer) if rows is None else layer.rows(rows)
    bias = layer.bias if rows is None else layer.bias[rows]
    return _back_substitute_rows([l.weight for l in net.layers[:k]], [l.bias for l in net.layers[:k]], w_k, bias,
                                 relax, centre, radius)


def _back_substitute_rows(weights: list, biases: list, w_k, bias: np.ndarray, relax: list, centre: np.ndarray,
                          radius: np.ndarray):
    """:func:`_back_substitute` for the rows ``w_k`` (n, n_{k-1}) and ``bias`` of a layer after the layers
    ``weights``/``biases`` (``k = len(weights)``), relaxed by ``relax[j]`` (each array (B, n_j)) over the
    boxes ``centre`` +- ``radius`` (B, n0)."""
    n = w_k.shape[0]
    a = np.concatenate([w_k, -w_k])[None, :, :]  # (1 or B, 2n, n_j)
    c = np.concatenate([bias, -bias])[None, :]
    batch = centre.shape[0]
    for j in range(len(weights) - 1, -1, -1):
        sl, su, tu = relax[j]  # each (B, n_j)
        pos = np.maximum(a, 0.0)
        c = c + np.matmul(pos, tu[:, :, None])[:, :, 0]
        a = a * sl[:, None, :] + pos * (su - sl)[:, None, :]
        w, b = weights[j], biases[j]
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
        out.append(layer.weight_abs @ prev + np.abs(layer.bias))
        l, u = bounds.lower[k][row], bounds.upper[k][row]
        if layer.is_relu:
            l, u = np.maximum(l, 0.0), np.maximum(u, 0.0)
        prev = np.maximum(np.abs(l), np.abs(u))
    return out



# ---- optimised slopes (alpha-CROWN) -------------------------------------------------------------------
def alpha_crown_bounds(net: Network, lo: np.ndarray, hi: np.ndarray, *, iterations: int = 20, lr: float = 0.1,
                       deadline: float | None = None, lower: list | None = None, upper: list | None = None,
                       upto: int | None = None, start: Bounds | None = None) -> Bounds:
    """CROWN bounds with optimised lower ReLU slopes (alpha-CROWN), for ONE box ``lo``, ``hi`` (n0,) or (1, n0).

    Every unstable ReLU ``l < 0 < u`` of a layer ``j`` before the bounded layer ``k`` is enclosed from below
    by ``alpha * y`` with any ``alpha`` in [0, 1]; which one is used does not affect soundness, only
    tightness.  Layer by layer (first to last), each unstable neuron of layer ``k`` gets its own slopes
    (one set per bounding row, for ``y`` and ``-y``) chosen by projected Adam steps on the analytic
    gradient of its concretised bound; the first iterate is CROWN's choice (``alpha = [u >= -l]``), and
    the best value each row reached is kept.  Every iterate's value is a valid bound, and the kept one is
    widened by the same outward-rounding margin as :func:`crown_bounds` (slopes stay in [0, 1], so that
    margin's magnitude argument holds unchanged), then intersected with interval propagation from the
    improved bounds of the layer below and with the starting bounds.  Later layers are relaxed with the
    improved bounds of earlier ones.

    ``lower``/``upper``: optional sound pre-activation bounds per layer (1-D arrays, e.g. from MILP or LP
    tightening, or ``u = eps`` for a neuron certified never to reach ``y >= eps``) intersected with ours
    before they are used; ``start``: CROWN bounds of this box if the caller has them.  ``deadline``: an
    absolute ``time.monotonic()`` value; when it passes, the remaining layers get their plain CROWN value
    (still sound).  ``upto``: bound only the first ``upto`` layers.  ``iterations=0`` gives CROWN with
    the intermediate bounds given.  The returned ``Bounds`` has arrays of shape (1, n_k).
    """
    import time

    lo = np.asarray(lo, dtype=np.float64).reshape(-1)
    hi = np.asarray(hi, dtype=np.float64).reshape(-1)
    n_layers = len(net.layers) if upto is None else min(int(upto), len(net.layers))
    base = start if start is not None else crown_bounds(net, lo[None, :], hi[None, :], upto=n_layers)
    mags = [m[0] for m in magnitudes(net, lo[None, :], hi[None, :])]
    low = [np.array(base.lower[k][0], dtype=np.float64) for k in range(n_layers)]
    up = [np.array(base.upper[k][0], dtype=np.float64) for k in range(n_layers)]
    if lower is not None:
        for k in range(min(n_layers, len(lower))):
            if lower[k] is not None:
                low[k] = np.maximum(low[k], np.asarray(lower[k], dtype=np.float64).reshape(-1))
    if upper is not None:
        for k in range(min(n_layers, len(upper))):
            if upper[k] is not None:
                up[k] = np.minimum(up[k], np.asarray(upper[k], dtype=np.float64).reshape(-1))
    centre, radius = (hi + lo) / 2.0, (hi - lo) / 2.0
    for k in range(1, n_layers):
        layer = net.layers[k]
        # interval propagation from the (possibly improved) bounds of the layer below
        prev = net.layers[k - 1]
        a_lo, a_hi = (np.maximum(low[k - 1], 0), np.maximum(up[k - 1], 0)) if prev.is_relu else (low[k - 1], up[k - 1])
        wp, wn = layer.weight_pos, layer.weight_neg
        i_lo, i_hi = _widen(wp @ a_lo + wn @ a_hi + layer.bias, wp @ a_hi + wn @ a_lo + layer.bias, mags[k])
        low[k] = np.maximum(low[k], i_lo)
        up[k] = np.minimum(up[k], i_hi)
        relax = [_relaxation(low[j], up[j]) if net.layers[j].is_relu else
                 (np.ones_like(low[j]), np.ones_like(low[j]), np.zeros_like(low[j])) for j in range(k)]
        if layer.is_relu and k < len(net.layers) - 1:
            rows = np.flatnonzero((low[k] < 0) & (up[k] > 0))
        else:
            rows = np.arange(layer.n_out)  # a linear layer: every row, one CROWN pass
        if rows.size == 0:
            continue
        steps = iterations if layer.is_relu and k < len(net.layers) - 1 else 0
        if deadline is not None and time.monotonic() >= deadline:
            steps = 0
        best = _optimise_rows(net, k, rows, low, up, relax, centre, radius, steps, lr, deadline)
        b_up, b_low = best[: rows.size], -best[rows.size:]
        b_low, b_up = _widen(b_low, b_up, mags[k][rows])
        low[k][rows] = np.maximum(low[k][rows], b_low)
        up[k][rows] = np.minimum(up[k][rows], b_up)
    return Bounds([l[None, :] for l in low], [u[None, :] for u in up])


def _optimise_rows(net: Network, k: int, rows: np.ndarray, low: list, up: list, relax: list,
                   centre: np.ndarray, radius: np.ndarray, steps: int, lr: float, deadline: float | None) -> np.ndarray:
    """Upper bounds of ``y_k[rows]`` then of ``-y_k[rows]`` (before widening), the best over ``steps``
    projected Adam steps on the lower slopes of the unstable ReLUs of layers ``< k`` (plus the CROWN start)."""
    import time

    layer = net.layers[k]
    w_rows = layer.rows(rows)
    c0 = np.concatenate([w_rows, -w_rows])  # (R, n_{k-1})
    d0 = np.concatenate([layer.bias[rows], -layer.bias[rows]])
    n_rows = c0.shape[0]
    unstable = [(low[j] < 0) & (up[j] > 0) if net.layers[j].is_relu else np.zeros(low[j].shape, bool) for j in range(k)]
    alphas = [np.broadcast_to(relax[j][0], (n_rows, low[j].size)).copy() for j in range(k)]
    m1 = [np.zeros_like(a) for a in alphas]
    m2 = [np.zeros_like(a) for a in alphas]
    best = np.full(n_rows, np.inf)
    beta1, beta2 = 0.9, 0.999
    for it in range(steps + 1):
        # forward: back-substitution with the current slopes
        coef = c0
        const = d0.copy()
        saved = []
        for j in range(k - 1, -1, -1):
            sl, su, tu = relax[j]
            pos = coef > 0
            slope = np.where(pos, su[None, :], np.where(unstable[j][None, :], alphas[j], sl[None, :]))
            lam = coef * slope
            const = const + np.where(pos, coef, 0.0) @ tu + lam @ net.layers[j].bias
            saved.append((coef, pos, slope))
            coef = lam @ net.layers[j].weight
        value = coef @ centre + np.abs(coef) @ radius + const
        best = np.minimum(best, value)
        if it == steps or (deadline is not None and time.monotonic() >= deadline):
            break
        # backward: d value / d alpha, row by row (each row's value depends only on its own slopes)
        g = centre[None, :] + np.sign(coef) * radius[None, :]
        for j in range(k):
            coef_j, pos, slope = saved[k - 1 - j]
            g_lam = g @ net.layers[j].weight.T + net.layers[j].bias[None, :]
            grad = np.where(~pos & unstable[j][None, :], g_lam * coef_j, 0.0)
            g = g_lam * slope + np.where(pos, relax[j][2][None, :], 0.0)
            # Adam, projected onto [0, 1]
            m1[j] = beta1 * m1[j] + (1 - beta1) * grad
            m2[j] = beta2 * m2[j] + (1 - beta2) * grad * grad
            mh = m1[j] / (1 - beta1 ** (it + 1))
            vh = m2[j] / (1 - beta2 ** (it + 1))
            alphas[j] = np.clip(alphas[j] - lr * mh / (np.sqrt(vh) + 1e-12), 0.0, 1.0)
    return best


# ---- one pre-activation on pieces of the ReLU state space (beta-CROWN style, for branch and bound) ---------
def split_row_bounds(weights: list, biases: list, relu: list, lo: np.ndarray, hi: np.ndarray, lower: list, upper: list,
                     row_w: np.ndarray, row_b: float, splits: list, alpha: list, beta: list, *, iterations: int = 10,
                     lr: float = 0.1) -> tuple[np.ndarray, list, np.ndarray]:
    """Upper bounds of ``row_w . h_{k-1}(x) + row_b`` over ``B`` pieces of the input box, each piece fixing the
    sign of some unstable pre-activations of layers ``j < k`` (``k = len(weights)``).

    ``splits[j]``: int8 (B, n_j): +1 means the piece only holds inputs with ``y_j >= 0`` (the ReLU is the
    identity there), -1 with ``y_j <= 0`` (the ReLU is 0), 0 no constraint.  ``lower``/``upper``: sound bounds
    of layers ``< k``, per layer either (n_j,) over the whole box (so over every piece) or (B, n_j), each
    row sound over its piece (``piece_bounds``).  The bound back-substitutes the row through
    the layers, free unstable ReLUs relaxed as in CROWN with lower slopes ``alpha`` in [0, 1], and adds every
    split constraint ``s y_j >= 0`` with a Lagrange multiplier ``beta >= 0`` (weak duality: for every input
    of the piece, ``f(x) <= f(x) + beta s y_j(x)``).  Any ``alpha``, ``beta`` give a valid bound; they are
    improved in place (lists of (B, n_j) arrays) by ``iterations`` projected Adam steps, and per piece the
    best of the ``iterations + 1`` bounds computed is returned (its parameters left in place).

    Outward rounding: every value the back-substitution sums is bounded in magnitude by
    ``A = (k + 1) (|row_w| . R_{k-1} + |row_b| + sum_j beta_j |s_j| . R_j)`` with ``R`` the magnitudes of
    ``magnitudes`` (slopes are in [0, 1] and intercepts at most ``u``), so each bound is widened by
    ``1e-9 * A + 1e-12``, orders of magnitude above float64 error.

    Returns ``(bound (B,), coef, x_star)``: ``coef[j]`` (B, n_j) are the coefficients of the post-activations
    ``h_j`` in the returned bound (for choosing what to split next), ``x_star`` (B, n0) the vertex of the
    box that maximises its linear function (a candidate input for a witness)."""
    k = len(weights)
    lo = np.asarray(lo, dtype=np.float64).reshape(-1)
    hi = np.asarray(hi, dtype=np.float64).reshape(-1)
    centre, radius = (hi + lo) / 2.0, (hi - lo) / 2.0
    n_b = splits[0].shape[0] if k else 1
    mags = []
    r = np.maximum(np.abs(lo), np.abs(hi))
    for j in range(k):
        r = np.abs(weights[j]) @ r + np.abs(biases[j])
        mags.append(r)
    base_mag = float(np.abs(row_w) @ (mags[-1] if k else np.maximum(np.abs(lo), np.abs(hi)))) + abs(float(row_b))
    relax = []
    for j in range(k):
        l, u = np.asarray(lower[j], dtype=np.float64), np.asarray(upper[j], dtype=np.float64)
        l, u = np.atleast_2d(l), np.atleast_2d(u)  # (1 or B, n_j): whole-box or per-piece bounds
        if relu[j]:
            sl, su, tu = _relaxation(l, u)
            relax.append((sl, su, tu, (l < 0) & (u > 0)))
        else:
            ones = np.ones_like(l)
            relax.append((ones, ones, np.zeros_like(l), np.zeros(l.shape, bool)))

    def run():
        coef = np.broadcast_to(np.asarray(row_w, dtype=np.float64), (n_b, len(row_w))).copy()
        const = np.full(n_b, float(row_b))
        mag = np.full(n_b, base_mag)
        saved = []
        for j in range(k - 1, -1, -1):
            sl, su, tu, uns = relax[j]
            s = splits[j]
            free = uns & (s == 0)
            pos = coef > 0
            slope = np.where(s > 0, 1.0, np.where(s < 0, 0.0,
                             np.where(uns, np.where(pos, su, alpha[j]), sl)))
            icpt = np.where(free & pos, tu, 0.0)
            bs = beta[j] * s
            lam = coef * slope + bs
            const = const + (coef * icpt).sum(axis=1) + lam @ biases[j]
            mag = mag + np.abs(bs) @ mags[j]
            saved.append((coef, pos, slope, free, s))
            coef = lam @ weights[j]
        value = coef @ centre + np.abs(coef) @ radius + const
        value = value + REL_MARGIN * (k + 1) * mag + ABS_MARGIN
        return value, coef, saved[::-1]

    moments = [[np.zeros_like(a), np.zeros_like(a), np.zeros_like(b), np.zeros_like(b)] for a, b in zip(alpha, beta)]
    value, coef, saved = run()
    best = value
    best_coef = [c[0] for c in saved]
    best_top = coef
    best_a = [a.copy() for a in alpha] if iterations else alpha
    best_b = [b.copy() for b in beta] if iterations else beta
    for it in range(iterations):
        g = centre[None, :] + np.sign(coef) * radius[None, :]
        t = it + 1
        for j in range(k):
            c_j, pos, slope, free, s = saved[j]
            g_lam = g @ weights[j].T + biases[j][None, :]
            grads = (np.where(free & ~pos, g_lam * c_j, 0.0), np.where(s != 0, g_lam * s, 0.0))
            g = g_lam * slope + np.where(free & pos, relax[j][2], 0.0)
            m = moments[j]
            for p, (gr, m1, m2) in enumerate(((grads[0], 0, 1), (grads[1], 2, 3))):
                m[m1] = 0.9 * m[m1] + 0.1 * gr
                m[m2] = 0.999 * m[m2] + 0.001 * gr * gr
                step = lr * (m[m1] / (1 - 0.9 ** t)) / (np.sqrt(m[m2] / (1 - 0.999 ** t)) + 1e-12)
                if p == 0:
                    alpha[j] = np.clip(alpha[j] - step, 0.0, 1.0)
                else:
                    beta[j] = np.maximum(beta[j] - step, 0.0)
        value, coef, saved = run()
        better = value < best
        if better.any():
            best = np.where(better, value, best)
            best_top = np.where(better[:, None], coef, best_top)
            for j in range(k):
                best_coef[j] = np.where(better[:, None], saved[j][0], best_coef[j])
                best_a[j][better] = alpha[j][better]
                best_b[j][better] = beta[j][better]
    if iterations:
        for j in range(k):
            alpha[j][...] = best_a[j]
            beta[j][...] = best_b[j]
    x_star = np.clip(centre[None, :] + np.sign(best_top) * radius[None, :], lo, hi)
    return best, best_coef, x_star


def _split_relaxation(l: np.ndarray, u: np.ndarray, s: np.ndarray):
    """``_relaxation`` on one piece: a ReLU split active (``s > 0``) is the identity there, one split
    inactive (``s < 0``) is 0, exactly."""
    sl, su, tu = _relaxation(l, u)
    on, off = s > 0, s < 0
    return (np.where(on, 1.0, np.where(off, 0.0, sl)), np.where(on, 1.0, np.where(off, 0.0, su)),
            np.where(on | off, 0.0, tu))


PIECE_BOUNDS_BYTES = 64e6
"""Bytes one block of ``piece_bounds``' coefficient tensors may take (pieces are bounded in blocks)."""


def piece_bounds(weights: list, biases: list, relu: list, lo: np.ndarray, hi: np.ndarray, lower: list, upper: list,
                 splits: list, start: np.ndarray) -> np.ndarray:
    """Tighten, in place, the per-piece pre-activation bounds of a branch and bound's pieces with their
    split constraints (the intermediate bounds of beta-CROWN's subproblems).

    ``lower``/``upper``: per layer ``j < k = len(weights)`` a (B, n_j) float64 array, row ``b`` sound over
    piece ``b``; ``splits``: as in ``split_row_bounds``; ``start`` (B,): the first layer whose bounds may
    have changed for each piece (the layer after its newest split).  A split clips its own neuron's bounds
    at 0 (``y >= 0`` on the piece, or ``y <= 0``); from ``start`` on, every neuron still unstable and free
    on some piece of a block is bounded again by CROWN back-substitution through the piece's relaxations
    (a split ReLU is exact on its piece: the identity or 0), widened outward as ``split_row_bounds`` widens
    (magnitudes from the box times ``1e-9 (j + 1)``), and intersected with the bounds it had.  Each bound
    holds for every input of its piece, so for every piece below it.

    Returns a (B,) mask of the pieces shown empty (some neuron's lower bound above its upper bound): no
    input of the box satisfies their split constraints."""
    k = len(weights)
    lo = np.asarray(lo, dtype=np.float64).reshape(-1)
    hi = np.asarray(hi, dtype=np.float64).reshape(-1)
    centre, radius = (hi + lo) / 2.0, (hi - lo) / 2.0
    mags = []
    r = np.maximum(np.abs(lo), np.abs(hi))
    for j in range(k):
        mags.append(r)  # magnitude of layer j's input
        r = np.abs(weights[j]) @ r + np.abs(biases[j])
    n_b = splits[0].shape[0] if k else 0
    start = np.asarray(start).reshape(-1)

    def clip(j: int, rows) -> None:
        s = splits[j][rows]
        lower[j][rows] = np.where(s > 0, np.maximum(lower[j][rows], 0.0), lower[j][rows])
        upper[j][rows] = np.where(s < 0, np.minimum(upper[j][rows], 0.0), upper[j][rows])

    for j in range(k):
        if relu[j]:
            clip(j, slice(None))
    for j in range(1, k):
        todo = np.flatnonzero(start <= j)
        if todo.size == 0:
            continue
        free = (lower[j][todo] < 0) & (upper[j][todo] > 0) & (splits[j][todo] == 0)
        rows = np.flatnonzero(free.any(axis=0))
        if rows.size == 0:
            continue
        w_r, b_r = weights[j][rows], biases[j][rows]
        mag = (j + 1) * (np.abs(w_r) @ mags[j] + np.abs(b_r))
        widest = max(w.shape[1] for w in weights[:j + 1])
        block = max(1, int(PIECE_BOUNDS_BYTES // (8 * 2 * rows.size * widest)))
        for at in range(0, todo.size, block):
            pieces = todo[at:at + block]
            relax = []
            for i in range(j):
                if relu[i]:
                    relax.append(_split_relaxation(lower[i][pieces], upper[i][pieces], splits[i][pieces]))
                else:
                    ones = np.ones((pieces.size, weights[i].shape[0]))
                    relax.append((ones, ones, np.zeros_like(ones)))
            y_lo, y_hi, _, _ = _back_substitute_rows(weights[:j], biases[:j], w_r, b_r, relax,
                                                     np.repeat(centre[None], pieces.size, axis=0),
                                                     np.repeat(radius[None], pieces.size, axis=0))
            margin = REL_MARGIN * mag[None, :] + ABS_MARGIN
            sel = np.ix_(pieces, rows)
            upper[j][sel] = np.minimum(upper[j][sel], y_hi + margin)
            lower[j][sel] = np.maximum(lower[j][sel], y_lo - margin)
        if relu[j]:
            clip(j, todo)
    empty = np.zeros(n_b, bool)
    for j in range(k):
        empty |= (lower[j] > upper[j]).any(axis=1)
    return empty
