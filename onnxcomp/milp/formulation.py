"""A solver-independent MILP formulation of a ReLU network over an input box (ISA paper (1)-(4), (7)-(12)).

For every neuron with sound bounds ``l <= y <= u`` (``y = w . x_prev + b``):

* proven stably inactive: no variable, its output is the constant 0;
* proven stably active, or a linear layer: a continuous ``x`` with ``x = y``;
* otherwise: continuous ``x`` and binary ``z`` with the big-M hull of the ReLU using the tight bounds,
  ``x >= 0, x >= y, x <= u z, x <= y - l (1 - z)`` (equivalent to the paper's (1)-(4) with ``chi = x - y``).

ISA indicators (paper (10)-(12)) carry a margin ``eps`` so that a solution claiming an unseen state is
a real one, not a tolerance artefact at ``y = 0``: ``p = 1`` forces ``y >= eps`` (``y - (eps - l) p >= l``,
``p <= z``) and ``q = 1`` forces ``y <= -eps`` (``y + (u + eps) q <= u``, ``q <= 1 - z``).

The description is plain data (variables with bounds and types, linear rows); the backends in this
package turn it into a SCIP or Gurobi model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CONT, BIN = "C", "B"


@dataclass
class Row:
    """``lhs <= sum(coef * var) <= rhs`` (either side may be infinite)."""

    idx: np.ndarray
    coef: np.ndarray
    lhs: float
    rhs: float


@dataclass
class ReluMilp:
    """Variables (bounds, types, names), rows, and where the network's quantities live."""

    lb: list = field(default_factory=list)
    ub: list = field(default_factory=list)
    vtype: list = field(default_factory=list)
    names: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    inputs: np.ndarray | None = None
    post: list = field(default_factory=list)  # per layer: var index of x_i, or -1 (constant 0)
    pre: list = field(default_factory=list)  # per layer: list of (idx, coef, const) giving y_i
    p_vars: dict = field(default_factory=dict)  # (k, i) -> var index
    q_vars: dict = field(default_factory=dict)
    z_vars: dict = field(default_factory=dict)
    objective: dict = field(default_factory=dict)  # var index -> coefficient
    maximize: bool = True
    constant: float = 0.0

    def add_var(self, lb: float, ub: float, vtype: str, name: str) -> int:
        self.lb.append(float(lb))
        self.ub.append(float(ub))
        self.vtype.append(vtype)
        self.names.append(name)
        return len(self.lb) - 1

    def add_row(self, idx, coef, lhs: float, rhs: float) -> None:
        self.rows.append(Row(np.asarray(idx, dtype=np.int64), np.asarray(coef, dtype=np.float64), float(lhs), float(rhs)))

    @property
    def n_vars(self) -> int:
        return len(self.lb)

    @property
    def n_binary(self) -> int:
        return sum(1 for t in self.vtype if t == BIN)


