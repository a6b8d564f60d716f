"""Falsification: cheap search for inputs that flip the neurons no earlier analysis settled.

For every undecided neuron that has never been seen active (resp. inactive) we look for an input of the
domain where ``y`` is positive (resp. negative) beyond rounding noise (``state.witness_floor``): more uniform samples and box vertices in batches, then
projected gradient steps on each such neuron's pre-activation toward the unseen state (sign steps
scaled to the box, projected back into it), started from random points and the box centre.  Every
witness is a real float64 forward pass of a point inside the box, so it is a genuine proof that the
neuron is not stable; nothing is ever proven stable here.
"""

from __future__ import annotations

import time

import numpy as np

from ..ir import Box, Network
from ..timing import Deadline
from .state import Findings, StabilityState, witness_floor

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
    grad = target.rows(neurons)  # d y / d h_{layer-1}, one row per sample (a copy, dense)
    value = np.einsum("rj,rj->r", h, grad) + target.bias[neurons]
    for k in range(layer - 1, -1, -1):
        grad = grad * masks[k]
        grad = np.asarray(grad @ net.layers[k].weight)  # a convolution's transpose when the layer is one
    return value, grad


FRUITLESS_ROUNDS = 2
"""The gradient search stops after this many rounds in a row that witness nothing new."""


def pgd_witnesses(net: Network, lo: np.ndarray, hi: np.ndarray, layer: int, neurons: np.ndarray, direction: np.ndarray,
                  rng: np.random.Generator, steps: int = 40, restarts: int = 2,
                  deadline: Deadline | None = None, from_centre: bool = True) -> np.ndarray:
    """Projected sign-gradient ascent of ``direction * y`` for each target neuron; returns the best
    point found per target (rows aligned with ``neurons``), early when ``deadline`` passes.  The first
    start is the box centre (``from_centre``) or a random point, the ``restarts`` others random."""
    width = hi - lo
    best_x = np.repeat(((lo + hi) / 2)[None, :], len(neurons), axis=0)
    best_v = np.full(len(neurons), -np.inf)
    for r in range(restarts + 1):
        x = best_x.copy() if r == 0 and from_centre else rng.uniform(lo, hi, size=(len(neurons), lo.size))
        step = 0.25
        for _ in range(steps):
            if deadline is not None and deadline.expired():
                break
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


def search(net: Network, box: Box, state: StabilityState, eps: list, rng: np.random.Generator, *,
           samples: int = 20000, corners: int = 1024, pgd_steps: int = 40, gradient: bool = True,
           deadline: Deadline | None = None) -> tuple[Findings, dict]:
    """Look for witnesses of every open neuron state of ``state``: ``samples`` uniform points and up to
    ``corners`` vertices of ``box``, then (unless ``gradient`` is false) projected gradient steps per open
    neuron side (stopped at ``deadline``).  Returns the witnesses (``Findings`` of source ``falsify``) and
    report facts."""
    deadline = deadline or Deadline()
    start = time.perf_counter()
    n_layers = max(len(net.layers) - 1, 0)
    seen_a = [a.copy() for a in state.seen_active]
    seen_i = [a.copy() for a in state.seen_inactive]
    floor = witness_floor(eps)

    def open_count() -> int:
        return sum(int(((~seen_a[k] & ~state.proven_inactive[k] & ~state.proven_active[k]) |
                        (~seen_i[k] & ~state.proven_active[k] & ~state.proven_inactive[k])).sum())
                   for k in range(n_layers) if net.layers[k].is_relu)

    before = open_count()
    for s in range(0, samples, BATCH):
        if open_count() == 0 or deadline.expired():
            break
        _observe(net, box.sample(min(BATCH, samples - s), rng), seen_a, seen_i, n_layers, floor)
    if open_count() and not deadline.expired():
        _observe(net, box.corners(corners, rng), seen_a, seen_i, n_layers, floor)
    after_sampling = open_count()
    stopped = False
    rounds, fruitless = 0, 0
    # gradient rounds: the first from the box centre, later ones from random starts, for as long as the
    # time share lasts and a round still finds something (deep layers need many starts)
    while gradient and open_count() and fruitless < FRUITLESS_ROUNDS and not stopped:
        open_before_round = open_count()
        for k in range(n_layers):
            if not net.layers[k].is_relu:
                continue
            need_a = np.flatnonzero(~seen_a[k] & ~state.proven_inactive[k] & ~state.proven_active[k])
            need_i = np.flatnonzero(~seen_i[k] & ~state.proven_active[k] & ~state.proven_inactive[k])
            neurons = np.concatenate([need_a, need_i])
            direction = np.concatenate([np.ones(need_a.size), -np.ones(need_i.size)])
            for s in range(0, neurons.size, 512):
                if deadline.expired():
                    stopped = True
                    break
                pts = pgd_witnesses(net, box.lo, box.hi, k, neurons[s:s + 512], direction[s:s + 512], rng,
                                    steps=pgd_steps, deadline=deadline, from_centre=rounds == 0)
                _observe(net, pts, seen_a, seen_i, n_layers, floor)
        rounds += 1
        fruitless = fruitless + 1 if open_count() == open_before_round else 0
        if not deadline.limited:
            break  # no time share to fill: one round, as a library caller without a deadline expects
    findings = Findings(source="falsify", seen_active=seen_a, seen_inactive=seen_i, fingerprint=net.fingerprint())
    remaining = open_count()
    facts = {
        "open_before": before, "open_after_sampling": after_sampling, "open_after": remaining,
        "seconds_search": round(time.perf_counter() - start, 4), "stopped_at_time_limit": stopped,
        "gradient_rounds": rounds,
        "message": f"{before - remaining} of {before} open neuron states witnessed ({after_sampling} left after "
                   f"sampling, {remaining} after gradient search" + (", stopped at its time share" if stopped else "")
                   + ")",
    }
    return findings, facts
