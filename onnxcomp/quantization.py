"""Weight sharing (the ``quantize`` pass's machinery): Dense(W) -> Dense(codebook[codes]), or per-channel int8;
Conv(K) -> Conv(codebook[codes]) likewise, one codebook per layer, int8 scales per output channel.

``--quant kmeans`` (default): the weights of each layer are clustered into at most 2**bits values
(``--bits B``, 1..8) and every weight is replaced by its cluster centre (DeepCompress-style weight
sharing).  The clustering minimises the weighted distortion Σ_i I_i (w_i − ŵ_i)²:

* plain k-means: I_i = 1, the baseline objective of the rate-distortion paper (Table 1);
* Fisher-weighted k-means (paper §5.3, §6.1): I_i = E[(∂f/∂w_i)²/f] from the ``fisher`` analysis, used
  with ``--score fisher`` or whenever ``fisher`` ran before this pass; by Corollary 2 this minimises the
  output distortion for one-hidden-layer ReLU networks;
* with the ``gradient+hessian`` Fisher objective (labels given) the quartic term Σ_i ¼H_i (w_i − ŵ_i)⁴
  is added and the centre update solves the paper's cubic (App. C.2, quartic weighted k-means);
* ``--score lap``: I_i = (lookahead factor)², the squared factor the lookahead distortion multiplies |δw| by.

The 1-D weighted k-means is Lloyd's algorithm on the sorted weights (clusters are intervals, so each
step is a binary search plus segment sums), started from the p^(1/3) point density of high-resolution
quantization theory (quantiles of the weights themselves leave the tails with too few centres; at 256
centres that start gave 3.5x the distortion of scikit-learn's k-means): deterministic, no seed.
Weights that are exactly zero (pruned) keep a centre of exactly 0 of their own, so quantizing after
pruning keeps the sparsity and the writer can still store only the non-zero codes.

``--quant int8``: symmetric per-output-channel int8, scale = max|W[r,:]|/127, emitted as
``DequantizeLinear`` (8 bits per weight).

The layer keeps the dequantized weights in ``Dense.weight`` (rounded to the model's dtype, so the IR
computes what onnxruntime computes) and the codes in ``Dense.quant``; the writer stores codes packed at
``bits`` bits each.  With a budget instead of ``--bits`` the fewest bits meeting it are searched.
"""

from __future__ import annotations

import numpy as np

from .ir import Network, Quantization
from .params import by_unit, tensor, tunable, with_tensor

METHODS = ("kmeans", "int8")
LEVELS = [8, 7, 6, 5, 4, 3, 2, 1]
"""Bit widths a budget search chooses from, weakest first."""
ITERATIONS = 300


def _initial_centres(v: np.ndarray, ws: np.ndarray, k: int) -> np.ndarray:
    """k starting centres for sorted values ``v`` with weights ``ws``.

    High-resolution quantization theory puts the optimal centres of a (weighted) density p at a point
    density proportional to p^(1/3); plain weighted quantiles crowd the centres into the bulk and leave
    the tails, where one centre removes much distortion, to a few.  p is estimated by a histogram.
    """
    bins = int(min(4096, max(16, 8 * k)))
    edges = np.linspace(v[0], v[-1], bins + 1)
    mass, _ = np.histogram(v, bins=edges, weights=ws)
    density = np.cbrt(mass)
    cum = np.concatenate([[0.0], np.cumsum(density)])
    targets = (np.arange(k) + 0.5) / k * cum[-1]
    j = np.clip(np.searchsorted(cum, targets, side="right") - 1, 0, bins - 1)
    frac = (targets - cum[j]) / np.where(density[j] > 0, density[j], 1.0)
    return edges[j] + frac * (edges[j + 1] - edges[j])


def _quartic_centres(v, ws, qs, starts, ends) -> np.ndarray:
    """Per interval [start, end) of sorted ``v``: the x minimising Σ ws (v − x)² + qs (v − x)⁴.

    The derivative 2 Σ ws (x − v) + 4 Σ qs (x − v)³ increases in x and changes sign inside the interval
    (paper App. C.2: the cubic has one real root), so bisection on [v_start, v_end] finds it.
    """
    seg = lambda a: np.add.reduceat(a, starts)  # noqa: E731 - segment sums over the intervals
    s_w, s_wv = seg(ws), seg(ws * v)
    s_q, s_qv, s_qv2, s_qv3 = seg(qs), seg(qs * v), seg(qs * v * v), seg(qs * v ** 3)
    lo, hi = v[starts].copy(), v[ends - 1].copy()
    for _ in range(64):
        x = (lo + hi) / 2
        grad = 2 * (x * s_w - s_wv) + 4 * (x ** 3 * s_q - 3 * x * x * s_qv + 3 * x * s_qv2 - s_qv3)
        lo, hi = np.where(grad < 0, x, lo), np.where(grad < 0, hi, x)
    return (lo + hi) / 2


