"""``drop``: lossless removal of exactly dependent neurons through ``-p lre`` (checked with onnxruntime on
the written file), fractions and counts, neuron identity, least-squares readjustment, score sources,
budgets, and the cases where it must not drop anything."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxcomp.api import compress
from onnxcomp.dependence import Dependence
from onnxcomp.errors import UsageError
from onnxcomp.ir import LINEAR, RELU, Dense, Network
from onnxcomp.pipeline import Context, PassManager
from onnxcomp.reader import read
from onnxcomp.scores import FisherScores, LookaheadScores
from onnxcomp.writer import to_model

DIGITS = "models/digits_2x32_l1.onnx"


def duplicated_net():
    """8-10-9-4 ReLU net where layer 0 has an exact duplicate (6 of 1) and a scaled one (8 = 2.5 x 3),
    and layer 1 a scaled duplicate (9 = 0.4 x 0)."""
    rng = np.random.default_rng(7)
    w0, b0 = rng.normal(size=(8, 8)), rng.normal(scale=0.2, size=8)
    w0 = np.vstack([w0[:6], w0[1], w0[6:], 2.5 * w0[3]])
    b0 = np.concatenate([b0[:6], [b0[1]], b0[6:], [2.5 * b0[3]]])
    w1, b1 = rng.normal(size=(8, 10)), rng.normal(scale=0.2, size=8)
    w1 = np.vstack([w1, 0.4 * w1[0]])
    b1 = np.append(b1, 0.4 * b1[0])
    w2, b2 = rng.normal(size=(4, 9)), rng.normal(size=4)
    return Network((Dense(w0, b0, RELU), Dense(w1, b1, RELU), Dense(w2, b2, LINEAR)), 8)


def ort_run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def test_lre_removes_exact_duplicates_losslessly_in_the_written_model(tmp_path):
    src, out, data = tmp_path / "dup.onnx", tmp_path / "small.onnx", tmp_path / "calib.npz"
    onnx.save(to_model(duplicated_net()), src)
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.normal(size=(300, 8)).astype(np.float32))
    result = compress(str(src), "lre", data=str(data), domain="-3:3", samples=2000)
    result.save(out)
    entry = result.report["passes"][-1]
    assert entry["name"] == "drop" and entry["widths_before"] == [10, 9] and entry["widths_after"] == [8, 8]
    removed = {(r["layer"], r["neuron"]) for r in entry["removed"]}
    assert len(removed) == 3 and all(r["lossless"] for r in entry["removed"]) and entry["all_lossless"]
    # one of each twin pair went, in the original numbering
    assert len(removed & {(0, 1), (0, 6)}) == 1 and len(removed & {(0, 3), (0, 8)}) == 1
    assert len(removed & {(1, 0), (1, 8)}) == 1
    assert all("exact on every input" in r["why"] for r in entry["removed"])
    assert read(out).widths == [8, 8]
    probe = rng.uniform(-6, 6, size=(2000, 8))  # also far outside the samples: duplicates are redundant everywhere
    a, b = ort_run(src, probe), ort_run(out, probe)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


def test_without_dependence_or_setting_nothing_is_dropped():
    net = duplicated_net()
    ctx = Context(data=np.random.default_rng(0).normal(size=(50, 8)))
    new = PassManager().run(net, ["drop"], ctx)
    assert new is net and ctx.log[-1]["removed"] == [] and "dependence" in ctx.log[-1]["message"]


def test_fraction_shrinks_widths_and_keeps_neuron_identity(repo_root):
    net = read(repo_root / DIGITS)
    x = np.load(repo_root / "models/data/digits_calib.npz")["x"]
    ctx = Context(data=x, options={"drop": 0.25})
    new = PassManager().run(net, ["dependence", "drop"], ctx)
    entry = ctx.log[-1]
    assert sum(net.widths) - sum(new.widths) == 16 == len(entry["removed"])
    for old, layer in zip(net.layers[:-1], new.layers[:-1]):
        assert set(layer.neuron_ids) < set(old.neuron_ids)
        assert list(layer.neuron_ids) == sorted(layer.neuron_ids)  # survivors keep their order
        gone = {r["neuron"] for r in entry["removed"] if r["layer"] == old.layer_id}
        assert gone == set(old.neuron_ids) - set(layer.neuron_ids)
    # the exact ones come first and are marked; the rest are lossy
    flags = [r["lossless"] for r in entry["removed"]]
    assert flags == sorted(flags, reverse=True) and 0 < sum(flags) < 16 and not entry["all_lossless"]
    # dropping again works in original numbering: ids stay those of the input model
    ctx2 = Context(data=x, options={"drop": 3, "score": "magnitude"})
    newer = PassManager().run(new, ["drop"], ctx2)
    assert sum(new.widths) - sum(newer.widths) == 3
    for layer, prev in zip(newer.layers[:-1], new.layers[:-1]):
        assert set(layer.neuron_ids) <= set(prev.neuron_ids)
    assert {(r["layer"], r["neuron"]) for r in ctx2.log[-1]["removed"]}.isdisjoint(
        {(r["layer"], r["neuron"]) for r in entry["removed"]})


def test_more_drop_removes_a_superset_and_least_squares_beats_plain_deletion(repo_root):
    net = read(repo_root / DIGITS)
    x = np.load(repo_root / "models/data/digits_calib.npz")["x"]
    test = np.load(repo_root / "models/data/digits_test.npz")["x"]
    removed = []
    for count in (6, 20):
        ctx = Context(data=x, options={"drop": count, "score": "magnitude"})
        new = PassManager().run(net, ["drop"], ctx)
        removed.append({(r["layer"], r["neuron"]) for r in ctx.log[-1]["removed"]})
    assert removed[0] < removed[1]
    # the same neurons deleted without readjusting the next layer
    plain = list(net.layers)
    for k in range(2):
        keep = [i for i, nid in enumerate(net.layers[k].neuron_ids) if (k, nid) not in removed[1]]
        plain[k] = Dense(plain[k].weight[keep], plain[k].bias[keep], plain[k].activation)
        plain[k + 1] = Dense(plain[k + 1].weight[:, keep], plain[k + 1].bias, plain[k + 1].activation)
    plain_net = net.with_layers(plain)
    ref = net(test)
    err_ls = np.mean((new(test) - ref) ** 2)
    err_plain = np.mean((plain_net(test) - ref) ** 2)
    assert err_ls < 0.5 * err_plain


@pytest.mark.parametrize("score,analysis", [("lap", "lookahead"), ("fisher", "fisher")])
def test_score_sources(repo_root, score, analysis):
    net = read(repo_root / DIGITS)
    x = np.load(repo_root / "models/data/digits_calib.npz")["x"]
    ctx = Context(data=x, options={"drop": 5})
    PassManager().run(net, [analysis, "drop"], ctx)
    scores = ctx.get({"lookahead": LookaheadScores, "fisher": FisherScores}[analysis]).neurons
    entry = ctx.log[-1]
    assert entry["score"].startswith(score)
    # without 'dependence' the 5 lowest (layer-normalised for lap) neuron scores go
    norm = [s if score == "fisher" else s / s.mean() for s in scores[:2]]
    flat = sorted((float(v), k, i) for k in range(2) for i, v in enumerate(norm[k]))[:5]
    assert {(k, i) for _, k, i in flat} == {(r["layer"], r["neuron"]) for r in entry["removed"]}
    # --score dependence inserts the 'dependence' analysis before drop (its provider), with the same result
    # as naming it
    ctx = Context(data=x, options={"drop": 5, "score": "dependence"})
    PassManager().run(net, ["drop"], ctx)
    assert [e["name"] for e in ctx.log] == ["dependence", "drop"] and ctx.get(Dependence) is not None
    named = Context(data=x, options={"drop": 5, "score": "dependence"})
    PassManager().run(net, ["dependence", "drop"], named)
    entry = ctx.log[-1]
    assert entry["score"] == "dependence" and len(entry["removed"]) == 5
    assert entry["removed"] == named.log[-1]["removed"]


@pytest.mark.parametrize("value,message", [
    (1.5, r"--drop 1\.5: expected a fraction 0 < f < 1 or a whole count of neurons"),
    # refused by the option's declaration (in Python the label is the long name)
    (-1, r"^drop -1: expected a number >= 0$"),
    ("abc", r"^drop 'abc': expected a number >= 0$"),
    (1000, r"--drop 1000(\.0)?: at most 62 of the 64 hidden neurons can go"),
    (float("nan"), r"^drop nan: expected a number >= 0$"),
])
def test_bad_drop_settings_are_refused(repo_root, value, message):
    net = read(repo_root / DIGITS)
    x = np.load(repo_root / "models/data/digits_calib.npz")["x"]
    with pytest.raises(UsageError, match=message):
        PassManager().run(net, ["drop"], Context(data=x, options={"drop": value}))


def test_budget_search_keeps_agreement_on_held_out(repo_root, tmp_path):
    out = tmp_path / "lre.onnx"
    data = repo_root / "models/data/digits_calib.npz"
    result = compress(str(repo_root / DIGITS), "lre", data=str(data), samples=0, corners=0, min_agreement=97.0)
    result.save(out)
    entry = result.report["passes"][-1]
    assert entry["budget"]["held_out_meets"]
    assert entry["budget"]["validation"]["top1_agreement"] >= 0.97
    assert entry["drop"] > entry["lossless_available"]  # the budget allowed lossy drops beyond the exact ones
    assert sum(read(out).widths) == 64 - entry["drop"]
