"""``bounds``: interval and CROWN pre-activation bounds are sound on random networks and boxes (also
batched over several boxes), CROWN is never looser than intervals, outward rounding keeps float error
from creating a proof, and the pass proves exactly the neurons its bounds settle."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxcomp.errors import UsageError
from onnxcomp.ir import LINEAR, Box, Dense, Network
from onnxcomp.pipeline import Context, PassManager
from onnxcomp.reader import read
from onnxcomp.bounds import crown_bounds, interval_bounds, prove
from onnxcomp.stability import Stability
from builders import random_network
from functools import partial


random_net = partial(random_network, bias_scale=0.5, fan_in_scaled=True)


def random_boxes(rng: np.random.Generator, n_boxes: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    lo = rng.uniform(-2, 1, size=(n_boxes, n_in))
    hi = lo + rng.uniform(0.0, 2.0, size=(n_boxes, n_in))  # degenerate (zero-width) dimensions included
    hi[:, 0] = lo[:, 0] + rng.uniform(0.1, 2.0, n_boxes)
    return lo, hi


def points_in(box: Box, rng: np.random.Generator, n: int) -> np.ndarray:
    return np.vstack([box.sample(n, rng), box.corners(256, rng), ((box.lo + box.hi) / 2)[None, :]])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 100_000), n_in=st.integers(1, 6), widths=st.lists(st.integers(1, 9), min_size=1, max_size=4),
       n_boxes=st.integers(1, 3), linear_every=st.sampled_from([0, 0, 2]), shift=st.sampled_from([0.0, -0.5, 0.5]))
def test_interval_and_crown_bounds_enclose_every_sampled_preactivation(seed, n_in, widths, n_boxes, linear_every, shift):
    net = random_net(seed, n_in, widths, linear_every=linear_every, shift=shift)
    rng = np.random.default_rng(seed + 1)
    lo, hi = random_boxes(rng, n_boxes, n_in)
    ibp = interval_bounds(net, lo, hi)
    crown = crown_bounds(net, lo, hi)
    for r in range(n_boxes):
        box = Box(lo[r], hi[r])
        _, pres = net.forward(points_in(box, rng, 3000), preactivations=True)
        single_ibp = interval_bounds(net, lo[r], hi[r])
        single_crown = crown_bounds(net, lo[r], hi[r])
        for k, y in enumerate(pres):
            for name, b in (("interval", ibp), ("crown", crown)):
                assert b.lower[k].shape == (n_boxes, net.layers[k].n_out)
                assert np.all(y >= b.lower[k][r]) and np.all(y <= b.upper[k][r]), f"{name} bound of layer {k} violated"
            # CROWN is intersected with the intervals, so it can only be tighter
            assert np.all(crown.lower[k][r] >= ibp.lower[k][r]) and np.all(crown.upper[k][r] <= ibp.upper[k][r])
            # the batched computation gives each box what a computation for that box alone gives
            np.testing.assert_allclose(ibp.lower[k][r], single_ibp.lower[k][0], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(crown.upper[k][r], single_crown.upper[k][0], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(crown.lower[k][r], single_crown.lower[k][0], rtol=1e-12, atol=1e-12)


def test_crown_is_strictly_tighter_than_intervals_on_a_real_model(repo_root):
    net = read(repo_root / "models" / "digits_2x32_l1.onnx")
    lo, hi = np.zeros((1, 64)), np.ones((1, 64))
    ibp, crown = interval_bounds(net, lo, hi), crown_bounds(net, lo, hi)
    # the first layer's bounds are the same (CROWN starts from the intervals)
    np.testing.assert_array_equal(crown.upper[0], ibp.upper[0])
    gap_ibp = sum(float((u - l).sum()) for l, u in zip(ibp.lower[1:], ibp.upper[1:]))
    gap_crown = sum(float((u - l).sum()) for l, u in zip(crown.lower[1:], crown.upper[1:]))
    assert gap_crown < 0.9 * gap_ibp
    p_ibp, p_crown = prove(net, ibp), prove(net, crown)
    for k in range(len(net.layers)):
        assert np.all(p_crown[0][k] >= p_ibp[0][k]) and np.all(p_crown[1][k] >= p_ibp[1][k])


# ---- outward rounding ------------------------------------------------------------------------------
def exact_preactivation(weights, bias, x) -> Fraction:
    """``w . x + b`` in exact rational arithmetic (every float is a rational)."""
    return sum((Fraction(float(w)) * Fraction(float(v)) for w, v in zip(weights, x)), Fraction(0)) + Fraction(float(bias))


def test_tiny_positive_maximum_lost_to_float_rounding_is_not_proven_inactive():
    # y = x1 + 1e-17 x2 - 1 on [0,1]^2: the maximum is 1e-17 > 0 at (1, 1), but float64 evaluates it as 0
    w, b = np.array([[1.0, 1e-17]]), np.array([-1.0])
    corner = np.ones(2)
    assert exact_preactivation(w[0], b[0], corner) > 0
    assert float((corner @ w.T + b)[0]) == 0.0  # without a margin, a float bound would say "<= 0"
    lo, hi = np.zeros((1, 2)), np.ones((1, 2))
    first = Network((Dense(w, b), Dense(np.ones((1, 1)), np.zeros(1), LINEAR)), 2)
    # the same neuron behind an identity layer exercises the back-substitution path
    second = Network((Dense(np.eye(2), np.zeros(2)), Dense(w, b), Dense(np.ones((1, 1)), np.zeros(1), LINEAR)), 2)
    for net, k in ((first, 0), (second, 1)):
        for fn in (interval_bounds, crown_bounds):
            bounds = fn(net, lo, hi)
            assert bounds.upper[k][0, 0] > 0, fn.__name__
            assert not prove(net, bounds)[0][k][0]
    ctx = Context(box=Box(lo[0], hi[0]))
    PassManager().run(second, ["bounds"], ctx)
    assert not ctx.get(Stability).latest("bounds").proven_inactive[1][0]


def test_tiny_negative_minimum_lost_to_float_rounding_is_not_proven_active():
    # y = x1 - 1e-17 x2 - 1 on [1,2] x [0,1]: the minimum is -1e-17 < 0 at (1, 1), float64 says 0
    w, b = np.array([[1.0, -1e-17]]), np.array([-1.0])
    assert exact_preactivation(w[0], b[0], [1.0, 1.0]) < 0
    assert float((np.array([1.0, 1.0]) @ w.T + b)[0]) == 0.0
    net = Network((Dense(np.eye(2), np.zeros(2)), Dense(w, b), Dense(np.ones((1, 1)), np.zeros(1), LINEAR)), 2)
    lo, hi = np.array([[1.0, 0.0]]), np.array([[2.0, 1.0]])
    for fn in (interval_bounds, crown_bounds):
        bounds = fn(net, lo, hi)
        assert bounds.lower[1][0, 0] < 0
        assert not prove(net, bounds)[1][1][0]


def test_preactivation_identically_zero_is_enclosed_tightly():
    # y = relu(x) - relu(x) is exactly 0 on the box: both states hold, so any claim would be true; what
    # must hold is that the bound contains 0 and that CROWN (exact here) widens only by the rounding margin
    net = Network((Dense(np.array([[1.0], [1.0]]), np.zeros(2)), Dense(np.array([[1.0, -1.0]]), np.zeros(1)),
                   Dense(np.ones((1, 1)), np.zeros(1), LINEAR)), 1)
    bounds = crown_bounds(net, np.array([[0.5]]), np.array([[3.0]]))
    lo, up = bounds.lower[1][0, 0], bounds.upper[1][0, 0]
    assert lo <= 0.0 <= up
    assert up - lo < 1e-7  # the margin is ~1e-9 of the magnitudes involved (about 6 here)
    ibp = interval_bounds(net, np.array([[0.5]]), np.array([[3.0]]))
    assert ibp.upper[1][0, 0] >= 2.5 - 1e-9  # intervals lose the correlation; CROWN keeps it


# ---- the pass ----------------------------------------------------------------------------------------
def three_neuron_net() -> Network:
    """On [0,1]^2: neuron 0 = -x1 - x2 - 0.1 (stably inactive), 1 = x1 - x2 (unstable),
    2 = x1 + x2 + 0.1 (stably active), 3 = x1 + x2 (max 2, min exactly 0: stably active, y >= 0)."""
    w0 = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [1.0, 1.0]])
    b0 = np.array([-0.1, 0.0, 0.1, 0.0])
    return Network((Dense(w0, b0), Dense(np.ones((1, 4)), np.zeros(1), LINEAR)), 2)


@pytest.mark.parametrize("method", ["interval", "crown"])
def test_pass_proves_stable_neurons_and_not_unstable_ones(method):
    net = three_neuron_net()
    ctx = Context(box=Box(np.zeros(2), np.ones(2)), options={"bounds_method": method})
    PassManager().run(net, ["bounds"], ctx)
    found = ctx.get(Stability).latest("bounds")
    assert found.source == "bounds" and found.fingerprint == net.fingerprint()
    assert found.proven_inactive[0].tolist() == [True, False, False, False]
    # neuron 3's minimum is exactly 0 (y >= 0 holds, so either answer is sound); the others are settled
    assert found.proven_active[0].tolist()[:3] == [False, False, True]
    assert not found.proven_inactive[1].any() and not found.proven_active[1].any()  # the output layer
    entry = ctx.log[-1]
    assert entry["proven_inactive"] == 1 and entry["proven_active"] == int(found.proven_active[0].sum())
    assert method in entry["message"]
    # the bounds it hands on enclose the true ranges
    assert found.upper[0][1] >= 1.0 and found.lower[0][1] <= -1.0


def test_pass_on_a_box_where_everything_is_unstable_proves_nothing():
    net = three_neuron_net()
    ctx = Context(box=Box(-np.ones(2), np.ones(2)))
    PassManager().run(net, ["bounds"], ctx)
    found = ctx.get(Stability).latest("bounds")
    assert not any(a.any() for a in found.proven_inactive) and not any(a.any() for a in found.proven_active)
    assert ctx.log[-1]["proven_inactive"] == 0 and ctx.log[-1]["proven_active"] == 0


def test_pass_needs_a_domain():
    with pytest.raises(UsageError, match="bounds.*domain"):
        PassManager().run(three_neuron_net(), ["bounds"], Context())
