"""``verify``: passes an exact round trip, catches a changed weight and a single flipped ReLU with the
default tolerances, compares integer outputs exactly, and streams (the result does not depend on the
batch size)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from builders import flip_relu, perturb_initializer
from onnxcomp.errors import InputError
from onnxcomp.ir import Box
from onnxcomp.onnxio import load_model
from onnxcomp.reader import lower
from onnxcomp.equivalence import ATOL, RTOL, compare, sample_inputs, verify_models
from onnxcomp.writer import to_model

ROOT = Path(__file__).resolve().parents[1]
DIGITS_BOX = Box(np.zeros(64), np.ones(64), source="0:1")


@pytest.fixture(scope="module")
def digits():
    return load_model(ROOT / "models/digits_2x32.onnx")


@pytest.fixture(scope="module")
def digits_data():
    with np.load(ROOT / "models/data/digits_test.npz") as z:
        return z["x"]


def test_exact_round_trip_passes(digits, digits_data):
    result = verify_models(digits, to_model(lower(digits)), box=DIGITS_BOX, data=digits_data, samples=2000,
                           corners=64)
    assert result.passed and result.reason == ""
    assert result.samples == len(digits_data) + 2000 + 64
    assert result.max_abs_err <= 1e-5 * result.output_scale
    assert result.top1_agreement == 1.0
    assert result.summary().startswith("PASSED: 2424 samples")


@pytest.mark.parametrize("name", ["fc1.weight", "fc2.weight", "fc3.weight"])
def test_one_changed_weight_is_caught(digits, name):
    w = numpy_helper.to_array(next(t for t in digits.graph.initializer if t.name == name))
    index = np.unravel_index(np.abs(w).argmax(), w.shape)
    result = verify_models(digits, perturb_initializer(digits, name, index, 0.01), box=DIGITS_BOX)
    assert not result.passed
    assert result.max_abs_err > ATOL + RTOL * result.output_scale
    assert "exceeds" in result.reason and result.summary().startswith("FAILED")
    assert result.worst_sample is not None


@pytest.mark.slow
def test_every_single_flipped_relu_is_caught(digits):
    # Every hidden neuron that is negative somewhere on the domain: removing its Relu must fail.
    net = lower(digits)
    _, pres = net.forward(DIGITS_BOX.sample(5000, np.random.default_rng(9)), preactivations=True)
    flips = [(k, j) for k in range(len(net.layers) - 1) for j in range(net.layers[k].n_out) if pres[k][:, j].min() < 0]
    assert len(flips) >= 40
    missed = [(k, j) for k, j in flips
              if verify_models(digits, flip_relu(digits, k, j), box=DIGITS_BOX, samples=5000).passed]
    assert missed == []


def test_flipped_relu_on_an_l1_mnist_model_is_caught():
    model = load_model(ROOT / "models/mnist_2x100_l1.onnx")
    net = lower(model)
    box = Box(np.zeros(784), np.ones(784))
    _, pres = net.forward(box.sample(2000, np.random.default_rng(1)), preactivations=True)
    # The most unstable neuron of the second hidden layer (negative on about half of the samples).
    j = int(np.argmin(np.abs((pres[1] < 0).mean(axis=0) - 0.5)))
    result = verify_models(model, flip_relu(model, 1, j), box=box)
    assert not result.passed


def test_integer_label_output_is_compared_exactly():
    ref = load_model(ROOT / "models/digits_mlp_sklearn.onnx")
    with np.load(ROOT / "models/data/digits_test.npz") as z:
        x = z["x"]
    same = verify_models(ref, to_model(lower(ref)), data=x)
    assert same.passed
    # Swap two class names: probabilities identical, labels differ wherever 3 or 5 is predicted.
    classes = next(t for t in ref.graph.initializer if t.name == "classes")
    swapped = perturb_initializer(ref, "classes", (3,), 2)
    swapped = perturb_initializer(swapped, "classes", (5,), -2)
    assert list(numpy_helper.to_array(next(t for t in swapped.graph.initializer if t.name == "classes"))) == \
        [0, 1, 2, 5, 4, 3, 6, 7, 8, 9]
    assert classes.data_type == onnx.TensorProto.INT32
    result = verify_models(ref, swapped, data=x)
    assert not result.passed
    assert result.max_abs_err == 0.0
    assert "different integer output" in result.reason
    n35 = int(np.isin(_labels(ref, x), [3, 5]).sum())
    assert f"{n35} samples with a different integer output" in result.reason


def _labels(model, x):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString()).run(["label"], {"input": x})[0]


@pytest.mark.parametrize("batch", [7, 100, 4096])
def test_result_does_not_depend_on_the_batch_size(digits, digits_data, batch):
    cand = perturb_initializer(digits, "fc2.weight", (0, 0), 0.003)
    result = compare(digits, cand, sample_inputs(DIGITS_BOX, digits_data, samples=1500, corners=40, seed=3,
                                                 batch=batch))
    whole = compare(digits, cand, [np.vstack(list(sample_inputs(DIGITS_BOX, digits_data, 1500, 40, 3)))])
    assert result.samples == whole.samples == len(digits_data) + 1540
    assert result.max_abs_err == whole.max_abs_err
    assert result.worst_sample == whole.worst_sample
    assert result.top1_agreement == whole.top1_agreement
    assert result.passed == whole.passed
    assert result.mean_abs_err == pytest.approx(whole.mean_abs_err, rel=1e-9)


def test_same_seed_same_samples_other_seed_other_samples():
    a = np.vstack(list(sample_inputs(DIGITS_BOX, None, 100, 8, seed=1)))
    b = np.vstack(list(sample_inputs(DIGITS_BOX, None, 100, 8, seed=1)))
    c = np.vstack(list(sample_inputs(DIGITS_BOX, None, 100, 8, seed=2)))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == (108, 64) and DIGITS_BOX.contains(a).all()


def test_nan_in_the_candidate_fails(digits):
    result = verify_models(digits, perturb_initializer(digits, "fc3.bias", (2,), np.nan), box=DIGITS_BOX,
                           samples=100)
    assert not result.passed and result.max_abs_err == np.inf


def test_models_that_do_not_fit_together_are_refused(digits):
    mnist = load_model(ROOT / "models/mnist_2x100.onnx")
    with pytest.raises(InputError, match="64 and 784 input features"):
        verify_models(digits, mnist, box=DIGITS_BOX)
    with pytest.raises(InputError, match="needs inputs"):
        verify_models(digits, digits)
    sk = load_model(ROOT / "models/digits_mlp_sklearn.onnx")
    with pytest.raises(InputError, match="1 and 2 outputs"):
        verify_models(digits, sk, box=DIGITS_BOX)


def test_fixed_batch_model_against_its_round_trip():
    # ACAS Xu takes [1,1,1,5]: run batched through a symbolic-batch copy, checked against batch-1 runs.
    model = load_model(ROOT / "models/external/acasxu/ACASXU_run2a_1_1_batch_2000.onnx")
    net = lower(model)
    changed = net.with_layers([*net.layers[:-1], replace(net.layers[-1], bias=net.layers[-1].bias + 0.01)])
    box = Box(np.full(5, -0.5), np.full(5, 0.5))
    assert verify_models(model, to_model(net), box=box, samples=3000).passed
    assert not verify_models(model, to_model(changed), box=box, samples=3000).passed
