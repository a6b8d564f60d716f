"""``lookahead``: LAP scores against the Frobenius distortion they stand for, the variants and sequential
masks against direct computation, and the pass contract (the network is untouched)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxcomp.errors import UsageError
from onnxcomp.ir import LINEAR, Dense, Network
from onnxcomp.pipeline import Context, PassManager
from onnxcomp.reader import read
from onnxcomp.lookahead import lookahead_scores, sequential_masks
from onnxcomp.scores import LookaheadScores, magnitude_scores
from builders import random_network


random_net = random_network


def block_distortion(weights, i, o, j):
    """‖W_{i+1} W_i W_{i-1} − W_{i+1} W_i|_{w=0} W_{i-1}‖_F computed by zeroing the weight (Eq. 4)."""
    prev = weights[i - 1] if i > 0 else np.eye(weights[i].shape[1])
    nxt = weights[i + 1] if i + 1 < len(weights) else np.eye(weights[i].shape[0])
    zeroed = weights[i].copy()
    zeroed[o, j] = 0.0
    return np.linalg.norm(nxt @ weights[i] @ prev - nxt @ zeroed @ prev)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.integers(1, 6), min_size=4, max_size=4))
def test_lap_equals_frobenius_distortion_of_zeroing_one_weight(seed, dims):
    rng = np.random.default_rng(seed)
    net = random_net(rng, dims[0], dims[1:3], dims[3], activation=LINEAR)
    weights = [l.weight for l in net.layers]
    scores = lookahead_scores(net, "full").weights
    for i, w in enumerate(weights):
        for o in range(w.shape[0]):
            for j in range(w.shape[1]):
                assert scores[i][o, j] == pytest.approx(block_distortion(weights, i, o, j), rel=1e-10, abs=1e-12)


def test_variants_by_direct_computation():
    rng = np.random.default_rng(3)
    net = random_net(rng, 3, [4, 5], 2)
    w = [l.weight for l in net.layers]
    fwd = lookahead_scores(net, "forward").weights
    bwd = lookahead_scores(net, "backward").weights
    full = lookahead_scores(net, "full").weights
    for i in range(3):
        for o in range(w[i].shape[0]):
            for j in range(w[i].shape[1]):
                ahead = np.sqrt(sum(w[i + 1][r, o] ** 2 for r in range(w[i + 1].shape[0]))) if i < 2 else 1.0
                back = np.sqrt(sum(w[i - 1][j, c] ** 2 for c in range(w[i - 1].shape[1]))) if i > 0 else 1.0
                assert fwd[i][o, j] == pytest.approx(abs(w[i][o, j]) * ahead)
                assert bwd[i][o, j] == pytest.approx(abs(w[i][o, j]) * back)
                assert full[i][o, j] == pytest.approx(abs(w[i][o, j]) * ahead * back)
    # the neuron aggregate: root-sum-square of the incoming weights' scores; look-forward only gives
    # exactly the magnitude baseline's neuron score (incoming norm x outgoing norm)
    agg = lookahead_scores(net, "full").neurons
    for i in range(3):
        np.testing.assert_allclose(agg[i], np.sqrt((full[i] ** 2).sum(axis=1)))
    for a, b in zip(lookahead_scores(net, "forward").neurons, magnitude_scores(net).neurons):
        np.testing.assert_allclose(a, b)


def test_lap_ranks_differently_from_magnitude_when_neighbours_differ():
    # two equal weights; the one feeding a neuron with large outgoing weights must score higher
    net = Network((Dense(np.array([[1.0], [1.0]]), np.zeros(2)),
                   Dense(np.array([[10.0, 0.1]]), np.zeros(1), LINEAR)), 1)
    s = lookahead_scores(net).weights[0]
    assert s[0, 0] > s[1, 0]
    assert magnitude_scores(net).weights[0][0, 0] == magnitude_scores(net).weights[0][1, 0]


def _direct_forward_masks(net, sparsity):
    """LAP-forward by hand: layer i scored with the pruned layer i-1 and the intact layer i+1."""
    w = [l.weight.copy() for l in net.layers]
    masks = []
    for i in range(len(w)):
        score = np.zeros_like(w[i])
        for o in range(w[i].shape[0]):
            for j in range(w[i].shape[1]):
                back = np.linalg.norm(w[i - 1][j, :]) if i > 0 else 1.0
                ahead = np.linalg.norm(w[i + 1][:, o]) if i + 1 < len(w) else 1.0
                score[o, j] = abs(w[i][o, j]) * back * ahead
        n = int(round(sparsity * score.size))
        keep = np.ones(score.size, bool)
        keep[np.argsort(score.ravel(), kind="stable")[:n]] = False
        keep = keep.reshape(score.shape)
        w[i] = np.where(keep, w[i], 0.0)
        masks.append(keep)
    return masks


def test_sequential_forward_matches_direct_computation_and_differs_from_one_shot():
    rng = np.random.default_rng(11)
    net = random_net(rng, 6, [7, 5], 3)
    masks = sequential_masks(net, 0.6, "forward")
    for got, want in zip(masks, _direct_forward_masks(net, 0.6)):
        np.testing.assert_array_equal(got, want)
        assert (~got).sum() == int(round(0.6 * got.size))
    # layer 0 sees no pruned neighbour in the forward order: same as one-shot LAP there
    one_shot = lookahead_scores(net).weights[0]
    n = int(round(0.6 * one_shot.size))
    assert set(np.flatnonzero(~masks[0].ravel())) == set(np.argsort(one_shot.ravel(), kind="stable")[:n])


def test_sequential_backward_and_seq_variants():
    rng = np.random.default_rng(5)
    net = random_net(rng, 5, [6, 6], 4)
    back = sequential_masks(net, 0.5, "backward")
    # the last layer goes first with no pruned neighbour: its mask is one-shot LAP's
    last = lookahead_scores(net).weights[-1]
    n = int(round(0.5 * last.size))
    assert set(np.flatnonzero(~back[-1].ravel())) == set(np.argsort(last.ravel(), kind="stable")[:n])
    seq = sequential_masks(net, 0.5, "forward-seq")
    for m in seq:
        assert (~m).sum() == int(round(0.5 * m.size))
    per_layer = sequential_masks(net, [0.0, 0.25, 0.75], "forward", steps=3)
    assert per_layer[0].all()
    assert [(~m).sum() for m in per_layer[1:]] == [round(0.25 * per_layer[1].size), round(0.75 * per_layer[2].size)]


def test_sequential_with_zero_sparsity_prunes_nothing_and_bad_arguments_are_refused():
    net = random_net(np.random.default_rng(0), 3, [4], 2)
    assert all(m.all() for m in sequential_masks(net, 0.0, "backward-seq"))
    with pytest.raises(UsageError):
        sequential_masks(net, 0.5, "sideways")
    with pytest.raises(UsageError):
        sequential_masks(net, 1.0, "forward")
    with pytest.raises(UsageError):
        sequential_masks(net, [0.1], "forward")


def test_pass_on_fixture_leaves_network_unchanged_and_reports(repo_root):
    net = read(repo_root / "models/digits_2x32_l1.onnx")
    before = net.fingerprint()
    ctx = Context(options={"lap_variant": "backward"})
    PassManager().run(net, ["lookahead"], ctx)
    scores = ctx.get(LookaheadScores)
    assert net.fingerprint() == before and scores.matches(net)
    assert scores.method == "lap-backward"
    assert [s.shape for s in scores.weights] == [l.weight.shape for l in net.layers]
    assert [s.shape for s in scores.neurons] == [(l.n_out,) for l in net.layers]
    w0, w1 = net.layers[0].weight, net.layers[1].weight
    assert scores.weights[1][5, 7] == pytest.approx(abs(w1[5, 7]) * np.linalg.norm(w0[7]))
    assert "lap-backward" in ctx.log[0]["message"]
    with pytest.raises(UsageError, match="lap_variant"):
        PassManager().run(net, ["lookahead"], Context(options={"lap_variant": "both"}))
