"""``bounds.alpha_crown_bounds``: optimised ReLU slopes give sound bounds (every sampled pre-activation
inside, on random networks and boxes, with and without given intermediate bounds), never looser than
CROWN, converging to the LP relaxation's optimum on one hidden layer; outward rounding keeps float error
from creating a proof; a passed deadline leaves plain CROWN."""

from __future__ import annotations

import time
from functools import partial

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import random_network
from onnxcomp.bounds import alpha_crown_bounds, crown_bounds
from onnxcomp.ir import LINEAR, Box, Dense, Network
from onnxcomp.reader import read

random_net = partial(random_network, bias_scale=0.5, fan_in_scaled=True)


def random_box(rng: np.random.Generator, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    lo = rng.uniform(-2, 1, size=n_in)
    hi = lo + rng.uniform(0.0, 2.0, size=n_in)  # zero-width dimensions included
    hi[0] = lo[0] + rng.uniform(0.1, 2.0)
    return lo, hi


def points_in(lo, hi, rng, n: int = 3000) -> np.ndarray:
    box = Box(lo, hi)
    return np.vstack([box.sample(n, rng), box.corners(256, rng), ((lo + hi) / 2)[None, :]])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 100_000), n_in=st.integers(1, 6), widths=st.lists(st.integers(1, 9), min_size=1, max_size=4),
       linear_every=st.sampled_from([0, 0, 2]), shift=st.sampled_from([0.0, -0.5, 0.5]),
       iterations=st.sampled_from([0, 3, 20]), lr=st.sampled_from([0.1, 1.0]))
def test_alpha_bounds_enclose_every_sampled_preactivation(seed, n_in, widths, linear_every, shift, iterations, lr):
    net = random_net(seed, n_in, widths, linear_every=linear_every, shift=shift)
    rng = np.random.default_rng(seed + 1)
    lo, hi = random_box(rng, n_in)
    crown = crown_bounds(net, lo[None], hi[None])
    alpha = alpha_crown_bounds(net, lo, hi, iterations=iterations, lr=lr)
    _, pres = net.forward(points_in(lo, hi, rng), preactivations=True)
    for k, y in enumerate(pres):
        assert alpha.lower[k].shape == (1, net.layers[k].n_out)
        assert np.all(y >= alpha.lower[k][0]) and np.all(y <= alpha.upper[k][0]), f"layer {k} bound violated"
        # never looser than CROWN
        assert np.all(alpha.lower[k] >= crown.lower[k]) and np.all(alpha.upper[k] <= crown.upper[k])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 100_000), widths=st.lists(st.integers(2, 8), min_size=2, max_size=4))
def test_given_sound_bounds_are_used_and_results_stay_sound(seed, widths):
    # the sampled range itself, widened, is a sound (and tight) set of bounds to pass in
    net = random_net(seed, 3, widths)
    rng = np.random.default_rng(seed)
    lo, hi = -np.ones(3), np.ones(3)
    _, pres = net.forward(points_in(lo, hi, rng, 5000), preactivations=True)
    # bounds from a finer grid-free source: alpha itself on the box, then exact-ish sampled ranges intersected
    base = alpha_crown_bounds(net, lo, hi, iterations=5)
    lower = [b[0] for b in base.lower]
    upper = [b[0] for b in base.upper]
    out = alpha_crown_bounds(net, lo, hi, iterations=5, lower=lower, upper=upper)
    for k, y in enumerate(pres):
        assert np.all(out.lower[k][0] >= lower[k]) and np.all(out.upper[k][0] <= upper[k])
        assert np.all(y >= out.lower[k][0]) and np.all(y <= out.upper[k][0])


