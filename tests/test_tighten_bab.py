"""Issue 18, levers 2 and 4: per-piece intermediate bounds in the ReLU branch and bound
(``bounds.piece_bounds``, ``bab_side(refine=True)``) and intermediate tightening in ``settle`` (the
witnessed sides of unstable neurons bounded by the branch and bound's optimising mode).  Every per-piece
bound holds on every sampled input of its piece, a piece called empty holds no sample, the refined search
reaches the verdicts of the plain one, and tightening narrows bounds that still contain every sample
without changing which neurons are proven."""

from __future__ import annotations

from functools import partial

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import random_network
from onnxcomp.bounds import crown_bounds, piece_bounds
from onnxcomp.ir import Box
from onnxcomp.stability import feasibility as F

random_net = partial(random_network, bias_scale=0.5, fan_in_scaled=True)


def samples(lo, hi, rng, n=6000):
    box = Box(lo, hi)
    return np.vstack([box.sample(n, rng), box.corners(512, rng), ((lo + hi) / 2)[None, :]])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 100_000), n_in=st.integers(1, 4), widths=st.lists(st.integers(2, 8), min_size=2, max_size=4),
       density=st.sampled_from([0.2, 0.5, 1.0]))
def test_piece_bounds_hold_on_every_sampled_input_of_each_piece(seed, n_in, widths, density):
    net = random_net(seed, n_in, widths)
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-1, 0, n_in)
    hi = lo + rng.uniform(0.2, 2.0, n_in)
    k = len(widths)
    crown = crown_bounds(net, lo[None], hi[None])
    n_pieces = 8
    lower = [np.repeat(b[0][None], n_pieces, axis=0) for b in crown.lower[:k]]
    upper = [np.repeat(b[0][None], n_pieces, axis=0) for b in crown.upper[:k]]
    splits = []
    for j in range(k):
        unstable = (crown.lower[j][0] < 0) & (crown.upper[j][0] > 0)
        s = rng.integers(-1, 2, size=(n_pieces, widths[j])) * (rng.random((n_pieces, widths[j])) < density)
        splits.append((s * unstable).astype(np.int8))
    start = rng.integers(0, k, size=n_pieces)
    before = [x.copy() for x in lower], [x.copy() for x in upper]
    empty = piece_bounds([l.weight for l in net.layers[:k]], [l.bias for l in net.layers[:k]],
                         [l.is_relu for l in net.layers[:k]], lo, hi, lower, upper, splits, start)
    x = samples(lo, hi, rng)
    _, pres = net.forward(x, preactivations=True)
    for p in range(n_pieces):
        inside = np.ones(len(x), bool)
        for j in range(k):
            s = splits[j][p]
            inside &= np.all((s[None, :] == 0) | (s[None, :] * pres[j] >= 0), axis=1)
        if empty[p]:
            assert not inside.any(), f"piece {p} called empty holds a sample"
            continue
        for j in range(k):
            y = pres[j][inside]
            tol = 1e-9 * (1 + np.abs(pres[j]).max())
            assert np.all(y <= upper[j][p] + tol) and np.all(y >= lower[j][p] - tol), f"piece {p} layer {j}"
            assert np.all(upper[j][p] <= before[1][j][p]) and np.all(lower[j][p] >= before[0][j][p])


def test_piece_bounds_tighten_later_layers_after_a_split():
    """A split of an early neuron narrows some later bound on at least one of its two pieces."""
    net = random_net(5, 3, [10, 10, 10])
    lo, hi = -np.ones(3), np.ones(3)
    crown = crown_bounds(net, lo[None], hi[None])
    unstable = np.flatnonzero((crown.lower[0][0] < 0) & (crown.upper[0][0] > 0))
    assert unstable.size
    narrowed = 0
    for i in unstable:
        lower = [np.repeat(b[0][None], 2, axis=0) for b in crown.lower[:3]]
        upper = [np.repeat(b[0][None], 2, axis=0) for b in crown.upper[:3]]
        splits = [np.zeros((2, 10), np.int8) for _ in range(3)]
        splits[0][0, i], splits[0][1, i] = 1, -1
        piece_bounds([l.weight for l in net.layers[:3]], [l.bias for l in net.layers[:3]], [True] * 3, lo, hi,
                     lower, upper, splits, np.array([1, 1]))
        narrowed += int(np.sum((upper[1] - lower[1]) < (crown.upper[1][0] - crown.lower[1][0])[None] - 1e-9))
    assert narrowed > 0


