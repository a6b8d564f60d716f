"""``onnxcomp.diffbounds``: the certified bound on ``f2 - f1`` is never beaten by a sampled difference (random
pairs that share structure, copies that do not, mutants, deliberately wrong matchings), is 0 for identical
networks, tight for known differences, and far tighter than bounding the networks separately for copies."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxcomp.bounds import crown_bounds
from onnxcomp.diffbounds import LayerMatch, Matching, diff_bounds, diff_relaxation, match, max_abs_diff_bound, unrelated
from onnxcomp.ir import LINEAR, RELU, Dense, Network


# ---- networks --------------------------------------------------------------------------------------------
def layered_net(rng, n_in: int, widths, n_out: int = 2, shifts=None, out_act: str = LINEAR) -> Network:
    """A random MLP whose hidden layer k has its biases moved by ``shifts[k]`` (a large positive shift makes a
    layer stably active on a small box, a negative one makes neurons stably inactive)."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    layers, prev = [], n_in
    for k, width in enumerate(widths):
        shift = shifts[k] if shifts else 0.0
        layers.append(Dense(rng.normal(size=(width, prev)) / np.sqrt(prev), rng.normal(size=width) * 0.5 + shift, RELU))
        prev = width
    layers.append(Dense(rng.normal(size=(n_out, prev)), rng.normal(size=n_out), out_act))
    return Network(tuple(layers), n_in)


def rebuild(net: Network, layers) -> Network:
    """A network from (weight, bias, activation[, layer_id, neuron_ids]) tuples."""
    dense = [Dense(*t) for t in layers]
    return Network(tuple(dense), net.input_size)


def as_float32(net: Network) -> Network:
    return rebuild(net, [(l.weight.astype(np.float32), l.bias.astype(np.float32), l.activation) for l in net.layers])


def perturbed(net: Network, scale: float, rng) -> Network:
    return rebuild(net, [(l.weight + scale * rng.normal(size=l.weight.shape), l.bias + scale * rng.normal(size=l.n_out),
                          l.activation) for l in net.layers])


def pruned(net: Network, fraction: float) -> Network:
    out = []
    for l in net.layers:
        w = l.weight.copy()
        if w.size:
            w[np.abs(w) < np.quantile(np.abs(w), fraction)] = 0.0
        out.append((w, l.bias, l.activation))
    return rebuild(net, out)


def permuted(net: Network, rng) -> Network:
    """The same function with the neurons of every hidden layer reordered."""
    out, perm_prev = [], np.arange(net.input_size)
    for k, l in enumerate(net.layers):
        perm = rng.permutation(l.n_out) if k < len(net.layers) - 1 else np.arange(l.n_out)
        out.append((l.weight[perm][:, perm_prev], l.bias[perm], l.activation))
        perm_prev = perm
    return rebuild(net, out)


def drop_neuron(net: Network, k: int, i: int) -> Network:
    """A mutant: neuron ``i`` of hidden layer ``k`` deleted whatever its activity (an unsound compression)."""
    layers = [[l.weight, l.bias, l.activation, l.layer_id, l.neuron_ids] for l in net.layers]
    if layers[k][0].shape[0] < 2:
        return net
    keep = np.arange(layers[k][0].shape[0]) != i
    layers[k][0], layers[k][1] = layers[k][0][keep], layers[k][1][keep]
    layers[k][4] = tuple(np.asarray(layers[k][4])[keep])
    layers[k + 1][0] = layers[k + 1][0][:, keep]
    return rebuild(net, layers)


def extra_neuron(net: Network, k: int, rng, outgoing: float) -> Network:
    """Hidden layer ``k`` with one more neuron (outgoing weights ``outgoing * N(0, 1)``; 0 keeps the function)."""
    layers = [[l.weight, l.bias, l.activation] for l in net.layers]
    layers[k][0] = np.vstack([layers[k][0], rng.normal(size=(1, layers[k][0].shape[1]))])
    layers[k][1] = np.append(layers[k][1], rng.normal())
    layers[k + 1][0] = np.hstack([layers[k + 1][0], outgoing * rng.normal(size=(layers[k + 1][0].shape[0], 1))])
    return rebuild(net, layers)