def build(
    layers,
    lo: np.ndarray,
    hi: np.ndarray,
    lower: list,
    upper: list,
    stable_inactive: list,
    stable_active: list,
    n_layers: int,
    p_set: list | None = None,
    q_set: list | None = None,
    eps: list | None = None,
    into: ReluMilp | None = None,
    tag: str = "",
) -> ReluMilp:
    """Formulate the first ``n_layers`` layers (their post-activations) over the box [lo, hi].

    ``layers``: the network's Dense layers; ``lower``/``upper``: sound pre-activation bounds per layer;
    ``stable_*``: proven states (boolean masks); ``p_set``/``q_set``: masks of neurons that get ISA
    indicators; ``eps``: per-neuron margins for them.  ``into``: add this network to an existing
    formulation, sharing its input variables (two networks side by side, for equivalence bounds); its
    layers are appended to ``post``/``pre`` and its variable names carry ``tag``.
    """
    if into is None:
        m = ReluMilp()
        m.inputs = np.array([m.add_var(lo[j], hi[j], CONT, f"x0_{j}") for j in range(len(lo))], dtype=np.int64)
    else:
        m = into
    prev_idx = m.inputs
    prev_valid = np.ones(len(lo), dtype=bool)
    for k in range(n_layers):
        layer = layers[k]
        w, b = layer.weight, layer.bias
        cols = prev_idx[prev_valid]
        wk = w[:, prev_valid]
        post = np.full(layer.n_out, -1, dtype=np.int64)
        pre = []
        for i in range(layer.n_out):
            nz = np.flatnonzero(wk[i])
            idx, coef, const = cols[nz], wk[i, nz], float(b[i])
            pre.append((idx, coef, const))
            l, u = float(lower[k][i]), float(upper[k][i])
            relu = layer.is_relu
            if relu and stable_inactive[k][i]:
                continue
            if not relu or stable_active[k][i]:
                x = m.add_var(max(l, 0.0) if relu else l, u, CONT, f"{tag}x{k + 1}_{i}")
                m.add_row(np.append(idx, x), np.append(coef, -1.0), -const, -const)  # y - x = 0
                post[i] = x
                continue
            x = m.add_var(0.0, max(u, 0.0), CONT, f"{tag}x{k + 1}_{i}")
            z = m.add_var(0.0, 1.0, BIN, f"{tag}z{k + 1}_{i}")
            m.z_vars[(tag, k, i) if tag else (k, i)] = z
            m.add_row(np.append(idx, x), np.append(coef, -1.0), -np.inf, -const)  # x >= y
            m.add_row(np.append(idx, [x, z]), np.append(coef, [-1.0, l]), l - const, np.inf)  # x <= y - l(1-z)
            m.add_row([x, z], [1.0, -u], -np.inf, 0.0)  # x <= u z
            post[i] = x
            if p_set is not None and p_set[k][i]:
                e = float(eps[k][i])
                p = m.add_var(0.0, 1.0, BIN, f"p{k + 1}_{i}")
                m.p_vars[(k, i)] = p
                m.add_row(np.append(idx, p), np.append(coef, -(e - l)), l - const, np.inf)  # y >= eps p + l (1-p)
                m.add_row([p, z], [1.0, -1.0], -np.inf, 0.0)  # p <= z
                m.objective[p] = 1.0
            if q_set is not None and q_set[k][i]:
                e = float(eps[k][i])
                q = m.add_var(0.0, 1.0, BIN, f"q{k + 1}_{i}")
                m.q_vars[(k, i)] = q
                m.add_row(np.append(idx, q), np.append(coef, u + e), -np.inf, u - const)  # y <= -eps q + u (1-q)
                m.add_row([q, z], [1.0, 1.0], -np.inf, 1.0)  # q <= 1 - z
                m.objective[q] = 1.0
        m.post.append(post)
        m.pre.append(pre)
        prev_idx, prev_valid = post, post >= 0
    return m


def solution_from_input(milp: ReluMilp, layers, x0: np.ndarray) -> np.ndarray:
    """The MILP point that a real input induces: every variable set by a float64 forward pass, all ISA
    indicators 0.  It satisfies every row (``violations`` checks that), so the formulation always has
    a feasible point and a solver that reports infeasibility has found a bug, not a proof."""
    val = np.zeros(milp.n_vars)
    val[milp.inputs] = x0
    h = np.asarray(x0, dtype=np.float64)
    for k, post in enumerate(milp.post):
        layer = layers[k]
        y = layer.weight @ h + layer.bias
        out = np.maximum(y, 0.0) if layer.is_relu else y
        for i in np.flatnonzero(post >= 0):
            val[post[i]] = out[i]
        for (kk, i), z in milp.z_vars.items():
            if kk == k:
                val[z] = 1.0 if y[i] > 0 else 0.0
        h = out
    return val


def violations(milp: ReluMilp, val: np.ndarray, tol: float = 1e-7) -> int:
    """Number of rows and bounds ``val`` violates (relative tolerance ``tol``)."""
    bad = 0
    for r in milp.rows:
        a = float(r.coef @ val[r.idx])
        scale = 1.0 + float(np.abs(r.coef * val[r.idx]).sum())
        if a < r.lhs - tol * scale or a > r.rhs + tol * scale:
            bad += 1
    lb, ub = np.asarray(milp.lb), np.asarray(milp.ub)
    bad += int(np.sum((val < lb - tol * (1 + np.abs(lb))) | (val > ub + tol * (1 + np.abs(ub)))))
    return bad


# ---- sparse prefix formulations (one layer's neurons as targets; per-side feasibility, bound tightening) ----
@dataclass
class SparseMilp:
    """A MILP (or LP) as plain numpy arrays, picklable, for the HiGHS and SCIP sparse paths.

    Columns: bounds ``lb``/``ub`` and ``integer`` flags; rows: ``row_lo <= A x <= row_hi`` with ``A`` in
    CSR form (``indptr``, ``indices``, ``data``).  ``inputs``: the columns of the network input;
    ``targets``: target neuron -> column of its pre-activation ``y``; ``obj``: objective coefficients
    (all 0 unless set), ``maximize``.  ``relaxed``: how many unstable neurons were given the triangle
    LP relaxation instead of a binary (sound: it encloses the ReLU's graph)."""

    lb: np.ndarray
    ub: np.ndarray
    integer: np.ndarray
    row_lo: np.ndarray
    row_hi: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    inputs: np.ndarray
    targets: dict
    obj: np.ndarray
    maximize: bool = True
    relaxed: int = 0

    @property
    def n_cols(self) -> int:
        return int(self.lb.size)

    @property
    def n_rows(self) -> int:
        return int(self.row_lo.size)

    @property
    def n_binary(self) -> int:
        return int(self.integer.sum())

    def row_activity(self, val: np.ndarray) -> np.ndarray:
        out = np.zeros(self.n_rows)
        for r in range(self.n_rows):
            s, e = self.indptr[r], self.indptr[r + 1]
            out[r] = self.data[s:e] @ val[self.indices[s:e]]
        return out


