"""``dependence``: exactly dependent neurons (duplicates, positive multiples, zero and constant neurons)
are found, independent ones are not, and dropping what it found leaves the outputs unchanged."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from onnxcomp.errors import UsageError
from onnxcomp.ir import Box, Dense
from onnxcomp.pipeline import Context, PassManager
from onnxcomp.reader import read
from onnxcomp.calibration import Moments
from onnxcomp.dependence import Dependence, affine_predictor
from builders import random_network
from functools import partial


random_net = partial(random_network, bias_scale=0.3)


def insert_neuron(net, k, row, bias):
    """Append a neuron (incoming ``row``, ``bias``) to hidden layer k, with random outgoing weights."""
    layer, nxt = net.layers[k], net.layers[k + 1]
    rng = np.random.default_rng(len(row))
    layers = list(net.layers)
    layers[k] = Dense(np.vstack([layer.weight, row]), np.append(layer.bias, bias), layer.activation)
    layers[k + 1] = Dense(np.hstack([nxt.weight, rng.normal(size=(nxt.n_out, 1))]), nxt.bias, nxt.activation)
    return net.with_layers(layers)


def analyse(net, x, box=None, **options):
    ctx = Context(data=x, box=box, samples=500, corners=64, options=options)
    PassManager().run(net, ["dependence"], ctx)
    return ctx.get(Dependence), ctx


def test_duplicates_zero_and_constant_neurons_are_flagged_and_nothing_else():
    rng = np.random.default_rng(0)
    net = random_net(rng, 4, [6, 5], 3)
    l0 = net.layers[0]
    net = insert_neuron(net, 0, l0.weight[2], l0.bias[2])               # 6: duplicate of 2
    net = insert_neuron(net, 0, 1.7 * l0.weight[4], 1.7 * l0.bias[4])   # 7: positive multiple of 4
    net = insert_neuron(net, 0, np.zeros(4), -0.5)                      # 8: zero (dead everywhere)
    net = insert_neuron(net, 0, np.zeros(4), 0.8)                       # 9: constant 0.8
    net = insert_neuron(net, 0, -l0.weight[1], -l0.bias[1])             # 10: negative multiple: NOT dependent
    x = rng.normal(size=(400, 4))
    dep, ctx = analyse(net, x, Box(-np.ones(4), np.ones(4)))
    d0 = dep.layers[0]
    assert set(np.flatnonzero(d0.exact)) == {2, 4, 6, 7, 8, 9}
    assert not d0.exact[10] and d0.residual_rel[10] > 0.05
    assert d0.residual_abs[[6, 7, 8, 9]].max() < 1e-8 * d0.scale
    assert d0.proof[6].startswith("duplicate of neuron 2") and "x1.7" in d0.proof[7]
    assert d0.proof[8].startswith("zero neuron") and d0.proof[9].startswith("constant 0.8")
    assert d0.proof[2].startswith("duplicate of neuron 6") and d0.proof[4].startswith("duplicate of neuron 7")
    assert d0.twins[6] == [2] and d0.twins[4] == [7]
    assert not any(d0.proof[i] for i in (0, 1, 3, 5, 10))
    # only one of each twin pair can go: 4 removable losslessly (6 or 2, 7 or 4, 8, 9)
    assert d0.n_exact == 4 and {8, 9} <= set(d0.exact_neurons)
    assert not dep.layers[1].exact.any()
    assert ctx.log[0]["layers"][0]["exact"] == 6
    assert ctx.log[0]["sources"] == {"data": 400, "uniform": 500, "corners": 16}


def test_independent_neurons_of_a_fixture_are_not_all_flagged_and_the_net_is_untouched(repo_root):
    net = read(repo_root / "models/digits_2x32_l1.onnx")
    x = np.load(repo_root / "models/data/digits_calib.npz")["x"]
    before = net.fingerprint()
    dep, _ = analyse(net, x)
    assert net.fingerprint() == before and dep.matches(net)
    for d in dep.layers:
        # neurons flagged here are exactly the ones that are constant on the samples (never active):
        # an l1-trained fixture has those, and no genuinely dependent live neuron
        constant = np.diag(d.cov) == 0.0
        np.testing.assert_array_equal(d.exact & ~(d.outgoing == 0), constant)
        assert d.residual_rel[~constant].min() > 1e-3


def test_needs_samples():
    net = random_net(np.random.default_rng(0), 3, [4], 2)
    with pytest.raises(UsageError, match="^pass 'dependence' runs the model on inputs: give --domain or --data$"):
        PassManager().run(net, ["dependence"], Context())


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 100_000), scale=st.sampled_from([1.0, 0.3, 2.7]), data=st.data())
def test_property_inserted_duplicate_is_found_and_dropping_it_changes_nothing(seed, scale, data):
    rng = np.random.default_rng(seed)
    n_in = data.draw(st.integers(2, 5))
    widths = data.draw(st.lists(st.integers(2, 7), min_size=1, max_size=3))
    net = random_net(rng, n_in, widths, 3)
    x = rng.normal(size=(300, n_in))
    k = data.draw(st.integers(0, len(widths) - 1))
    m = data.draw(st.integers(0, widths[k] - 1))
    layer = net.layers[k]
    dup = insert_neuron(net, k, scale * layer.weight[m], scale * layer.bias[m])
    _, pres = dup.forward(x, preactivations=True)
    # a network whose neurons are each on and off on several samples has no dependent neuron but the twin
    # (one active on a single sample of 300, with a tiny value, is numerically a constant: seed 200)
    assume(all(((p > 0).sum(0) >= 5).all() and ((p <= 0).sum(0) >= 5).all() for p in pres[:-1]))
    ctx = Context(data=x)
    small = PassManager().run(dup, ["dependence", "drop"], ctx)
    d = ctx.get(Dependence).layers[k]
    new = widths[k]
    assert d.exact[new] and d.exact[m]
    flagged = {(j, i) for j, dl in enumerate(ctx.get(Dependence).layers) for i in np.flatnonzero(dl.exact)}
    assert flagged == {(k, m), (k, new)}
    assert d.n_exact == 1 and d.exact_neurons[0] in (m, new)
    assert small.widths == list(widths) and len(ctx.log[-1]["removed"]) == 1
    probe = rng.normal(size=(200, n_in)) * 2  # beyond the samples: a duplicate is redundant everywhere
    np.testing.assert_allclose(small(probe), dup(probe), rtol=1e-9, atol=1e-9 * np.abs(dup(probe)).max())

def test_affine_predictor_and_moments_are_exact_on_known_data():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(1000, 3))
    z = np.hstack([a, (a @ np.array([1.0, -2.0, 0.5]) + 3.0)[:, None]])
    mom = Moments(4)
    for part in np.array_split(z, 7):
        mom.update(part)
    np.testing.assert_allclose(mom.mean, z.mean(0), rtol=1e-12)
    np.testing.assert_allclose(mom.cov, np.cov(z.T, bias=True), rtol=1e-10)
    u, c = affine_predictor(mom.mean, mom.cov, [0, 1, 2], [3])
    np.testing.assert_allclose(u, [[1.0, -2.0, 0.5]], atol=1e-8)
    np.testing.assert_allclose(c, [3.0], atol=1e-8)
