"""Fisher weight importance from the rate-distortion paper: the ``fisher`` analysis's machinery.

The chain's output are logits ``z``; ``f = softmax(z / T)`` (``T``, option ``fisher_temperature``, default 1,
paper App. C.3.1).  Over the calibration rows ``x`` (``--data``) we compute, by backpropagation through the
IR in float64, batch by batch (memory independent of the number of rows), the diagonal of the weight
importance matrix for the objective (option ``fisher_objective``)
(with a fidelity budget only the validation half of ``--data`` is used, see ``calibration.fitting_rows``):

* ``unsupervised`` (Eq. 6, diagonal, §6.1): ``I_i = E_x[Σ_c (∂f_c/∂w_i)² / f_c]``;
  the pruning saliency is ``I_i · w_i²``.
* ``gradient`` (§6.2, needs labels): ``I_i = E_{x,y}[(∂L/∂w_i)²]`` with ``L`` the cross-entropy;
  saliency ``I_i · w_i²``.
* ``gradient+hessian`` (§6.2, needs labels): additionally ``H_i = E[(∂²L/∂w_i²)²]``;
  saliency ``I_i · w_i² + ¼ H_i · w_i⁴``.
* ``auto``: ``gradient+hessian`` when labels are given, else ``unsupervised``.

How, for a weight ``W_k[o, i]`` with layer input ``a`` and backpropagated pre-activation signal ``δ``: the
per-row gradient of any scalar is ``δ_o · a_i``, so ``E[(∂/∂w)²] = (δ²)ᵀ(a²) / N`` is one matrix product per
layer.  Since ``∂f_c/∂z = f_c (e_c − f)``, the Eq. 6 term is ``Σ_c (∂z/∂w · s_c)²`` with the seeds
``s_c = √f_c (e_c − f) / T``: the C seeds are backpropagated together.  For the Hessian: on a ReLU network
with a fixed activation pattern the logits are linear in any single weight, so (almost everywhere)
``∂²L/∂w² = (∂z/∂w)ᵀ ∇²_z L (∂z/∂w)`` with ``∇²_z L = (diag f − f fᵀ)/T²`` -- exactly the same seeds,
giving the per-row value ``D_o · a_i²`` with ``D_o = Σ_c δ_{c,o}²`` and ``H = (D²)ᵀ(a⁴) / N``.  This is exact, where
the paper needed curvature propagation to estimate it.  (A consequence worth knowing: the LeCun-style
Hessian objective ``E[∂²L/∂w²]`` equals the unsupervised importance here.)

Neurons (``FisherScores.neurons``): the saliency of a multiplicative gate ``m`` on the neuron's output,
removed by setting ``m`` from 1 to 0.  Its per-row derivative is ``δ_o · y_o`` (``y`` the pre-activation; 0
where the ReLU is off), so the same formulas apply with ``a_i`` replaced by ``y_o`` and ``w`` by 1.  Unlike a
sum of the incoming weights' diagonal saliencies, this keeps the correlations between them.

Convolutions: a kernel weight is applied at every output position, so its per-row gradient is the sum
over positions of ``δ_o(p) · a_i(p)`` (the group's im2col matrix times δ), and the squares above are taken
after that sum (per row and seed), not of the per-position terms; a channel's gate saliency likewise
sums ``δ_o(p) · y_o(p)`` over the channel's positions.  The pooling and MaxPool layers between are
backpropagated through (a MaxPool part is a ReLU layer: the subgradient of the max) but not scored.

``FisherScores`` is a ``WeightScores``: ``weights`` holds the saliency (distortion when the weight is pruned,
higher = keep), and it adds ``importance`` (``I``, the weights of the paper's weighted k-means, §5.3/§6.1)
and ``quartic`` (``H``, for its quartic k-means, App. C.2; ``None`` without the Hessian term).
"""

from __future__ import annotations


import numpy as np

from .calibration import CalibrationSet, chain_input_batches
from .errors import InputError, UsageError
from .conv import is_conv
from .ir import Network
from .params import tensor, tunable
from .scores import FisherScores

OBJECTIVES = ("auto", "unsupervised", "gradient", "gradient+hessian")
BATCH = 512
SIGNAL_ENTRIES = 8_000_000
"""Largest backpropagated signal per batch (rows x seeds x widest layer, 64 MB of float64): a CNN's feature
maps are wide, and batches that overflow the caches made its Fisher pass 2x slower (LeNet fixture: 512 rows
13.5 s, 128 rows 6.4 s)."""