def linearised(net: Network, k: int) -> Network:
    """A mutant: the ReLU of hidden layer ``k`` removed."""
    return rebuild(net, [(l.weight, l.bias, LINEAR if j == k else l.activation) for j, l in enumerate(net.layers)])


def leo_fold(net: Network, lo: np.ndarray, hi: np.ndarray) -> Network:
    """LEO++ by hand: delete the hidden neurons CROWN proves inactive on the box, then fold every hidden layer
    with no unstable neuron left (proven active, or linear) into the next.  Exact on the box."""
    b = crown_bounds(net, lo[None, :], hi[None, :])
    layers = [[l.weight.copy(), l.bias.copy(), l.activation, l.layer_id, list(l.neuron_ids),
               b.lower[k][0].copy(), b.upper[k][0].copy()] for k, l in enumerate(net.layers)]
    for k in range(len(layers) - 1):
        lay, nxt = layers[k], layers[k + 1]
        if lay[2] != RELU:
            continue
        keep = lay[6] > 0
        if keep.sum() == 0:
            keep[np.argmax(lay[6])] = True  # keep one (zero) neuron so that the chain stays connected
        lay[0], lay[1], lay[4], lay[5], lay[6] = lay[0][keep], lay[1][keep], [i for i, m in zip(lay[4], keep) if m], \
            lay[5][keep], lay[6][keep]
        nxt[0] = nxt[0][:, keep]
    k = 0
    while k < len(layers) - 1:
        lay, nxt = layers[k], layers[k + 1]
        if lay[2] != RELU or np.all(lay[5] >= 0):
            nxt[1] = nxt[1] + nxt[0] @ lay[1]
            nxt[0] = nxt[0] @ lay[0]
            del layers[k]
            continue
        k += 1
    return rebuild(net, [(l[0], l[1], l[2], l[3], tuple(l[4])) for l in layers])


# ---- checking --------------------------------------------------------------------------------------------
def random_boxes(rng, n_boxes: int, n_in: int, width: float = 2.0):
    lo = rng.uniform(-1.5, 0.5, size=(n_boxes, n_in))
    hi = lo + rng.uniform(0.0, width, size=(n_boxes, n_in))
    hi[:, 0] = lo[:, 0] + rng.uniform(0.05, width, n_boxes)
    return lo, hi


def box_points(lo: np.ndarray, hi: np.ndarray, rng, n: int = 3000) -> np.ndarray:
    """Uniform samples, every vertex (or 512 random ones), the centre, and points near the faces."""
    k = lo.size
    bits = ((np.arange(2 ** k)[:, None] >> np.arange(k)) & 1) if k <= 9 else rng.integers(0, 2, size=(512, k))
    corners = np.where(bits == 1, hi, lo)
    uni = rng.uniform(lo, hi, size=(n, k))
    faces = uni.copy()
    dims = rng.integers(0, k, size=n)
    faces[np.arange(n), dims] = np.where(rng.random(n) < 0.5, lo[dims], hi[dims])
    return np.vstack([uni, faces, corners, ((lo + hi) / 2)[None, :]])


def sampled_range(net1: Network, net2: Network, lo, hi, rng):
    x = box_points(lo, hi, rng)
    y1, y2 = net1.forward(x), net2.forward(x)
    slack = 1e-12 * (1.0 + np.abs(y1).max() + np.abs(y2).max())  # float64 evaluation error of the samples
    return (y2 - y1).min(axis=0), (y2 - y1).max(axis=0), slack


def assert_sound(net1: Network, net2: Network, lo, hi, low, up, rng, what: str = ""):
    for r in range(lo.shape[0]):
        smin, smax, slack = sampled_range(net1, net2, lo[r], hi[r], rng)
        assert np.all(low[r] <= smin + slack), f"{what}: lower bound {low[r]} above sampled {smin} (box {r})"
        assert np.all(up[r] >= smax - slack), f"{what}: upper bound {up[r]} below sampled {smax} (box {r})"