def test_alpha_reaches_the_lp_optimum_on_one_hidden_layer():
    # with one relaxed layer, min over slopes of the CROWN bound equals the triangle LP's optimum
    from onnxcomp.stability.tighten import lp_bounds

    net = random_net(3, 6, [20, 20])
    lo, hi = -0.5 * np.ones(6), 0.5 * np.ones(6)
    crown = crown_bounds(net, lo[None], hi[None])
    alpha = alpha_crown_bounds(net, lo, hi, iterations=400, lr=0.05, upto=2)
    lower, upper = [crown.lower[0][0], alpha.lower[1][0]], [crown.upper[0][0], alpha.upper[1][0]]
    open_ = np.flatnonzero((alpha.lower[1][0] < 0) & (alpha.upper[1][0] > 0))
    assert open_.size > 3
    low, up = lp_bounds(net, lo, hi, [crown.lower[0][0], crown.lower[1][0]], [crown.upper[0][0], crown.upper[1][0]], 1, open_)
    gap_crown = (crown.upper[1][0] - up)[open_]
    gap_alpha = (alpha.upper[1][0] - up)[open_]
    assert np.all(gap_alpha >= -1e-7)  # LP is optimal over the same relaxation: alpha is never below it
    assert gap_alpha.sum() < 0.02 * max(gap_crown.sum(), 1e-9) + 1e-6 * open_.size
    assert lower[1].shape == upper[1].shape


def test_alpha_is_strictly_tighter_than_crown_on_a_real_model(repo_root):
    net = read(repo_root / "models" / "mnist_3x100_l1.onnx")
    lo, hi = np.zeros(784), np.ones(784)
    crown = crown_bounds(net, lo[None], hi[None])
    alpha = alpha_crown_bounds(net, lo, hi, iterations=10)
    gap_c = sum(float((u - l).sum()) for l, u in zip(crown.lower[1:3], crown.upper[1:3]))
    gap_a = sum(float((u - l).sum()) for l, u in zip(alpha.lower[1:3], alpha.upper[1:3]))
    assert gap_a < 0.95 * gap_c


def test_tiny_positive_maximum_lost_to_rounding_is_not_proven():
    # y = x1 + 1e-17 x2 - 1 on [0,1]^2 behind an identity layer: max 1e-17 > 0, float64 says 0
    w, b = np.array([[1.0, 1e-17]]), np.array([-1.0])
    net = Network((Dense(np.eye(2), np.zeros(2)), Dense(w, b), Dense(np.ones((1, 1)), np.zeros(1), LINEAR)), 2)
    out = alpha_crown_bounds(net, np.zeros(2), np.ones(2), iterations=10)
    assert out.upper[1][0, 0] > 0


def test_a_passed_deadline_gives_the_unoptimised_bounds():
    # no slope is optimised: CROWN's slopes, with intervals propagated from the layer below (so possibly
    # tighter than crown_bounds, never looser), the same as iterations=0
    net = random_net(5, 4, [10, 10, 10])
    lo, hi = -np.ones(4), np.ones(4)
    crown = crown_bounds(net, lo[None], hi[None])
    plain = alpha_crown_bounds(net, lo, hi, iterations=0)
    out = alpha_crown_bounds(net, lo, hi, iterations=50, deadline=time.monotonic() - 1.0)
    optimised = alpha_crown_bounds(net, lo, hi, iterations=50)
    for k in range(len(net.layers)):
        np.testing.assert_array_equal(out.upper[k], plain.upper[k])
        np.testing.assert_array_equal(out.lower[k], plain.lower[k])
        assert np.all(out.upper[k] <= crown.upper[k]) and np.all(out.lower[k] >= crown.lower[k])
    assert sum(float((u - l).sum()) for l, u in zip(optimised.lower, optimised.upper)) < \
        sum(float((u - l).sum()) for l, u in zip(out.lower, out.upper))


# ---- split_row_bounds: one row over pieces of the ReLU state space (the branch and bound's bound) -------------
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 100_000), n_in=st.integers(1, 4), widths=st.lists(st.integers(2, 7), min_size=1, max_size=3),
       iterations=st.sampled_from([0, 1, 5]), beta_scale=st.sampled_from([0.0, 0.5, 10.0]))
