"""``dependence`` and ``drop`` on convolutional networks: a convolution's units are its output channels.

An exactly dependent channel (a copy, a scaled copy, a zero or a constant channel) is found over samples ×
positions and removed losslessly -- through average and max pooling and an unfolded per-channel scaling, into a padded next convolution (whose
bias becomes position-dependent) or a dense head -- and the written ONNX computes the IR; a count removes
exactly that many units; the LRE readjustment beats plain removal; the CLI pipeline ``-p lre`` runs end to
end on the LeNet fixture."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import assert_same, run_ort
from onnxcomp.api import compress
from onnxcomp.channels import Span, remove_units, spans
from onnxcomp.conv import Conv, affine_channels, average_pool, is_conv, max_pool
from onnxcomp.dependence import Dependence
from onnxcomp.dropping import drop_neurons, ranking
from onnxcomp.calibration import CalibrationSet
from onnxcomp.ir import LINEAR, Dense, Network
from onnxcomp.pipeline import Context, PassManager
from onnxcomp.reader import read
from onnxcomp.writer import to_model

LENET = "models/mnist_cnn_lenet.onnx"


def _pool(kind: str, shape: tuple) -> list:
    if kind == "scale":  # a BatchNormalization that could not fold: per-channel scale and shift
        c = shape[0]
        return [affine_channels(shape, np.linspace(0.5, 2.0, c), np.linspace(-0.3, 0.3, c))]
    if kind == "avg":
        return [average_pool(shape, (2, 2), (2, 2), (0, 0, 0, 0))]
    if kind == "max":
        return max_pool(shape, (2, 2), (2, 2), (0, 0, 0, 0), nonnegative=True)
    return []


def _with_extra(kernel, bias, extra: str, twin: int, factor: float):
    """Append one output channel to (kernel, bias): a copy / scaled copy of channel ``twin``, a zero channel
    (no incoming weights, bias <= 0), or a constant one (no incoming weights, bias > 0)."""
    if extra in ("copy", "scaled"):
        a = 1.0 if extra == "copy" else factor
        row, b = a * kernel[twin], a * bias[twin]
    else:
        row, b = np.zeros_like(kernel[0]), (-0.5 if extra == "zero" else 0.7)
    return np.concatenate([kernel, row[None]]), np.append(bias, b)


def random_cnn(rng, *, pool1: str, pool2: str, where: int, extra: str | None, factor: float = 2.5) -> Network:
    """Conv(ReLU, pad 1) [pool] Conv(ReLU, pad 1) [pool] Dense(ReLU) Dense, with ``extra`` added as the last
    channel of conv ``where`` (0: read by the padded second conv; 1: read by the dense head)."""
    c0, side = int(rng.integers(1, 3)), int(rng.choice([6, 8]))
    c1, c2 = int(rng.integers(2, 4)), int(rng.integers(2, 4))
    k1, b1 = rng.normal(size=(c1, c0, 3, 3)) * 0.6, rng.normal(size=c1) * 0.3
    if extra and where == 0:
        k1, b1 = _with_extra(k1, b1, extra, int(rng.integers(0, c1)), factor)
    layers = [Conv(k1, b1, (c0, side, side), pads=(1, 1, 1, 1))]
    layers += _pool(pool1, layers[-1].out_shape)
    shape = layers[-1].out_shape
    k2, b2 = rng.normal(size=(c2, shape[0], 3, 3)) * 0.5, rng.normal(size=c2) * 0.3
    if extra and where == 1:
        k2, b2 = _with_extra(k2, b2, extra, int(rng.integers(0, c2)), factor)
    layers.append(Conv(k2, b2, shape, pads=(1, 1, 1, 1)))
    layers += _pool(pool2, layers[-1].out_shape)
    n = layers[-1].n_out
    layers += [Dense(rng.normal(size=(6, n)) / np.sqrt(n), rng.normal(size=6) * 0.3 + 0.5),
               Dense(rng.normal(size=(3, 6)), rng.normal(size=3), LINEAR)]
    return Network(tuple(layers), c0 * side * side)


def _channels(net: Network) -> list:
    return [layer.out_channels for layer in net.layers if is_conv(layer) and layer.op == "Conv"]


pools = st.sampled_from(["none", "avg", "max", "scale"])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**16), pools, pools, st.integers(0, 1), st.sampled_from(["copy", "scaled", "zero", "constant"]),
       st.sampled_from([0.3, 2.5]))
def test_an_exactly_dependent_channel_is_dropped_losslessly(seed, pool1, pool2, where, extra, factor):
    """``-p lre`` without a setting removes only exactly dependent units; the inserted channel's layer loses
    one, the outputs stay equal on the samples to float rounding, and the written file computes the IR."""
    rng = np.random.default_rng(seed)
    net = random_cnn(rng, pool1=pool1, pool2=pool2, where=where, extra=extra, factor=factor)
    x = rng.uniform(0, 1, size=(300, net.input_size))
    ctx = Context(data=x)
    new = PassManager().run(net, ["dependence", "drop"], ctx)
    entry = ctx.log[-1]
    before, after = _channels(net), _channels(new)
    assert after[where] <= before[where] - 1
    assert entry["removed"] and entry["all_lossless"]
    gone = [r for r in entry["removed"] if r["layer"] == net.layers[[k for k, l in enumerate(net.layers)
                                                                     if is_conv(l) and l.op == "Conv"][where]].layer_id]
    assert gone and all(r["unit"] == f"channel {r['channel']}" for r in gone)
    ref = net(x)
    np.testing.assert_allclose(new(x), ref, rtol=0, atol=1e-8 * max(1.0, np.abs(ref).max()))
    assert new.macs < net.macs
    (written,) = run_ort(to_model(new), x.astype(np.float32))
    assert_same(written, new(x), what="written CNN after channel drop")


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), pools, pools, st.integers(1, 6), st.sampled_from(["magnitude", "dependence"]))
def test_a_count_removes_exactly_that_many_units(seed, pool1, pool2, count, score):
    """``--drop N`` removes N units (output channels and neurons together), each layer keeping one; the
    channels' ids stay the original ones and the written file computes the IR."""
    rng = np.random.default_rng(seed)
    net = random_cnn(rng, pool1=pool1, pool2=pool2, where=0, extra=None)
    x = rng.uniform(0, 1, size=(200, net.input_size))
    ctx = Context(data=x, options={"drop": count, "score": score})
    new = PassManager().run(net, ["dependence", "drop"] if score == "dependence" else ["drop"], ctx)
    removed = ctx.log[-1]["removed"]
    lost = sum(unit_count_before - unit_count_after for unit_count_before, unit_count_after
               in zip(_channels(net), _channels(new))) + net.layers[-2].n_out - new.layers[-2].n_out
    assert len(removed) == count == lost
    for k, layer in enumerate(new.layers):
        if is_conv(layer) and layer.op == "Conv":
            assert set(layer.channel_ids) <= set(net.layers[k].channel_ids) and layer.out_channels >= 1
    (written,) = run_ort(to_model(new), x.astype(np.float32))
    assert_same(written, new(x), what="written CNN after a counted drop")


