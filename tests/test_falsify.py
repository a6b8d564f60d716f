"""``falsify``: finds witnesses that uniform sampling misses (a neuron active only in a tiny region of the
box, reached by projected gradient steps), every witness is a real in-box point with the claimed sign, it
never witnesses a state that cannot occur, and it never proves anything."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxcomp.errors import UsageError
from onnxcomp.ir import LINEAR, Box, Dense, Network
from onnxcomp.pipeline import Context, PassManager
from onnxcomp.stability import DomainBounds, Stability, merge
from onnxcomp.stability.by_bounds import domain_bounds
from onnxcomp.stability.falsify import pgd_witnesses, preactivation_gradients
from onnxcomp.timing import Deadline
from builders import random_network
from functools import partial


random_net = partial(random_network, bias_scale=0.5, fan_in_scaled=True)


def l1_ball_net(n: int = 6, centre: float = 0.3, radius: float = 0.05) -> Network:
    """Layer 0: relu(x_i - c) and relu(c - x_i), so layer 1's neuron ``r - sum_i |x_i - c|`` is active only
    inside an l1 ball of radius r around (c, ..., c): a volume of (2r)^n / n! (1.4e-9 of [0,1]^6), never
    at a vertex of the box."""
    w0 = np.vstack([np.eye(n), -np.eye(n)])
    b0 = np.concatenate([-centre * np.ones(n), centre * np.ones(n)])
    return Network((Dense(w0, b0), Dense(-np.ones((1, 2 * n)), np.array([radius])),
                    Dense(np.ones((1, 1)), np.zeros(1), LINEAR)), n)


def run_falsify(net: Network, box: Box, **options):
    """falsify alone, on a state without certificates: it is handed the margins it requires (the domain's
    bounds) and an empty stability, so the manager inserts no 'bounds' pass before it."""
    annotations = {DomainBounds: domain_bounds(net, box), Stability: Stability(net.fingerprint())}
    ctx = Context(box=box, options=options, annotations=annotations)
    PassManager().run(net, ["falsify"], ctx)
    assert [e["name"] for e in ctx.log] == ["falsify"]
    return ctx.get(Stability).latest("falsify"), ctx.log[-1]


def test_gradient_steps_find_a_neuron_active_only_in_a_tiny_region():
    net, box = l1_ball_net(), Box(np.zeros(6), np.ones(6))
    _, pres = net.forward(np.vstack([box.sample(100_000, np.random.default_rng(3)), box.corners(64, None)]),
                          preactivations=True)
    assert not (pres[1] > 0).any()  # dense uniform sampling and the vertices never see it active
    found, entry = run_falsify(net, box)
    assert found.seen_active[1][0] and found.seen_inactive[1][0]
    assert entry["open_after_sampling"] >= 1 and entry["open_after"] == 0
    # without gradient steps the same search does not find it
    found0, entry0 = run_falsify(net, box, pgd_steps=0)
    assert not found0.seen_active[1][0] and entry0["open_after"] == 1


def test_gradient_witness_is_an_in_box_point_with_the_claimed_sign():
    net, box = l1_ball_net(), Box(np.zeros(6), np.ones(6))
    rng = np.random.default_rng(0)
    points = pgd_witnesses(net, box.lo, box.hi, 1, np.array([0]), np.array([1.0]), rng)
    assert points.shape == (1, 6) and box.contains(points).all()
    _, pres = net.forward(points, preactivations=True)
    assert pres[1][0, 0] > 0
    # searching for the inactive state of the same neuron gives a point where it is negative
    points = pgd_witnesses(net, box.lo, box.hi, 1, np.array([0]), np.array([-1.0]), rng)
    assert box.contains(points).all() and net.forward(points, preactivations=True)[1][1][0, 0] < 0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 100_000), n_in=st.integers(1, 5), widths=st.lists(st.integers(1, 7), min_size=1, max_size=3))
def test_preactivation_gradients_match_the_forward_pass_and_finite_differences(seed, n_in, widths):
    net = random_net(seed, n_in, widths)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(4, n_in))
    _, pres = net.forward(x, preactivations=True)
    h = 1e-6
    for layer in range(len(widths) + 1):
        neurons = rng.integers(0, net.layers[layer].n_out, size=4)
        value, grad = preactivation_gradients(net, x, layer, neurons)
        np.testing.assert_allclose(value, pres[layer][np.arange(4), neurons], rtol=1e-12, atol=1e-12)
        for j in range(n_in):
            step = np.zeros(n_in)
            step[j] = h
            up = net.forward(x + step, preactivations=True)[1][layer][np.arange(4), neurons]
            down = net.forward(x - step, preactivations=True)[1][layer][np.arange(4), neurons]
            fd = (up - down) / (2 * h)
            # a kink within h of a row makes its finite difference meaningless; elsewhere they agree
            smooth = np.all([np.all(np.abs(p) > 1e-4, axis=1) for p in pres[:layer]] or [np.ones(4, bool)], axis=0)
            np.testing.assert_allclose(grad[smooth, j], fd[smooth], rtol=1e-5, atol=1e-6)


def test_states_that_cannot_occur_are_never_witnessed():
    # on x in [-1, 1]: a = relu(x) >= 0; layer 1 neuron 0 = -a has maximum exactly 0 (never > 0),
    # neuron 1 = a has minimum exactly 0 (never < 0), neuron 2 = -a - 0.5 is stably inactive
    net = Network((Dense(np.array([[1.0]]), np.zeros(1)),
                   Dense(np.array([[-1.0], [1.0], [-1.0]]), np.array([0.0, 0.0, -0.5])),
                   Dense(np.ones((1, 3)), np.zeros(1), LINEAR)), 1)
    found, entry = run_falsify(net, Box(-np.ones(1), np.ones(1)))
    assert found.seen_active[1].tolist() == [False, True, False]
    assert found.seen_inactive[1].tolist() == [True, False, True]
    assert found.proven_inactive is None and found.proven_active is None
    assert entry["open_after"] == 3  # three open states, none of which exists


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 100_000), n_in=st.integers(1, 4), widths=st.lists(st.integers(2, 6), min_size=1, max_size=3),
       shift=st.sampled_from([0.0, -0.7, 0.7]))
def test_witnesses_never_contradict_exact_certificates_and_nothing_is_proven(seed, n_in, widths, shift):
    """Against input splitting (exact proofs, no epsilon): a neuron proven stably inactive there is never
    witnessed active here, and vice versa; and falsify's own findings prove nothing."""
    net = random_net(seed, n_in, widths, shift=shift)
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-1, 0, n_in)
    box = Box(lo, lo + rng.uniform(0.2, 1.5, n_in))
    found, _ = run_falsify(net, box, falsify_samples=2000)
    assert found.proven_inactive is None and found.proven_active is None
    ctx = Context(box=box, deadline=Deadline(30), options={"stability_method": "split"})
    PassManager().run(net, ["bounds", "milp"], ctx)
    entry = ctx.log[-1]
    assert entry.get("split_complete") or entry["status"] == "nothing to prove"  # the bounds may settle all
    st_ = ctx.get(Stability).state(net)
    alone = merge(net, [found])
    for k in range(len(widths)):
        exact = np.isin(st_.proof[k], ["bounds", "split"])  # not the ones settled only up to the margin
        assert not (exact & st_.proven_inactive[k] & found.seen_active[k]).any()
        assert not (exact & st_.proven_active[k] & found.seen_inactive[k]).any()
        assert not alone.proven_inactive[k].any() and not alone.proven_active[k].any()


