"""Convolution layers of the IR: ``Conv`` (with any BatchNormalization folded in, and average pooling as
the depthwise convolution it is).

A ``Conv`` is one layer of the chain, like ``Dense``: it maps one flattened sample (the input feature map
``in_shape = (C_in, H, W)`` in C order, as ONNX's NCHW tensors flatten) to its output units, and it answers
the same questions a pass asks of a layer: ``n_in``, ``n_out``, ``weight`` (the linear map), ``bias``,
``activation``, ``neuron_ids``, ``preactivation`` and ``apply``.  What differs is how the map is held:

* the parameters are the kernel ``(C_out, C_in / group, kh, kw)`` and a bias per output unit
  (``unit_bias``, shape ``(C_out, H_out, W_out)``; a per-channel bias, as ONNX's Conv has, is the common
  case), with ONNX's geometry (``strides``, ``pads`` = (top, left, bottom, right), ``dilations``,
  ``group``);
* ``weight`` is the same linear map as a scipy CSR matrix (one row per output unit, one entry per kernel
  tap that lands inside the input: ``units x fan_in`` entries), built once on first use.  The dense Toeplitz
  matrix is never formed; every propagation (interval, CROWN back-substitution, a MILP's rows) reads this
  sparse operator, whose products are exactly the convolution and its transpose.

Neuron identity: an output unit is (channel, row, column) of the ORIGINAL layer; ``neuron_ids[i]`` is
``channel * H_out * W_out + row * W_out + column`` in that numbering (``unit_label`` spells it out), so
removing channels or units never renumbers what a report says.  ``channel_ids`` are the original
output channels still present; ``units`` (``None`` = all) lists which units of the present channels the
layer emits: a unit proven constant can leave the layer's output when the next layer is dense (the
writer emits a ``Gather`` after the ``Flatten``), while the convolution still computes its channel.

``op == "AveragePool"`` marks a layer read from an AveragePool / GlobalAveragePool (a depthwise kernel of
``1 / (kh kw)``); the writer writes it back as the pooling op while its kernel is still that.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from .ir import ACTIVATIONS, RELU, frozen_array


DIRECT_MIN_ROWS = 16
"""From this many rows on, a convolution is evaluated as one (by kernel taps) rather than as its sparse matrix
product: scipy's sparse-times-dense product does not use BLAS (a CIFAR-sized 4-conv net: 6.2 s for 500 rows)."""


IM2COL_ENTRIES = 4_000_000
"""Largest im2col block (entries, 32 MB of float64) :meth:`Conv.convolve` builds at a time."""