def hard_case():
    for seed in range(40):
        net = random_net(seed, 3, [8, 8, 8], shift=-0.2)
        lo, hi = -np.ones(3), np.ones(3)
        st_ = F.settle(net, lo, hi, time_limit=5, schedule=(), witness_seconds=0.5, second_round=False, tighten=0.0)
        if sum(int(st_.undecided[k].sum()) for k in (1, 2)) >= 2:
            return net, lo, hi, st_
    raise AssertionError("no hard case found")


def test_refined_branch_and_bound_reaches_the_plain_verdicts():
    net, lo, hi, before = hard_case()
    eps = F.epsilons(net, lo, hi)
    _, pres = net.forward(samples(lo, hi, np.random.default_rng(1)), preactivations=True)
    compared = 0
    for k in (1, 2):
        tasks = [F.SideTask(int(i), side, float(eps[k][i]), F.WITNESS_FLOAT64 * float(eps[k][i]))
                 for i in np.flatnonzero(before.undecided[k]) for side in (F.ACTIVE, F.INACTIVE)
                 if not (before.seen_active[k][i] if side == F.ACTIVE else before.seen_inactive[k][i])]
        unit = F.SideUnit([l.weight for l in net.layers[:k + 1]], [l.bias for l in net.layers[:k + 1]], [True] * (k + 1),
                          lo, hi, [x.copy() for x in before.lower[:k + 1]], [x.copy() for x in before.upper[:k + 1]], k,
                          tasks, 10.0, method="bab")
        plain = F.solve_sides(unit)
        unit.refine = True
        refined = F.solve_sides(unit)
        for a, b, t in zip(plain, refined, tasks):
            y = pres[k][:, t.neuron] * (1 if t.side == F.ACTIVE else -1)
            if b.verdict == "proven":
                assert y.max() < t.eps
            if "undecided" not in (a.verdict, b.verdict):
                assert a.verdict == b.verdict, (k, t)
                compared += 1
    assert compared >= 2


def test_intermediate_tightening_narrows_sound_bounds_and_keeps_the_verdicts():
    net, lo, hi, _ = hard_case()
    kw = dict(time_limit=60, witness_seconds=0.5, seed=0)
    without = F.settle(net, lo, hi, tighten=0.0, **kw)
    with_ = F.settle(net, lo, hi, tighten=0.5, **kw)
    assert not any(s["stage"] == "tighten" for s in without.stages)  # off: no stage
    stages = [s for s in with_.stages if s["stage"] == "tighten"]
    assert stages and all(s["width_ratio"] <= 1.0 for s in stages)
    assert min(s["width_ratio"] for s in stages) < 1.0, "tightening narrowed nothing"
    x = samples(lo, hi, np.random.default_rng(3))
    _, pres = net.forward(x, preactivations=True)
    for k in with_.hidden:
        tol = 1e-9 * (1 + np.abs(pres[k]).max())
        assert np.all(pres[k] <= with_.upper[k] + tol) and np.all(pres[k] >= with_.lower[k] - tol)
    assert without.counts()["undecided"] == with_.counts()["undecided"] == 0
    for k in with_.hidden:
        np.testing.assert_array_equal(without.stably_inactive[k], with_.stably_inactive[k])
        np.testing.assert_array_equal(without.stably_active[k], with_.stably_active[k])