def test_constant_channel_into_a_padded_conv_needs_the_position_dependent_bias():
    """The constant's contribution is absent at zero-padded taps: folding it into a per-channel bias would
    be wrong at the border, the per-position bias the removal writes is exact."""
    rng = np.random.default_rng(3)
    net = random_cnn(rng, pool1="none", pool2="none", where=0, extra="constant")
    x = rng.uniform(0, 1, size=(50, net.input_size))
    sp = Span(0, 1, True)
    c = net.layers[0].out_channels
    keep = np.arange(c) < c - 1
    value = 0.7  # relu(bias) of the constant channel
    new = remove_units(net, sp, keep, np.zeros((1, c - 1)), np.array([value]))
    np.testing.assert_allclose(new(x), net(x), atol=1e-10)
    bias = new.layers[1].unit_bias
    assert not np.allclose(bias, bias[:, :1, :1])  # the border differs from the centre
    (written,) = run_ort(to_model(new), x.astype(np.float32))
    assert_same(written, new(x), what="written per-position bias")


def test_independent_channels_are_kept_and_drop_without_a_setting_changes_nothing(repo_root):
    """Doesn't fire: on the trained LeNet no channel of the first convolution is dependent on the data, so
    ``-p lre`` without ``--drop`` leaves it; fires: ``--drop`` removes channels and their MACs."""
    net = read(repo_root / LENET, conv=True)
    x = np.load(repo_root / "models/data/mnist_calib.npz")["x"][:200]
    ctx = Context(data=x)
    new = PassManager().run(net, ["dependence", "drop"], ctx)
    dep = ctx.get(Dependence)
    d0 = dep.of(0)
    assert d0.unit == "channel" and d0.neuron_ids == tuple(range(6)) and d0.n_exact == 0
    assert _channels(new)[0] == 6 and all(r["lossless"] for r in ctx.log[-1]["removed"])
    ctx = Context(data=x, options={"drop": 0.5, "score": "magnitude"})
    dropped = PassManager().run(net, ["drop"], ctx)
    assert sum(_channels(dropped)) < sum(_channels(net)) and dropped.macs < 0.5 * net.macs