def separate_bound(net1: Network, net2: Network, lo, hi) -> float:
    """The networks bounded as unrelated, as ``verify --formal`` did before differential bounds: CROWN's
    linear bounds of each network, ``f1 <= A1 x + c1`` and ``-f2 <= A2 x + c2``, added over the shared
    input and maximised over the box (an independent implementation to compare against)."""
    from onnxcomp.bounds import crown_bounds

    lo, hi = np.atleast_2d(lo), np.atleast_2d(hi)
    b1 = crown_bounds(net1, lo, hi, with_coef=True)
    b2 = crown_bounds(net2, lo, hi, with_coef=True)
    m = net1.output_size
    a1, c1, a2, c2 = b1.coef[-1], b1.const[-1], b2.coef[-1], b2.const[-1]
    centre, radius = (lo + hi) / 2, (hi - lo) / 2

    def concretise(a, c):
        value = np.einsum("bij,bj->bi", a, centre) + np.einsum("bij,bj->bi", np.abs(a), radius) + c
        mag = np.einsum("bij,bj->bi", np.abs(a), np.maximum(np.abs(lo), np.abs(hi))) + np.abs(c)
        return value + 1e-9 * mag + 1e-12

    up = concretise(a1[:, :m] + a2[:, m:], c1[:, :m] + c2[:, m:])  # f1 - f2
    dn = concretise(a2[:, :m] + a1[:, m:], c2[:, :m] + c1[:, m:])  # f2 - f1
    return float(np.maximum(up, dn).max())


KINDS = ["identical", "float32", "perturbed", "pruned", "permuted", "folded", "dropped", "extra", "extra_zero",
         "linearised", "unrelated", "shifted"]


def make_pair(kind: str, seed: int, n_in: int, widths, lo_hull, hi_hull, out_act=LINEAR):
    rng = np.random.default_rng(seed)
    shifts = [float(rng.choice([-1.0, 0.0, 0.0, 2.5])) for _ in widths]
    net = layered_net(rng, n_in, widths, 2, shifts, out_act)
    k = int(rng.integers(0, len(widths)))
    other = {
        "identical": lambda: rebuild(net, [(l.weight, l.bias, l.activation) for l in net.layers]),
        "float32": lambda: as_float32(net),
        "perturbed": lambda: perturbed(net, float(rng.choice([1e-7, 1e-3, 0.1])), rng),
        "pruned": lambda: pruned(net, float(rng.choice([0.1, 0.5]))),
        "permuted": lambda: permuted(net, rng),
        "folded": lambda: leo_fold(net, lo_hull, hi_hull),
        "dropped": lambda: drop_neuron(net, k, int(rng.integers(0, widths[k]))),
        "extra": lambda: extra_neuron(net, k, rng, 1.0),
        "extra_zero": lambda: extra_neuron(net, k, rng, 0.0),
        "linearised": lambda: linearised(net, k),
        "unrelated": lambda: layered_net(rng, n_in, widths, 2, shifts, out_act),
        "shifted": lambda: rebuild(net, [(l.weight, l.bias + (0.3 if j == len(net.layers) - 1 else 0.0), l.activation)
                                         for j, l in enumerate(net.layers)]),
    }[kind]()
    return net, other


# ---- soundness on random pairs ------------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 100_000), n_in=st.integers(1, 5),
       widths=st.lists(st.integers(1, 8), min_size=1, max_size=4), n_boxes=st.integers(1, 3),
       swap=st.booleans(), symmetric=st.booleans(), out_relu=st.sampled_from([False, False, True]))
def test_bound_is_never_below_a_sampled_difference(kind, seed, n_in, widths, n_boxes, swap, symmetric, out_relu):
    rng = np.random.default_rng(seed + 7)
    lo, hi = random_boxes(rng, n_boxes, n_in)
    net1, net2 = make_pair(kind, seed, n_in, widths, lo.min(axis=0), hi.max(axis=0), RELU if out_relu else LINEAR)
    if swap:  # the compressed / mutated network first
        net1, net2 = net2, net1
    low, up = diff_bounds(net1, net2, lo, hi, symmetric=symmetric)
    assert low.shape == up.shape == (n_boxes, 2)
    assert np.all(low <= up)
    assert_sound(net1, net2, lo, hi, low, up, rng, kind)
    # never looser than the networks taken as unrelated (it is intersected with that bound), up to the
    # outward-rounding margins (formal's margin is taken after its coefficients cancel; ours before)
    if not out_relu:
        scale = max(float(np.abs(c.upper[-1]).max()) for c in (crown_bounds(net1, lo, hi), crown_bounds(net2, lo, hi)))
        assert max_abs_diff_bound(net1, net2, lo, hi) <= separate_bound(net1, net2, lo, hi) * (1 + 1e-9) + 1e-7 * (1 + scale)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 100_000), n_in=st.integers(1, 5), widths=st.lists(st.integers(3, 16), min_size=1, max_size=4),
       swap=st.booleans())
