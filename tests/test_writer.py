"""Writer: the emitted model keeps the original's interface (names, shapes, dynamic batch, dtype,
opset, metadata), loads in the installed onnxruntime, and computes what the IR computes."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from builders import GraphBuilder, assert_same, mlp, round_trip, run_ort
from onnxcomp import __version__
from onnxcomp.api import compress
from onnxcomp.ir import Dense, Network
from onnxcomp.onnxio import load_model
from onnxcomp.reader import lower, read
from onnxcomp.writer import PRE_PREFIX, max_ir_version, save_atomic, to_model

ROOT = Path(__file__).resolve().parents[1]


def _io(model):
    def dims(vi):
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]

    inits = {t.name for t in model.graph.initializer}
    ins = [(i.name, i.type.tensor_type.elem_type, dims(i)) for i in model.graph.input if i.name not in inits]
    outs = [(o.name, o.type.tensor_type.elem_type, dims(o)) for o in model.graph.output]
    return ins, outs


@pytest.mark.parametrize("path", [
    "models/digits_2x32_l1.onnx",
    "models/digits_mlp_sklearn.onnx",
    "models/external/acasxu/ACASXU_run2a_1_1_batch_2000.onnx",
    "models/external/mnistfc/mnist-net_256x2.onnx",
    "models/external/marabou/fc1.onnx",
    "models/external/marabou/mnist2x10.onnx",
    "models/external/vnncomp-test/test_small.onnx",
    "models/external/oval21/cifar_base_kw.onnx",
])
def test_interface_opset_and_ir_version_are_kept(path):
    src = load_model(ROOT / path)
    out = to_model(lower(src))
    assert _io(out) == _io(src)
    opsets = {o.domain: o.version for o in out.opset_import}
    for o in src.opset_import:
        if o.domain not in ("", "ai.onnx") and o.domain in opsets:
            assert opsets[o.domain] == o.version
    assert opsets[""] == max(o.version for o in src.opset_import if o.domain in ("", "ai.onnx"))
    assert 4 <= out.ir_version <= max_ir_version()
    onnx.checker.check_model(out, full_check=True)
    ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])


def test_symbolic_batch_name_survives():
    model = mlp(4, [5], 3, batch="batch_size")
    out = to_model(lower(model))
    assert _io(out)[0][0][2] == ["batch_size", 4]
    assert _io(out)[1][0][2] == ["batch_size", 3]
    x = np.random.default_rng(0).uniform(-1, 1, (17, 4)).astype(np.float32)
    y = ort.InferenceSession(out.SerializeToString()).run(None, {"input": x})[0]
    assert y.shape == (17, 3)


def test_old_ir_model_gets_a_loadable_ir_and_no_initializer_inputs():
    model = mlp(4, [5], 3, initializers_as_inputs=True)
    out = to_model(lower(model))
    assert out.ir_version >= 4
    assert [i.name for i in out.graph.input] == ["input"]


def test_metadata_is_kept_and_provenance_added():
    g = GraphBuilder(("N", 4))
    model = g.build(g.gemm(g.relu(g.gemm(g.input, 3)), 2), metadata={"dataset": "toy", "owner": "me"})
    model.producer_name = "exporter"
    out = to_model(lower(model), metadata={"passes": "stable", "domain": '{"lo":0,"hi":1}'})
    meta = {p.key: p.value for p in out.metadata_props}
    assert meta["dataset"] == "toy" and meta["owner"] == "me"
    assert meta["onnxcomp.version"] == __version__
    assert meta["onnxcomp.passes"] == "stable"
    assert meta["onnxcomp.domain"] == '{"lo":0,"hi":1}'
    assert meta["onnxcomp.source_producer"] == "exporter"
    assert out.producer_name == "onnxcomp"


def test_rewriting_an_onnxcomp_file_replaces_its_old_provenance():
    model = to_model(lower(mlp(4, [5], 3)), metadata={"passes": "stable", "stable": "{}"})
    again = to_model(lower(model), metadata={"passes": "lap"})
    meta = {p.key: p.value for p in again.metadata_props}
    assert meta["onnxcomp.passes"] == "lap"
    assert "onnxcomp.stable" not in meta


def test_emits_gemm_transB_and_relu_only_for_the_chain():
    out = round_trip(mlp(4, [5, 6], 3, form="matmul", weight_left=True))[1]
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("Gemm") == 3 and ops.count("Relu") == 2 and "MatMul" not in ops
    assert all({a.name: a.i for a in n.attribute}.get("transB") == 1 for n in out.graph.node if n.op_type == "Gemm")


def test_float64_model_end_to_end(tmp_path):
    src = tmp_path / "f64.onnx"
    onnx.save(mlp(6, [8, 8], 3, dtype=np.float64, seed=4), src)
    dst = tmp_path / "out.onnx"
    result = compress(str(src), "", domain="-1:1", samples=200, corners=64)
    result.save(dst)
    result = result.verification
    assert result.passed and result.max_abs_err <= 1e-12 * max(1.0, result.output_scale)
    out = onnx.load(dst)
    assert _io(out) == _io(onnx.load(src))
    assert all(t.data_type == TensorProto.DOUBLE for t in out.graph.initializer)
    x = np.random.default_rng(0).uniform(-1, 1, (50, 6))
    y = ort.InferenceSession(str(dst)).run(None, {"input": x})[0]
    assert y.dtype == np.float64
    assert_same(y, read(src).forward(x), rtol=1e-12)


def test_changed_weights_are_what_onnxruntime_computes():
    net = lower(mlp(4, [6, 5], 3, seed=2))
    rng = np.random.default_rng(5)
    layers = [replace(layer, weight=rng.standard_normal(layer.weight.shape), bias=rng.standard_normal(layer.n_out))
              for layer in net.layers]
    new = net.with_layers(layers)
    x = rng.uniform(-1, 1, (40, 4))
    assert_same(run_ort(to_model(new), x)[0], new.forward(x), what="changed weights")


def test_narrower_hidden_layer_inside_a_prefix_and_suffix():
    # Conv prefix + Softmax suffix; a dead neuron is removed and a live one rescaled (ReLU is
    # positively homogeneous): same function, different widths and weights.
    g = GraphBuilder(("N", 1, 6, 6), seed=3)
    h = g.flatten(g.relu(g.conv(g.input, 2)))
    h = g.softmax(g.gemm(g.relu(g.gemm(h, 5)), 3))
    model = g.build(h)
    net = lower(model)
    first, last = net.layers
    bias = first.bias.copy()
    bias[4] = -1e6
    dead = replace(first, bias=bias)
    net = net.with_layers([dead, last])
    keep = [0, 1, 2, 3]
    w1 = dead.weight[keep] * np.array([[2.0], [1.0], [1.0], [1.0]])
    b1 = dead.bias[keep] * np.array([2.0, 1.0, 1.0, 1.0])
    w2 = last.weight[:, keep] * np.array([[0.5, 1.0, 1.0, 1.0]])
    narrow = net.with_layers([Dense(w1, b1, "relu", neuron_ids=keep), Dense(w2, last.bias, "linear")])
    x = np.random.default_rng(0).uniform(0, 1, (30, 36))
    wide_out, narrow_out = to_model(net), to_model(narrow)
    assert narrow.widths == [4]
    assert_same(run_ort(wide_out, x)[0], run_ort(narrow_out, x)[0])
    assert [n.op_type for n in narrow_out.graph.node][:2] == ["Conv", "Relu"]
    assert narrow_out.graph.node[-1].op_type == "Softmax"


def test_standalone_network_gets_a_batched_input_and_output():
    net = Network((Dense(np.eye(3), np.zeros(3), "relu"), Dense(np.ones((2, 3)), np.array([1.0, -1.0]), "linear")), 3)
    out = to_model(net)
    assert _io(out) == ([("input", TensorProto.FLOAT, ["batch", 3])], [("output", TensorProto.FLOAT, ["batch", 2])])
    x = np.array([[1.0, -2.0, 3.0], [0.5, 0.5, -1.0]], dtype=np.float32)
    y = ort.InferenceSession(out.SerializeToString()).run(None, {"input": x})[0]
    np.testing.assert_allclose(y, net.forward(x), rtol=1e-6)


@pytest.mark.parametrize("shape", [("N", 4), (4,)])
def test_exposed_preactivations_match_the_ir(shape):
    g = GraphBuilder(shape, seed=1)
    left = len(shape) == 1
    h = g.relu(g.matmul(g.input, 5, weight_left=left))
    h = g.matmul(g.relu(g.matmul(h, 6, weight_left=left)), 2, weight_left=left)
    net = lower(g.build(h))
    out = to_model(net, expose_preactivations=True)
    names = [o.name for o in out.graph.output]
    assert names[0] == h and len(names) == 4 and all(n.startswith(PRE_PREFIX) for n in names[1:])
    x = np.random.default_rng(2).uniform(-1, 1, (7, 4))
    outs = run_ort(out, x)
    _, pres = net.forward(x, preactivations=True)
    for got, want in zip(outs[1:], pres):
        assert_same(got, want)
    assert_same(outs[0], net.forward(x))


def test_save_atomic_writes_exact_bytes_and_leaves_no_temp_file(tmp_path):
    data = to_model(lower(mlp(4, [5], 3))).SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    assert save_atomic(data, path) == len(data)
    assert path.read_bytes() == data
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_save_atomic_failure_leaves_no_temp_file(tmp_path):
    # The rename onto a non-empty directory fails after the temp file was written.
    target = tmp_path / "m.onnx"
    target.mkdir()
    (target / "keep").write_bytes(b"x")
    with pytest.raises(OSError):
        save_atomic(b"new model bytes", target)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
    assert (target / "keep").read_bytes() == b"x"


@pytest.fixture
def umask():
    """Set the process umask for one test, restored after it."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_save_atomic_gives_a_new_file_the_mode_open_would(tmp_path, umask, mask):
    umask(mask)
    plain = tmp_path / "plain.bin"
    with open(plain, "wb") as fh:
        fh.write(b"x")
    saved = tmp_path / "saved.onnx"
    save_atomic(b"model bytes", saved)
    mode = os.stat(saved).st_mode & 0o7777
    assert mode == 0o666 & ~mask == os.stat(plain).st_mode & 0o7777
    assert os.listdir(tmp_path) and not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_save_atomic_keeps_the_mode_of_the_file_it_replaces(tmp_path, umask, mask):
    umask(mask)
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    save_atomic(b"new", target)
    assert target.read_bytes() == b"new" and os.stat(target).st_mode & 0o7777 == 0o640


def test_reports_and_models_written_by_a_run_get_the_umask_mode(tmp_path, umask):
    umask(0o027)
    result = compress(str(ROOT / "models/digits_2x32_l1.onnx"), "", domain="0:1", samples=100, corners=4)
    result.save(tmp_path / "o.onnx")
    result.save_report(tmp_path / "r.json")
    assert {os.stat(tmp_path / n).st_mode & 0o7777 for n in ("o.onnx", "r.json")} == {0o640}