def batch_rows(net: Network) -> int:
    """Rows per batch: :data:`BATCH`, fewer when the signal of that many rows would exceed :data:`SIGNAL_ENTRIES`."""
    widest = max(max(layer.n_out, layer.n_in) for layer in net.layers)
    return int(max(16, min(BATCH, SIGNAL_ENTRIES // max(1, net.output_size * widest))))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _pull_back(layer, d: np.ndarray) -> np.ndarray:
    """``d @ layer.weight`` for seeds ``d`` (N, S, n_out): the signal at the layer's input."""
    n, c, w = d.shape
    flat = d.reshape(n * c, w)
    back = layer.transpose_convolve(flat) if is_conv(layer) else flat @ layer.weight
    return back.reshape(n, c, layer.n_in)


def _backward(net: Network, pres: list, seeds: np.ndarray) -> list[np.ndarray]:
    """Backpropagate output seeds (N, S, n_out) to every layer's pre-activation: list of (N, S, width_k)."""
    deltas = [None] * len(net.layers)
    d = seeds
    for k in range(len(net.layers) - 1, -1, -1):
        layer = net.layers[k]
        if layer.is_relu:
            d = d * (pres[k] > 0.0)[:, None, :]
        deltas[k] = d
        if k:
            d = _pull_back(layer, d)
    return deltas


def _conv_gradients(layer, delta: np.ndarray, a: np.ndarray, y: np.ndarray):
    """Per-row, per-seed gradients of a convolution's kernel and of its channel gates.

    ``delta`` (N, S, n_out) is the signal at the layer's pre-activation, ``a`` (N, n_in) its input, ``y``
    (N, n_out) its pre-activation.  A kernel weight is used at every output position, so its gradient is
    the sum over positions of ``δ · a`` at the input it reads there (the group's im2col matrix times δ),
    and a channel gate's the sum over the channel's positions of ``δ · y``: (N, S, *kernel.shape) and
    (N, S, C_out).  Squares are taken only after these sums."""
    n, s = delta.shape[:2]
    c_out = layer.out_channels
    positions = layer.out_hw[0] * layer.out_hw[1]
    if layer.units is None:
        full, pre = delta, y
    else:  # units the layer no longer emits are constant: no signal reaches them
        full, pre = np.zeros((n, s, c_out * positions)), np.zeros((n, c_out * positions))
        full[:, :, layer.emitted] = delta
        pre[:, layer.emitted] = y
    full = full.reshape(n, s, c_out, positions)
    gates = np.einsum("nscp,ncp->nsc", full, pre.reshape(n, c_out, positions))
    per = c_out // layer.group
    _, cg, kh, kw = layer.kernel.shape
    grads = np.empty((n, s, c_out, kh, kw, cg))  # taps in im2col's (ky, kx, ci) order
    for g, cols in enumerate(layer.im2col(a)):  # (N, positions, taps of the group)
        mine = np.ascontiguousarray(full[:, :, g * per:(g + 1) * per]).reshape(n, s * per, positions)
        grads[:, :, g * per:(g + 1) * per] = np.matmul(mine, cols).reshape(n, s, per, kh, kw, cg)
    return grads.transpose(0, 1, 2, 5, 3, 4), gates


def accumulate(net: Network, h: np.ndarray, labels: np.ndarray | None, objective: str, temperature: float) -> dict:
    """Sums over the rows of ``h`` (chain inputs) of the quantities the objective needs (see module doc);
    ``None`` for the fixed layers (pooling), which are never scored."""
    out, pres = net.forward(h, preactivations=True)
    inputs = [h] + [np.maximum(y, 0.0) if l.is_relu else y for l, y in zip(net.layers[:-1], pres[:-1])]
    f = softmax(out / temperature)
    n, c = f.shape
    sums = {"I": [], "H": [], "In": [], "Hn": []}
    need_curv = objective in ("unsupervised", "gradient+hessian")
    if need_curv:
        # seeds s_c = sqrt(f_c) (e_c - f) / T, one per class: (N, C, C)
        curv_seeds = (np.sqrt(f)[:, :, None] * (np.eye(c)[None, :, :] - f[:, None, :])) / temperature
        curv_deltas = _backward(net, pres, curv_seeds)
    if objective in ("gradient", "gradient+hessian"):
        grad_seed = (f - np.eye(c)[labels]) / temperature
        grad_deltas = _backward(net, pres, grad_seed[:, None, :])
    for k, layer in enumerate(net.layers):
        if not tunable(layer):
            for key in ("I", "In") + (("H", "Hn") if objective == "gradient+hessian" else ()):
                sums[key].append(None)
            continue
        if is_conv(layer):
            _conv_sums(sums, layer, inputs[k], pres[k], objective,
                       curv_deltas[k] if need_curv else None,
                       grad_deltas[k] if objective != "unsupervised" else None)
            continue
        a2 = inputs[k] ** 2
        y2 = pres[k] ** 2
        curv = np.einsum("nsw,nsw->nw", curv_deltas[k], curv_deltas[k]) if need_curv else None  # D (N, width)
        if objective == "unsupervised":
            sums["I"].append(curv.T @ a2)
            sums["In"].append(np.sum(curv * y2, axis=0))
        else:
            g2 = grad_deltas[k][:, 0, :] ** 2
            sums["I"].append(g2.T @ a2)
            sums["In"].append(np.sum(g2 * y2, axis=0))
            if objective == "gradient+hessian":
                d2 = curv ** 2
                sums["H"].append(d2.T @ (a2 * a2))
                sums["Hn"].append(np.sum(d2 * y2 * y2, axis=0))
    return sums


def _conv_sums(sums: dict, layer, a: np.ndarray, y: np.ndarray, objective: str, curv_delta, grad_delta) -> None:
    """A convolution's share of :func:`accumulate`: the same sums, from gradients summed over positions."""
    if curv_delta is not None:
        g_curv, gate_curv = _conv_gradients(layer, curv_delta, a, y)
        curv_w, curv_n = np.sum(g_curv ** 2, axis=1), np.sum(gate_curv ** 2, axis=1)  # (N, kernel), (N, C_out)
    if objective == "unsupervised":
        sums["I"].append(curv_w.sum(axis=0))
        sums["In"].append(curv_n.sum(axis=0))
        return
    g, gate = _conv_gradients(layer, grad_delta, a, y)
    sums["I"].append(np.sum(g[:, 0] ** 2, axis=0))
    sums["In"].append(np.sum(gate[:, 0] ** 2, axis=0))
    if objective == "gradient+hessian":
        sums["H"].append(np.sum(curv_w ** 2, axis=0))
        sums["Hn"].append(np.sum(curv_n ** 2, axis=0))


def fisher_scores(net: Network, batches, labels: np.ndarray | None = None, objective: str = "unsupervised",
                  temperature: float = 1.0) -> FisherScores:
    """Fisher saliencies over chain-input ``batches`` (and ``labels`` aligned with their rows)."""
    total: dict | None = None
    count = 0
    for h in batches:
        y = None if labels is None else labels[count:count + h.shape[0]]
        part = accumulate(net, h, y, objective, temperature)
        total = part if total is None else {key: [None if a is None else a + b for a, b in zip(total[key], part[key])]
                                                for key in part}
        count += h.shape[0]
    if count == 0:
        raise UsageError("needs --data (calibration samples)")
    importance = [None if s is None else s / count for s in total["I"]]
    neuron_imp = [None if s is None else s / count for s in total["In"]]
    quartic = [None if s is None else s / count for s in total["H"]] if objective == "gradient+hessian" else None
    weights, neurons = [], []
    for k, layer in enumerate(net.layers):
        if importance[k] is None:
            weights.append(None)
            neurons.append(None)
            continue
        w2 = tensor(layer) ** 2
        sal = importance[k] * w2
        nsal = neuron_imp[k].copy()
        if quartic is not None:
            sal = sal + 0.25 * quartic[k] * w2 * w2
            nsal = nsal + 0.25 * total["Hn"][k] / count
        weights.append(sal)
        neurons.append(nsal)
    return FisherScores(method=f"fisher-{objective}", weights=weights, neurons=neurons, network=net,
                        importance=importance, quartic=quartic, objective=objective, samples=count,
                        temperature=temperature)


def resolve_objective(objective: str, labels: np.ndarray | None, n_rows: int, n_classes: int) -> str:
    """The objective to use (``auto`` resolved), refusing label-based ones without valid labels."""
    if objective == "auto":
        objective = "gradient+hessian" if labels is not None else "unsupervised"
    if objective != "unsupervised":
        if labels is None:
            raise UsageError(f"fisher objective '{objective}' needs --labels")
        labels = np.asarray(labels)
        if labels.shape[0] != n_rows:
            raise InputError(f"--labels has {labels.shape[0]} entries for {n_rows} data rows")
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise InputError(f"--labels: values must be class indices 0..{n_classes - 1} of the network's logits")
    return objective


def analyse(net: Network, calib: CalibrationSet, labels: np.ndarray | None, objective: str = "auto",
            temperature: float = 1.0) -> FisherScores:
    """Fisher scores of ``net`` on the calibration set's data rows (``labels`` aligned with all data rows)."""
    if net.output_size < 2:
        raise InputError("the network has a single output; Fisher importance needs class logits")
    objective = resolve_objective(objective, labels, 0 if calib.data is None else int(calib.data.shape[0]),
                                  net.output_size)
    rows = np.arange(calib.data.shape[0]) if calib.rows is None else calib.rows
    fit_labels = None if labels is None or objective == "unsupervised" else np.asarray(labels, dtype=np.int64)[rows]
    return fisher_scores(net, chain_input_batches(net, calib.data_batches(batch_rows(net)), calib.device), fit_labels,
                         objective, temperature)
