"""Activation statistics from onnxruntime runs of an instrumented copy of the model (the ``sample`` pass).

The copy (written from the IR, prefix included) also outputs every layer's pre-activation.  Data rows
(``--data``), uniform samples of the domain box and its corners are run through it in batches
(onnxruntime on CUDA when it loads), and per neuron we accumulate, streaming: samples seen, min/max
pre-activation, how often it was active (y > 0), the mean, the extremes over the samples inside the
domain, and optionally the post-activation second moments.  Memory does not depend on the number of
samples.

Extremes restricted to samples *inside* the domain box are kept apart: only those may be used as
witnesses that a neuron is not stable over the domain (a data row outside the box proves nothing), and
only pre-activations beyond float32 rounding noise count (``stability.witness_floor``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from onnx import helper

from .equivalence import CORNERS, SAMPLES, sample_inputs
from .ir import Box, Network
from .onnxio import real_inputs
from .reader import has_prefix
from .runtime import Runner
from .stability.state import Findings, epsilons, witness_floor
from .writer import PRE_PREFIX, to_model

BATCH = 8192
PRE_ALL = "onnxcomp/pre_all"


@dataclass
class LayerStats:
    """Statistics of one layer's pre-activations y (and post-activations x = act(y)) over the samples.

    ``n_active`` counts samples with y > 0.  ``dom_min``/``dom_max`` are the extremes over the samples
    inside the domain box only; with ``floor`` (float32 rounding noise of each neuron) they give the
    witnesses: seen active when ``dom_max > floor``, seen inactive when ``dom_min < -floor``."""

    width: int
    covariance: bool = False
    count: int = 0
    min: np.ndarray = None
    max: np.ndarray = None
    n_active: np.ndarray = None
    sum: np.ndarray = None
    dom_count: int = 0
    dom_min: np.ndarray = None
    dom_max: np.ndarray = None
    floor: np.ndarray = None
    post_sum: np.ndarray = None
    post_outer: np.ndarray = None

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    @property
    def seen_active(self) -> np.ndarray:
        return self.dom_max > self.floor

    @property
    def seen_inactive(self) -> np.ndarray:
        return self.dom_min < -self.floor

    def post_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, second moment E[x x^T]) of the post-activations."""
        n = max(self.count, 1)
        return self.post_sum / n, self.post_outer / n