def test_least_squares_beats_plain_removal_on_the_lenet_fixture(repo_root):
    """The channel-wise LRE readjustment keeps the output closer to the original than deleting the same
    channels and neurons (held-out test rows)."""
    net = read(repo_root / LENET, conv=True)
    calib = CalibrationSet(data=np.load(repo_root / "models/data/mnist_calib.npz")["x"])
    test = np.load(repo_root / "models/data/mnist_test.npz")["x"][:300]
    order, _ = ranking(net, "magnitude", None, {})
    chosen = order[:15]
    assert any(is_conv(net.layers[c.k]) for c in chosen)
    ls, plain = drop_neurons(net, calib, chosen), drop_neurons(net, calib, chosen, readjust=False)
    assert _channels(ls) == _channels(plain) < _channels(net)
    ref = net(test)
    assert np.mean((ls(test) - ref) ** 2) < 0.5 * np.mean((plain(test) - ref) ** 2)


def test_spans_pass_through_pooling_and_stop_at_unsupported_layers():
    rng = np.random.default_rng(0)
    net = random_cnn(rng, pool1="max", pool2="avg", where=0, extra=None)
    found = spans(net)
    kinds = [(net.layers[s.k].op if is_conv(net.layers[s.k]) else "dense", s.conv) for s in found]
    assert kinds == [("Conv", True), ("Conv", True), ("dense", False)]
    first = found[0]
    assert all(net.layers[m].op == "MaxPool" for m in range(first.k + 1, first.j))
    # a grouped (depthwise) convolution carries its input's channels one group each, like pooling; its own
    # channels are not removable units (they go with the producer's)
    dw = Conv(rng.normal(size=(2, 1, 3, 3)), np.zeros(2), (2, 5, 5), group=2)
    head = Dense(rng.normal(size=(2, dw.n_out)), np.zeros(2), LINEAR)
    chain = Network((Conv(rng.normal(size=(2, 1, 3, 3)), np.zeros(2), (1, 7, 7)), dw, head), 49)
    assert spans(chain) == [Span(0, 2, True)]
    x = rng.uniform(0, 1, size=(20, 49))
    fewer = remove_units(chain, spans(chain)[0], np.array([True, False]))
    assert fewer.layers[1].group == 1 and fewer.layers[2].n_in == dw.n_out // 2
    assert np.isfinite(fewer(x)).all()


