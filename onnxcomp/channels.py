"""Structured removal of whole units -- a dense layer's neurons, a convolution's output channels -- with
the next tunable layer readjusted (the machinery ``dependence`` and ``drop`` share, and the span rule
``leo``'s dead-channel removal uses).

A removable unit lives in a *span* ``k .. j``: the tunable layer ``k`` that computes it, the fixed layers
``k+1 .. j-1`` that carry its channels one group per channel (pooling, the parts of a MaxPool, per-channel
scaling, a depthwise convolution: channel ``c`` of their output depends on channel ``c`` of ``k`` only; a
carrier's own channels are not units of their own), and the tunable layer ``j``
that reads them (a dense layer reads all positions of a channel as columns, channel-major as ONNX's
Flatten orders them; a convolution reads the channel as one input channel of its kernel).  For a dense
``k`` the span is just ``k, k + 1``.

Removing the units ``J`` of ``k`` (keeping ``H``) deletes their rows / output kernels and biases, their
channels from every carrier layer (whole groups), and the slots of ``j`` that read them; what ``j`` read
from them is replaced by an affine prediction from the kept units (the LRE transformation T):

* dense ``k``: ``z_J ≈ U z_H + c`` on the samples, ``W'_j = W_j[:, H] + W_j[:, J] U``, ``b' = b + W_j[:, J] c``;
* convolution ``k``: the map ``j`` reads (after the carriers) is predicted channel-wise at every position,
  ``z_J(p) ≈ U z_H(p) + c`` (observations = samples × positions); a dense ``j`` gets that on each position's
  columns, ``W'[:, (h, p)] = W[:, (h, p)] + Σ_J W[:, (J, p)] U[J, h]`` and ``b' = b + Σ_{J,p} W[:, (J, p)] c_J``;
  a convolution ``j`` gets it on every tap, ``K'[:, H] = K[:, H] + K[:, J] U`` over input channels, and its
  bias the constant's contribution -- the convolution of the constant map ``c`` over the real input
  positions only: a zero-padded tap reads 0, not ``c``, so near a padded border the new bias differs per
  output position (``Conv.unit_bias``; the writer emits it as an Add).

The statistics are taken on the *unit view* of the activations ``j`` reads: rows = samples for a dense
``k``, rows = samples × positions with one column per channel for a convolution.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .conv import is_conv
from .ir import LINEAR, Network
from .params import tunable

if TYPE_CHECKING:  # the statistics' imports stay out of leo's (fold's) import path
    from .calibration import CalibrationSet

CHUNK_VALUES = 2_000_000
"""Largest activation batch (values, over all layers of one forward) held at once for unit statistics."""


def carrier_end(layers, k: int) -> int:
    """The first layer after ``k`` that does not carry ``k``'s channels one group per channel (the end of
    the run of grouped layers after a convolution ``k``)."""
    channels = layers[k].out_channels
    j = k + 1
    while j < len(layers) and is_conv(layers[j]) and layers[j].group == channels > 1:
        j += 1
    return j


def carried_mask(layer, keep: np.ndarray, channels: int) -> np.ndarray:
    """The output channels of carrier ``layer`` that stay when the producer keeps ``keep`` of ``channels``."""
    return np.repeat(np.asarray(keep, dtype=bool), layer.out_channels // channels)


@dataclass(frozen=True)
class Span:
    """Units of tunable layer ``k`` read by tunable layer ``j`` (through the carriers ``k+1 .. j-1``)."""

    k: int
    j: int
    conv: bool

    @property
    def read(self) -> int:
        """The layer whose output ``j`` reads (``k`` itself, or the last carrier)."""
        return self.j - 1


def span(net: Network, k: int) -> Span | None:
    """The span of layer ``k``'s units, or ``None`` when they cannot be removed: a fixed or last tunable
    layer, a grouped convolution (its channels go a group at a time with its input's), a consumer that is
    a grouped convolution, or a layer of the span that emits only some of its units."""
    layers = net.layers
    layer = layers[k]
    if not tunable(layer) or k == len(layers) - 1:
        return None
    if not is_conv(layer):
        return Span(k, k + 1, False) if tunable(layers[k + 1]) else None
    if layer.group != 1 or layer.out_channels < 2:
        return None
    j = carrier_end(layers, k)
    if j >= len(layers) or not tunable(layers[j]) or any(layers[m].units is not None for m in range(k, j)):
        return None
    nxt = layers[j]
    if is_conv(nxt) and (nxt.group != 1 or nxt.in_perm is not None or nxt.in_shape[0] != layer.out_channels):
        return None
    if any(layers[m].out_channels % layer.out_channels for m in range(k + 1, j)):
        return None
    return Span(k, j, True)


def spans(net: Network) -> list[Span]:
    """Every removable span of ``net``, first layer first."""
    return [s for s in (span(net, k) for k in range(len(net.layers))) if s is not None]


def unit_ids(layer) -> tuple:
    """Original ids of a layer's units: neuron ids, or a convolution's channel ids."""
    return layer.channel_ids if is_conv(layer) else layer.neuron_ids


def unit_count(layer) -> int:
    return layer.out_channels if is_conv(layer) else layer.n_out


def unit_view(net: Network, sp: Span, acts: np.ndarray) -> np.ndarray:
    """The output of layer ``sp.read`` as observations × units (samples × positions rows for a convolution)."""
    if not sp.conv:
        return acts
    c = net.layers[sp.read].out_channels
    return acts.reshape(acts.shape[0], c, -1).transpose(0, 2, 1).reshape(-1, c)


def unit_batches(net: Network, calib: CalibrationSet, wanted: list[Span], salt: int | None = None,
                 extra: tuple = ()) -> Iterator[tuple[int, dict]]:
    """(samples, {layer index: output}) per chunk of calibration inputs, for the ``read`` layers of
    ``wanted`` and the layers in ``extra``; chunks stay under :data:`CHUNK_VALUES` activation values."""
    from .calibration import chain_input_batches

    need = {sp.read for sp in wanted} | set(extra)
    if not need:
        return
    last = max(need)
    per_row = sum(layer.n_out for layer in net.layers[: last + 1])
    rows = max(1, CHUNK_VALUES // max(per_row, 1))
    batches = calib.batches() if salt is None else calib.batches(salt)
    for h in chain_input_batches(net, batches, calib.device):
        for start in range(0, h.shape[0], rows):
            x = h[start:start + rows]
            out = {}
            for m, layer in enumerate(net.layers[: last + 1]):
                x = layer.apply(x)
                if m in need:
                    out[m] = x
            yield h[start:start + rows].shape[0], out


def unit_moments(net: Network, calib: CalibrationSet, wanted: list[Span]) -> dict:
    """``{k: Moments}`` of the unit view of every span in ``wanted`` over the calibration set."""
    from .calibration import Moments
    from .errors import UsageError

    if calib.data is None and calib.box is None:
        raise UsageError("needs --data (calibration samples) or --domain")
    moments = {sp.k: Moments(unit_count(net.layers[sp.k])) for sp in wanted}
    for _, out in unit_batches(net, calib, wanted):
        for sp in wanted:
            moments[sp.k].update(unit_view(net, sp, out[sp.read]))
    return moments


def outgoing_norms(net: Network, sp: Span) -> np.ndarray:
    """‖weights of the consumer reading unit u‖ for every unit of ``sp.k`` (all positions, all taps)."""
    nxt = net.layers[sp.j]
    if not sp.conv:
        return np.linalg.norm(nxt.weight, axis=0)
    c = unit_count(net.layers[sp.k])
    if is_conv(nxt):
        return np.sqrt(np.einsum("oiyx,oiyx->i", nxt.kernel, nxt.kernel))
    w = np.asarray(nxt.weight).reshape(nxt.n_out, c, -1)
    return np.sqrt(np.einsum("oip,oip->i", w, w))


def remove_units(net: Network, sp: Span, keep: np.ndarray, u: np.ndarray | None = None,
                 c: np.ndarray | None = None) -> Network:
    """``net`` without the units of ``sp.k`` outside the boolean mask ``keep``; the consumer gets the
    prediction ``z_J ≈ u z_H + c`` of what it read from them (``None``: plain removal)."""
    keep = np.asarray(keep, dtype=bool)
    drop = ~keep
    layers = list(net.layers)
    layer, nxt = layers[sp.k], layers[sp.j]
    n_keep, n_drop = int(keep.sum()), int(drop.sum())
    u = np.zeros((n_drop, n_keep)) if u is None else np.asarray(u, dtype=np.float64)
    c = np.zeros(n_drop) if c is None else np.asarray(c, dtype=np.float64)
    if not sp.conv:
        w_j = nxt.weight[:, drop]
        layers[sp.k] = replace(layer, weight=layer.weight[keep], bias=layer.bias[keep],
                               neuron_ids=tuple(i for i, m in zip(layer.neuron_ids, keep) if m), quant=None)
        layers[sp.j] = replace(nxt, weight=nxt.weight[:, keep] + w_j @ u, bias=nxt.bias + w_j @ c, quant=None)
        return net.with_layers(layers)
    channels = layer.out_channels
    layers[sp.k] = layer.keep_channels(keep)
    for m in range(sp.k + 1, sp.j):
        layers[m] = layers[m].keep_channels(carried_mask(layers[m], keep, channels))
    if is_conv(nxt):
        k_j = nxt.kernel[:, drop]
        kernel = nxt.kernel[:, keep] + np.einsum("ojyx,jh->ohyx", k_j, u)
        const = np.zeros(nxt.in_shape)
        const[drop] = c[:, None, None]
        # the constant's contribution through the consumer's geometry: padded taps read zeros, not c
        probe = replace(nxt, unit_bias=np.zeros(nxt.out_channels), activation=LINEAR, units=None, quant=None)
        extra = probe.preactivation(const.reshape(1, -1)).reshape(nxt.out_shape)
        layers[sp.j] = replace(nxt.keep_input_channels(keep), kernel=kernel, unit_bias=nxt.unit_bias + extra,
                               quant=None)
    else:
        w = np.asarray(nxt.weight).reshape(nxt.n_out, channels, -1)
        w_j = w[:, drop]
        new_w = w[:, keep] + np.einsum("ojp,jh->ohp", w_j, u)
        layers[sp.j] = replace(nxt, weight=new_w.reshape(nxt.n_out, -1),
                               bias=nxt.bias + np.einsum("ojp,j->o", w_j, c), quant=None)
    return net.with_layers(layers)