def test_leo_folded_copies_are_certified_equal_at_rounding_level(seed, n_in, widths, swap):
    """Deleting CROWN-proven inactive neurons and folding proven-active layers changes nothing on the box; the
    bound says so (either network first), where bounding them separately does not in general."""
    rng = np.random.default_rng(seed)
    lo, hi = random_boxes(rng, 1, n_in, 0.5)
    net, folded = make_pair("folded", seed, n_in, widths, lo[0], hi[0])
    a, b = (folded, net) if swap else (net, folded)
    scale = 1.0 + float(np.abs(crown_bounds(a, lo, hi).upper[-1]).max())
    assert max_abs_diff_bound(a, b, lo, hi) <= 1e-6 * scale


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 100_000), n_in=st.integers(1, 4),
       widths=st.lists(st.integers(1, 7), min_size=1, max_size=3))
def test_any_matching_is_sound_even_a_wrong_one(kind, seed, n_in, widths):
    """The matching only decides tightness: random layer alignments and random neuron pairings stay sound."""
    rng = np.random.default_rng(seed)
    lo, hi = random_boxes(rng, 2, n_in)
    net1, net2 = make_pair(kind, seed, n_in, widths, lo.min(axis=0), hi.max(axis=0))
    l1, l2 = len(net1.layers), len(net2.layers)
    n_hidden = int(rng.integers(0, min(l1, l2)))
    ks1 = np.sort(rng.choice(l1 - 1, size=n_hidden, replace=False))
    ks2 = np.sort(rng.choice(l2 - 1, size=n_hidden, replace=False))
    layers = []
    for a, b in zip(ks1, ks2):
        n1, n2 = net1.layers[a].n_out, net2.layers[b].n_out
        targets = rng.permutation(n1)[: min(n1, n2)]
        pairs = np.full(n2, -1)
        pairs[rng.permutation(n2)[: targets.size]] = targets
        if rng.random() < 0.3:
            pairs[rng.random(n2) < 0.5] = -1
        layers.append(LayerMatch(int(a), int(b), pairs, np.zeros(n2)))
    layers.append(LayerMatch(l1 - 1, l2 - 1, np.arange(2), np.zeros(2)))
    matching = Matching(net1.widths + [2], net2.widths + [2], layers)
    low, up = diff_bounds(net1, net2, lo, hi, matching, with_unrelated=False)
    assert_sound(net1, net2, lo, hi, low, up, rng, f"{kind} with a random matching")
    low, up = diff_bounds(net1, net2, lo, hi, unrelated(net1, net2), with_unrelated=False)
    assert_sound(net1, net2, lo, hi, low, up, rng, f"{kind} as unrelated")


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 1_000_000), acts=st.sampled_from([(RELU, RELU), (RELU, LINEAR), (LINEAR, RELU), (LINEAR, LINEAR)]),
       scale=st.sampled_from([1e-6, 0.1, 1.0, 10.0]))
