"""``sample``: activation statistics from onnxruntime runs of an instrumented copy of the model.

The copy (written from the IR, prefix included) also outputs every layer's pre-activation.  Data rows
(``--data``), uniform samples of the domain box and its corners are run through it in batches
(onnxruntime on CUDA when it loads), and per neuron we accumulate, streaming: samples seen, min/max
pre-activation, how often it was active (y > 0) and inactive (y < 0), the mean, and optionally the
post-activation second moments that linear-dependence analysis needs.  Memory does not depend on the
number of samples.

Counts restricted to samples *inside* the domain box are kept apart: only those may be used as
witnesses that a neuron is not stable over the domain (a data row outside the box proves nothing), and
they count only pre-activations beyond float32 rounding noise (``stability_state.witness_floor``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxcomp.ir import Network
from onnxcomp.pipeline import ANALYSIS, Context, register
from onnxcomp.reader import has_prefix
from onnxcomp.runtime import Runner
from onnxcomp.verify import CORNERS, SAMPLES, sample_inputs
from onnxcomp.writer import PRE_PREFIX, to_model

from .stability_state import epsilons, witness_floor

BATCH = 8192


@dataclass
class LayerStats:
    """Streaming statistics of one layer's pre-activations y (and post-activations x = act(y))."""

    width: int
    covariance: bool = False
    count: int = 0
    min: np.ndarray = None
    max: np.ndarray = None
    n_active: np.ndarray = None
    n_inactive: np.ndarray = None
    sum: np.ndarray = None
    dom_count: int = 0
    dom_active: np.ndarray = None
    dom_inactive: np.ndarray = None
    post_sum: np.ndarray = None
    post_outer: np.ndarray = None

    def __post_init__(self) -> None:
        w = self.width
        self.min = np.full(w, np.inf)
        self.max = np.full(w, -np.inf)
        self.n_active = np.zeros(w, dtype=np.int64)
        self.n_inactive = np.zeros(w, dtype=np.int64)
        self.sum = np.zeros(w)
        self.dom_active = np.zeros(w, dtype=np.int64)
        self.dom_inactive = np.zeros(w, dtype=np.int64)
        if self.covariance:
            self.post_sum = np.zeros(w)
            self.post_outer = np.zeros((w, w))

    def update(self, y: np.ndarray, in_box: np.ndarray | None, relu: bool, eps: np.ndarray | float = 0.0) -> None:
        """Add a batch.  ``eps`` is each neuron's rounding-noise floor: the in-domain witness counts need
        ``y > eps`` / ``y < -eps`` (float32 rounding of an exact 0 must not count as a witness)."""
        y = np.asarray(y, dtype=np.float64)
        self.count += y.shape[0]
        self.min = np.minimum(self.min, y.min(axis=0))
        self.max = np.maximum(self.max, y.max(axis=0))
        self.n_active += (y > 0).sum(axis=0)
        self.n_inactive += (y < 0).sum(axis=0)
        self.sum += y.sum(axis=0)
        act, inact = y > eps, y < -eps
        if in_box is None or in_box.all():
            self.dom_count += y.shape[0]
            self.dom_active += act.sum(axis=0)
            self.dom_inactive += inact.sum(axis=0)
        elif in_box.any():
            self.dom_count += int(in_box.sum())
            self.dom_active += act[in_box].sum(axis=0)
            self.dom_inactive += inact[in_box].sum(axis=0)
        if self.covariance:
            x = np.maximum(y, 0.0) if relu else y
            self.post_sum += x.sum(axis=0)
            self.post_outer += x.T @ x

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    def post_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, second moment E[x x^T]) of the post-activations."""
        n = max(self.count, 1)
        return self.post_sum / n, self.post_outer / n


@dataclass
class ActivationStats:
    """Per-layer statistics, aligned with the layers of the network that was sampled."""

    layers: list
    layer_ids: list
    neuron_ids: list
    samples: int = 0
    in_domain: int = 0
    sources: dict = field(default_factory=dict)

    def seen_active(self, k: int) -> np.ndarray:
        """Neurons of layer k seen active (beyond rounding noise) on a sample inside the domain."""
        return self.layers[k].dom_active > 0

    def seen_inactive(self, k: int) -> np.ndarray:
        """Neurons of layer k seen inactive (beyond rounding noise) on a sample inside the domain."""
        return self.layers[k].dom_inactive > 0

    def summary(self) -> dict:
        per_layer = []
        for k, st in enumerate(self.layers):
            per_layer.append({
                "layer": self.layer_ids[k],
                "width": st.width,
                "never_active": int(np.sum(st.dom_active == 0)),
                "always_active": int(np.sum(st.dom_inactive == 0)),
            })
        return {"samples": self.samples, "in_domain": self.in_domain, "sources": self.sources, "layers": per_layer}


def instrumented_runner(net: Network, device: str) -> Runner:
    """A runner over a copy of ``net`` whose outputs are the pre-activations of every layer."""
    model = to_model(net, expose_preactivations=True)
    names = [f"{PRE_PREFIX}{k}" for k in range(len(net.layers))]
    return Runner.create(model, device, names)


def collect(
    net: Network,
    ctx: Context,
    *,
    samples: int | None = None,
    corners: int | None = None,
    covariance: bool = False,
    use_box_samples: bool = True,
) -> ActivationStats:
    """Run data + domain samples through ``net`` and accumulate ``ActivationStats``."""
    runner = instrumented_runner(net, ctx.device)
    n_samples = int(ctx.opt("samples", SAMPLES) if samples is None else samples)
    n_corners = int(ctx.opt("corners", CORNERS) if corners is None else corners)
    box = ctx.box if use_box_samples else None
    layers = [LayerStats(layer.n_out, covariance) for layer in net.layers]
    stats = ActivationStats(layers, [l.layer_id for l in net.layers], [list(l.neuron_ids) for l in net.layers])
    n_data = 0 if ctx.data is None else int(ctx.data.shape[0])
    n_box = (n_samples + len(box.corners(n_corners, np.random.default_rng(0)))) if box is not None else 0
    stats.sources = {"data": n_data, "uniform": n_samples if box is not None else 0,
                     "corners": n_box - n_samples if box is not None else 0}
    total = n_data + n_box
    # Witnesses must clear float32 rounding noise; without a box over the chain input there is no
    # stability analysis (and no scale to measure the noise against).
    on_chain = ctx.box is not None and ctx.box.size == net.input_size and not has_prefix(net)
    eps = witness_floor(epsilons(net, ctx.box.lo, ctx.box.hi), float32=True) if on_chain else [0.0] * len(net.layers)
    ctx.progress.start("sampling activations", total)
    try:
        for x in sample_inputs(box, ctx.data, n_samples, n_corners, ctx.seed, BATCH):
            in_box = ctx.box.contains(x) if ctx.box is not None else None
            pres = runner.run(x, BATCH)
            for k, (st, y) in enumerate(zip(layers, pres)):
                st.update(y, in_box, net.layers[k].is_relu, eps[k])
            stats.samples += x.shape[0]
            stats.in_domain += int(in_box.sum()) if in_box is not None else x.shape[0]
            ctx.progress.advance(x.shape[0])
    finally:
        ctx.progress.stop()
    return stats


@register("sample", ANALYSIS, "activation statistics on data, domain samples and corners (onnxruntime)",
          paper="ISA §5.3 (preprocessing)")
def run(net: Network, ctx: Context) -> ActivationStats:
    if ctx.box is None and ctx.data is None:
        from onnxcomp.errors import UsageError

        raise UsageError("needs --domain or --data")
    stats = collect(net, ctx, covariance=bool(ctx.opt("covariance", False)))
    ctx.entry.update(stats.summary())
    return stats