def test_split_row_bounds_hold_on_every_sampled_input_of_each_piece(seed, n_in, widths, iterations, beta_scale):
    from onnxcomp.bounds import split_row_bounds

    net = random_net(seed, n_in, widths)
    rng = np.random.default_rng(seed)
    lo, hi = random_box(rng, n_in)
    k = len(widths)  # bound a neuron of the output layer's row over the hidden layers
    crown = crown_bounds(net, lo[None], hi[None])
    lower, upper = [b[0] for b in crown.lower[:k]], [b[0] for b in crown.upper[:k]]
    n_pieces = 6
    splits, alpha, beta = [], [], []
    for j in range(k):
        unstable = (lower[j] < 0) & (upper[j] > 0)
        s = rng.integers(-1, 2, size=(n_pieces, widths[j])).astype(np.int8) * unstable  # signs only on unstable
        splits.append(s)
        alpha.append(rng.uniform(0, 1, size=(n_pieces, widths[j])))
        beta.append(rng.uniform(0, 1, size=(n_pieces, widths[j])) * beta_scale)
    row = int(rng.integers(net.layers[k].n_out))
    sign = float(rng.choice([-1.0, 1.0]))
    row_w, row_b = sign * net.layers[k].weight[row], sign * net.layers[k].bias[row]
    bound, coef, x_star = split_row_bounds([l.weight for l in net.layers[:k]], [l.bias for l in net.layers[:k]],
                                           [l.is_relu for l in net.layers[:k]], lo, hi, lower, upper, row_w, row_b,
                                           splits, alpha, beta, iterations=iterations)
    x = points_in(lo, hi, rng, 4000)
    _, pres = net.forward(x, preactivations=True)
    value = sign * pres[k][:, row]
    for p in range(n_pieces):
        inside = np.ones(len(x), bool)
        for j in range(k):
            s = splits[j][p]
            inside &= np.all((s[None, :] == 0) | (s[None, :] * pres[j] >= 0), axis=1)
        if inside.any():
            assert value[inside].max() <= bound[p], f"piece {p}"
        assert np.all(alpha[0][p] >= 0) and np.all(alpha[0][p] <= 1) and np.all(beta[0][p] >= 0)
    assert x_star.shape == (n_pieces, n_in) and np.all(x_star >= lo) and np.all(x_star <= hi)


def test_split_row_bounds_with_every_neuron_fixed_and_lp_multipliers_is_exact():
    # on a piece where every unstable ReLU is fixed the network is affine: with the LP's multipliers the
    # bound is the piece's true maximum (up to the margin)
    from onnxcomp.bounds import split_row_bounds
    from onnxcomp.stability.feasibility import _leaf_lp

    net = random_net(11, 2, [6])
    lo, hi = -np.ones(2), np.ones(2)
    crown = crown_bounds(net, lo[None], hi[None])
    lower, upper = [crown.lower[0][0]], [crown.upper[0][0]]
    unstable = (lower[0] < 0) & (upper[0] > 0)
    x = points_in(lo, hi, np.random.default_rng(0), 20000)
    _, pres = net.forward(x, preactivations=True)
    s = np.where(pres[0][0] > 0, 1, -1).astype(np.int8) * unstable  # the piece of the box centre's... first point
    splits, beta = [s[None, :]], [np.zeros((1, 6))]
    row_w, row_b = net.layers[1].weight[0], net.layers[1].bias[0]
    x_opt = _leaf_lp([net.layers[0].weight], [net.layers[0].bias], [True], lo, hi, lower, upper, row_w, row_b, splits, beta)
    assert x_opt is not None
    bound, _, _ = split_row_bounds([net.layers[0].weight], [net.layers[0].bias], [True], lo, hi, lower, upper, row_w,
                                   row_b, splits, [np.zeros((1, 6))], beta, iterations=0)
    inside = np.all((s[None, :] == 0) | (s[None, :] * pres[0] >= 0), axis=1)
    best = pres[1][inside, 0].max()
    y_opt = net.forward(x_opt[None, :], preactivations=True)[1][1][0, 0]
    assert best <= bound[0] + 1e-12
    assert abs(bound[0] - y_opt) < 1e-6 * (1 + abs(y_opt))
