"""Differential bound propagation: certified bounds on ``f2(x) - f1(x)`` over input boxes for two ReLU
networks that share most of their structure (a float32 re-export, a pruned or quantized copy, a LEO++
compression of the same network).

Bounding ``f1`` and ``f2`` separately and subtracting (``onnxcomp.formal``) doubles the looseness of every
relaxation even where the two networks compute the same thing.  Here the difference of corresponding
neurons is a quantity of its own (ReluDiff, NeuroDiff), so what the networks share cancels exactly.

**Matching** (:func:`match`).  Both networks are run on points of the box; a pair of layers is compared by
pairing each neuron of N2 with the N1 neuron whose sampled pre-activation it follows most closely (RMS of the
difference relative to their scale; ties go to equal ``neuron_ids``, then equal positions).  Weight rows that
agree give equal pre-activations, so copies and re-exports pair by rows; a neuron that LEO++ deleted or
merged is simply left without partner, and a layer it folded away is left out of the layer alignment (a
monotone alignment of hidden layers chosen by dynamic programming; the outputs are always paired).  The
matching only decides how tight the bound is, never whether it is sound: any pairing is sound.

**Propagation.**  A graph of linear and piecewise-linear nodes holds N1's chain (``y1 = W1 h1 + b1``,
``h1 = relu(y1)``) and, for every aligned layer pair, the pre-activation difference ``d = y2 - y1`` and the
post-activation difference ``delta = act2(y1 + d) - act1(y1)`` of paired neurons; N2 is read as
``h2 = h1 + delta`` on paired neurons (its unpaired neurons and unaligned layers are nodes of their own, N2's
own values).  When both layers read aligned layers, ``d = W2' delta + (W2' - W1) h1 + (b2' - b1)`` with the
weight difference formed entry by entry, so equal weights contribute exactly zero; after folded layers
``d = W2' (h1 + delta) + b2' - y1``.  An N1 neuron without partner gets ``delta = 0`` (N2 is extended by a
copy of it whose outgoing weights are zero); ``d`` of the deleted neuron's consumers then carries
``-W1[:, j] h1_j``, which vanishes when the neuron is proven inactive.

``delta = relu(y1 + d) - relu(y1)`` is bounded, per neuron, by one of these planes in ``(y1, d)``:

* (A) the chords of ``min(d, 0) <= delta <= max(d, 0)`` over ``[dl, du]`` (relu is monotone and 1-Lipschitz):
  tight when the networks agree (``d`` small), whatever the state of the neuron;
* (B) ``U2(y1 + d) - L1(y1)`` and ``L2(y1 + d) - U1(y1)`` with the CROWN relaxations of each ReLU (exact
  for the four stable cases, e.g. both active: ``delta = d``), two choices of each lower slope;

chosen by the smallest largest gap to ``delta`` over the vertices of the region
``{l1 <= y1 <= u1, dl <= d <= du, l2 <= y1 + d <= u2}`` split along ``y1 = 0`` and ``y1 + d = 0``.  A layer
whose activation differs between the networks (LEO++ turns a stably active ReLU layer linear) uses (B)
with the identity for the linear side.  Interval bounds of ``delta`` come from
``delta = d + min(y1, 0) - min(y2, 0)`` and ``relu(l2) - relu(u1) <= delta <= relu(u2) - relu(l1)``.

Every ``d`` is bounded by back-substituting these linear bounds through the graph to the input box
(NeuroDiff-style symbolic bounds; skipped for neurons in the same stable state in both networks on every box,
whose ``delta`` does not depend on it) and intersected with interval propagation and with
``[l2 - u1, u2 - l1]`` (``l, u``: CROWN on each network, or bounds the caller gives), and it tightens those in
turn (``y2 in y1 + d``, ``y1 in y2 - d``).  The output bound
is intersected with the bound of the networks taken as unrelated (the same graph with only the outputs
aligned: what ``formal._diff_bounds`` computes).

**Outward rounding.**  Alongside the bounds every node carries a magnitude ``M`` (the graph evaluated with
absolute values of weights, slopes and intercepts, from ``max(|lo|, |hi|)``), which dominates every partial
sum the back-substitution and interval arithmetic form for that node; the float error of a computed bound is
below ``(number of terms) * 2^-53 * M``, and each bound is widened by ``1e-9 * M`` (``onnxcomp.bounds``'s
rule) plus ``1e-280`` against underflow.  Identical weights give ``M = 0`` for every difference node, so two
identical networks are certified equal with bound exactly 0; equal weights elsewhere add nothing to ``M``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .bounds import REL_MARGIN, _relaxation, crown_bounds
from .ir import LINEAR, RELU, Network

ABS_MARGIN = 1e-280  # underflow only: every other rounding error is proportional to a magnitude
ALIGN_THRESHOLD = 0.5  # layers whose paired neurons differ by more (relative RMS) stay unaligned


# ---- matching ----------------------------------------------------------------------------------------
@dataclass
class LayerMatch:
    """Layer ``k1`` of N1 aligned with layer ``k2`` of N2; ``pairs[i]`` is the N1 neuron paired with N2
    neuron ``i`` (-1: none); ``cost[i]`` its sampled RMS difference relative to the neurons' scale."""

    k1: int
    k2: int
    pairs: np.ndarray
    cost: np.ndarray

    @property
    def paired(self) -> int:
        return int(np.sum(self.pairs >= 0))

    @property
    def identity(self) -> bool:
        return bool(np.array_equal(self.pairs, np.arange(self.pairs.size)))