def test_nothing_open_means_no_search():
    # every neuron is proven stable by the bounds: falsify has no open state to look for
    net = Network((Dense(np.array([[1.0, 1.0], [-1.0, -1.0]]), np.array([0.5, -0.5])),
                   Dense(np.ones((1, 2)), np.zeros(1), LINEAR)), 2)
    ctx = Context(box=Box(np.zeros(2), np.ones(2)))
    PassManager().run(net, ["bounds", "falsify"], ctx)
    entry = ctx.log[-1]
    assert entry["open_before"] == 0 and entry["open_after"] == 0
    found = ctx.get(Stability).latest("falsify")
    assert not found.seen_active[0][1] and not found.seen_inactive[0][0]


def test_needs_a_domain():
    # falsify requires the domain's bounds: their provider ('bounds', inserted first) is the pass refused
    with pytest.raises(UsageError, match="^pass 'bounds' proves facts over an input domain: give --domain$"):
        PassManager().run(l1_ball_net(), ["falsify"], Context())
    # given what it requires, falsify itself is refused without a domain
    net = l1_ball_net()
    given = {DomainBounds: domain_bounds(net, Box(np.zeros(6), np.ones(6))), Stability: Stability(net.fingerprint())}
    with pytest.raises(UsageError, match="^pass 'falsify' proves facts over an input domain: give --domain$"):
        PassManager().run(net, ["falsify"], Context(annotations=given))


