"""``fold`` (LEO++): after the stability analyses the folded network computes the original function on the
domain (float64 forward of both IRs and onnxruntime on both written files), and each rewrite fires where it
applies and not elsewhere: stably inactive neurons, constant and unused neurons, stably active rank
reduction, whole-layer folding (and its refusal when it would add parameters), constant networks, linear
hidden layers; neuron identity in the report; without analyses the bounds run first, nothing proven removes nothing."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import assert_same, run_ort
from onnxcomp.ir import LINEAR, RELU, Box, Dense, Network
from onnxcomp.pipeline import Context, PassManager
from onnxcomp.stability import DomainBounds, Stability
from onnxcomp.stability.by_bounds import domain_bounds
from onnxcomp.timing import Deadline
from onnxcomp.writer import to_model
from builders import random_network
from functools import partial

STABLE = ["sample", "bounds", "falsify", "milp", "fold"]


def numbered(layers, n_in: int) -> Network:
    """A Network whose layers carry their position as ``layer_id`` (as the reader numbers them)."""
    return Network(tuple(replace(l, layer_id=k) for k, l in enumerate(layers)), n_in)


def fold(net: Network, box: Box, passes=("bounds", "fold"), annotations=None, time_limit=None, **options):
    ctx = Context(box=box, samples=2000, deadline=Deadline(time_limit), annotations=dict(annotations or {}),
                  options=dict({"falsify_samples": 2000}, **options))
    new = PassManager().run(net, list(passes), ctx)
    return new, ctx


def assert_same_on_box(net: Network, new: Network, box: Box, n: int = 10_000, atol: float = 0.0) -> None:
    rng = np.random.default_rng(5)
    x = np.vstack([box.sample(n, rng), box.corners(256, rng)])
    a, b = net.forward(x), new.forward(x)
    scale = max(1.0, float(np.abs(a).max()))
    assert float(np.abs(a - b).max()) <= 1e-9 * scale + atol


def removed(ctx) -> list:
    return [(r["layer"], r["neuron"], r["state"], r["proof"]) for r in ctx.sections["stable"]["removed"]]


random_net = partial(random_network, bias_scale=0.5)


# ---- the property ------------------------------------------------------------------------------------
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 100_000), n_in=st.integers(1, 5), widths=st.lists(st.integers(2, 8), min_size=1, max_size=3),
       shift=st.sampled_from([0.0, -1.0, 1.0]), linear_every=st.sampled_from([0, 0, 2]), width=st.floats(0.05, 1.5))
def test_folded_network_equals_the_original_on_the_domain(seed, n_in, widths, shift, linear_every, width):
    net = random_net(seed, n_in, widths, shift=shift, linear_every=linear_every)
    rng = np.random.default_rng(seed + 7)
    lo = rng.uniform(-1, 1, n_in)
    box = Box(lo, lo + width * rng.uniform(0.2, 1.0, n_in))
    new, ctx = fold(net, box, STABLE, solver="scip", time_limit=20)
    report = ctx.sections["stable"]
    assert_same_on_box(net, new, box, atol=report["epsilon_error_bound"])
    assert new.params <= net.params and new.input_size == net.input_size and new.output_size == net.output_size
    # onnxruntime on the written files (float32): equal up to float32 reassociation
    x = np.vstack([box.sample(2000, rng), box.corners(64, rng)])
    assert_same(run_ort(to_model(net), x)[0], run_ort(to_model(new), x)[0], what="written models")
    # neuron identity: survivors and removed neurons partition the original neurons of every kept layer
    gone = {(r["layer"], r["neuron"]) for r in report["removed"]}
    folded = {f["layer"] for f in report["folded_layers"]}
    kept_layers = {layer.layer_id for layer in new.layers}
    for k, layer in enumerate(net.layers[:-1]):
        if k in folded:
            assert k not in kept_layers
            continue
        if not report.get("constant"):
            survivors = {(k, i) for i in next(l for l in new.layers if l.layer_id == k).neuron_ids}
            assert survivors.isdisjoint(gone) and survivors | {g for g in gone if g[0] == k} == {(k, i) for i in range(layer.n_out)}


# ---- stably inactive ------------------------------------------------------------------------------------
def inactive_net(layer_id: int = 0, ids=None) -> Network:
    """On [0,1]^3 neuron 1 = -x1 - x2 - x3 - 0.1 is stably inactive; neurons 0, 2, 3 are unstable."""
    w0 = np.array([[1.0, -1.0, 0.0], [-1.0, -1.0, -1.0], [0.0, 1.0, -1.0], [-1.0, 0.0, 1.0]])
    b0 = np.array([0.0, -0.1, 0.05, 0.1])
    w1 = np.arange(8.0).reshape(2, 4) - 3.0
    return Network((Dense(w0, b0, RELU, layer_id, ids or ()), Dense(w1, np.array([0.5, -0.5]), LINEAR, layer_id + 1)), 3)


def test_stably_inactive_neuron_loses_its_row_and_its_next_column():
    net, box = inactive_net(), Box(np.zeros(3), np.ones(3))
    new, ctx = fold(net, box)
    np.testing.assert_array_equal(new.layers[0].weight, net.layers[0].weight[[0, 2, 3]])
    np.testing.assert_array_equal(new.layers[0].bias, net.layers[0].bias[[0, 2, 3]])
    np.testing.assert_array_equal(new.layers[1].weight, net.layers[1].weight[:, [0, 2, 3]])
    np.testing.assert_array_equal(new.layers[1].bias, net.layers[1].bias)
    assert new.layers[0].neuron_ids == (0, 2, 3)
    assert removed(ctx) == [(0, 1, "stably_inactive", "bounds")]
    assert ctx.sections["stable"]["layers"][0]["inactive"] == [1]
    assert_same_on_box(net, new, box)


def test_neuron_identity_uses_the_original_numbering():
    net = inactive_net(layer_id=3, ids=(10, 11, 12, 13))
    new, ctx = fold(net, Box(np.zeros(3), np.ones(3)))
    assert removed(ctx) == [(3, 11, "stably_inactive", "bounds")]
    assert new.layers[0].neuron_ids == (10, 12, 13) and new.layers[0].layer_id == 3
    layer = ctx.sections["stable"]["layers"][0]
    assert layer["layer"] == 3 and layer["inactive"] == [11] and layer["active"] == []


def test_the_same_neuron_is_kept_where_it_is_unstable():
    net = inactive_net()
    new, ctx = fold(net, Box(-np.ones(3), np.ones(3)))
    assert new.widths == [4] and removed(ctx) == []
    np.testing.assert_array_equal(new.layers[1].weight, net.layers[1].weight)


# ---- constant and unused neurons -------------------------------------------------------------------------
def test_zero_incoming_weights_become_a_bias_and_zero_outgoing_weights_are_dropped():
    rng = np.random.default_rng(1)
    w0 = np.array([[1.0, -1.0], [0.0, 0.0], [1.0, 1.0], [-1.0, 0.5]])
    b0 = np.array([0.0, 0.7, -1.0, 0.0])  # neuron 1: constant relu(0.7); the others unstable on [0,1]^2
    w1 = rng.normal(size=(3, 4))
    w1[:, 3] = 0.0  # neuron 3 feeds nothing
    b1 = rng.normal(size=3)
    net = numbered([Dense(w0, b0), Dense(w1, b1, LINEAR)], 2)
    box = Box(np.zeros(2), np.ones(2))
    new, ctx = fold(net, box)
    assert sorted(removed(ctx)) == [(0, 1, "constant", "zero incoming weights"), (0, 3, "unused", "zero outgoing weights")]
    assert new.layers[0].neuron_ids == (0, 2)
    np.testing.assert_allclose(new.layers[1].bias, b1 + 0.7 * w1[:, 1], rtol=1e-15)
    np.testing.assert_array_equal(new.layers[1].weight, w1[:, [0, 2]])
    assert_same_on_box(net, new, box)
    # and off the domain too: these two rewrites hold for every input
    x = np.random.default_rng(2).normal(scale=5, size=(500, 2))
    np.testing.assert_allclose(new.forward(x), net.forward(x), rtol=1e-12, atol=1e-12)


# ---- stably active rank reduction ------------------------------------------------------------------------
def rank_net(n_in: int, n_active: int) -> Network:
    """On [1,2]^n_in: ``n_active`` neurons with positive weights and bias (stably active) and one unstable
    neuron x1 - x2; a random next layer."""
    rng = np.random.default_rng(3)
    w_act = rng.uniform(0.1, 1.0, size=(n_active, n_in))
    w0 = np.vstack([w_act, np.eye(n_in)[0] - np.eye(n_in)[1]])
    b0 = np.concatenate([rng.uniform(0.1, 1.0, n_active), [0.0]])
    return numbered([Dense(w0, b0), Dense(rng.normal(size=(3, n_active + 1)), rng.normal(size=3), LINEAR)], n_in)


def test_more_stably_active_neurons_than_inputs_reduce_to_a_basis():
    net, box = rank_net(2, 6), Box(np.ones(2), 2 * np.ones(2))
    new, ctx = fold(net, box)
    assert new.widths == [3]  # a basis of 2 active neurons plus the unstable one
    gone = removed(ctx)
    assert len(gone) == 4 and all(r[2:] == ("stably_active", "rank") for r in gone)
    assert 6 in new.layers[0].neuron_ids  # the unstable neuron stays
    assert_same_on_box(net, new, box)
    # the rewrite is exact only where the merged neurons are active: far outside it differs
    x = np.array([[-5.0, -5.0]])
    assert np.abs(new.forward(x) - net.forward(x)).max() > 1e-3


def test_independent_stably_active_neurons_are_not_merged():
    net, box = rank_net(3, 2), Box(np.ones(3), 2 * np.ones(3))
    new, ctx = fold(net, box)
    assert new.widths == [3] and removed(ctx) == []
    assert ctx.sections["stable"]["layers"][0]["active"] == [0, 1]


# ---- whole layers -----------------------------------------------------------------------------------------
def test_a_layer_with_every_neuron_stably_active_is_folded_into_the_next():
    rng = np.random.default_rng(4)
    w0, b0 = rng.uniform(0.1, 1.0, size=(4, 3)), rng.uniform(0.1, 1.0, 4)  # active on [1,2]^3
    w1 = rng.normal(size=(5, 4))
    b1 = -(w1 @ (w0 @ np.full(3, 1.5) + b0))  # centred so layer 1 stays unstable
    net = numbered([Dense(w0, b0), Dense(w1, b1), Dense(rng.normal(size=(2, 5)), np.zeros(2), LINEAR)], 3)
    box = Box(np.ones(3), 2 * np.ones(3))
    new, ctx = fold(net, box)
    assert ctx.sections["stable"]["folded_layers"] == [{"layer": 0, "into": 1}]
    assert len(new.layers) == 2 and new.layers[0].layer_id == 1 and new.layers[0].n_in == 3
    assert {(r[0], r[2]) for r in removed(ctx)} == {(0, "stably_active")} and len(removed(ctx)) == 4
    assert new.params < net.params
    assert_same_on_box(net, new, box)


def test_a_bottleneck_is_not_folded_when_that_adds_parameters_its_relu_is_dropped():
    rng = np.random.default_rng(5)
    w0, b0 = rng.uniform(0.0, 0.05, size=(2, 100)), np.array([0.2, 0.3])  # 100 -> 2, active on [1,2]^100
    w1 = rng.normal(size=(100, 2))
    b1 = -(w1 @ (w0 @ np.full(100, 1.5) + b0))
    net = numbered([Dense(w0, b0), Dense(w1, b1), Dense(rng.normal(size=(3, 100)), np.zeros(3), LINEAR)], 100)
    box = Box(np.ones(100), 2 * np.ones(100))
    new, ctx = fold(net, box)
    assert ctx.sections["stable"]["folded_layers"] == []
    assert new.layers[0].layer_id == 0 and new.layers[0].n_out == 2 and new.layers[0].activation == LINEAR
    assert new.layers[1].layer_id == 1 and new.params <= net.params
    assert_same_on_box(net, new, box, n=3000)


def test_linear_hidden_layers_are_merged_and_a_linear_bottleneck_is_kept():
    rng = np.random.default_rng(6)
    # tll-like: 2 -> 8 (linear) -> 8 (linear) -> 4 (relu) -> 1
    net = numbered([Dense(rng.normal(size=(8, 2)), rng.normal(size=8), LINEAR),
                    Dense(rng.normal(size=(8, 8)), rng.normal(size=8), LINEAR),
                    Dense(rng.normal(size=(4, 8)), rng.normal(size=4) * 0.1),
                    Dense(rng.normal(size=(1, 4)), np.zeros(1), LINEAR)], 2)
    box = Box(-np.ones(2), np.ones(2))
    new, ctx = fold(net, box)
    assert ctx.sections["stable"]["folded_layers"] == [{"layer": 0, "into": 1}, {"layer": 1, "into": 2}]
    assert [l.layer_id for l in new.layers] == [2, 3] and new.layers[0].n_in == 2
    assert all(r[2] == "linear" for r in removed(ctx) if r[0] in (0, 1))
    assert_same_on_box(net, new, box)
    # a linear 2 -> 1 bottleneck in front of a wide layer: folding would add parameters, so it stays
    narrow = numbered([Dense(rng.normal(size=(1, 2)), np.zeros(1), LINEAR), Dense(rng.normal(size=(50, 1)), rng.normal(size=50)),
                       Dense(rng.normal(size=(1, 50)), np.zeros(1), LINEAR)], 2)
    new2, ctx2 = fold(narrow, box)
    assert ctx2.sections["stable"]["folded_layers"] == [] and new2.layers[0].layer_id == 0 and new2.layers[0].n_out == 1
    assert_same_on_box(narrow, new2, box)


def test_a_network_constant_on_the_domain_is_emitted_as_a_constant_with_a_warning():
    rng = np.random.default_rng(7)
    w0 = -rng.uniform(0.1, 1.0, size=(5, 3))
    net = numbered([Dense(w0, -np.ones(5) * 0.1), Dense(rng.normal(size=(4, 5)), rng.normal(size=4)),
                    Dense(rng.normal(size=(2, 4)), rng.normal(size=2), LINEAR)], 3)
    box = Box(np.zeros(3), np.ones(3))  # every neuron of layer 0 is stably inactive
    new, ctx = fold(net, box)
    assert ctx.sections["stable"].get("constant") is True
    assert any("constant" in w for w in ctx.warnings)
    assert len(new.layers) == 1 and not new.layers[0].weight.any() and new.output_size == 2
    assert_same_on_box(net, new, box)
    x = np.random.default_rng(8).uniform(0, 1, size=(200, 3)).astype(np.float32)
    out = run_ort(to_model(new), x)[0]
    assert np.allclose(out, out[0]) and np.allclose(out[0], net.forward(x[:1])[0], rtol=1e-6, atol=1e-6)


# ---- when it must not act --------------------------------------------------------------------------------
def test_fold_without_stability_analyses_runs_the_bounds_analysis_first():
    # fold requires the stability annotation: its provider ('bounds') is inserted before it
    net, box = inactive_net(), Box(np.zeros(3), np.ones(3))
    ctx = Context(box=box)
    new = PassManager().run(net, ["fold"], ctx)
    assert [e["name"] for e in ctx.log] == ["bounds", "fold"]
    assert removed(ctx) == [(0, 1, "stably_inactive", "bounds")] and new.layers[0].neuron_ids == (0, 2, 3)
    assert_same_on_box(net, new, box)


def test_nothing_proven_removes_nothing():
    net = random_net(11, 3, [6, 5])
    box = Box(-np.ones(3), np.ones(3))
    # witnesses only, no certificate: falsify is handed the margins it requires and an empty stability,
    # so no 'bounds' pass is inserted before it
    given = {DomainBounds: domain_bounds(net, box), Stability: Stability(net.fingerprint())}
    new, ctx = fold(net, box, ("falsify", "fold"), annotations=given)
    assert [e["name"] for e in ctx.log] == ["falsify", "fold"]
    assert removed(ctx) == [] and ctx.sections["stable"]["folded_layers"] == []
    for a, b in zip(net.layers, new.layers):
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.bias, b.bias)
        assert a.activation == b.activation and a.neuron_ids == b.neuron_ids
