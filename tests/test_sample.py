"""``sample``: activation statistics from onnxruntime match a numpy forward pass, do not depend on how the
rows are batched, count only in-domain rows as witnesses, give the post-activation second moments, and
leave the network untouched.  Budget: about 5 s on 2 cores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto

import onnxcomp.sampling as sample
from onnxcomp.errors import UsageError
from onnxcomp.ir import LINEAR, RELU, Box, Dense, Network
from onnxcomp.pipeline import Context, PassManager
from onnxcomp.reader import read
from onnxcomp.writer import standalone_context
from onnxcomp.stability import Stability, epsilons, witness_floor
from builders import random_network

MODELS = Path(__file__).resolve().parents[1] / "models"


def random_net(rng, n_in, widths, n_out, double=False):
    ctx = standalone_context(n_in, n_out, TensorProto.DOUBLE) if double else None
    return random_network(rng, n_in, widths, n_out, bias_scale=0.5, onnx_context=ctx)


def run_sample(net, box=None, data=None, samples=0, corners=0, **options):
    ctx = Context(box=box, data=data, device="cpu", samples=samples, corners=corners, options=options)
    PassManager().run(net, ["sample"], ctx)
    return ctx.get(sample.ActivationStats), ctx


def collect_in_batches(net, ctx, batch, **kw):
    """``collect`` with ``sample.BATCH`` set to ``batch`` for this one call."""
    saved = sample.BATCH
    sample.BATCH = batch
    try:
        return sample.collect(net, ctx.box, ctx.data, samples=ctx.samples, corners=ctx.corners, seed=ctx.seed,
                              device=ctx.device, **kw)
    finally:
        sample.BATCH = saved


def numerical_zero(net, box):
    """The per-neuron threshold in-domain witnesses must clear: float32 rounding noise (0 without a domain)."""
    return witness_floor(epsilons(net, box.lo, box.hi), float32=True) if box is not None else [np.zeros(l.n_out) for l in net.layers]


def assert_counts_bracket(stats, net, x, in_box, eps):
    """Each neuron's statistics agree with a float64 numpy forward pass of the same rows, up to float32
    rounding: ``n_active`` counts ``y > 0`` (bracketed by the rows within rounding of 0), the in-domain
    extremes are those of the in-box rows, and the witnesses are those extremes beyond ``eps``."""
    _, pres = net.forward(x, preactivations=True)
    for k, y in enumerate(pres):
        tol = 1e-5 * (1.0 + np.abs(y).max(initial=0.0))
        s = stats.layers[k]
        assert s.count == x.shape[0] and s.dom_count == int(in_box.sum())
        assert np.all(s.n_active >= (y > tol).sum(axis=0)), f"layer {k}: too few counted"
        assert np.all(s.n_active <= (y > -tol).sum(axis=0)), f"layer {k}: too many counted"
        inside = y[in_box]
        if inside.shape[0]:
            np.testing.assert_allclose(s.dom_min, inside.min(axis=0), atol=tol)
            np.testing.assert_allclose(s.dom_max, inside.max(axis=0), atol=tol)
            certain_a = inside.max(axis=0) > eps[k] + tol
            certain_i = inside.min(axis=0) < -eps[k] - tol
            assert np.all(s.seen_active[certain_a]) and np.all(s.seen_inactive[certain_i])
            assert not np.any(s.seen_active[inside.max(axis=0) < eps[k] - tol])
            assert not np.any(s.seen_inactive[inside.min(axis=0) > -eps[k] + tol])
        else:
            assert not s.seen_active.any() and not s.seen_inactive.any()
        if x.shape[0]:
            np.testing.assert_allclose(s.min, y.min(axis=0), atol=tol)
            np.testing.assert_allclose(s.max, y.max(axis=0), atol=tol)
            np.testing.assert_allclose(s.mean, y.mean(axis=0), atol=tol)


def same_stats(a, b):
    """Counts, min and max identical; sums equal up to the order of the float64 additions."""
    assert (a.samples, a.in_domain, a.sources) == (b.samples, b.in_domain, b.sources)
    for sa, sb in zip(a.layers, b.layers):
        for f in ("count", "dom_count", "min", "max", "n_active", "dom_min", "dom_max"):
            assert np.array_equal(getattr(sa, f), getattr(sb, f)), f
        np.testing.assert_allclose(sa.sum, sb.sum, rtol=1e-12, atol=1e-9)
        if sa.covariance:
            np.testing.assert_allclose(sa.post_sum, sb.post_sum, rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(sa.post_outer, sb.post_outer, rtol=1e-12, atol=1e-9)


# ---- fires: the report matches a numpy forward pass --------------------------------------------------
def test_never_and_always_active_match_numpy_on_a_fixture():
    net = read(MODELS / "digits_2x32_l1.onnx")
    x = np.concatenate([np.load(MODELS / "data" / f"digits_{s}.npz")["x"] for s in ("calib", "test")])
    box = Box(np.zeros(64), np.ones(64), "0:1")
    stats, ctx = run_sample(net, box, x)
    _, pres = net.forward(x.astype(np.float64), preactivations=True)
    eps = numerical_zero(net, box)
    entry = ctx.log[-1]
    assert entry["samples"] == entry["in_domain"] == x.shape[0] == 540
    assert entry["sources"] == {"data": 540, "uniform": 0, "corners": 0}
    fired = False
    for k, layer in enumerate(entry["layers"]):
        y = pres[k]
        assert layer["width"] == y.shape[1]
        # reported per the in-domain witnesses: never above the numerical zero / never below minus it
        assert layer["never_active"] == int(np.sum(np.all(y <= eps[k], axis=0)))
        assert layer["always_active"] == int(np.sum(np.all(y >= -eps[k], axis=0)))
        fired |= layer["never_active"] > 0 and k < 2
    assert fired, "the l1 fixture has hidden neurons never active on its data"
    assert_counts_bracket(stats, net, x.astype(np.float64), np.ones(x.shape[0], bool), eps)


def test_domain_samples_and_corners_are_counted():
    rng = np.random.default_rng(3)
    net = random_net(rng, 3, [6, 5], 2)
    box = Box(np.array([-1.0, 0.0, 2.0]), np.array([1.0, 0.5, 2.0]), "test")  # one fixed coordinate
    stats, ctx = run_sample(net, box, samples=300, corners=10)
    assert ctx.log[-1]["sources"] == {"data": 0, "uniform": 300, "corners": 4}  # 2 free inputs: 4 corners
    assert stats.samples == stats.in_domain == 304
    x = np.concatenate(list(sample.sample_inputs(box, None, 300, 10, 0, 10_000)))
    assert_counts_bracket(stats, net, x, np.ones(304, bool), numerical_zero(net, box))


def test_needs_a_domain_or_data():
    net = random_net(np.random.default_rng(0), 2, [3], 1)
    with pytest.raises(UsageError, match="^pass 'sample' runs the model on inputs: give --domain or --data$"):
        PassManager().run(net, ["sample"], Context(device="cpu"))


# ---- streaming ---------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_rows=st.integers(0, 300), batch=st.integers(1, 64),
       widths=st.lists(st.integers(1, 8), min_size=1, max_size=3), n_in=st.integers(1, 5),
       samples=st.integers(0, 150), corners=st.integers(0, 8), covariance=st.booleans())
def test_statistics_do_not_depend_on_batching(seed, n_rows, batch, widths, n_in, samples, corners, covariance):
    rng = np.random.default_rng(seed)
    net = random_net(rng, n_in, widths, 2)
    box = Box(-np.ones(n_in), np.ones(n_in), "test")
    # some rows outside the box: they count as samples but never as witnesses
    data = rng.uniform(-1.5, 1.5, size=(n_rows, n_in)) if n_rows else None
    if data is None and samples == 0 and corners == 0:
        samples = 1
    ctx = Context(box=box, data=data, device="cpu", seed=seed % 97, samples=samples, corners=corners)
    one = collect_in_batches(net, ctx, 1_000_000, covariance=covariance)
    many = collect_in_batches(net, ctx, batch, covariance=covariance)
    same_stats(one, many)
    x = np.concatenate(list(sample.sample_inputs(box, data, samples, corners, ctx.seed, 10_000)))
    assert_counts_bracket(many, net, x, box.contains(x), numerical_zero(net, box))


# ---- in-domain witnesses -----------------------------------------------------------------------------
def test_rows_outside_the_domain_are_not_witnesses():
    # y0 = x - 1.2 is active only at x > 1.2, y1 = -x - 0.5 only at x < -0.5: never in the box [0, 1];
    # y2 = x - 0.5 changes sign inside it.
    net = Network((Dense([[1.0], [-1.0], [1.0]], [-1.2, -0.5, -0.5], RELU), Dense([[1.0, 1.0, 1.0]], [0.0], LINEAR)), 1)
    box = Box([0.0], [1.0], "0:1")
    data = np.array([[1.5], [-1.0], [0.2], [0.9], [1.0], [0.0]])  # the last two lie on the boundary: inside
    stats, ctx = run_sample(net, box, data)
    s = stats.layers[0]
    assert (stats.samples, stats.in_domain) == (6, 4)
    assert s.n_active.tolist() == [1, 1, 3]  # every row is a sample ...
    assert s.seen_active.tolist() == [False, False, True]  # ... but only in-box rows are witnesses
    assert s.seen_inactive.tolist() == [True, True, True]
    assert s.dom_max.tolist() == pytest.approx([-0.2, -0.5, 0.5])  # the in-box rows' extremes
    assert stats.seen_active(0).tolist() == [False, False, True]
    assert ctx.log[-1]["layers"][0]["never_active"] == 2
    state = Stability.start(net, ctx.get(Stability), ctx.get(sample.ActivationStats)).state(net)
    assert state.seen_active[0].tolist() == [False, False, True]
    assert state.undecided(0).tolist() == [True, True, False]


def test_rows_inside_the_domain_are_witnesses():
    net = Network((Dense([[1.0]], [-0.5], RELU), Dense([[1.0]], [0.0], LINEAR)), 1)
    stats, _ = run_sample(net, Box([0.0], [1.0], "0:1"), np.array([[0.9], [0.1]]))
    assert stats.seen_active(0).tolist() == [True] and stats.seen_inactive(0).tolist() == [True]


# ---- covariance --------------------------------------------------------------------------------------
def test_covariance_equals_numpy_second_moments():
    rng = np.random.default_rng(7)
    net = random_net(rng, 4, [7, 5], 3, double=True)
    x = rng.uniform(-1, 1, size=(777, 4))
    saved = sample.BATCH
    sample.BATCH = 100
    try:
        stats, _ = run_sample(net, None, x, covariance=True)
    finally:
        sample.BATCH = saved
    _, pres = net.forward(x, preactivations=True)
    for k, (layer, y) in enumerate(zip(net.layers, pres)):
        post = np.maximum(y, 0.0) if layer.is_relu else y
        mean, second = stats.layers[k].post_covariance()
        np.testing.assert_allclose(mean, post.mean(axis=0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(second, post.T @ post / x.shape[0], rtol=1e-10, atol=1e-12)
    assert np.any(stats.layers[0].post_outer != 0)


def test_no_covariance_unless_asked():
    net = random_net(np.random.default_rng(1), 2, [3], 1)
    stats, _ = run_sample(net, None, np.ones((5, 2)))
    assert all(s.post_outer is None and s.post_sum is None for s in stats.layers)


# ---- contract ----------------------------------------------------------------------------------------
def test_analysis_leaves_the_network_unchanged():
    net = read(MODELS / "digits_2x32_l1.onnx")
    before = net.fingerprint()
    weights = [(l.weight.copy(), l.bias.copy()) for l in net.layers]
    stats, ctx = run_sample(net, Box(np.zeros(64), np.ones(64), "0:1"), samples=200, corners=16, covariance=True)
    assert net.fingerprint() == before
    for (w, b), layer in zip(weights, net.layers):
        assert np.array_equal(w, layer.weight) and np.array_equal(b, layer.bias)
    assert isinstance(stats, sample.ActivationStats) and stats.samples == 216
    assert ctx.log[-1]["name"] == "sample" and ctx.log[-1]["kind"] == "analysis"