def test_with_a_time_share_the_gradient_search_goes_on_while_rounds_find_witnesses_and_no_longer():
    """A neuron that no start reaches (stable, but not provable by this search): with a 30 s deadline the
    search stops after FRUITLESS_ROUNDS rounds that find nothing, long before the deadline; without a
    deadline it does one round."""
    from onnxcomp.stability.falsify import FRUITLESS_ROUNDS

    net = l1_ball_net(radius=-0.01)  # r - sum |x_i - c| < 0 everywhere: never active
    box = Box(np.zeros(6), np.ones(6))
    annotations = {DomainBounds: domain_bounds(net, box), Stability: Stability(net.fingerprint())}
    ctx = Context(box=box, deadline=Deadline(30), annotations=annotations)
    PassManager().run(net, ["falsify"], ctx)
    entry = ctx.log[-1]
    assert entry["gradient_rounds"] == FRUITLESS_ROUNDS and not entry["stopped_at_time_limit"]
    assert not ctx.get(Stability).latest("falsify").seen_active[1][0]
    _, entry1 = run_falsify(net, box)
    assert entry1["gradient_rounds"] == 1


@pytest.mark.parametrize("n_in, method, fires", [(2, "auto", True), (2, "regions", True), (2, "feasibility", False),
                                                 (3, "auto", False)])
def test_no_gradient_search_when_the_regions_search_follows(n_in, method, fires):
    """On a network of at most two inputs a later milp pass with --stability-method auto or regions runs
    the exact regions search, which witnesses every side it reaches: falsify then samples but takes no
    gradient steps; with another method, more inputs, or no milp after it, it does."""
    rng = np.random.default_rng(7)
    net = random_network(rng, n_in, [12, 12], 2)
    box = Box(np.zeros(n_in), np.ones(n_in))
    ctx = Context(box=box, deadline=Deadline(60), options={"stability_method": method, "falsify_samples": 0},
                  samples=20, corners=4)
    PassManager().run(net, ["sample", "bounds", "falsify", "milp"], ctx)
    entry = next(e for e in ctx.log if e["name"] == "falsify")
    assert entry["open_after_sampling"] > 0  # something left for a gradient search to look for
    assert ("gradient_search" in entry) == fires
    assert (entry["gradient_rounds"] == 0) == fires
    milp = next(e for e in ctx.log if e["name"] == "milp")
    assert milp["undecided"] == 0
    alone = Context(box=box, deadline=Deadline(60), options={"falsify_samples": 0}, samples=20, corners=4)
    PassManager().run(net, ["sample", "bounds", "falsify"], alone)
    assert "gradient_search" not in alone.log[-1] and alone.log[-1]["gradient_rounds"] >= 1