def build_prefix(weights: list, biases: list, relu: list, lo: np.ndarray, hi: np.ndarray, lower: list, upper: list,
                 layer: int, targets, binary: list | None = None) -> SparseMilp:
    """The first ``layer`` layers of a dense ReLU chain over the box [lo, hi], plus a free continuous
    column ``y = W[layer][i] h + b[layer][i]`` for each target neuron ``i`` (bounded by ``lower[layer][i]``,
    ``upper[layer][i]``).

    ``weights``/``biases``/``relu``: per layer (at least ``layer + 1`` entries); ``lower``/``upper``: sound
    pre-activation bounds of layers ``<= layer``.  Per neuron of an earlier layer: ``u <= 0`` (ReLU): the
    constant 0, no column; ``l >= 0`` or a linear layer: ``h = y``; otherwise ``y`` with its row, ``h`` and
    a binary ``z``: ``h >= y``, ``h <= y - l (1 - z)``, ``h <= u z`` (the big-M hull, whose LP relaxation is
    the triangle).  ``binary[j]``: optional masks of the unstable neurons that get a binary; the others
    get only the triangle ``h >= 0, h >= y, h <= u (y - l) / (u - l)`` (a sound relaxation: a proof of
    infeasibility still holds for the network, a solution is only a candidate).
    """
    lo = np.asarray(lo, dtype=np.float64).reshape(-1)
    hi = np.asarray(hi, dtype=np.float64).reshape(-1)
    lb, ub, integer = list(lo), list(hi), [False] * lo.size
    row_lo: list = []
    row_hi: list = []
    ptr = [0]
    ind: list = []
    val: list = []

    def col(a, b, is_int=False):
        lb.append(float(a))
        ub.append(float(b))
        integer.append(is_int)
        return len(lb) - 1

    def row(idx, coef, a, b):
        ind.append(np.asarray(idx, dtype=np.int64))
        val.append(np.asarray(coef, dtype=np.float64))
        ptr.append(ptr[-1] + len(ind[-1]))
        row_lo.append(float(a))
        row_hi.append(float(b))

    prev = np.arange(lo.size, dtype=np.int64)  # column of each previous-layer output, -1 = constant 0
    n_relaxed = 0
    for k in range(layer + 1):
        w, b = np.asarray(weights[k], dtype=np.float64), np.asarray(biases[k], dtype=np.float64)
        valid = prev >= 0
        cols = prev[valid]
        wk = w[:, valid]
        if k == layer:
            tcols = {}
            for i in targets:
                i = int(i)
                nz = np.flatnonzero(wk[i])
                y = col(lower[k][i], upper[k][i])
                row(np.append(cols[nz], y), np.append(wk[i, nz], -1.0), -b[i], -b[i])
                tcols[i] = y
            break
        post = np.full(w.shape[0], -1, dtype=np.int64)
        for i in range(w.shape[0]):
            l, u = float(lower[k][i]), float(upper[k][i])
            if relu[k] and u <= 0:
                continue
            nz = np.flatnonzero(wk[i])
            if not relu[k] or l >= 0:
                y = col(max(l, 0.0) if relu[k] else l, u)
                row(np.append(cols[nz], y), np.append(wk[i, nz], -1.0), -b[i], -b[i])
                post[i] = y
                continue
            y = col(l, u)
            row(np.append(cols[nz], y), np.append(wk[i, nz], -1.0), -b[i], -b[i])
            h = col(0.0, u)
            row([h, y], [1.0, -1.0], 0.0, np.inf)  # h >= y
            if binary is None or binary[k][i]:
                z = col(0.0, 1.0, True)
                row([h, y, z], [1.0, -1.0, -l], -np.inf, -l)  # h <= y - l (1 - z)
                row([h, z], [1.0, -u], -np.inf, 0.0)  # h <= u z
            else:
                s = u / (u - l)
                row([h, y], [1.0, -s], -np.inf, -s * l)  # h <= u (y - l) / (u - l)
                n_relaxed += 1
            post[i] = h
        prev = post
    n = len(lb)
    return SparseMilp(np.array(lb), np.array(ub), np.array(integer, dtype=bool), np.array(row_lo), np.array(row_hi),
                      np.array(ptr, dtype=np.int64), np.concatenate(ind) if ind else np.zeros(0, np.int64),
                      np.concatenate(val) if val else np.zeros(0), np.arange(lo.size, dtype=np.int64), tcols,
                      np.zeros(n), True, n_relaxed)