def weighted_kmeans_1d(values: np.ndarray, weights: np.ndarray | None, k: int, quartic: np.ndarray | None = None,
                       iterations: int = ITERATIONS) -> tuple[np.ndarray, np.ndarray]:
    """Minimise Σ_i weights_i (v_i − c[A_i])² + quartic_i (v_i − c[A_i])⁴ over ≤ k centres c (Lloyd in 1-D).

    ``weights=None`` is plain k-means; ``quartic`` (optional) is the paper's quartic weighted k-means
    (App. C.2).  Both terms grow with |v − c|, so the nearest centre is the best assignment and clusters
    are intervals of the sorted values; the update is the weighted mean (or the cubic's root).
    Returns (centres ascending, code of every value).  With at most k distinct values every value is
    its own centre (zero distortion).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    distinct = np.unique(values)
    if distinct.size <= k:
        return distinct, np.searchsorted(distinct, values)
    w = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    # A weight of exactly zero (e.g. into a dead neuron) must still be assigned somewhere; a tiny
    # floor keeps every interval's weighted mean defined without moving the others noticeably.
    floor = 1e-9 * (w.mean() if w.mean() > 0 else 1.0)
    w = np.maximum(w, floor)
    order = np.argsort(values, kind="stable")
    v, ws = values[order], w[order]
    qs = None if quartic is None else np.maximum(np.asarray(quartic, dtype=np.float64).reshape(-1)[order], 0.0)
    centres = np.unique(_initial_centres(v, ws, k))
    bounds = None
    for _ in range(iterations):
        cuts = np.searchsorted(v, (centres[1:] + centres[:-1]) / 2, side="right")
        if bounds is not None and np.array_equal(cuts, bounds):
            break
        bounds = cuts
        edges = np.concatenate([[0], cuts, [v.size]])
        starts, ends = edges[:-1], edges[1:]
        keep = ends > starts
        starts, ends = starts[keep], ends[keep]
        if qs is None:
            update = np.add.reduceat(ws * v, starts) / np.add.reduceat(ws, starts)
        else:
            update = _quartic_centres(v, ws, qs, starts, ends)
        centres = np.unique(np.clip(update, v[starts], v[ends - 1]))
    # A value exactly on a midpoint goes to the lower centre, as in the cuts above.
    codes = np.searchsorted((centres[1:] + centres[:-1]) / 2, values, side="left")
    return centres, codes


def kmeans_layer(layer, bits: int, importance: np.ndarray | None, np_dtype, quartic: np.ndarray | None = None):
    """``layer`` (dense, or a convolution: its kernel) with weights shared among at most 2**bits values
    (zeros keep a centre of 0); a fixed layer (pooling) is returned as it is."""
    if not tunable(layer):
        return layer
    w = tensor(layer)
    k = 2 ** bits
    zero = w == 0
    sel = ~zero if zero.any() else np.ones(w.shape, dtype=bool)
    imp = None if importance is None else importance[sel]
    quart = None if quartic is None else quartic[sel]
    n_centres = k - 1 if zero.any() else k
    if sel.any() and n_centres > 0:
        centres, sel_codes = weighted_kmeans_1d(w[sel], imp, n_centres, quart)
    else:
        centres, sel_codes = np.empty(0), np.zeros(int(sel.sum()), dtype=np.int64)
    codes = np.zeros(w.shape, dtype=np.int64)
    if zero.any():
        codebook = np.concatenate([[0.0], centres])
        codes[sel] = sel_codes + 1
    else:
        codebook = centres
        codes[sel] = sel_codes
    codebook = codebook.astype(np_dtype).astype(np.float64)
    quant = Quantization("codebook", codes, codebook, None, bits)
    return with_tensor(layer, codebook[codes], quant)


def int8_layer(layer, np_dtype):
    """Symmetric per-output-channel int8: W ≈ scale[:, None] * codes, codes in [-127, 127] (a convolution:
    one scale per output channel's kernel); a fixed layer (pooling) is returned as it is."""
    if not tunable(layer):
        return layer
    w = tensor(layer)
    per = (-1,) + (1,) * (w.ndim - 1)
    peak = np.abs(by_unit(w)).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.round(w / scale.astype(np.float64).reshape(per)), -127, 127).astype(np.int8)
    weight = (scale.reshape(per) * codes.astype(np.float32)).astype(np_dtype).astype(np.float64)
    return with_tensor(layer, weight, Quantization("int8", codes, None, scale.astype(np.float64), 8))


def importance_weights(net: Network, scores) -> tuple[list | None, list | None, str]:
    """(I, Q, name) for the objective Σ I (w − ŵ)² + Q (w − ŵ)⁴; ``None`` means unweighted / no quartic term.

    Fisher scores carry I (``importance``) and, for the gradient+Hessian objective, H (``quartic``) with
    saliency I·w² + ¼·H·w⁴, so Q = H/4.  Lookahead scores are |w|·factor: perturbing w by δ distorts the
    block by |δ|·factor, so I = factor².
    """
    if scores is None or scores.method == "magnitude":
        return None, None, "plain"
    explicit = getattr(scores, "importance", None)
    if explicit is not None:
        quartic = getattr(scores, "quartic", None)
        q = None if quartic is None else [None if h is None else 0.25 * np.asarray(h, dtype=np.float64) for h in quartic]
        return [None if i is None else np.asarray(i, dtype=np.float64) for i in explicit], q, scores.method
    out = []
    for layer, s in zip(net.layers, scores.weights):
        if s is None:
            out.append(None)
            continue
        a = np.abs(tensor(layer))
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(a > 0, np.asarray(s, dtype=np.float64) / a, 0.0)
        fill = float(np.mean(factor[a > 0] ** 2)) if np.any(a > 0) else 1.0
        out.append(np.where(a > 0, factor ** 2, fill))
    return out, None, scores.method