def test_lre_on_the_lenet_fixture_end_to_end(repo_root, tmp_path):
    """``onnxcomp run lenet.onnx -p lre --drop 0.3``: convolutions are read into the chain, channels are
    removed, the written model is smaller, runs in onnxruntime, and the report lists the removed channels
    by original id and the measured fidelity."""
    out = tmp_path / "small.onnx"
    data = repo_root / "models/data/mnist_calib.npz"
    result = compress(str(repo_root / LENET), "lre", drop=0.3, data=str(data), labels=str(data))
    result.save(out)
    report = result.report
    dep, drop = report["passes"][0], report["passes"][-1]
    assert any(layer.get("unit") == "channel" for layer in dep["layers"])
    assert drop["name"] == "drop" and drop["removed"]
    channels = [r for r in drop["removed"] if "channel" in r]
    assert channels and all(r["unit"].startswith("channel ") for r in channels)
    assert report["fidelity"]
    assert out.stat().st_size < (repo_root / LENET).stat().st_size
    x = np.load(data)["x"][:64].reshape(-1, 1, 28, 28).astype(np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert y.shape == (64, 10) and np.isfinite(y).all()
    onnx.checker.check_model(onnx.load(out))


@pytest.mark.parametrize("score,analysis", [("lap", "lookahead"), ("fisher", "fisher"), ("magnitude", None)])
def test_every_score_drops_channels_of_a_cnn(score, analysis):
    """Fires for every score: the channel scores of ``lookahead`` / ``fisher`` / magnitude rank conv
    channels with the dense neurons; a count is met exactly and channels are among what goes."""
    rng = np.random.default_rng(11)
    net = random_cnn(rng, pool1="max", pool2="none", where=0, extra=None)
    x = rng.uniform(0, 1, size=(200, net.input_size))
    ctx = Context(data=x, labels=rng.integers(0, 3, size=200), options={"drop": 4, "score": score})
    new = PassManager().run(net, ([analysis] if analysis else []) + ["drop"], ctx)
    removed = ctx.log[-1]["removed"]
    assert len(removed) == 4 and any("channel" in r for r in removed)
    assert sum(_channels(new)) < sum(_channels(net))


def test_scores_without_channel_entries_are_refused():
    """Doesn't fire: scores that hold no per-channel entry for a convolution, and settings beyond what a CNN
    has, are refused in one line."""
    from onnxcomp.errors import UsageError
    from onnxcomp.scores import LookaheadScores

    rng = np.random.default_rng(1)
    net = random_cnn(rng, pool1="none", pool2="none", where=0, extra=None)
    per_unit = [np.ones(layer.n_out) for layer in net.layers]  # per output unit, not per channel
    scores = LookaheadScores("lap", [None] * len(net.layers), per_unit, net)
    with pytest.raises(UsageError, match="per-channel"):
        ranking(net, "lap", None, {"lap": scores})
    x = rng.uniform(size=(20, net.input_size))
    with pytest.raises(UsageError, match=r"--drop 1.5: .*units \(neurons and channels\)"):
        PassManager().run(net, ["drop"], Context(data=x, options={"drop": 1.5, "score": "magnitude"}))
    with pytest.raises(UsageError, match=r"--drop 999: at most \d+ of the \d+ hidden units"):
        PassManager().run(net, ["drop"], Context(data=x, options={"drop": 999, "score": "magnitude"}))


@pytest.mark.parametrize("units", ["channels", "neurons"])
def test_drop_units_restricts_what_goes(units):
    """``--drop-units channels`` removes conv output channels only (the MACs go), ``neurons`` dense neurons
    only (the convolutions stay whole); the default ranks both."""
    rng = np.random.default_rng(5)
    net = random_cnn(rng, pool1="avg", pool2="none", where=0, extra=None)
    x = rng.uniform(0, 1, size=(200, net.input_size))
    ctx = Context(data=x, options={"drop": 2, "score": "magnitude", "drop_units": units})
    new = PassManager().run(net, ["drop"], ctx)
    removed = ctx.log[-1]["removed"]
    assert len(removed) == 2 and all(("channel" in r) == (units == "channels") for r in removed)
    if units == "channels":
        assert sum(_channels(new)) == sum(_channels(net)) - 2 and new.layers[-2].n_out == net.layers[-2].n_out
    else:
        assert _channels(new) == _channels(net) and new.layers[-2].n_out == net.layers[-2].n_out - 2


def test_drop_units_channels_on_a_dense_network_is_refused():
    from onnxcomp.errors import UsageError

    rng = np.random.default_rng(0)
    net = Network((Dense(rng.normal(size=(5, 4)), np.zeros(5)), Dense(rng.normal(size=(2, 5)), np.zeros(2), LINEAR)), 4)
    with pytest.raises(UsageError, match="--drop-units channels: this network has no convolution output channels"):
        PassManager().run(net, ["drop"], Context(data=rng.normal(size=(20, 4)),
                                                 options={"drop": 1, "drop_units": "channels"}))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from([1, 4, 8]), st.lists(st.integers(0, 60), min_size=2, max_size=2))
