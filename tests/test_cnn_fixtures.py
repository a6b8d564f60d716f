"""The committed convolutional fixtures and their ε-boxes (written by ``models/train_fixtures.py``).

Each CNN must be a valid opset-13 / IR-8 model with the documented node sequence (BatchNormalization
kept as a node, the TF-style Transpose + Reshape head), run in onnxruntime at the accuracy its metadata
states, and every ``boxes/mnist_cnn_img*.vnnlib`` must read back through ``onnxcomp.domain`` as the
clipped ε-ball around its test row, whose centre all three models put in the vnnlib's class.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxcomp.domain import parse_domain

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
BOXES = MODELS / "boxes"
PIXELS = 784
MAX_BYTES = 600_000  # mnist_cnn_conv6 is 594 KB; the others are under 250 KB
ACCURACY_FLOOR = 0.9

# The node sequence of each model, as models/README.md documents it.
OPS = {
    "mnist_cnn_lenet": ["Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Flatten", "Gemm", "Relu", "Gemm"],
    "mnist_cnn_bn_avg": ["Conv", "BatchNormalization", "Relu", "Conv", "Relu", "AveragePool", "Flatten",
                         "Gemm", "Relu", "Gemm"],
    "mnist_cnn_transpose": ["Conv", "Relu", "Conv", "Relu", "Transpose", "Reshape", "Gemm", "Relu", "Gemm"],
    "mnist_cnn_lenet5": ["Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Flatten", "Gemm", "Relu", "Gemm",
                         "Relu", "Gemm"],
    "mnist_cnn_conv6": ["Conv", "BatchNormalization", "Relu", "Conv", "BatchNormalization", "Relu", "MaxPool"] * 3
    + ["Flatten", "Gemm", "Relu", "Gemm"],
    "digits_cnn": ["Conv", "Relu", "Conv", "Relu", "MaxPool", "Flatten", "Gemm", "Relu", "Gemm"],
}
# The three the ε-boxes are built around (all of them classify each box's centre correctly).
NAMES = ["mnist_cnn_bn_avg", "mnist_cnn_lenet", "mnist_cnn_transpose"]
# The CNNs for the lossy conv passes, with the test accuracy each must reach (the issue's ≥ 98 % for LeNet-5).
LOSSY_FLOORS = {"mnist_cnn_lenet5": 0.98, "mnist_cnn_conv6": 0.98, "digits_cnn": 0.97}
DATASET = {name: "digits" if name.startswith("digits") else "mnist" for name in OPS}
IMAGE = {"mnist": [1, 28, 28], "digits": [1, 8, 8]}
BOX_ROWS, BOX_EPSILONS = 2, (0.01, 0.02)


def _load(name: str) -> onnx.ModelProto:
    return onnx.load(str(MODELS / f"{name}.onnx"))


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _logits(name: str, x: np.ndarray) -> np.ndarray:
    """onnxruntime logits for flat rows ``x`` [n, pixels], fed as [n, 1, side, side]."""
    sess = ort.InferenceSession(str(MODELS / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    images = np.ascontiguousarray(x.reshape(len(x), *IMAGE[DATASET[name]]), dtype=np.float32)
    (logits,) = sess.run(["logits"], {"input": images})
    return logits


def _split(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(MODELS / "data" / f"{dataset}_test.npz") as z:
        return z["x"], z["y"]


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    return _split("mnist")


def _dims(value_info: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", sorted(OPS))
def test_cnn_fixture_is_a_checked_opset13_model_with_the_documented_nodes(name):
    path = MODELS / f"{name}.onnx"
    assert path.stat().st_size < MAX_BYTES
    model = _load(name)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, _dims(inp)) == ("input", ["batch", *IMAGE[DATASET[name]]])
    assert (out.name, _dims(out)) == ("logits", ["batch", 10])
    assert [n.op_type for n in model.graph.node] == OPS[name]
    assert model.graph.node[-1].output == ["logits"]


def test_bn_fixture_keeps_a_real_batchnormalization_node():
    model = _load("mnist_cnn_bn_avg")
    conv, bn = model.graph.node[:2]
    inits = _initializers(model)
    assert len(conv.input) == 2  # no conv bias: BatchNormalization's shift is the only one
    assert bn.input[0] == conv.output[0] and len(bn.input) == 5
    scale, shift, mean, var = (inits[k] for k in bn.input[1:])
    assert scale.shape == shift.shape == mean.shape == var.shape == (8,)
    # Trained running statistics, not the identity a freshly built layer would export.
    assert np.all(var > 0) and not np.allclose(var, 1.0) and not np.allclose(mean, 0.0)


def test_transpose_fixture_flattens_in_hwc_order():
    model = _load("mnist_cnn_transpose")
    nodes = {n.op_type: n for n in model.graph.node}
    perm = next(a for a in nodes["Transpose"].attribute if a.name == "perm")
    assert list(perm.ints) == [0, 2, 3, 1]
    assert _initializers(model)[nodes["Reshape"].input[1]].tolist() == [0, -1]
    assert _initializers(model)["fc1.weight"].shape == (32, 12 * 12 * 8)


@pytest.mark.parametrize("name", sorted(OPS))
def test_cnn_fixture_accuracy_matches_its_metadata(name):
    x, y = _split(DATASET[name])
    acc = float((_logits(name, x).argmax(axis=1) == y).mean())
    meta = {p.key: p.value for p in _load(name).metadata_props}
    assert meta["dataset"] == DATASET[name]
    assert meta["test_accuracy"] == f"{acc:.4f}"
    assert acc >= LOSSY_FLOORS.get(name, ACCURACY_FLOOR)


def test_conv6_fixture_has_a_trained_batchnormalization_after_every_bias_free_conv():
    model = _load("mnist_cnn_conv6")
    nodes = list(model.graph.node)
    inits = _initializers(model)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    assert len(convs) == 6
    for i in convs:
        conv, bn = nodes[i], nodes[i + 1]
        assert len(conv.input) == 2 and bn.op_type == "BatchNormalization" and bn.input[0] == conv.output[0]
        var = inits[bn.input[4]]
        assert np.all(var > 0) and not np.allclose(var, 1.0)


@pytest.mark.parametrize("name", sorted(LOSSY_FLOORS))
def test_lossy_cnn_fixture_reads_as_conv_layers_from_its_input(name):
    from onnxcomp.conv import Conv
    from onnxcomp.reader import has_prefix, read

    network = read(MODELS / f"{name}.onnx", conv=True)
    convs = [n.name for n in _load(name).graph.node if n.op_type == "Conv"]
    assert not has_prefix(network)
    assert [layer.source for layer in network.layers if isinstance(layer, Conv) and layer.source in convs] == convs
    assert [layer.source for layer in network.layers if not isinstance(layer, Conv)][0] == "fc1"


def _box_files() -> list[Path]:
    return sorted(BOXES.glob("mnist_cnn_img*_eps*.vnnlib"))


def test_cnn_boxes_are_around_the_first_rows_every_cnn_gets_right(test_split):
    x, y = test_split
    correct = np.logical_and.reduce([_logits(name, x).argmax(axis=1) == y for name in NAMES])
    rows = np.flatnonzero(correct)[:BOX_ROWS]
    expected = sorted(f"mnist_cnn_img{r}_eps{e:g}.vnnlib" for r in rows for e in BOX_EPSILONS)
    assert [p.name for p in _box_files()] == expected


@pytest.mark.parametrize("path", _box_files(), ids=lambda p: p.name)
def test_cnn_box_is_the_clipped_eps_ball_and_its_centre_keeps_the_class(path, test_split):
    x, y = test_split
    row, eps = re.fullmatch(r"mnist_cnn_img(\d+)_eps([0-9.]+)\.vnnlib", path.name).groups()
    row, eps = int(row), float(eps)
    box = parse_domain(str(path), PIXELS)
    assert box.size == PIXELS
    pixel = x[row].astype(np.float64)
    np.testing.assert_array_equal(box.lo, np.clip(pixel - eps, 0.0, 1.0))
    np.testing.assert_array_equal(box.hi, np.clip(pixel + eps, 0.0, 1.0))
    # The output part is VNN-COMP's negated robustness: (>= Y_j Y_label) for every other class j.
    pairs = re.findall(r"\(>= Y_(\d+) Y_(\d+)\)", path.read_text())
    labels = {int(b) for _, b in pairs}
    assert len(pairs) == 9 and len(labels) == 1
    (label,) = labels
    assert label == y[row]
    centre = ((box.lo + box.hi) / 2)[None, :]
    for name in NAMES:
        assert _logits(name, centre).argmax(axis=1)[0] == label, name
