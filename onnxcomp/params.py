"""The weights a lossy pass scores and edits, for dense and convolution layers alike.

A lossy pass (``lookahead``, ``fisher``, ``prune``, ``quantize``, ``drop``) works on each layer's *tensor*:
``Dense.weight`` (out, in), or ``Conv.kernel`` (C_out, C_in / group, kh, kw) -- the parameters the file
stores, not the unrolled operator ``Conv.weight``.  Only *tunable* layers have one: every dense layer, and
the convolutions read from a Conv node (``op == "Conv"``).  The layers the reader made of pooling
(AveragePool, the parts of a MaxPool) or of a BatchNormalization it could not fold (``op == "Scale"``) are
fixed arithmetic: no pass scores or changes them, and the scores' entries for them are ``None``.

A layer's *units* are what structured pruning removes: a dense layer's neurons, a convolution's output
channels.  :class:`Neighbours` says which units of which earlier tunable layer feed each input slot of a
tunable layer (an input column of a dense layer, an input channel of a kernel), looking through the fixed
layers between (pooling and per-channel scaling map a channel to the same channel), so the lookahead
factors (LAP paper §2: the previous layer's output-channel kernels and the next layer's input-channel
kernels) and a channel's outgoing weights can be found for any chain.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .conv import is_conv


def tunable(layer) -> bool:
    """Whether a lossy pass may change this layer's weights (dense layers, and convolutions from Conv nodes)."""
    return not is_conv(layer) or layer.op == "Conv"


def tensor(layer) -> np.ndarray:
    """The layer's stored weights: ``Dense.weight`` or ``Conv.kernel``."""
    return layer.kernel if is_conv(layer) else layer.weight


def with_tensor(layer, values: np.ndarray, quant=None):
    """``layer`` with its stored weights replaced by ``values`` (and ``quant``; ``None``: plain floats)."""
    if is_conv(layer):
        return replace(layer, kernel=values, quant=quant)
    return replace(layer, weight=values, quant=quant)


def by_unit(values: np.ndarray) -> np.ndarray:
    """A tensor as (units, weights per unit): a dense layer's rows, a kernel's output channels."""
    return np.asarray(values).reshape(values.shape[0], -1)


def n_units(layer) -> int:
    """Output units structured pruning counts: neurons of a dense layer, output channels of a convolution."""
    return layer.out_channels if is_conv(layer) else layer.n_out