def test_delta_planes_and_interval_enclose_the_difference(seed, acts, scale):
    """For bounds derived from a random cloud of (y1, d) points, both planes and the interval enclose
    act2(y1 + d) - act1(y1) at every point of the region (points of the cloud, and of the box corners)."""
    rng = np.random.default_rng(seed)
    n = 64
    y1 = rng.normal(size=(n, 40)) + rng.normal(size=n)[:, None] * 2
    d = scale * (rng.normal(size=(n, 40)) + rng.normal(size=n)[:, None])
    l1, u1 = y1.min(axis=1), y1.max(axis=1)
    dl, du = d.min(axis=1), d.max(axis=1)
    l2, u2 = (y1 + d).min(axis=1), (y1 + d).max(axis=1)
    # widen some bounds: any sound bounds must work
    widen = rng.random(n) < 0.5
    l1, u1 = np.where(widen, l1 - rng.random(n), l1), np.where(widen, u1 + rng.random(n), u1)
    (au, bu, cu), (al, bl, cl), (ilo, ihi) = diff_relaxation(l1, u1, dl, du, l2, u2, *acts)
    act = [(lambda v: np.maximum(v, 0)) if a == RELU else (lambda v: v) for a in acts]
    pts_y = np.concatenate([y1, np.stack([l1, u1, l1, u1], axis=1)], axis=1)
    pts_d = np.concatenate([d, np.stack([dl, du, du, dl], axis=1)], axis=1)
    inside = (pts_y + pts_d >= l2[:, None]) & (pts_y + pts_d <= u2[:, None])
    true = act[1](pts_y + pts_d) - act[0](pts_y)
    tol = 1e-12 * (1 + np.abs(pts_y) + np.abs(pts_d))
    upper = au[:, None] * pts_y + bu[:, None] * pts_d + cu[:, None]
    lower = al[:, None] * pts_y + bl[:, None] * pts_d + cl[:, None]
    assert np.all((upper >= true - tol) | ~inside)
    assert np.all((lower <= true + tol) | ~inside)
    assert np.all((ihi[:, None] >= true - tol) | ~inside) and np.all((ilo[:, None] <= true + tol) | ~inside)


# ---- tightness on known differences -------------------------------------------------------------------------
def test_identical_networks_are_certified_exactly_equal():
    rng = np.random.default_rng(0)
    net = layered_net(rng, 4, [12, 12, 12], 3)
    copy = rebuild(net, [(l.weight.copy(), l.bias.copy(), l.activation) for l in net.layers])
    lo, hi = random_boxes(rng, 5, 4)
    low, up = diff_bounds(net, copy, lo, hi)
    assert np.all(low == 0.0) and np.all(up == 0.0)
    assert separate_bound(net, copy, lo, hi) > 0.1  # what bounding them separately gives


def test_float32_copy_is_certified_at_rounding_level():
    rng = np.random.default_rng(1)
    net = layered_net(rng, 5, [30, 30, 30], 4)
    lo, hi = -np.ones((1, 5)), np.ones((1, 5))
    copy = as_float32(net)
    low, up = diff_bounds(net, copy, lo, hi)
    assert_sound(net, copy, lo, hi, low, up, rng, "float32")
    bound = max_abs_diff_bound(net, copy, lo, hi)
    scale = float(np.abs(crown_bounds(net, lo, hi).upper[-1]).max())
    assert bound <= 1e-5 * scale
    assert bound < 1e-4 * separate_bound(net, copy, lo, hi)