@dataclass
class Matching:
    """Which layers and neurons of N2 correspond to which of N1 (see :func:`match`)."""

    widths1: list
    widths2: list
    layers: list = field(default_factory=list)

    def swapped(self) -> Matching:
        out = []
        for lm in self.layers:
            inv = np.full(self.widths1[lm.k1], -1, dtype=np.int64)
            cost = np.ones(self.widths1[lm.k1])
            ok = lm.pairs >= 0
            inv[lm.pairs[ok]] = np.flatnonzero(ok)
            cost[lm.pairs[ok]] = lm.cost[ok]
            out.append(LayerMatch(lm.k2, lm.k1, inv, cost))
        return Matching(list(self.widths2), list(self.widths1), out)

    def to_dict(self) -> dict:
        return {"widths1": list(self.widths1), "widths2": list(self.widths2), "layers": [
            {"layer1": lm.k1, "layer2": lm.k2, "paired": lm.paired, "identity": lm.identity,
             "unpaired1": int(self.widths1[lm.k1] - lm.paired), "unpaired2": int(lm.pairs.size - lm.paired),
             "mean_cost": float(np.mean(lm.cost[lm.pairs >= 0])) if lm.paired else 1.0} for lm in self.layers]}

    def describe(self) -> str:
        parts = []
        for e in self.to_dict()["layers"]:
            how = "identity" if e["identity"] else f"{e['paired']} paired"
            extra = "".join(f", {e[k]} only in N{k[-1]}" for k in ("unpaired1", "unpaired2") if e[k])
            parts.append(f"N1 layer {e['layer1']} ~ N2 layer {e['layer2']} ({how}{extra}, cost {e['mean_cost']:.2g})")
        return "; ".join(parts)


def _boxes(lo, hi) -> tuple[np.ndarray, np.ndarray]:
    lo = np.atleast_2d(np.asarray(lo, dtype=np.float64))
    hi = np.atleast_2d(np.asarray(hi, dtype=np.float64))
    if lo.shape != hi.shape:
        raise ValueError(f"lo has shape {lo.shape} but hi has {hi.shape}")
    return lo, hi