def _count(mask: np.ndarray) -> np.ndarray:
    """Column sums of a boolean (N, w) array: blocks of 255 rows summed in uint8 (no overflow, no
    widening cast per element), then the block sums in int64."""
    n, w = mask.shape
    u = mask.view(np.uint8)
    full = (n // 255) * 255
    out = np.zeros(w, np.int64)
    if full:
        out += np.add.reduce(u[:full].reshape(-1, 255, w), axis=1, dtype=np.uint8).sum(axis=0, dtype=np.int64)
    if full < n:
        out += np.add.reduce(u[full:], axis=0, dtype=np.int64)
    return out


class _Accumulator:
    """Streaming statistics over all neurons side by side (one (N, sum of widths) array per batch).

    Five passes over a batch whose rows all lie in the domain (min, max, sum, one comparison and its
    count); the in-domain extremes are then the batch's own.  Min, max and the comparison run in the
    dtype onnxruntime returns (exact); only the sum is accumulated in float64.  That keeps the
    statistics about as cheap as the inference they observe."""

    def __init__(self, net: Network, floors: list, covariance: bool):
        self.net = net
        self.edges = np.concatenate([[0], np.cumsum([layer.n_out for layer in net.layers])]).astype(int)
        total = int(self.edges[-1])
        self.floor = np.concatenate([np.broadcast_to(np.asarray(f, dtype=np.float64), (l.n_out,))
                                     for f, l in zip(floors, net.layers)])
        self.min, self.max = np.full(total, np.inf), np.full(total, -np.inf)
        self.dom_min, self.dom_max = np.full(total, np.inf), np.full(total, -np.inf)
        self.n_act = np.zeros(total, np.int64)
        self.sum = np.zeros(total)
        self.count = self.dom = 0
        self.covariance = covariance
        self.post_sum = [np.zeros(l.n_out) for l in net.layers] if covariance else None
        self.post_outer = [np.zeros((l.n_out, l.n_out)) for l in net.layers] if covariance else None

    def update(self, y: np.ndarray, in_box: np.ndarray | None) -> None:
        """Add a batch; ``in_box`` marks its rows inside the domain (``None``: all of them)."""
        self.count += y.shape[0]
        lo, hi = y.min(axis=0), y.max(axis=0)
        np.minimum(self.min, lo, out=self.min)
        np.maximum(self.max, hi, out=self.max)
        self.n_act += _count(y > 0)
        self.sum += y.sum(axis=0, dtype=np.float64)
        if self.covariance:
            for k, layer in enumerate(self.net.layers):
                part = np.asarray(y[:, self.edges[k]:self.edges[k + 1]], dtype=np.float64)
                x = np.maximum(part, 0.0) if layer.is_relu else part
                self.post_sum[k] += x.sum(axis=0)
                self.post_outer[k] += x.T @ x
        if in_box is not None:
            inside = y[in_box]
            self.dom += inside.shape[0]
            if not inside.shape[0]:
                return
            lo, hi = inside.min(axis=0), inside.max(axis=0)
        else:
            self.dom += y.shape[0]
        np.minimum(self.dom_min, lo, out=self.dom_min)
        np.maximum(self.dom_max, hi, out=self.dom_max)

    def layers(self) -> list:
        out = []
        for k, layer in enumerate(self.net.layers):
            sl = slice(self.edges[k], self.edges[k + 1])
            out.append(LayerStats(
                layer.n_out, self.covariance, self.count, self.min[sl].copy(), self.max[sl].copy(),
                self.n_act[sl].copy(), self.sum[sl].copy(), self.dom, self.dom_min[sl].copy(),
                self.dom_max[sl].copy(), self.floor[sl].copy(),
                self.post_sum[k] if self.covariance else None, self.post_outer[k] if self.covariance else None))
        return out


@dataclass
class ActivationStats:
    """Per-layer statistics, aligned with the layers of the network that was sampled."""

    layers: list
    layer_ids: list
    neuron_ids: list
    samples: int = 0
    in_domain: int = 0
    sources: dict = field(default_factory=dict)
    fingerprint: str = ""
    _witnesses: Findings | None = field(default=None, repr=False, compare=False)

    def seen_active(self, k: int) -> np.ndarray:
        """Neurons of layer k seen active (beyond rounding noise) on a sample inside the domain."""
        return self.layers[k].seen_active

    def seen_inactive(self, k: int) -> np.ndarray:
        """Neurons of layer k seen inactive (beyond rounding noise) on a sample inside the domain."""
        return self.layers[k].seen_inactive

    def witnesses(self) -> Findings:
        """The states seen on samples inside the domain, as stability findings (source ``sample``).

        Cached, so that adding them twice to a ``Stability`` is recognised as the same findings."""
        if self._witnesses is None:
            self._witnesses = Findings(source="sample", seen_active=[st.seen_active for st in self.layers],
                                       seen_inactive=[st.seen_inactive for st in self.layers],
                                       fingerprint=self.fingerprint)
        return self._witnesses

    def summary(self) -> dict:
        per_layer = []
        for k, st in enumerate(self.layers):
            per_layer.append({
                "layer": self.layer_ids[k],
                "width": st.width,
                "never_active": int(np.sum(~st.seen_active)),
                "always_active": int(np.sum(~st.seen_inactive)),
            })
        return {"samples": self.samples, "in_domain": self.in_domain, "sources": self.sources, "layers": per_layer}


def instrumented_runner(net: Network, device: str) -> Runner:
    """A runner over a copy of ``net`` (prefix included) whose only output is every layer's
    pre-activation side by side, shape (N, sum of widths): one array to reduce per batch."""
    model = to_model(net, expose_preactivations=True)
    pres = [f"{PRE_PREFIX}{k}" for k in range(len(net.layers))]
    g = model.graph
    batch = next(o for o in g.output if o.name == pres[0]).type.tensor_type.shape.dim[0]
    elem = real_inputs(model)[0].type.tensor_type.elem_type
    total = sum(layer.n_out for layer in net.layers)
    out = helper.make_tensor_value_info(PRE_ALL, elem, [batch.dim_param or batch.dim_value, total])
    graph = helper.make_graph(list(g.node) + [helper.make_node("Concat", pres, [PRE_ALL], axis=1)], g.name,
                              list(g.input), [out], initializer=list(g.initializer),
                              sparse_initializer=list(g.sparse_initializer), value_info=list(g.value_info))
    wide = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return Runner.create(wide, device, [PRE_ALL], spinning=False)


def _rows_in_box(box: Box | None, x: np.ndarray) -> np.ndarray | None:
    """Which rows lie in the box; ``None`` when all do (checked first on the batch's column extremes)."""
    if box is None:
        return None
    if x.shape[0] and np.all(x.min(axis=0) >= box.lo) and np.all(x.max(axis=0) <= box.hi):
        return None
    return box.contains(x)


def collect(
    net: Network,
    box: Box | None,
    data: np.ndarray | None = None,
    *,
    samples: int = SAMPLES,
    corners: int = CORNERS,
    seed: int = 0,
    device: str = "auto",
    covariance: bool = False,
    use_box_samples: bool = True,
    progress=None,
    deadline=None,
) -> ActivationStats:
    """Run ``data`` rows and (with ``box``) ``samples`` uniform domain points and up to ``corners`` box
    corners through ``net`` and accumulate ``ActivationStats``.  ``deadline`` (``onnxcomp.timing``)
    stops the stream early; the statistics then cover the rows seen (``stats.samples`` says how many)."""
    runner = instrumented_runner(net, device)
    n_samples, n_corners = int(samples), int(corners)
    sample_box = box if use_box_samples else None
    n_data = 0 if data is None else int(data.shape[0])
    n_box = (n_samples + len(sample_box.corners(n_corners, np.random.default_rng(0)))) if sample_box is not None else 0
    # Witnesses must clear float32 rounding noise; without a box over the chain input there is no
    # stability analysis (and no scale to measure the noise against).
    on_chain = box is not None and box.size == net.input_size and not has_prefix(net)
    floors = witness_floor(epsilons(net, box.lo, box.hi), float32=True) if on_chain else [0.0] * len(net.layers)
    acc = _Accumulator(net, floors, covariance)
    if progress is not None:
        progress.start("sampling activations", n_data + n_box)
    # The statistics of batch i run on a worker thread while onnxruntime computes batch i+1 (both
    # release the GIL); one batch in flight at a time keeps memory bounded and the order fixed.
    stopped = False
    with ThreadPoolExecutor(max_workers=1) as worker:
        pending = None
        try:
            # data rows go to onnxruntime in its own dtype, without a float64 detour
            for x in sample_inputs(sample_box, data, n_samples, n_corners, seed, BATCH, runner.np_dtype):
                if deadline is not None and deadline.expired():
                    stopped = True
                    break
                in_box = _rows_in_box(box, x)
                for (y,) in runner.iter_batches(x, BATCH):
                    if pending is not None:
                        pending.result()
                    pending = worker.submit(acc.update, y, in_box)
                if progress is not None:
                    progress.advance(x.shape[0])
            if pending is not None:
                pending.result()
        finally:
            if progress is not None:
                progress.stop()
    stats = ActivationStats(acc.layers(), [l.layer_id for l in net.layers], [list(l.neuron_ids) for l in net.layers],
                            fingerprint=net.fingerprint())
    stats.samples, stats.in_domain = acc.count, acc.dom
    stats.sources = {"data": n_data, "uniform": n_samples if sample_box is not None else 0,
                     "corners": n_box - n_samples if sample_box is not None else 0}
    if stopped:
        stats.sources["stopped_at_time_limit"] = True
    return stats