def conv_output_hw(in_hw: tuple, kernel_hw: tuple, strides: tuple, pads: tuple, dilations: tuple) -> tuple:
    """(H_out, W_out) of a convolution (floor mode, as ONNX's Conv)."""
    out = []
    for axis in range(2):
        size = in_hw[axis] + pads[axis] + pads[axis + 2] - dilations[axis] * (kernel_hw[axis] - 1) - 1
        out.append(size // strides[axis] + 1)
    return tuple(int(v) for v in out)


@dataclass(frozen=True, eq=False)
class Conv:
    """``activation(conv(x, kernel) + unit_bias)`` on one flattened feature map; see the module docstring."""

    kernel: np.ndarray
    unit_bias: np.ndarray
    in_shape: tuple
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    dilations: tuple = (1, 1)
    group: int = 1
    activation: str = RELU
    layer_id: int = 0
    channel_ids: tuple = ()
    units: tuple | None = None
    source: str = ""
    op: str = "Conv"
    orig_channels: int = 0
    pool: tuple = ()
    """For the layers a MaxPool becomes (see :func:`max_pool`): (part, parts, kernel_hw, strides, pads,
    zero_pads) of the pooling, the same on each part but the part; empty otherwise."""
    in_perm: tuple | None = None
    """The first layer of a model whose input is not NCHW (a TF model's NHWC input and its Transpose): the
    convolution reads ``x[in_perm]`` of the flattened input; ``None`` otherwise."""
    quant: object = None
    """How the kernel is stored once quantized (``onnxcomp.ir.Quantization``, ``codes`` of the kernel's shape;
    ``int8``: one scale per output channel); ``None``: plain floats.  ``kernel`` holds the dequantized values."""

    def __post_init__(self) -> None:
        k = np.asarray(self.kernel, dtype=np.float64)
        if k.ndim != 4:
            raise ValueError(f"Conv kernel must be 4-D, got shape {k.shape}")
        in_shape = tuple(int(d) for d in self.in_shape)
        if len(in_shape) != 3:
            raise ValueError(f"Conv input shape must be (C, H, W), got {in_shape}")
        group = int(self.group)
        if group < 1 or in_shape[0] % group or k.shape[1] * group != in_shape[0]:
            raise ValueError(f"Conv kernel {k.shape} with group {group} does not read {in_shape[0]} channels")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}")
        for name, n in (("strides", 2), ("pads", 4), ("dilations", 2)):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
            if len(getattr(self, name)) != n:
                raise ValueError(f"Conv {name} must have {n} entries")
        object.__setattr__(self, "in_shape", in_shape)
        object.__setattr__(self, "group", group)
        if self.in_perm is not None:
            perm = tuple(int(i) for i in self.in_perm)
            if sorted(perm) != list(range(int(np.prod(in_shape)))):
                raise ValueError("Conv in_perm must be a permutation of its input features")
            object.__setattr__(self, "in_perm", None if perm == tuple(range(len(perm))) else perm)
        object.__setattr__(self, "pool", tuple(tuple(v) if isinstance(v, (list, tuple)) else int(v)
                                               for v in self.pool))
        object.__setattr__(self, "kernel", frozen_array(k))
        if self.quant is not None and tuple(self.quant.codes.shape) != k.shape:
            raise ValueError(f"Conv quantization codes {self.quant.codes.shape} do not match the kernel {k.shape}")
        ho, wo = conv_output_hw(in_shape[1:], k.shape[2:], self.strides, self.pads, self.dilations)
        if ho <= 0 or wo <= 0:
            raise ValueError(f"Conv output would be empty ({ho} x {wo})")
        b = np.asarray(self.unit_bias, dtype=np.float64)
        if b.ndim == 1 and b.size == k.shape[0]:
            b = np.broadcast_to(b[:, None, None], (k.shape[0], ho, wo))
        b = b.reshape(k.shape[0], ho, wo)
        object.__setattr__(self, "unit_bias", frozen_array(b))
        ids = tuple(int(c) for c in self.channel_ids) if self.channel_ids else tuple(range(k.shape[0]))
        if len(ids) != k.shape[0]:
            raise ValueError(f"Conv has {k.shape[0]} channels but {len(ids)} channel_ids")
        object.__setattr__(self, "channel_ids", ids)
        if not self.orig_channels:
            object.__setattr__(self, "orig_channels", max(ids) + 1 if ids else 0)
        if self.units is not None:
            units = tuple(int(u) for u in self.units)
            total = k.shape[0] * ho * wo
            if any(u < 0 or u >= total for u in units) or list(units) != sorted(set(units)):
                raise ValueError("Conv units must be increasing indices of its output units")
            object.__setattr__(self, "units", units)

    # ---- shape facts -------------------------------------------------------------------------
    @property
    def out_channels(self) -> int:
        return int(self.kernel.shape[0])

    @property
    def out_hw(self) -> tuple:
        return tuple(self.unit_bias.shape[1:])

    @property
    def out_shape(self) -> tuple:
        """(C_out, H_out, W_out) of the full feature map the convolution computes."""
        return (self.out_channels,) + self.out_hw

    @property
    def n_in(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def n_full(self) -> int:
        return int(np.prod(self.out_shape))

    @property
    def n_out(self) -> int:
        return self.n_full if self.units is None else len(self.units)

    @property
    def is_relu(self) -> bool:
        return self.activation == RELU

    @cached_property
    def emitted(self) -> np.ndarray:
        """Indices, into the full map of the present channels, of the units this layer outputs."""
        return np.arange(self.n_full) if self.units is None else np.asarray(self.units, dtype=np.int64)

    @cached_property
    def neuron_ids(self) -> tuple:
        hw = self.out_hw[0] * self.out_hw[1]
        ch = np.asarray(self.channel_ids, dtype=np.int64)[self.emitted // hw]
        return tuple(int(v) for v in ch * hw + self.emitted % hw)

    def unit_label(self, neuron_id: int) -> str:
        """'channel c, row r, column q' of an original unit id."""
        ho, wo = self.out_hw
        c, rest = divmod(int(neuron_id), ho * wo)
        return f"channel {c}, row {rest // wo}, column {rest % wo}"

    @property
    def written_as_pool(self) -> bool:
        """Written as a pooling op (no parameters in the file): a plain AveragePool, or a part of a MaxPool."""
        return bool(self.pool) or self.is_plain_average_pool

    @property
    def params(self) -> int:
        if self.written_as_pool:
            return 0
        per_channel = self.bias_per_channel is not None
        return int(self.kernel.size + (self.out_channels if per_channel else self.unit_bias.size))

    @property
    def nonzero_params(self) -> int:
        if self.written_as_pool:
            return 0
        b = self.bias_per_channel
        return int(np.count_nonzero(self.kernel) + np.count_nonzero(b if b is not None else self.unit_bias))

    @property
    def macs(self) -> int:
        """Multiply-accumulates per sample: every kernel tap at every output position of every channel (a
        pooling's additions or comparisons count as one each; a MaxPool's once, on its last part, whose
        output is the pooled map)."""
        if self.pool:
            part, parts, kernel_hw = self.pool[:3]
            return int(np.prod(kernel_hw) * self.n_full) if part == parts - 1 else 0
        return int(self.kernel[0].size * self.n_full)

    @cached_property
    def bias_per_channel(self) -> np.ndarray | None:
        """The bias as one value per channel when it is (ONNX Conv's form), else ``None``."""
        b = self.unit_bias.reshape(self.out_channels, -1)
        if b.shape[1] == 0 or np.all(b == b[:, :1]):
            return b[:, 0].copy()
        return None

    @property
    def is_plain_average_pool(self) -> bool:
        """Still exactly the AveragePool it was read from (uniform depthwise kernel, zero bias)."""
        if self.op != "AveragePool" or self.group != self.in_shape[0] or self.kernel.shape[1] != 1:
            return False
        taps = self.kernel.shape[2] * self.kernel.shape[3]
        return bool(np.all(self.kernel == 1.0 / taps) and not np.any(self.unit_bias))

    # ---- the linear map ----------------------------------------------------------------------
    @cached_property
    def weight(self):
        """The layer's linear map as a read-only-in-spirit CSR matrix (n_out x n_in), built from the kernel."""
        import scipy.sparse as sp

        rows, cols, vals = self._taps(self.emitted)
        mat = sp.csr_matrix((vals, (rows, cols)), shape=(self.n_out, self.n_in))
        mat.sum_duplicates()
        return mat

    def _taps(self, units: np.ndarray):
        """(row, column, value) of every kernel tap of the given output units (row = position in ``units``)."""
        c_out, cg, kh, kw = self.kernel.shape
        c_in, h, w = self.in_shape
        ho, wo = self.out_hw
        per_group = c_out // self.group
        ch, pos = np.divmod(units, ho * wo)
        oy, ox = np.divmod(pos, wo)
        g = ch // per_group
        ci = np.arange(cg)
        ky, kx = np.arange(kh), np.arange(kw)
        # broadcast to (units, cg, kh, kw)
        iy = oy[:, None, None, None] * self.strides[0] - self.pads[0] + ky[None, None, :, None] * self.dilations[0]
        ix = ox[:, None, None, None] * self.strides[1] - self.pads[1] + kx[None, None, None, :] * self.dilations[1]
        cin = g[:, None, None, None] * cg + ci[None, :, None, None]
        shape = (units.size, cg, kh, kw)
        iy, ix, cin = np.broadcast_to(iy, shape), np.broadcast_to(ix, shape), np.broadcast_to(cin, shape)
        vals = np.broadcast_to(self.kernel[ch][:, :, :, :], shape)
        row = np.broadcast_to(np.arange(units.size)[:, None, None, None], shape)
        ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
        col = (cin * h + iy) * w + ix
        col = col[ok] if self.in_perm is None else np.asarray(self.in_perm, dtype=np.int64)[col[ok]]
        return row[ok], col, vals[ok]

    @cached_property
    def bias(self) -> np.ndarray:
        return frozen_array(self.unit_bias.reshape(-1)[self.emitted])

    @cached_property
    def weight_abs(self):
        return abs(self.weight)

    @cached_property
    def weight_pos(self):
        return self.weight.maximum(0)

    @cached_property
    def weight_neg(self):
        return self.weight.minimum(0)

    def rows(self, idx) -> np.ndarray:
        """Dense rows ``weight[idx]`` (len(idx), n_in): the few a MILP row or one objective needs."""
        return self.weight[np.asarray(idx, dtype=np.int64)].toarray()

    def preactivation(self, x: np.ndarray) -> np.ndarray:
        """Pre-activation for a batch ``x`` of shape (N, n_in)."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[0] < DIRECT_MIN_ROWS:
            return np.asarray(x @ self.weight.T) + self.bias
        return self.convolve(x) + self.bias

    def _tap_windows(self):
        """(ky, kx, row slice, column slice) of every kernel tap: where it reads the padded input map."""
        _, _, kh, kw = self.kernel.shape
        ho, wo = self.out_hw
        (sh, sw), (dh, dw) = self.strides, self.dilations
        for ky in range(kh):
            for kx in range(kw):
                yield (ky, kx, slice(ky * dh, ky * dh + sh * (ho - 1) + 1, sh),
                       slice(kx * dw, kx * dw + sw * (wo - 1) + 1, sw))

    def _padded_nhwc(self, n: int) -> np.ndarray:
        """Zeros for ``n`` padded input maps, channels last (so every tap's window is a block of whole rows)."""
        c, h, w = self.in_shape
        t, l, b, r = self.pads
        return np.zeros((n, h + t + b, w + l + r, c))

    def _kernel_hwc(self, g: int) -> np.ndarray:
        """Group ``g``'s kernel as (taps kh*kw*cg in (ky, kx, ci) order, its output channels)."""
        per = self.out_channels // self.group
        return self.kernel[g * per:(g + 1) * per].transpose(0, 2, 3, 1).reshape(per, -1).T

    def im2col(self, x: np.ndarray) -> list:
        """The im2col matrices of rows ``x`` (m, n_in), one per group: (m, H_out * W_out, kh * kw * cg), a row
        per output position holding the input values every kernel tap of the group reads there (0 in the
        padding), in (ky, kx, ci) order -- the kernel's taps as :meth:`_kernel_hwc` orders them."""
        m = x.shape[0]
        c_in, h, w = self.in_shape
        t, l = self.pads[:2]
        _, cg, kh, kw = self.kernel.shape
        ho, wo = self.out_hw
        if self.in_perm is not None:
            x = x[:, np.asarray(self.in_perm, dtype=np.int64)]
        padded = self._padded_nhwc(m)
        padded[:, t:t + h, l:l + w, :] = x.reshape(m, c_in, h, w).transpose(0, 2, 3, 1)
        out = []
        for g in range(self.group):
            cols = np.empty((m, ho, wo, kh, kw, cg))
            src = padded[..., g * cg:(g + 1) * cg]
            for ky, kx, rows, colsl in self._tap_windows():
                cols[:, :, :, ky, kx, :] = src[:, rows, colsl, :]
            out.append(cols.reshape(m, ho * wo, kh * kw * cg))
        return out

    def convolve(self, x: np.ndarray) -> np.ndarray:
        """``x @ weight.T`` computed as the convolution it is: the im2col matrix of a block of rows (one
        column block per kernel tap) times the kernel, one BLAS product per group, for batches where the
        sparse product is slow."""
        n = x.shape[0]
        c_out, cg, kh, kw = self.kernel.shape
        positions = self.out_hw[0] * self.out_hw[1]
        per = c_out // self.group
        kernels = [self._kernel_hwc(g) for g in range(self.group)]
        out = np.empty((n, c_out, positions))
        block = max(1, IM2COL_ENTRIES // (positions * cg * kh * kw))
        for start in range(0, n, block):
            for g, cols in enumerate(self.im2col(x[start:start + block])):
                m = cols.shape[0]
                prod = cols.reshape(m * positions, -1) @ kernels[g]
                out[start:start + m, g * per:(g + 1) * per] = prod.reshape(m, positions, per).transpose(0, 2, 1)
        out = out.reshape(n, -1)
        return out if self.units is None else out[:, self.emitted]

    def transpose_convolve(self, d: np.ndarray) -> np.ndarray:
        """``d @ weight`` for rows ``d`` (M, n_out): the signal at the input (the transposed convolution):
        per group one BLAS product with the kernel gives every tap's share, added into the input map one
        tap (a strided window) at a time."""
        m = d.shape[0]
        c_in, h, w = self.in_shape
        t, l = self.pads[:2]
        c_out, cg, kh, kw = self.kernel.shape
        ho, wo = self.out_hw
        per = c_out // self.group
        kernels = [self._kernel_hwc(g) for g in range(self.group)]
        full = np.zeros((m, self.n_full))
        full[:, self.emitted] = d
        full = full.reshape(m, c_out, ho * wo)
        back = np.empty((m, c_in * h * w))
        block = max(1, IM2COL_ENTRIES // (ho * wo * cg * kh * kw))
        for start in range(0, m, block):
            sig = full[start:start + block]
            b = sig.shape[0]
            padded = self._padded_nhwc(b)
            for g in range(self.group):
                mine = sig[:, g * per:(g + 1) * per].transpose(0, 2, 1).reshape(b * ho * wo, per)
                share = (mine @ kernels[g].T).reshape(b, ho, wo, kh, kw, cg)
                dst = padded[..., g * cg:(g + 1) * cg]
                for ky, kx, rows, cols in self._tap_windows():
                    dst[:, rows, cols, :] += share[:, :, :, ky, kx, :]
            back[start:start + b] = padded[:, t:t + h, l:l + w, :].transpose(0, 3, 1, 2).reshape(b, -1)
        if self.in_perm is None:
            return back
        out = np.empty_like(back)
        out[:, np.asarray(self.in_perm, dtype=np.int64)] = back
        return out

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = self.preactivation(x)
        return np.maximum(y, 0.0) if self.is_relu else y

    # ---- structural edits (each returns a new layer) ------------------------------------------
    def keep_channels(self, keep: np.ndarray) -> "Conv":
        """Only the output channels in the boolean mask ``keep`` (their units with them)."""
        keep = np.asarray(keep, dtype=bool)
        hw = self.out_hw[0] * self.out_hw[1]
        new_index = np.cumsum(keep) - 1
        units = None
        if self.units is not None:
            em = self.emitted
            stay = keep[em // hw]
            units = tuple(int(new_index[c] * hw + p) for c, p in zip(em[stay] // hw, em[stay] % hw))
        group = self.group
        if group > 1:  # whole groups only: each reads its own slice of the input channels
            per_group = self.out_channels // group
            by_group = keep.reshape(group, per_group)
            if not np.all(by_group == by_group[:, :1]):
                raise ValueError("channels of a grouped convolution go a whole group at a time")
            kept_groups = by_group[:, 0]
            in_keep = np.repeat(kept_groups, self.kernel.shape[1])
        q = self.quant
        if q is not None:
            q = replace(q, codes=q.codes[keep], scale=None if q.scale is None else q.scale[keep])
        return replace(self, kernel=self.kernel[keep], unit_bias=self.unit_bias[keep], quant=q,
                       channel_ids=tuple(c for c, m in zip(self.channel_ids, keep) if m), units=units,
                       **({"in_shape": (int(in_keep.sum()),) + self.in_shape[1:], "group": int(kept_groups.sum())}
                          if group > 1 else {}))

    def keep_input_channels(self, keep: np.ndarray) -> "Conv":
        """Drop input channels (group 1 only): the kernel's slices that read them."""
        if self.group != 1 or self.in_perm is not None:
            raise ValueError("input channels of a grouped convolution are removed with its output channels, "
                             "and the model input's are never removed")
        keep = np.asarray(keep, dtype=bool)
        q = None if self.quant is None else replace(self.quant, codes=self.quant.codes[:, keep])
        return replace(self, kernel=self.kernel[:, keep], quant=q, in_shape=(int(keep.sum()),) + self.in_shape[1:])

    def keep_units(self, keep: np.ndarray) -> "Conv":
        """Only the emitted units in the boolean mask ``keep`` (over the current ``n_out``) stay outputs."""
        keep = np.asarray(keep, dtype=bool)
        return replace(self, units=tuple(int(u) for u in self.emitted[keep]))

    def fingerprint_arrays(self) -> list:
        geometry = np.asarray(self.in_shape + self.strides + self.pads + self.dilations + (self.group,)
                              + (self.pool[:2] if self.pool else ()), np.int64)
        perm = np.asarray(self.in_perm if self.in_perm is not None else (), np.int64)
        return [self.kernel, self.unit_bias, self.emitted, geometry, np.asarray(self.channel_ids, np.int64), perm]


def is_conv(layer) -> bool:
    return isinstance(layer, Conv)


def average_pool(in_shape: tuple, kernel_hw: tuple, strides: tuple, pads: tuple, *, layer_id: int = 0,
                 source: str = "", count_include_pad: bool = True) -> Conv:
    """AveragePool as a depthwise Conv (exact when there is no padding or padded zeros are counted)."""
    c = int(in_shape[0])
    if any(pads) and not count_include_pad:
        raise ValueError("AveragePool with padding that is not counted is not a convolution")
    kernel = np.full((c, 1) + tuple(kernel_hw), 1.0 / (kernel_hw[0] * kernel_hw[1]))
    return Conv(kernel, np.zeros(c), in_shape, strides, pads, (1, 1), group=c, activation="linear",
                layer_id=layer_id, source=source, op="AveragePool")


def max_pool(in_shape: tuple, kernel_hw: tuple, strides: tuple, pads: tuple, *, nonnegative: bool,
             zero_pads: tuple = (0, 0, 0, 0), source: str = "") -> list:
    """MaxPool (floor mode, no dilation) as convolution layers computing it exactly, in real arithmetic:
    ``max(a, b) = relu(a - b) + relu(b) - relu(-b)`` (``relu(b) = b`` when the input is ``nonnegative``, e.g.
    after a Relu: then two units per pair and zero padding, which equals MaxPool's -inf padding there).
    Each level takes the maximum of pairs ``d`` apart along one axis, first the width, then the height, until
    a level covers the window; the last level of each axis applies its stride.  A level is a ReLU grouped
    convolution (one group per channel, 2 or 3 units per pair) and a linear 1 x 1 grouped convolution summing
    them; all the analyses read these like any other convolution, and the writer emits one MaxPool for them.
    MaxPool's own ``pads`` (of -inf) need ``nonnegative`` (and fewer pads than the kernel); ``zero_pads``
    (an explicit Pad of zeros before it) are exact either way."""
    c, h, w = (int(v) for v in in_shape)
    if any(pads) and (not nonnegative or any(p >= k for p, k in zip(pads, tuple(kernel_hw) * 2))):
        raise ValueError("MaxPool padding is exact here only after a Relu, with fewer pads than the kernel")
    own = tuple(int(v) for v in pads)
    pads = tuple(a + int(b) for a, b in zip(own, zero_pads))
    n = 2 if nonnegative else 3
    specs = []  # (axis, offset, stride, pads)
    for axis in (1, 0):  # width first
        window, stride = int(kernel_hw[axis]), int(strides[axis])
        axis_pads = (pads[axis], pads[axis + 2])
        covered, first = 1, True
        levels = []
        while covered < window:
            d = min(covered, window - covered)
            covered += d
            levels.append(d)
        if not levels:
            if stride == 1 and not any(axis_pads):
                continue
            levels = [0]  # a plain subsampling of the axis
        for i, d in enumerate(levels):
            specs.append((axis, d, stride if i == len(levels) - 1 else 1, axis_pads if i == 0 else (0, 0)))
    layers, shape = [], (c, h, w)
    parts = 2 * len(specs)
    def pool(part: int) -> tuple:
        return (part, parts, tuple(int(v) for v in kernel_hw), tuple(int(v) for v in strides), own,
                tuple(int(v) for v in zero_pads))

    for axis, d, stride, axis_pads in specs:
        taps = np.zeros((n, d + 1))
        if d:
            taps[0, 0], taps[0, d] = 1.0, -1.0  # relu(a - b); with d == 0 (a subsampling) a zero unit
        taps[1, d] = 1.0  # relu(b)
        if n == 3:
            taps[2, d] = -1.0  # relu(-b)
        kernel = np.tile(taps.reshape((n, 1) + ((1, d + 1) if axis == 1 else (d + 1, 1))), (c, 1, 1, 1))
        st = (1, stride) if axis == 1 else (stride, 1)
        pd = (0, axis_pads[0], 0, axis_pads[1]) if axis == 1 else (axis_pads[0], 0, axis_pads[1], 0)
        pair = Conv(kernel, np.zeros(c * n), shape, st, pd, (1, 1), group=c, activation=RELU, source=source,
                    op="MaxPool", pool=pool(len(layers)))
        signs = np.array([1.0, 1.0, -1.0][:n]).reshape(1, n, 1, 1)
        total = Conv(np.tile(signs, (c, 1, 1, 1)), np.zeros(c), pair.out_shape, group=c, activation="linear",
                     source=source, op="MaxPool", pool=pool(len(layers) + 1))
        layers += [pair, total]
        shape = total.out_shape
    return layers


def affine_channels(in_shape: tuple, scale: np.ndarray, shift: np.ndarray, *, layer_id: int = 0,
                    source: str = "") -> Conv:
    """A per-channel ``scale * x + shift`` as a 1x1 depthwise Conv (linear): BatchNormalization or input
    normalisation that cannot fold into a neighbouring kernel."""
    c = int(in_shape[0])
    kernel = np.asarray(scale, dtype=np.float64).reshape(c, 1, 1, 1)
    return Conv(kernel, np.asarray(shift, dtype=np.float64).reshape(c), in_shape, group=c, activation="linear",
                layer_id=layer_id, source=source, op="Scale")


DENSE_VIEW_MAX_ENTRIES = 50_000_000
"""Largest explicit matrix (entries, over all layers; 400 MB of float64) :func:`dense_view` builds."""


def dense_view(net):
    """``net`` with every convolution as its explicit matrix, for the solvers that take dense rows (a MILP
    formulation keeps only the nonzeros of each row, so the model it builds is the sparse one); ``None``
    when the matrices would exceed :data:`DENSE_VIEW_MAX_ENTRIES`.  Unit order, and so every finding's
    index, is the same in both networks."""
    from .ir import Dense, Network

    if sum(layer.n_out * layer.n_in for layer in net.layers if is_conv(layer)) > DENSE_VIEW_MAX_ENTRIES:
        return None
    layers = tuple(Dense(layer.weight.toarray(), layer.bias, layer.activation, layer.layer_id, layer.neuron_ids,
                         layer.source) if is_conv(layer) else layer for layer in net.layers)
    return Network(layers, net.input_size, net.onnx, dict(net.meta))