def _sample(lo: np.ndarray, hi: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Points of the hull of the boxes: uniform samples, the centre, random vertices."""
    rng = np.random.default_rng(seed)
    a, b = lo.min(axis=0), hi.max(axis=0)
    pts = [rng.uniform(a, b, size=(n, a.size)), ((a + b) / 2)[None, :]]
    pts.append(np.where(rng.integers(0, 2, size=(max(n // 4, 1), a.size)) == 1, b, a))
    return np.vstack(pts)


def _pair_neurons(y1: np.ndarray, y2: np.ndarray, ids1, ids2) -> tuple[np.ndarray, np.ndarray]:
    """Pair the columns of ``y2`` (N2 neurons) with columns of ``y1`` one to one by relative RMS distance."""
    s, n1 = y1.shape
    n2 = y2.shape[1]
    pairs = np.full(n2, -1, dtype=np.int64)
    cost = np.ones(n2)
    if n1 == 0 or n2 == 0:
        return pairs, cost
    r1 = np.sqrt(np.mean(y1 * y1, axis=0))
    r2 = np.sqrt(np.mean(y2 * y2, axis=0))
    d2 = (r2[:, None] ** 2 + r1[None, :] ** 2 - 2.0 * (y2.T @ y1) / s)
    c = np.sqrt(np.maximum(d2, 0.0)) / (r1[None, :] + r2[:, None] + 1e-300)
    # the Gram form cancels for near-equal columns: recompute the few best candidates directly
    top = np.argsort(c, axis=1)[:, : min(4, n1)]
    for t in range(top.shape[1]):
        j = top[:, t]
        exact = np.sqrt(np.mean((y2 - y1[:, j]) ** 2, axis=0)) / (r1[j] + r2 + 1e-300)
        c[np.arange(n2), j] = exact
    same_id = np.asarray(ids2)[:, None] == np.asarray(ids1)[None, :]
    same_pos = np.arange(n2)[:, None] == np.arange(n1)[None, :]
    key = c + 1e-12 * (~same_id) + 1e-13 * (~same_pos)  # ties: same original id, then same position
    free1, free2 = np.ones(n1, bool), np.ones(n2, bool)
    for _ in range(8):  # mutual best pairs first (vectorised), then greedy over what is left
        if not free1.any() or not free2.any():
            break
        k = np.where(free2[:, None] & free1[None, :], key, np.inf)
        best1 = np.argmin(k, axis=1)
        best2 = np.argmin(k, axis=0)
        mutual = free2 & (best2[best1] == np.arange(n2)) & np.isfinite(k[np.arange(n2), best1])
        if not mutual.any():
            break
        i = np.flatnonzero(mutual)
        pairs[i], cost[i] = best1[i], c[i, best1[i]]
        free2[i] = False
        free1[best1[i]] = False
    if free1.any() and free2.any():
        rows, cols = np.flatnonzero(free2), np.flatnonzero(free1)
        sub = key[np.ix_(rows, cols)]
        for flat in np.argsort(sub, axis=None):
            i, j = rows[flat // cols.size], cols[flat % cols.size]
            if free2[i] and free1[j]:
                pairs[i], cost[i] = j, c[i, j]
                free2[i] = free1[j] = False
                if not free1.any() or not free2.any():
                    break
    return pairs, cost


def match(net1: Network, net2: Network, lo, hi, samples: int = 256, seed: int = 0) -> Matching:
    """Align the layers and pair the neurons of ``net2`` with those of ``net1`` over the hull of the boxes
    ``lo``, ``hi`` (see the module docstring).  Outputs are always aligned position by position."""
    if net1.input_size != net2.input_size or net1.output_size != net2.output_size:
        raise ValueError("the networks have different input or output sizes")
    lo, hi = _boxes(lo, hi)
    x = _sample(lo, hi, samples, seed)
    _, pre1 = net1.forward(x, preactivations=True)
    _, pre2 = net2.forward(x, preactivations=True)
    l1, l2 = len(net1.layers), len(net2.layers)
    band = abs(l1 - l2)
    cand: dict = {}
    for k1 in range(l1 - 1):
        for k2 in range(l2 - 1):
            if abs(k1 - k2) > band:
                continue
            pairs, cost = _pair_neurons(pre1[k1], pre2[k2], net1.layers[k1].neuron_ids, net2.layers[k2].neuron_ids)
            # deleted neurons are expected on the wider side: the layer's cost is that of its pairs
            mean = float(np.mean(cost[pairs >= 0])) if np.any(pairs >= 0) else 1.0
            if mean < ALIGN_THRESHOLD:
                cand[(k1, k2)] = (pairs, cost, mean)
    # monotone alignment of hidden layers maximising the summed margin below the threshold
    score = np.zeros((l1, l2))
    for k1 in range(l1 - 1):
        for k2 in range(l2 - 1):
            best = max(score[k1 - 1, k2] if k1 else 0.0, score[k1, k2 - 1] if k2 else 0.0)
            if (k1, k2) in cand:
                same = net1.layers[k1].layer_id == net2.layers[k2].layer_id
                gain = ALIGN_THRESHOLD - cand[(k1, k2)][2] + (1e-9 if same else 0.0)
                best = max(best, (score[k1 - 1, k2 - 1] if k1 and k2 else 0.0) + gain)
            score[k1, k2] = best
    chosen = []
    k1, k2 = l1 - 2, l2 - 2
    while k1 >= 0 and k2 >= 0:
        if k1 and score[k1, k2] == score[k1 - 1, k2]:
            k1 -= 1
        elif k2 and score[k1, k2] == score[k1, k2 - 1]:
            k2 -= 1
        elif (k1, k2) in cand and score[k1, k2] > 0:
            chosen.append((k1, k2))
            k1, k2 = k1 - 1, k2 - 1
        else:
            break
    layers = [LayerMatch(a, b, cand[(a, b)][0], cand[(a, b)][1]) for a, b in reversed(chosen)]
    m = net1.output_size
    out_cost = np.sqrt(np.mean((pre2[-1] - pre1[-1]) ** 2, axis=0)) / (
        np.sqrt(np.mean(pre1[-1] ** 2, axis=0)) + np.sqrt(np.mean(pre2[-1] ** 2, axis=0)) + 1e-300)
    layers.append(LayerMatch(l1 - 1, l2 - 1, np.arange(m), out_cost))
    return Matching(list(net1.widths) + [m], list(net2.widths) + [m], layers)


def unrelated(net1: Network, net2: Network) -> Matching:
    """The matching that aligns only the outputs: the networks taken as unrelated."""
    m = net1.output_size
    return Matching(list(net1.widths) + [m], list(net2.widths) + [m],
                    [LayerMatch(len(net1.layers) - 1, len(net2.layers) - 1, np.arange(m), np.ones(m))])


def _check(matching: Matching, net1: Network, net2: Network) -> None:
    prev = (-1, -1)
    lms = matching.layers
    if not lms or (lms[-1].k1, lms[-1].k2) != (len(net1.layers) - 1, len(net2.layers) - 1):
        raise ValueError("a matching must end with the output layers")
    for lm in lms:
        if lm.k1 <= prev[0] or lm.k2 <= prev[1]:
            raise ValueError("matched layers must increase in both networks")
        prev = (lm.k1, lm.k2)
        n1, n2 = net1.layers[lm.k1].n_out, net2.layers[lm.k2].n_out
        p = np.asarray(lm.pairs)
        if p.shape != (n2,) or np.any(p >= n1) or np.any(p < -1):
            raise ValueError(f"bad neuron pairs for layers {lm.k1}/{lm.k2}")
        used = p[p >= 0]
        if np.unique(used).size != used.size:
            raise ValueError(f"an N1 neuron of layer {lm.k1} is paired twice")
    if not np.array_equal(lms[-1].pairs, np.arange(net1.output_size)):
        raise ValueError("outputs must be paired position by position")


# ---- the graph ---------------------------------------------------------------------------------------
@dataclass
class _Node:
    kind: str  # "input", "affine", "relu", "diff"
    size: int
    parents: list = field(default_factory=list)  # affine: [(node, matrix (size, parent size))]
    const: np.ndarray | None = None  # affine
    src: int = -1  # relu: input node; diff: the y1 node
    dnode: int = -1  # diff: the d node
    acts: tuple = (RELU, RELU)  # diff: (act1, act2)
    paired: np.ndarray | None = None  # diff and d: positions with a partner (else delta = d = 0)
    ext: tuple | None = None  # (lower, upper) known from elsewhere (CROWN of one network)
    backsub: bool = False  # bound by back-substitution
    y2: tuple | None = None  # d: (lower, upper) of N2's pre-activation in N1 positions (CROWN)
    y1node: int = -1  # d: the y1 node its bounds tighten


class _Graph:
    """Nodes in topological order, built from two networks and a matching."""

    def __init__(self, net1: Network, net2: Network, matching: Matching, c1, c2):
        self.nodes: list[_Node] = [_Node("input", net1.input_size)]
        self.net1, self.net2 = net1, net2
        aligned = {lm.k2: lm for lm in matching.layers}
        # N1's chain is built lazily so that each d node comes before the ReLU of its y1
        self.y1: dict = {}
        self.h1: dict = {-1: 0}
        self.built1 = -1
        self.delta: dict = {}
        self.output_of: dict = {}  # d node -> its diff node
        self.c1 = c1
        h2 = [(0, None)]  # N2's previous activations: [(node, selection matrix (n2_prev, node size) or None)]
        h2_from = ("input", -1)  # what N2's previous layer was: ("input"|"aligned"|"own", N1 layer)
        for k2, layer2 in enumerate(net2.layers):
            lm = aligned.get(k2)
            if lm is None:  # an N2 layer of its own
                y = self._affine(self._consume(layer2.weight, h2), layer2.bias, ext=(c2.lower[k2], c2.upper[k2]))
                h = self._act(y, layer2.activation)
                h2, h2_from = [(h, None)], ("own", -1)
                continue
            k1 = lm.k1
            self._build1(k1 - 1)
            layer1 = net1.layers[k1]
            y1 = self._y1(k1)
            pairs = np.asarray(lm.pairs)
            ok = pairs >= 0
            n1 = layer1.n_out
            paired = np.zeros(n1, bool)
            paired[pairs[ok]] = True
            w2p = np.zeros((n1, layer2.n_in))
            w2p[pairs[ok]] = layer2.weight[ok]
            b2p = np.zeros(n1)
            b2p[pairs[ok]] = layer2.bias[ok]
            lo2, hi2 = c1.lower[k1].copy(), c1.upper[k1].copy()  # unpaired: N2's copy of the N1 neuron
            lo2[:, pairs[ok]] = c2.lower[k2][:, ok]
            hi2[:, pairs[ok]] = c2.upper[k2][:, ok]
            parents = self._consume(w2p, h2)
            b1 = np.where(paired, layer1.bias, 0.0)
            if h2_from[0] == "input" and k1 == 0:
                w1 = np.where(paired[:, None], layer1.weight, 0.0)
                parents = [(0, parents[0][1] - w1)]
                d = self._affine(parents, b2p - b1)
            elif h2_from[0] == "aligned" and h2_from[1] == k1 - 1:
                w1 = np.where(paired[:, None], layer1.weight, 0.0)
                h1prev = self.h1[k1 - 1]
                merged: dict = {}
                for node, mat in parents:
                    merged[node] = merged.get(node, 0.0) + mat
                merged[h1prev] = merged.get(h1prev, 0.0) - w1  # (W2' - W1) h1, formed entry by entry
                d = self._affine(list(merged.items()), b2p - b1)
            else:  # folded layers in between, or an N2 layer of its own before: d = y2 - y1
                parents.append((y1, -np.diag(paired.astype(np.float64))))
                d = self._affine(parents, np.where(paired, b2p, 0.0))
            dn = self.nodes[d]
            dn.backsub, dn.y2, dn.y1node, dn.paired = True, (lo2, hi2), y1, paired
            self._build1(k1)  # the ReLU of y1 comes after d (d tightens y1)
            delta = self._add(_Node("diff", n1, src=y1, dnode=d, acts=(layer1.activation, layer2.activation),
                                    paired=paired))
            self.output_of[d] = delta
            self.delta[k1] = delta
            # N2's activations of this layer: h1 + delta on paired neurons, its own nodes elsewhere
            sel = np.zeros((layer2.n_out, n1))
            sel[np.flatnonzero(ok), pairs[ok]] = 1.0
            new_h2 = [(self.h1[k1], sel), (delta, sel)]
            own = np.flatnonzero(~ok)
            if own.size:
                y = self._affine(self._consume(layer2.weight[own], h2), layer2.bias[own],
                                 ext=(c2.lower[k2][:, own], c2.upper[k2][:, own]))
                h = self._act(y, layer2.activation)
                place = np.zeros((layer2.n_out, own.size))
                place[own, np.arange(own.size)] = 1.0
                new_h2.append((h, place))
            h2, h2_from = new_h2, ("aligned", k1)
            if k2 == len(net2.layers) - 1:
                self.output = delta if RELU in (layer1.activation, layer2.activation) else d

    # ---- construction helpers ----
    def _add(self, node: _Node) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def _affine(self, parents, const, ext=None) -> int:
        size = int(np.asarray(const).size)
        return self._add(_Node("affine", size, parents=parents, const=np.asarray(const, dtype=np.float64),
                               ext=ext))

    def _act(self, y: int, activation: str) -> int:
        if activation != RELU:
            return y
        return self._add(_Node("relu", self.nodes[y].size, src=y))

    def _consume(self, weight: np.ndarray, h2: list) -> list:
        """``weight @ h2`` as parents of an affine node."""
        return [(node, weight if sel is None else weight @ sel) for node, sel in h2]

    def _y1(self, k1: int) -> int:
        if k1 not in self.y1:
            layer = self.net1.layers[k1]
            self.y1[k1] = self._affine([(self.h1[k1 - 1], layer.weight)], layer.bias,
                                       ext=(self.c1.lower[k1], self.c1.upper[k1]))
        return self.y1[k1]

    def _build1(self, upto: int) -> None:
        while self.built1 < upto:
            k = self.built1 + 1
            self.h1[k] = self._act(self._y1(k), self.net1.layers[k].activation)
            self.built1 = k


# ---- the relaxation of delta ------------------------------------------------------------------------
def _widen_sum(value: np.ndarray, terms: list, sign: float) -> np.ndarray:
    """``value`` (a float sum of ``terms``) moved outward by a margin dominating its rounding error."""
    return value + sign * _margin(sum(np.abs(t) for t in terms))


def _relu_parts(l, u, act):
    """(upper slope, upper intercept, lower slopes to try) of ``act`` on ``[l, u]``."""
    if act != RELU:
        one = np.ones_like(l)
        return one, np.zeros_like(l), [one]
    _, su, tu = _relaxation(l, u)
    unstable = (l < 0) & (u > 0)
    fixed = (l >= 0).astype(np.float64)
    return su, tu, [np.where(unstable, 0.0, fixed), np.where(unstable, 1.0, fixed)]


def _min0(v, act):
    return np.minimum(v, 0.0) if act == RELU else np.zeros_like(v)


def _act(v, act):
    return np.maximum(v, 0.0) if act == RELU else v


def _vertices(l1, u1, dl, du, l2, u2):
    """Candidate extreme points (y1, d) of the region, shape (..., 21), and which are feasible."""
    zero = np.zeros_like(l1)
    avals, bvals, cvals = (l1, u1, zero), (dl, du), (l2, u2, zero)
    ys, ds = [], []
    for a in avals:
        for b in bvals:
            ys.append(a), ds.append(b)
        for c in cvals:
            ys.append(a), ds.append(c - a)
    for b in bvals:
        for c in cvals:
            ys.append(c - b), ds.append(b)
    y = np.stack(ys, axis=-1)
    d = np.stack(ds, axis=-1)
    tol = (1e-9 * (np.abs(l1) + np.abs(u1) + np.abs(dl) + np.abs(du) + np.abs(l2) + np.abs(u2)) + 1e-300)[..., None]
    ok = ((y >= l1[..., None] - tol) & (y <= u1[..., None] + tol) & (d >= dl[..., None] - tol)
          & (d <= du[..., None] + tol) & (y + d >= l2[..., None] - tol) & (y + d <= u2[..., None] + tol))
    ok = np.where(ok.any(axis=-1, keepdims=True), ok, True)
    return y, d, ok


def diff_relaxation(l1, u1, dl, du, l2, u2, act1: str = RELU, act2: str = RELU):
    """Planes and interval of ``delta = act2(y1 + d) - act1(y1)`` for ``y1 in [l1, u1]``, ``d in [dl, du]``,
    ``y1 + d in [l2, u2]`` (sound bounds, arrays of one shape).

    Returns ``(upper, lower, interval)``: ``upper = (a, b, c)`` with ``delta <= a y1 + b d + c``, ``lower``
    the same with ``>=``, ``interval = (lo, hi)``.  The planes hold in exact arithmetic for the given
    floats up to the rounding of their own coefficients (covered by the callers' magnitude margins)."""
    zero = np.zeros_like(l1)
    s2, t2, a2s = _relu_parts(l2, u2, act2)
    s1, t1, a1s = _relu_parts(l1, u1, act1)
    ups = [(s2 - a1, s2, t2) for a1 in a1s]
    lows = [(a2 - s1, a2, -t1) for a2 in a2s]
    if act1 == RELU and act2 == RELU:  # chords of max(d, 0) and min(d, 0): first, preferred on ties
        width = np.where((dl < 0) & (du > 0), du - dl, 1.0)
        su = np.where(dl >= 0, 1.0, np.where(du <= 0, 0.0, du / width))
        sl = np.where(du <= 0, 1.0, np.where(dl >= 0, 0.0, -dl / width))
        straddle = (dl < 0) & (du > 0)
        ups.insert(0, (zero, su, np.where(straddle, -su * dl, 0.0)))
        lows.insert(0, (zero, sl, np.where(straddle, -sl * du, 0.0)))
    y, d, ok = _vertices(l1, u1, dl, du, l2, u2)
    true = _act(y + d, act2) - _act(y, act1)

    def pick(cands, sign):
        best, best_gap = cands[0], None
        for cand in cands:
            a, b, c = (np.asarray(v)[..., None] for v in cand)
            gap = np.where(ok, sign * (a * y + b * d + c - true), -np.inf).max(axis=-1)
            if best_gap is None:
                best_gap = gap
                continue
            better = gap < best_gap - 1e-12 * np.abs(best_gap)
            best = tuple(np.where(better, n, o) for n, o in zip(cand, best))
            best_gap = np.where(better, gap, best_gap)
        return tuple(np.broadcast_to(v, l1.shape).astype(np.float64) for v in best)

    upper, lower = pick(ups, 1.0), pick(lows, -1.0)
    # interval: delta = d + min1(y1) - min2(y2), and act2(l2) - act1(u1) <= delta <= act2(u2) - act1(l1)
    lo_c = [_widen_sum(dl + _min0(l1, act1) - _min0(u2, act2), [dl, l1, u2], -1.0),
            _widen_sum(_act(l2, act2) - _act(u1, act1), [l2, u1], -1.0)]
    hi_c = [_widen_sum(du + _min0(u1, act1) - _min0(l2, act2), [du, u1, l2], 1.0),
            _widen_sum(_act(u2, act2) - _act(l1, act1), [u2, l1], 1.0)]
    if act1 == RELU and act2 == RELU:
        lo_c.append(np.minimum(dl, 0.0))
        hi_c.append(np.maximum(du, 0.0))
    return upper, lower, (np.maximum.reduce(lo_c), np.minimum.reduce(hi_c))


# ---- evaluation --------------------------------------------------------------------------------------
class _Eval:
    """Bounds, magnitudes and relaxations of every node of a graph for a batch of boxes."""

    def __init__(self, g: _Graph, lo: np.ndarray, hi: np.ndarray):
        self.g = g
        self.centre, self.radius = (lo + hi) / 2.0, (hi - lo) / 2.0
        n = len(g.nodes)
        self.lo, self.hi, self.mag = [None] * n, [None] * n, [None] * n
        self.relax = [None] * n
        self.y2b: dict = {}
        self.lo[0], self.hi[0] = lo, hi
        self.mag[0] = np.maximum(np.abs(lo), np.abs(hi))
        for idx in range(1, n):
            self._visit(idx)

    def _visit(self, idx: int) -> None:
        node = self.g.nodes[idx]
        if node.kind == "affine":
            low = node.const[None, :]
            up = node.const[None, :]
            mag = np.abs(node.const)[None, :]
            for p, a in node.parents:
                ap, an = np.maximum(a, 0.0), np.minimum(a, 0.0)
                low = low + self.lo[p] @ ap.T + self.hi[p] @ an.T
                up = up + self.hi[p] @ ap.T + self.lo[p] @ an.T
                mag = mag + self.mag[p] @ np.abs(a).T
            mag = np.broadcast_to(mag, (self.centre.shape[0], node.size))
            margin = _margin(mag)
            low, up = low - margin, up + margin
            if node.backsub:
                rows = self._rows_needed(node, idx)
                b_up, b_low = self._backsub_bounds(idx, rows)
                low[:, rows] = np.maximum(low[:, rows], b_low - margin[:, rows])
                up[:, rows] = np.minimum(up[:, rows], b_up + margin[:, rows])
            if node.ext is not None:
                low, up = np.maximum(low, node.ext[0]), np.minimum(up, node.ext[1])
            if node.y2 is not None:  # a difference node: d in [l2 - u1, u2 - l1]; then tighten y1 and y2
                l1, u1 = self.lo[node.y1node], self.hi[node.y1node]
                l2, u2 = node.y2
                low = np.maximum(low, _widen_sum(l2 - u1, [l2, u1], -1.0))
                up = np.minimum(up, _widen_sum(u2 - l1, [u2, l1], 1.0))
                low, up = np.where(node.paired, low, 0.0), np.where(node.paired, up, 0.0)
                self.lo[node.y1node] = np.maximum(l1, _widen_sum(l2 - up, [l2, up], -1.0))
                self.hi[node.y1node] = np.minimum(u1, _widen_sum(u2 - low, [u2, low], 1.0))
                node_y2 = (np.maximum(l2, _widen_sum(l1 + low, [l1, low], -1.0)),
                           np.minimum(u2, _widen_sum(u1 + up, [u1, up], 1.0)))
                self.y2b[idx] = node_y2  # for the diff node
            self.lo[idx], self.hi[idx], self.mag[idx] = low, up, np.broadcast_to(mag, low.shape)
        elif node.kind == "relu":
            l, u = self.lo[node.src], self.hi[node.src]
            sl, su, tu = _relaxation(l, u)
            self.relax[idx] = (sl, su, tu)
            self.lo[idx], self.hi[idx] = np.maximum(l, 0.0), np.maximum(u, 0.0)
            self.mag[idx] = self.mag[node.src] * np.maximum(sl, su) + np.abs(tu)
        elif node.kind == "diff":
            l1, u1 = self.lo[node.src], self.hi[node.src]
            dl, du = self.lo[node.dnode], self.hi[node.dnode]
            l2, u2 = self.y2b[node.dnode]
            upper, lower, (ilo, ihi) = diff_relaxation(l1, u1, dl, du, l2, u2, *node.acts)
            keep = node.paired
            upper = tuple(np.where(keep, v, 0.0) for v in upper)
            lower = tuple(np.where(keep, v, 0.0) for v in lower)
            self.relax[idx] = (upper, lower)
            self.lo[idx], self.hi[idx] = np.where(keep, ilo, 0.0), np.where(keep, ihi, 0.0)
            my1, md = self.mag[node.src], self.mag[node.dnode]
            self.mag[idx] = np.maximum(*(np.abs(a) * my1 + np.abs(b) * md + np.abs(c) for a, b, c in (upper, lower)))

    def _rows_needed(self, node: _Node, idx: int) -> np.ndarray:
        """Neurons of a difference node whose bounds matter: not those that are in the same stable state in
        both networks on every box (delta is then 0 or d whatever d's bounds; interval propagation suffices)."""
        if idx == self.g.output or node.y2 is None:
            return np.arange(node.size)
        acts = self.g.nodes[self.g.output_of[idx]].acts
        if acts != (RELU, RELU):
            return np.flatnonzero(node.paired) if acts != (LINEAR, LINEAR) else np.arange(0)
        l1, u1 = self.lo[node.y1node], self.hi[node.y1node]
        l2, u2 = node.y2
        same = np.all(((u1 <= 0) & (u2 <= 0)) | ((l1 >= 0) & (l2 >= 0)), axis=0)
        return np.flatnonzero(node.paired & ~same)

    def _backsub_bounds(self, idx: int, rows: np.ndarray | None = None):
        size = self.g.nodes[idx].size
        eye = np.eye(size) if rows is None else np.eye(size)[rows]
        value = self.backsub(idx, np.concatenate([eye, -eye]))
        n = eye.shape[0]
        return value[:, :n], -value[:, n:]

    def backsub(self, target: int, rows: np.ndarray) -> np.ndarray:
        """Upper bounds (B, R) of ``rows @ node[target]`` by back-substitution to the input box (before
        margins)."""
        coefs = {target: rows[None, :, :]}
        const = np.zeros((1, rows.shape[0]))
        at_input = None
        for idx in range(target, -1, -1):
            lam = coefs.pop(idx, None)
            if lam is None:
                continue
            node = self.g.nodes[idx]
            if node.kind == "input":
                at_input = lam
            elif node.kind == "affine":
                const = const + lam @ node.const
                for p, a in node.parents:
                    _accumulate(coefs, p, _matmul(lam, a))
            elif node.kind == "relu":
                sl, su, tu = self.relax[idx]
                pos = np.maximum(lam, 0.0)
                _accumulate(coefs, node.src, lam * sl[:, None, :] + pos * (su - sl)[:, None, :])
                const = const + np.einsum("brn,bn->br", pos, tu)
            else:
                (au, bu, cu), (al, bl, cl) = self.relax[idx]
                pos = np.maximum(lam, 0.0)  # positive coefficients take the upper plane, negative the lower
                _accumulate(coefs, node.src, lam * al[:, None, :] + pos * (au - al)[:, None, :])
                _accumulate(coefs, node.dnode, lam * bl[:, None, :] + pos * (bu - bl)[:, None, :])
                const = const + np.einsum("brn,bn->br", lam, cl) + np.einsum("brn,bn->br", pos, cu - cl)
        batch = self.centre.shape[0]
        if at_input is None:
            return np.broadcast_to(const, (batch, rows.shape[0])).copy()
        at_input = np.broadcast_to(at_input, (batch,) + at_input.shape[1:])
        return (np.einsum("brn,bn->br", at_input, self.centre) + np.einsum("brn,bn->br", np.abs(at_input), self.radius)
                + const)


def _margin(mag: np.ndarray) -> np.ndarray:
    """Outward margin of a value whose partial sums are bounded by ``mag``: none when ``mag == 0`` (every
    term is an exact zero then)."""
    return np.where(mag > 0, REL_MARGIN * mag + ABS_MARGIN, 0.0)


def _matmul(lam: np.ndarray, a: np.ndarray) -> np.ndarray:
    b, r, n = lam.shape
    return (lam.reshape(b * r, n) @ a).reshape(b, r, a.shape[1])


def _accumulate(coefs: dict, node: int, value: np.ndarray) -> None:
    coefs[node] = value if node not in coefs else coefs[node] + value


# ---- API -------------------------------------------------------------------------------------------------
def _graph_bounds(net1: Network, net2: Network, matching: Matching, lo, hi, c1, c2):
    g = _Graph(net1, net2, matching, c1, c2)
    ev = _Eval(g, lo, hi)
    low, up = ev.lo[g.output], ev.hi[g.output]
    if g.nodes[g.output].kind == "diff":  # ReLU outputs: back-substitute from delta itself
        b_up, b_low = ev._backsub_bounds(g.output)
        margin = _margin(ev.mag[g.output])
        low, up = np.maximum(low, b_low - margin), np.minimum(up, b_up + margin)
    return low, up, g, ev


def diff_bounds(net1: Network, net2: Network, lo, hi, matching: Matching | None = None, *,
                symmetric: bool = False, with_unrelated: bool = True, bounds1=None,
                bounds2=None) -> tuple[np.ndarray, np.ndarray]:
    """Sound ``(lower, upper)`` of ``f2(x) - f1(x)`` per output over each box ``lo``, ``hi`` (B, n0); shapes
    (B, m).

    ``matching``: from :func:`match` (computed over the hull of the boxes when omitted; pass it to reuse it
    across many pieces of an input split).  ``symmetric`` also propagates with the roles of the networks
    exchanged (``d = W1 delta' + (W2 - W1) h2 + ...``) and intersects.  ``with_unrelated`` intersects with
    the bound of the networks taken as unrelated (only the outputs aligned).  ``bounds1``/``bounds2``: sound
    pre-activation bounds of each network on these boxes (``onnxcomp.bounds.Bounds``, e.g. from
    ``alpha_crown_bounds``) to use instead of CROWN's."""
    if net1.input_size != net2.input_size or net1.output_size != net2.output_size:
        raise ValueError("the networks have different input or output sizes")
    lo, hi = _boxes(lo, hi)
    if matching is None:
        matching = match(net1, net2, lo, hi)
    _check(matching, net1, net2)
    c1 = bounds1 if bounds1 is not None else crown_bounds(net1, lo, hi)
    c2 = bounds2 if bounds2 is not None else crown_bounds(net2, lo, hi)
    low, up, _, _ = _graph_bounds(net1, net2, matching, lo, hi, c1, c2)
    if symmetric:
        l_s, u_s, _, _ = _graph_bounds(net2, net1, matching.swapped(), lo, hi, c2, c1)
        low, up = np.maximum(low, -u_s), np.minimum(up, -l_s)
    if with_unrelated and len(matching.layers) > 1:
        l_u, u_u, _, _ = _graph_bounds(net1, net2, unrelated(net1, net2), lo, hi, c1, c2)
        low, up = np.maximum(low, l_u), np.minimum(up, u_u)
    bad = ~(np.isfinite(low) & np.isfinite(up))
    return np.where(bad, -np.inf, low), np.where(bad, np.inf, up)


def max_abs_diff_bound(net1: Network, net2: Network, lo, hi, matching: Matching | None = None, **kwargs) -> float:
    """A certified bound of ``max |f1(x) - f2(x)|`` over every box and output."""
    low, up = diff_bounds(net1, net2, lo, hi, matching, **kwargs)
    return float(np.maximum(np.maximum(up, -low), 0.0).max(initial=0.0))
