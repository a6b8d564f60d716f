"""``fisher``: the backpropagated importances against finite differences (float64), batching
invariance, the objective choice, a model with an opaque prefix, and a behavioural check on a fixture."""

import numpy as np
import pytest

from onnxcomp.errors import UsageError
from onnxcomp.ir import LINEAR, RELU, Dense, Network
from onnxcomp.pipeline import Context, PassManager, spec_of
from onnxcomp.reader import lower, read
from onnxcomp.fisher import fisher_scores, softmax
from onnxcomp.scores import FisherScores
from tests.builders import GraphBuilder

H = 1e-5


def run_fisher(net, ctx):
    """The fisher analysis alone (the name 'fisher' given to ``PassManager.run`` is the composite: fisher,
    then prune)."""
    PassManager().run_one(spec_of("fisher"), net, ctx)


def tiny_net(seed=0):
    rng = np.random.default_rng(seed)
    return Network((Dense(rng.normal(size=(5, 3)), rng.normal(scale=0.3, size=5), RELU),
                    Dense(rng.normal(size=(4, 5)), rng.normal(scale=0.3, size=4), RELU),
                    Dense(rng.normal(size=(3, 4)), rng.normal(size=3), LINEAR)), 3)


def with_weight(net, k, o, i, value):
    w = net.layers[k].weight.copy()
    w[o, i] = value
    layers = list(net.layers)
    layers[k] = Dense(w, net.layers[k].bias, net.layers[k].activation)
    return net.with_layers(layers)


def with_gate(net, k, o, m):
    """Neuron o of layer k scaled by m (relu(m·y) = m·relu(y) for m > 0)."""
    w, b = net.layers[k].weight.copy(), net.layers[k].bias.copy()
    w[o] *= m
    b[o] *= m
    layers = list(net.layers)
    layers[k] = Dense(w, b, net.layers[k].activation)
    return net.with_layers(layers)


def loss(net, x, y, t):
    f = softmax(net(x) / t)
    return -np.log(f[np.arange(len(y)), y])


def finite_difference(net, x, y, t, perturb):
    """Per-row (∂f/∂θ, ∂L/∂θ, ∂²L/∂θ²) by central differences of ``perturb(net, delta)``."""
    plus, minus = perturb(net, H), perturb(net, -H)
    df = (softmax(plus(x) / t) - softmax(minus(x) / t)) / (2 * H)
    dl = (loss(plus, x, y, t) - loss(minus, x, y, t)) / (2 * H)
    h2 = 1e-3  # second differences need a larger step; the loss is smooth away from ReLU kinks
    p2, m2 = perturb(net, h2), perturb(net, -h2)
    d2l = (loss(p2, x, y, t) - 2 * loss(net, x, y, t) + loss(m2, x, y, t)) / h2 ** 2
    return df, dl, d2l


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_importances_match_finite_differences(temperature):
    net = tiny_net()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 3))
    y = rng.integers(0, 3, size=9)
    f = softmax(net(x) / temperature)
    unsup = fisher_scores(net, [x], None, "unsupervised", temperature)
    sup = fisher_scores(net, [x[:4], x[4:]], y, "gradient+hessian", temperature)
    grad_only = fisher_scores(net, [x], y, "gradient", temperature)
    for k, layer in enumerate(net.layers):
        for o in range(layer.n_out):
            for i in range(layer.n_in):
                w0 = layer.weight[o, i]
                df, dl, d2l = finite_difference(net, x, y, temperature,
                                                lambda n, d: with_weight(n, k, o, i, w0 + d))
                eq6 = np.mean(np.sum(df ** 2 / f, axis=1))
                assert unsup.importance[k][o, i] == pytest.approx(eq6, rel=1e-6, abs=1e-12)
                assert sup.importance[k][o, i] == pytest.approx(np.mean(dl ** 2), rel=1e-6, abs=1e-12)
                assert sup.quartic[k][o, i] == pytest.approx(np.mean(d2l ** 2), rel=1e-4, abs=1e-9)
                assert grad_only.importance[k][o, i] == pytest.approx(sup.importance[k][o, i], rel=1e-12)
                assert sup.weights[k][o, i] == pytest.approx(sup.importance[k][o, i] * w0 ** 2
                                                             + 0.25 * sup.quartic[k][o, i] * w0 ** 4)
        for o in range(layer.n_out):
            df, dl, d2l = finite_difference(net, x, y, temperature, lambda n, d: with_gate(n, k, o, 1.0 + d))
            assert unsup.neurons[k][o] == pytest.approx(np.mean(np.sum(df ** 2 / f, axis=1)), rel=1e-6, abs=1e-12)
            assert sup.neurons[k][o] == pytest.approx(np.mean(dl ** 2) + 0.25 * np.mean(d2l ** 2), rel=1e-4, abs=1e-9)
    assert grad_only.quartic is None
    assert unsup.method == "fisher-unsupervised" and sup.method == "fisher-gradient+hessian"


