"""``tighten``: LP bounds (rigorous through the duals) and MILP bounds (epsilon policy) enclose every
sampled pre-activation on random networks; the weak-duality bound holds for ANY row multipliers (so a
solver's tolerances cannot make it unsound); LP bounds are never looser than alpha-CROWN's with the same
intermediate bounds, MILP bounds never looser than LP's (up to the margin); a passed deadline changes
nothing."""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import random_network
from onnxcomp.bounds import alpha_crown_bounds
from onnxcomp.ir import Box
from onnxcomp.milp.formulation import build_prefix
from onnxcomp.milp.highs import HighsProblem, safe_lp_bound
from onnxcomp.stability.tighten import lp_bounds, milp_bounds

random_net = partial(random_network, bias_scale=0.5, fan_in_scaled=True)


def sampled(net, lo, hi, rng, n=4000):
    box = Box(lo, hi)
    x = np.vstack([box.sample(n, rng), box.corners(256, rng)])
    return net.forward(x, preactivations=True)[1]


def start_bounds(net, lo, hi, iterations=5):
    a = alpha_crown_bounds(net, lo, hi, iterations=iterations)
    return [b[0] for b in a.lower], [b[0] for b in a.upper]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 100_000), n_in=st.integers(1, 5), widths=st.lists(st.integers(2, 8), min_size=2, max_size=3),
       linear_every=st.sampled_from([0, 0, 2]))
def test_lp_bounds_enclose_samples_and_beat_alpha(seed, n_in, widths, linear_every):
    net = random_net(seed, n_in, widths, linear_every=linear_every)
    rng = np.random.default_rng(seed)
    lo, hi = rng.uniform(-1, 0, n_in), rng.uniform(0, 1, n_in)
    lower, upper = start_bounds(net, lo, hi)
    pres = sampled(net, lo, hi, rng)
    for k in range(1, len(net.layers)):
        low, up = lp_bounds(net, lo, hi, lower, upper, k, range(net.layers[k].n_out))
        assert np.all(pres[k] >= low) and np.all(pres[k] <= up), f"layer {k}"
        assert np.all(low >= lower[k]) and np.all(up <= upper[k])  # only ever tightens
        lower[k], upper[k] = low, up  # and later layers use them


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 100_000), scale=st.sampled_from([0.0, 1e-3, 1.0, 100.0]))
def test_weak_duality_bound_holds_for_any_multipliers(seed, scale):
    net = random_net(seed, 3, [6, 6])
    rng = np.random.default_rng(seed)
    lo, hi = -np.ones(3), np.ones(3)
    lower, upper = start_bounds(net, lo, hi, 0)
    pres = sampled(net, lo, hi, rng)
    milp = build_prefix([l.weight for l in net.layers[:2]], [l.bias for l in net.layers[:2]], [True, True], lo, hi,
                        lower, upper, 1, range(6), [np.zeros(6, bool)])
    lam = rng.normal(size=milp.n_rows) * scale  # garbage multipliers: a valid, if useless, bound
    for i in range(6):
        col = milp.targets[i]
        up = safe_lp_bound(milp, {col: 1.0}, True, lam)
        low = safe_lp_bound(milp, {col: 1.0}, False, lam)
        assert np.all(pres[1][:, i] <= up) and np.all(pres[1][:, i] >= low)
    # with the solver's duals the bound is the LP optimum (up to its tolerance)
    prob = HighsProblem(milp, {"solver": "simplex"})
    col = milp.targets[0]
    prob.set_objective({col: 1.0}, True)
    out = prob.solve(10)
    assert out.status == "optimal"
    assert abs(prob.lp_dual_bound({col: 1.0}, True) - out.primal) <= 1e-6 * (1 + abs(out.primal))


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 100_000), solver=st.sampled_from(["highs", "scip"]))
def test_milp_bounds_enclose_samples_and_beat_lp(seed, solver):
    net = random_net(seed, 3, [6, 6, 6])
    rng = np.random.default_rng(seed)
    lo, hi = -np.ones(3), np.ones(3)
    lower, upper = start_bounds(net, lo, hi)
    pres = sampled(net, lo, hi, rng)
    for k in (1, 2):
        eps = 1e-5 * np.ones(6)
        l_lp, u_lp = lp_bounds(net, lo, hi, lower, upper, k, range(6))
        low, up, cands = milp_bounds(net, lo, hi, lower, upper, k, range(6), eps, time_limit=20, solver=solver)
        assert np.all(pres[k] >= low) and np.all(pres[k] <= up), f"layer {k}"
        assert np.all(up <= u_lp + 2e-5) and np.all(low >= l_lp - 2e-5)
        for x in cands:  # solutions are inputs of the box
            assert np.all(x >= lo - 1e-6) and np.all(x <= hi + 1e-6)
        lower[k], upper[k] = np.maximum(lower[k], low), np.minimum(upper[k], up)


@pytest.mark.slow
def test_milp_bounds_are_tighter_than_lp_on_a_deep_neuron():
    net = random_net(0, 10, [30, 30, 30])
    lo, hi = -0.3 * np.ones(10), 0.3 * np.ones(10)
    lower, upper = start_bounds(net, lo, hi, 50)
    k = 1
    open_ = np.flatnonzero((lower[k] < 0) & (upper[k] > 0))[:4]
    l_lp, u_lp = lp_bounds(net, lo, hi, lower, upper, k, open_)
    low, up, _ = milp_bounds(net, lo, hi, lower, upper, k, open_, 1e-5 * np.ones(30), time_limit=30)
    assert ((u_lp - up)[open_] > 1e-3).any()


def test_a_passed_deadline_changes_nothing():
    net = random_net(1, 3, [6, 6])
    lo, hi = -np.ones(3), np.ones(3)
    lower, upper = start_bounds(net, lo, hi)
    past = time.monotonic() - 1
    low, up = lp_bounds(net, lo, hi, lower, upper, 1, range(6), deadline=past)
    np.testing.assert_array_equal(low, lower[1])
    np.testing.assert_array_equal(up, upper[1])
    low, up, c = milp_bounds(net, lo, hi, lower, upper, 1, range(6), np.ones(6) * 1e-5, deadline=past)
    np.testing.assert_array_equal(up, upper[1])
    assert c == []
