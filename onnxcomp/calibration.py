"""Calibration inputs and their statistics: the rows and domain samples that data-driven analyses
(``dependence``, ``fisher``) and transforms (``drop``) fit on, streamed in batches.

A :class:`CalibrationSet` names them explicitly: the ``--data`` rows an analysis may fit on (only the
validation half when a fidelity budget is active, see :func:`fitting_rows`, so that the held-out half
stays unseen), plus, with a domain box, uniform samples and corners of the box (the same kinds
verification uses, drawn with a different seed so that verification stays an independent check).
Activations are computed in float64 on the IR; an opaque ONNX prefix (when the chain does not start at
the model input) is run with onnxruntime to get the chain's inputs.  :class:`Moments` accumulates
means and covariances batch by batch (Chan's update), so memory does not depend on the number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import onnx
from onnx import helper

from .equivalence import CORNERS, SAMPLES
from .errors import InputError, UsageError
from .ir import Box, Network

BATCH = 4096
SAMPLE_SALT = 4171
"""Salt of the domain samples drawn here, so they differ from the ones verification draws."""


def fitting_rows(n_rows: int, labels: np.ndarray | None, seed: int, budget_active: bool) -> np.ndarray:
    """The ``--data`` rows statistics may be fitted on: all of them, or only the validation half when a
    fidelity budget is active -- the held-out half must stay unseen for its report to be honest."""
    from .fidelity import split_halves

    if not budget_active or n_rows < 2:
        return np.arange(n_rows)
    return split_halves(n_rows, labels, seed)[0]


@dataclass(frozen=True)
class CalibrationSet:
    """What to fit on: ``data`` rows ``rows`` (indices; ``None`` = all), and with ``box`` ``samples``
    uniform points and up to ``corners`` corners of it, drawn from ``seed``."""

    data: np.ndarray | None = None
    rows: np.ndarray | None = None
    box: Box | None = None
    samples: int = SAMPLES
    corners: int = CORNERS
    seed: int = 0
    device: str = "auto"

    @property
    def n_data(self) -> int:
        if self.data is None:
            return 0
        return int(self.data.shape[0] if self.rows is None else self.rows.size)

    def data_batches(self, batch: int = BATCH) -> Iterator[np.ndarray]:
        """Float64 batches of the fitting rows of ``data``, in row order."""
        if self.data is None:
            return
        rows = np.arange(self.data.shape[0]) if self.rows is None else self.rows
        contiguous = rows.size == self.data.shape[0]
        for start in range(0, rows.size, batch):
            part = self.data[start:start + batch] if contiguous else self.data[rows[start:start + batch]]
            yield np.asarray(part, dtype=np.float64)

    def batches(self, salt: int = SAMPLE_SALT, use_box: bool = True) -> Iterator[np.ndarray]:
        """Model-input batches: the fitting data rows, then (with a box) uniform samples and corners."""
        yield from self.data_batches()
        if self.box is None or not use_box:
            return
        rng = np.random.default_rng([self.seed, salt])
        remaining = int(self.samples)
        while remaining > 0:
            n = min(BATCH, remaining)
            yield self.box.sample(n, rng)
            remaining -= n
        corners = self.box.corners(int(self.corners), rng)
        for start in range(0, corners.shape[0], BATCH):
            yield corners[start:start + BATCH]

    def sources(self) -> dict:
        if self.box is None:
            return {"data": self.n_data, "uniform": 0, "corners": 0}
        n_corners = len(self.box.corners(int(self.corners), np.random.default_rng([self.seed, SAMPLE_SALT])))
        return {"data": self.n_data, "uniform": int(self.samples), "corners": n_corners}


# ---- inputs of the chain ------------------------------------------------------------------------------
def _prefix_runner(net: Network, device: str):
    from .reader import COLS
    from .runtime import Runner

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
    from .reader import has_prefix

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


def activation_moments(net: Network, calib: CalibrationSet, layers: list[int] | None = None,
                       salt: int = SAMPLE_SALT) -> dict:
    """``{k: Moments}`` of the post-activations of hidden layers ``layers`` over the calibration set."""
    if calib.data is None and calib.box is None:
        raise UsageError("needs --data (calibration samples) or --domain")
    wanted = list(range(len(net.layers) - 1)) if layers is None else sorted(layers)
    moments = {k: Moments(net.layers[k].n_out) for k in wanted}
    if not wanted:
        return moments
    for h in chain_input_batches(net, calib.batches(salt), calib.device):
        acts = hidden_activations(net, h, wanted[-1])
        for k in wanted:
            moments[k].update(acts[k])
    return moments