def test_aligned_drops_keep_blocked_channel_counts_whole_and_grow_with_the_level(seed, multiple, levels):
    """``--channel-multiple m``: a convolution whose channel count is a multiple of m keeps a multiple of
    m, one of another count (and every dense layer) loses exactly what the ranking chose, and a higher
    level drops a superset of a lower one's units (what the budget search relies on)."""
    from onnxcomp.dropping import aligned
    from onnxcomp.params import n_units

    rng = np.random.default_rng(seed)
    side = 8
    layers = [Conv(rng.normal(size=(16, 1, 3, 3)), rng.normal(size=16), (1, side, side), pads=(1, 1, 1, 1)),
              Conv(rng.normal(size=(12, 16, 3, 3)), rng.normal(size=12), (16, side, side), pads=(1, 1, 1, 1))]
    n = layers[-1].n_out
    layers += [Dense(rng.normal(size=(6, n)), rng.normal(size=6)), Dense(rng.normal(size=(3, 6)), np.zeros(3), LINEAR)]
    net = Network(tuple(layers), side * side)
    order, _ = ranking(net, "magnitude", None, {})
    lo, hi = sorted(min(v, len(order)) for v in levels)
    small, large = aligned(net, order[:lo], multiple), aligned(net, order[:hi], multiple)
    key = {(c.k, c.pos) for c in small}
    assert key <= {(c.k, c.pos) for c in large}
    for chosen in (small, large):
        for k, layer in enumerate(net.layers[:-1]):
            asked = sum(1 for c in order[:hi if chosen is large else lo] if c.k == k)
            got = sum(1 for c in chosen if c.k == k)
            if isinstance(layer, Conv) and n_units(layer) % multiple == 0:
                assert (n_units(layer) - got) % multiple == 0 and got <= asked
            else:
                assert got == asked


def test_channel_multiple_fires_on_blocked_layers_only(repo_root, tmp_path):
    """Fires: on the bn_avg fixture (8 and 16 channels) --channel-multiple 8 keeps both counts multiples of 8;
    doesn't fire: with 1 the same --drop removes exactly that many channels (16 of the 24: conv1 can lose at
    most 7 of its 8, so at least 9 come from conv2, which then loses 8 when counts stay multiples of 8)."""
    model = str(repo_root / "models" / "mnist_cnn_bn_avg.onnx")
    data = str(repo_root / "models" / "data" / "mnist_calib.npz")
    after = {}
    for multiple in (1, 8):
        result = compress(model, "drop", data=data, drop=16, drop_units="channels", score="magnitude",
                          channel_multiple=multiple)
        entry = next(p for p in result.report["passes"] if p["name"] == "drop")
        after[multiple] = list(entry["channels_after"].values())
    assert sum(after[1]) == 24 - 16 and any(c % 8 for c in after[1])
    assert after[8] == [8, 8]