def test_batches_do_not_change_the_result():
    net = tiny_net(4)
    x = np.random.default_rng(2).normal(size=(50, 3))
    y = np.random.default_rng(3).integers(0, 3, size=50)
    whole = fisher_scores(net, [x], y, "gradient+hessian")
    parts = fisher_scores(net, [x[i:i + 7] for i in range(0, 50, 7)], y, "gradient+hessian")
    for a, b in zip(whole.weights + whole.neurons, parts.weights + parts.neurons):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_objective_follows_labels_and_refuses_what_it_cannot_compute(repo_root):
    net = read(repo_root / "models/digits_2x32_l1.onnx")
    d = np.load(repo_root / "models/data/digits_calib.npz")
    ctx = Context(data=d["x"], labels=d["y"])
    run_fisher(net, ctx)
    assert ctx.get(FisherScores).method == "fisher-gradient+hessian"
    ctx = Context(data=d["x"])
    run_fisher(net, ctx)
    assert ctx.get(FisherScores).method == "fisher-unsupervised"
    with pytest.raises(UsageError, match="^pass 'fisher' needs calibration samples: give --data$"):
        run_fisher(net, Context())
    with pytest.raises(UsageError, match="needs --labels"):
        run_fisher(net, Context(data=d["x"], options={"fisher_objective": "gradient"}))
    with pytest.raises(UsageError, match="fisher_objective"):
        run_fisher(net, Context(data=d["x"], options={"fisher_objective": "hessian-only"}))


def test_fixture_low_saliency_weights_matter_less_than_high_ones(repo_root):
    """Zeroing the 30 % least salient weights per layer must move the outputs far less than zeroing the
    30 % most salient ones (the score ranks what matters to the output)."""
    net = read(repo_root / "models/digits_2x32_l1.onnx")
    calib = np.load(repo_root / "models/data/digits_calib.npz")
    test = np.load(repo_root / "models/data/digits_test.npz")["x"]
    before = net.fingerprint()
    ctx = Context(data=calib["x"])
    run_fisher(net, ctx)
    scores = ctx.get(FisherScores)
    assert isinstance(scores, FisherScores) and net.fingerprint() == before and scores.matches(net)

    def kl_after_zeroing(lowest: bool) -> float:
        layers = []
        for layer, s in zip(net.layers, scores.weights):
            n = int(0.3 * s.size)
            order = np.argsort(s.ravel())
            idx = order[:n] if lowest else order[-n:]
            w = layer.weight.copy().ravel()
            w[idx] = 0.0
            layers.append(Dense(w.reshape(layer.weight.shape), layer.bias, layer.activation))
        p, q = softmax(net(test)), softmax(net.with_layers(layers)(test))
        return float(np.mean(np.sum(p * (np.log(p + 1e-300) - np.log(q + 1e-300)), axis=1)))

    low, high = kl_after_zeroing(True), kl_after_zeroing(False)
    assert low < 0.01 * high


def test_prefix_model_uses_the_chain_inputs():
    """A Sigmoid before the chain is not absorbed: the chain's inputs come from onnxruntime."""
    g = GraphBuilder(("N", 4), dtype=np.float64, seed=3)
    h = g.unary(g.input, "Sigmoid")
    h = g.relu(g.gemm(h, 6))
    h = g.gemm(h, 3)
    net = lower(g.build(h))
    x = np.random.default_rng(0).normal(size=(20, 4))
    ctx = Context(data=x)
    run_fisher(net, ctx)
    direct = fisher_scores(net, [1.0 / (1.0 + np.exp(-x))], None, "unsupervised")
    for a, b in zip(ctx.get(FisherScores).weights, direct.weights):
        np.testing.assert_allclose(a, b, rtol=1e-9)


def test_fixture_saliency_predicts_the_kl_of_pruning_one_weight(repo_root):
    """Eq. 6's second-order model: zeroing one weight costs E[KL] ≈ ½ · I · w² (the unsupervised saliency).
    Checked as the median ratio over the 5 % most salient weights of each layer (single weights can cross
    ReLU kinks, where a second-order model is off)."""
    net = read(repo_root / "models/digits_2x32_l1.onnx")
    x = np.load(repo_root / "models/data/digits_calib.npz")["x"].astype(np.float64)
    scores = fisher_scores(net, [x], None, "unsupervised")
    p = softmax(net(x))
    for k, layer in enumerate(net.layers):
        ratios = []
        for flat in np.argsort(scores.weights[k].ravel())[-max(3, layer.weight.size // 20):]:
            o, i = np.unravel_index(flat, layer.weight.shape)
            q = softmax(with_weight(net, k, o, i, 0.0)(x))
            ratios.append(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)) / (0.5 * scores.weights[k][o, i]))
        assert 0.8 < np.median(ratios) < 1.25