class Neighbours:
    """For every layer of ``net``: where its inputs come from, in units of the tunable layers.

    ``source[k]`` is an int array over layer ``k``'s *input slots* (a dense layer's input columns; a
    convolution's input channels) of the tunable layer each reads from (``-1``: the model input), and
    ``unit[k]`` the unit of that layer (neuron or output channel), and ``gain[k]`` the factor the fixed
    layers between scale it by (a BatchNormalization kept as a per-channel scaling: its ``|a|``, which the
    LAP paper's Eq. 9 multiplies in; 1 through pooling).  Fixed layers (pooling, MaxPool parts, per-channel
    scaling) pass each output channel's origin on from the input channels of its group.
    """

    def __init__(self, net) -> None:
        self.net = net
        self.source: list[np.ndarray] = []
        self.unit: list[np.ndarray] = []
        self.gain: list[np.ndarray] = []
        out_src = out_unit = out_gain = None  # the origin of each output unit (emitted order) of the previous layer
        for k, layer in enumerate(net.layers):
            if k == 0:
                n_slots = layer.in_shape[0] if is_conv(layer) else layer.n_in
                src, unit, gain = np.full(n_slots, -1), np.full(n_slots, -1), np.ones(n_slots)
            elif is_conv(layer):
                # the previous layer emits its full map (a convolution reads a whole map): channel c of this
                # layer's input is channel c of that map
                hw = layer.in_shape[1] * layer.in_shape[2]
                src, unit, gain = out_src[::hw].copy(), out_unit[::hw].copy(), out_gain[::hw].copy()
            else:
                src, unit, gain = out_src.copy(), out_unit.copy(), out_gain.copy()
            self.source.append(src)
            self.unit.append(unit)
            self.gain.append(gain)
            if is_conv(layer):
                if tunable(layer):
                    ch_src, ch_unit = np.full(layer.out_channels, k), np.arange(layer.out_channels)
                    ch_gain = np.ones(layer.out_channels)
                else:  # output channel o reads the input channels of its group: they share one origin
                    per_group = layer.out_channels // layer.group
                    first_in = (np.arange(layer.out_channels) // per_group) * layer.kernel.shape[1]
                    ch_src, ch_unit, ch_gain = src[first_in], unit[first_in], gain[first_in]
                    if layer.op == "Scale":
                        ch_gain = ch_gain * np.abs(layer.kernel[:, 0, 0, 0])
                at = layer.emitted // (layer.out_hw[0] * layer.out_hw[1])
                out_src, out_unit, out_gain = ch_src[at], ch_unit[at], ch_gain[at]
            else:
                out_src, out_unit, out_gain = np.full(layer.n_out, k), np.arange(layer.n_out), np.ones(layer.n_out)

    def slot_of_weight(self, k: int) -> np.ndarray:
        """For every weight of tunable layer ``k`` (the tensor's shape), the input slot it reads."""
        layer = self.net.layers[k]
        if not is_conv(layer):
            return np.broadcast_to(np.arange(layer.n_in)[None, :], layer.weight.shape)
        c_out, cg = layer.kernel.shape[:2]
        per_group = c_out // layer.group
        slot = (np.arange(c_out) // per_group)[:, None] * cg + np.arange(cg)[None, :]
        return np.broadcast_to(slot[:, :, None, None], layer.kernel.shape)

    def consumers(self, k: int) -> list[int]:
        """The tunable layers that read some unit of tunable layer ``k`` (through fixed layers only)."""
        return [j for j in range(k + 1, len(self.net.layers))
                if tunable(self.net.layers[j]) and np.any(self.source[j] == k)]

    def incoming_norms(self, tensors: list, k: int) -> np.ndarray:
        """‖weights into unit u‖ for every unit of tunable layer ``k`` (a row, or a whole output kernel)."""
        return np.linalg.norm(by_unit(tensors[k]), axis=1)

    def outgoing_norms(self, tensors: list, k: int) -> np.ndarray | None:
        """‖weights reading unit u‖ for every unit of tunable layer ``k``, over all positions and every
        consumer (``None`` when nothing tunable reads it: the last layer)."""
        users = self.consumers(k)
        if not users:
            return None
        sq = np.zeros(n_units(self.net.layers[k]))
        for j in users:
            w = np.asarray(tensors[j], dtype=np.float64)
            slots = self.slot_of_weight(j)
            mine = self.source[j][slots] == k
            np.add.at(sq, self.unit[j][slots][mine], (w * self.gain[j][slots])[mine] ** 2)
        return np.sqrt(sq)

    def back_factor(self, tensors: list, k: int) -> np.ndarray:
        """For every weight of tunable layer ``k``: the incoming norm of the unit its input slot reads
        (1 for the model input)."""
        slots = self.slot_of_weight(k)
        per_slot = np.ones(self.source[k].size)
        for j in np.unique(self.source[k][self.source[k] >= 0]):
            mine = self.source[k] == j
            per_slot[mine] = self.incoming_norms(tensors, int(j))[self.unit[k][mine]]
        return (per_slot * self.gain[k])[slots]

    def ahead_factor(self, tensors: list, k: int) -> np.ndarray:
        """For every weight of tunable layer ``k``: the outgoing norm of its output unit (1 at the last layer)."""
        out = self.outgoing_norms(tensors, k)
        shape = tensors[k].shape
        if out is None:
            return np.ones(shape)
        return np.broadcast_to(out.reshape((-1,) + (1,) * (len(shape) - 1)), shape)