def test_a_perturbed_weight_on_an_always_active_path_gives_its_exact_effect():
    rng = np.random.default_rng(2)
    w0 = rng.uniform(0.1, 1.0, size=(6, 3))
    w1 = rng.uniform(0.1, 1.0, size=(5, 6))
    w2 = rng.normal(size=(2, 5))
    net = Network((Dense(w0, np.full(6, 0.5), RELU), Dense(w1, np.full(5, 0.5), RELU), Dense(w2, np.zeros(2), LINEAR)), 3)
    lo, hi = np.zeros((1, 3)), np.ones((1, 3)) * np.array([1.0, 2.0, 0.5])
    eps = 1e-3
    w0b = w0.copy()
    w0b[4, 1] += eps
    mutant = Network((Dense(w0b, np.full(6, 0.5), RELU),) + net.layers[1:], 3)
    # every neuron is stably active on the box: f2 - f1 = eps * x_1 * (w2 @ w1)[:, 4]
    gain = eps * (w2 @ w1)[:, 4]
    true_lo = np.minimum(gain * lo[0, 1], gain * hi[0, 1])
    true_hi = np.maximum(gain * lo[0, 1], gain * hi[0, 1])
    low, up = diff_bounds(net, mutant, lo, hi)
    assert np.all(low[0] <= true_lo + 1e-15) and np.all(up[0] >= true_hi - 1e-15)
    np.testing.assert_allclose(low[0], true_lo, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(up[0], true_hi, rtol=1e-6, atol=1e-10)


def test_shifted_output_bias_is_bounded_by_the_shift():
    rng = np.random.default_rng(3)
    net = layered_net(rng, 3, [10, 10], 3)
    shift = np.array([0.25, -0.5, 0.0])
    out = net.layers[-1]
    moved = net.with_layers(net.layers[:-1] + (Dense(out.weight, out.bias + shift, LINEAR),))
    lo, hi = random_boxes(rng, 4, 3)
    low, up = diff_bounds(net, moved, lo, hi)
    real = (out.bias + shift) - out.bias  # the float difference of the stored biases
    assert np.all(low <= real) and np.all(up >= real)
    assert np.all(up - low <= 1e-8 * (np.abs(real) + 1e-300))
    bound = max_abs_diff_bound(net, moved, lo, hi)
    assert 0.5 <= bound <= 0.5 * (1 + 1e-8)


def test_pruned_copy_is_tighter_than_separate_bounds():
    rng = np.random.default_rng(4)
    net = layered_net(rng, 4, [20, 20], 3)
    small = pruned(net, 0.2)
    lo, hi = -0.5 * np.ones((1, 4)), 0.5 * np.ones((1, 4))
    low, up = diff_bounds(net, small, lo, hi)
    assert_sound(net, small, lo, hi, low, up, rng, "pruned")
    assert max_abs_diff_bound(net, small, lo, hi) < 0.5 * separate_bound(net, small, lo, hi)


def test_leo_folded_copy_is_certified_equal_and_matched_by_ids_and_weights():
    rng = np.random.default_rng(5)
    lo, hi = -0.3 * np.ones(3), 0.3 * np.ones(3)
    net = layered_net(rng, 3, [8, 6, 7], 2, shifts=[-0.6, 3.0, 0.0])
    folded = leo_fold(net, lo, hi)
    assert len(folded.layers) < len(net.layers) and folded.widths[0] < net.widths[0]  # deleted and folded
    x = box_points(lo, hi, rng)
    np.testing.assert_allclose(folded.forward(x), net.forward(x), rtol=1e-9, atol=1e-9)
    for a, b in ((net, folded), (folded, net)):
        low, up = diff_bounds(a, b, lo[None, :], hi[None, :])
        assert_sound(a, b, lo[None, :], hi[None, :], low, up, rng, "folded")
        assert max(float(up.max()), float(-low.min())) <= 1e-7
    assert separate_bound(net, folded, lo[None, :], hi[None, :]) > 1e-3
    m = match(net, folded, lo, hi)
    first = m.layers[0]
    assert (first.k1, first.k2) == (0, 0)
    assert [net.layers[0].neuron_ids[j] for j in first.pairs] == list(folded.layers[0].neuron_ids)
    # the same network read back from ONNX has ids 0..n-1: matched by its weights
    reread = round_trip_network(folded)
    assert reread.layers[0].neuron_ids == tuple(range(reread.layers[0].n_out))
    m2 = match(net, reread, lo, hi)
    np.testing.assert_array_equal(m2.layers[0].pairs, first.pairs)
    assert max_abs_diff_bound(net, reread, lo, hi) <= 1e-5  # float32 storage only


def round_trip_network(net: Network) -> Network:
    """``net`` written to ONNX (float32) and read back: the reader numbers neurons 0..n-1 again."""
    from onnxcomp.reader import lower
    from onnxcomp.writer import to_model

    return lower(to_model(net), source="test")


def test_rank_merged_active_neurons_cancel():
    """LEO++'s rank reduction: a stably active neuron whose row is a multiple of another's is deleted and its
    outgoing weights moved onto the other; the bound stays at rounding level."""
    rng = np.random.default_rng(6)
    w0 = rng.normal(size=(6, 3))
    w0[5] = 2.0 * w0[4]
    b0 = rng.normal(size=6) * 0.3
    b0[4], b0[5] = 3.0, 5.0  # both stably active on the box
    w1, b1 = rng.normal(size=(4, 6)), rng.normal(size=4)
    net = Network((Dense(w0, b0, RELU), Dense(w1, b1, RELU), Dense(rng.normal(size=(2, 4)), np.zeros(2), LINEAR)), 3)
    w1m = w1[:, :5].copy()
    w1m[:, 4] += 2.0 * w1[:, 5]
    b1m = b1 + w1[:, 5] * (b0[5] - 2.0 * b0[4])
    merged = Network((Dense(w0[:5], b0[:5], RELU, neuron_ids=range(5)), Dense(w1m, b1m, RELU), net.layers[2]), 3)
    lo, hi = -np.ones((1, 3)), np.ones((1, 3))
    low, up = diff_bounds(net, merged, lo, hi)
    assert_sound(net, merged, lo, hi, low, up, rng, "merged")
    assert max_abs_diff_bound(net, merged, lo, hi) <= 1e-7
    assert separate_bound(net, merged, lo, hi) > 1e-2


def test_permuted_neurons_are_matched_back():
    rng = np.random.default_rng(7)
    net = layered_net(rng, 4, [9, 9], 2)
    other = permuted(net, rng)
    lo, hi = -np.ones((1, 4)), np.ones((1, 4))
    m = match(net, other, lo, hi)
    assert len(m.layers) == 3 and not m.layers[0].identity
    np.testing.assert_array_equal(net.layers[0].weight[m.layers[0].pairs], other.layers[0].weight)
    assert max_abs_diff_bound(net, other, lo, hi, m) == 0.0


def test_unrelated_networks_fall_back_to_separate_bounds():
    rng = np.random.default_rng(8)
    a = layered_net(rng, 3, [8, 8], 2)
    b = layered_net(rng, 3, [8, 8], 2)
    lo, hi = random_boxes(rng, 3, 3)
    m = match(a, b, lo, hi)
    low, up = diff_bounds(a, b, lo, hi, m)
    assert_sound(a, b, lo, hi, low, up, rng, "unrelated")
    assert max_abs_diff_bound(a, b, lo, hi, m) <= separate_bound(a, b, lo, hi) * (1 + 1e-7)  # margins differ
    assert len(m.layers) >= 1 and "N1 layer" in m.describe() and m.to_dict()["layers"]


def test_a_batch_of_boxes_gives_each_box_its_own_bound():
    rng = np.random.default_rng(9)
    net = layered_net(rng, 3, [10, 10], 2)
    other = perturbed(net, 1e-3, rng)
    lo, hi = random_boxes(rng, 6, 3)
    m = match(net, other, lo, hi)
    low, up = diff_bounds(net, other, lo, hi, m)
    for r in range(6):
        l1, u1 = diff_bounds(net, other, lo[r], hi[r], m)
        np.testing.assert_allclose(low[r], l1[0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(up[r], u1[0], rtol=1e-12, atol=1e-15)


def test_given_pre_activation_bounds_are_used():
    """Pre-activation bounds given by the caller are the ones used (the same as CROWN's: the same result)."""
    rng = np.random.default_rng(11)
    net = layered_net(rng, 3, [8, 8], 2)
    other = perturbed(net, 1e-3, rng)
    lo, hi = random_boxes(rng, 2, 3)
    b1, b2 = crown_bounds(net, lo, hi), crown_bounds(other, lo, hi)
    np.testing.assert_array_equal(diff_bounds(net, other, lo, hi, bounds1=b1, bounds2=b2)[1],
                                  diff_bounds(net, other, lo, hi)[1])


def test_bad_inputs_are_refused():
    rng = np.random.default_rng(10)
    a = layered_net(rng, 3, [4], 2)
    b = layered_net(rng, 4, [4], 2)
    with pytest.raises(ValueError):
        diff_bounds(a, b, np.zeros(3), np.ones(3))
    c = layered_net(rng, 3, [4], 2)
    bad = Matching(a.widths + [2], c.widths + [2], [LayerMatch(1, 1, np.array([1, 0]), np.zeros(2))])
    with pytest.raises(ValueError):
        diff_bounds(a, c, np.zeros(3), np.ones(3), bad)
