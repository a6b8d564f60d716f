"""``falsify``: cheap search for inputs that flip the neurons no earlier pass settled.

For every undecided neuron that has never been seen active (resp. inactive) we look for an input of the
domain where ``y`` is positive (resp. negative) beyond rounding noise (``stability_state.witness_floor``): more uniform samples and box vertices in batches, then
projected gradient steps on each such neuron's pre-activation toward the unseen state (sign steps
scaled to the box, projected back into it), started from random points and the box centre.  Every
witness is a real float64 forward pass of a point inside the box, so it is a genuine proof that the
neuron is not stable; nothing is ever proven stable here.
"""

from __future__ import annotations

import time

import numpy as np

from onnxcomp.ir import Network
from onnxcomp.pipeline import ANALYSIS, Context, register

from .stability_state import Findings, epsilons, merge, witness_floor

BATCH = 4096


def _observe(net: Network, x: np.ndarray, seen_a: list, seen_i: list, n_layers: int, eps: list) -> None:
    _, pres = net.forward(x, preactivations=True)
    for k in range(n_layers):
        seen_a[k] |= (pres[k] > eps[k]).any(axis=0)
        seen_i[k] |= (pres[k] < -eps[k]).any(axis=0)


def preactivation_gradients(net: Network, x: np.ndarray, layer: int, neurons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For row r of ``x``: ``y_{layer, neurons[r]}(x_r)`` and its gradient with respect to ``x_r``."""
    h = x
    masks = []
    for k in range(layer):
        y = net.layers[k].preactivation(h)
        mask = (y > 0) if net.layers[k].is_relu else np.ones_like(y, dtype=bool)
        masks.append(mask)
        h = np.where(mask, y, 0.0) if net.layers[k].is_relu else y
    target = net.layers[layer]
    value = np.einsum("rj,rj->r", h, target.weight[neurons]) + target.bias[neurons]
    grad = target.weight[neurons].copy()  # d y / d h_{layer-1}, one row per sample
    for k in range(layer - 1, -1, -1):
        grad = grad * masks[k]
        grad = grad @ net.layers[k].weight
    return value, grad


def pgd_witnesses(net: Network, lo: np.ndarray, hi: np.ndarray, layer: int, neurons: np.ndarray, direction: np.ndarray,
                  rng: np.random.Generator, steps: int = 40, restarts: int = 2) -> np.ndarray:
    """Projected sign-gradient ascent of ``direction * y`` for each target neuron; returns the best
    point found per target (rows aligned with ``neurons``)."""
    width = hi - lo
    best_x = np.repeat(((lo + hi) / 2)[None, :], len(neurons), axis=0)
    best_v = np.full(len(neurons), -np.inf)
    for r in range(restarts + 1):
        x = best_x.copy() if r == 0 else rng.uniform(lo, hi, size=(len(neurons), lo.size))
        step = 0.25
        for _ in range(steps):
            v, g = preactivation_gradients(net, x, layer, neurons)
            v = v * direction
            better = v > best_v
            best_v[better], best_x[better] = v[better], x[better]
            x = np.clip(x + step * width * np.sign(g * direction[:, None]), lo, hi)
            step *= 0.9
        v, _ = preactivation_gradients(net, x, layer, neurons)
        v = v * direction
        better = v > best_v
        best_v[better], best_x[better] = v[better], x[better]
    return best_x


@register("falsify", ANALYSIS, "witness search for undecided neurons: samples, box vertices, projected gradient steps",
          paper="ISA §5 (disproving stability is easy)")
def run(net: Network, ctx: Context) -> Findings:
    ctx.need_box()
    start = time.perf_counter()
    state = merge(net, ctx.annotations)
    n_layers = max(len(net.layers) - 1, 0)
    seen_a = [a.copy() for a in state.seen_active]
    seen_i = [a.copy() for a in state.seen_inactive]
    rng = ctx.rng(1)
    box = ctx.box
    eps = witness_floor(epsilons(net, box.lo, box.hi))

    def open_count() -> int:
        return sum(int(((~seen_a[k] & ~state.proven_inactive[k] & ~state.proven_active[k]) |
                        (~seen_i[k] & ~state.proven_active[k] & ~state.proven_inactive[k])).sum())
                   for k in range(n_layers) if net.layers[k].is_relu)

    before = open_count()
    n_random = int(ctx.opt("falsify_samples", 20000))
    for s in range(0, n_random, BATCH):
        if open_count() == 0:
            break
        _observe(net, box.sample(min(BATCH, n_random - s), rng), seen_a, seen_i, n_layers, eps)
    if open_count():
        _observe(net, box.corners(int(ctx.opt("corners", 1024)), rng), seen_a, seen_i, n_layers, eps)
    after_sampling = open_count()
    steps = int(ctx.opt("pgd_steps", 40))
    for k in range(n_layers):
        if not net.layers[k].is_relu:
            continue
        need_a = np.flatnonzero(~seen_a[k] & ~state.proven_inactive[k] & ~state.proven_active[k])
        need_i = np.flatnonzero(~seen_i[k] & ~state.proven_active[k] & ~state.proven_inactive[k])
        neurons = np.concatenate([need_a, need_i])
        if neurons.size == 0:
            continue
        direction = np.concatenate([np.ones(need_a.size), -np.ones(need_i.size)])
        for s in range(0, neurons.size, 512):
            pts = pgd_witnesses(net, box.lo, box.hi, k, neurons[s:s + 512], direction[s:s + 512], rng, steps=steps)
            _observe(net, pts, seen_a, seen_i, n_layers, eps)
    findings = Findings(source="falsify", seen_active=seen_a, seen_inactive=seen_i, fingerprint=net.fingerprint())
    remaining = open_count()
    ctx.entry.update({
        "open_before": before, "open_after_sampling": after_sampling, "open_after": remaining,
        "seconds_search": round(time.perf_counter() - start, 4),
        "message": f"{before - remaining} of {before} open neuron states witnessed ({after_sampling} left after sampling, {remaining} after gradient search)",
    })
    return findings
