"""The bad-input corpus (``tests/bad_inputs/make_corpus.py``) through the real command line.

Every case runs ``python -m onnxcomp ...`` in a subprocess and must: exit 2, print exactly one line
on stderr (``onnxcomp: error: ...`` naming the file, node or flag), print no traceback, write nothing
(its output folder stays empty, no temp file appears anywhere in the corpus) and leave every input
byte-for-byte as it was, with the same mtime.

Below the corpus: inputs that look unusual but are supported end to end (float64 models, several
outputs fed by one chain, an unsupported op in the middle of a network, an integer-only output, a
model stamped with an IR version onnxruntime does not know, onnxcomp's own compressed files, and
weight-only DequantizeLinear models written by quantizers).

Budget: about 1.4 s of CPU per subprocess (interpreter + imports); ~100 subprocesses, ~70 s on the
two CI workers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent / "bad_inputs"))
from make_corpus import mlp, make_corpus, save  # noqa: E402

from onnxcomp.runtime import cuda_available  # noqa: E402

pytestmark = pytest.mark.slow  # end to end (subprocesses, solvers); `make test-fast` leaves these out

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DIGITS_DATA = MODELS / "data" / "digits_calib.npz"

# The corpus is written once per test process at import, so the case names can parametrize the test.
_WORK = Path(tempfile.mkdtemp(prefix="onnxcomp-bad-inputs-"))
CORPUS = _WORK / "corpus"
CASES = {c.name: c for c in make_corpus(CORPUS)}


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    shutil.rmtree(_WORK, ignore_errors=True)


def onnxcomp(*args, cwd=None, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder``: content hash and mtime of files (symlinks as their target)."""
    state = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            state[str(p)] = ("link", str(p.readlink()))
        elif p.is_file():
            st = p.stat()
            state[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_size)
        else:
            state[str(p)] = ("dir",)
    return state


BEFORE = snapshot(CORPUS)


def test_the_corpus_has_at_least_30_cases_with_distinct_refusals():
    assert len(CASES) >= 30
    # Each case names what is wrong; no two cases are the same refusal of the same file.
    keys = {(tuple(c.args), tuple(c.expect)) for c in CASES.values()}
    assert len(keys) == len(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_refused_in_one_line(name, tmp_path):
    case = CASES[name]
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, stderr = onnxcomp(*case.argv(CORPUS, out), cwd=case.cwd.replace("{d}", str(CORPUS)))
    if case.needs_no_cuda and cuda_available():
        # On a machine where CUDA loads the same command line is valid and must simply work.
        assert code == 0, stderr
        assert (out / "o.onnx").is_file()
        return
    lines = stderr.strip().splitlines()
    assert code == case.code, f"exit {code}\n{stderr}"
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("onnxcomp: error: "), line
    assert "Traceback" not in stderr and "internal error" not in line
    for fragment in case.fragments(CORPUS, out):
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert "wrote" not in stdout
    # Nothing written: the case's output folder is empty and nothing appeared (or changed) in the corpus.
    assert list(out.iterdir()) == []
    assert snapshot(CORPUS) == BEFORE


# ---- unusual but supported -----------------------------------------------------------------------

def run_ok(*args, cwd=None):
    code, stdout, stderr = onnxcomp(*args, cwd=cwd)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    return stdout, stderr


def ort_run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def test_float64_model_is_compiled_end_to_end(tmp_path):
    src, out = tmp_path / "f64.onnx", tmp_path / "f64_small.onnx"
    save(mlp(n_in=6, widths=(16, 16), n_out=4, dtype=np.float64, seed=3), src)
    report = tmp_path / "r.json"
    run_ok("run", src, "-p", "stable", "--domain", "0:1", "-o", out, "--report", report, "--samples", "2000")
    model = onnx.load(out)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    assert all(t.data_type == TensorProto.DOUBLE for t in model.graph.initializer)
    x = np.random.default_rng(0).uniform(0, 1, (256, 6))
    (y_src,), (y_out,) = ort_run(src, x), ort_run(out, x)
    assert y_out.dtype == np.float64
    # Folding stable neurons in float64 reassociates sums: agreement far below float32 rounding.
    assert np.max(np.abs(y_src - y_out)) <= 1e-9 * max(1.0, np.max(np.abs(y_src)))
    assert json.loads(report.read_text())["verification"]["passed"] is True


def test_several_outputs_fed_by_one_chain_sklearn_label_and_probabilities(tmp_path):
    src = MODELS / "digits_mlp_sklearn.onnx"
    out = tmp_path / "sk.onnx"
    run_ok("run", src, "-p", "stable", "--domain", "0:1", "-o", out, "--samples", "2000")
    model = onnx.load(out)
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    x = np.load(DIGITS_DATA)["x"][:200].astype(np.float32)
    ref, new = ort_run(src, x), ort_run(out, x)
    assert np.array_equal(ref[0], new[0])  # the integer label
    assert np.allclose(ref[1], new[1], atol=1e-5)


def test_unsupported_op_in_the_middle_ends_the_chain_and_is_kept(tmp_path):
    """Gemm Relu Gemm | Sigmoid | Gemm Relu Gemm: the chain is one side, the rest is kept opaque."""
    rng = np.random.default_rng(5)
    inits, nodes, cur = [], [], "input"
    for k, (i, o) in enumerate([(4, 8), (8, 6), (6, 8), (8, 3)]):
        inits += [numpy_helper.from_array(rng.standard_normal((o, i)).astype(np.float32), f"W{k}"),
                  numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), f"B{k}")]
        nodes.append(helper.make_node("Gemm", [cur, f"W{k}", f"B{k}"], [f"g{k}"], transB=1, name=f"fc{k}"))
        cur = f"g{k}"
        if k in (0, 2):
            nodes.append(helper.make_node("Relu", [cur], [f"r{k}"], name=f"relu{k}"))
            cur = f"r{k}"
        if k == 1:
            nodes.append(helper.make_node("Sigmoid", [cur], ["s"], name="squash"))
            cur = "s"
    nodes.append(helper.make_node("Identity", [cur], ["y"], name="out"))
    graph = helper.make_graph(nodes, "split", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializer=inits)
    src, out = tmp_path / "split.onnx", tmp_path / "split_out.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), src)
    code, stdout, stderr = onnxcomp("inspect", "--json", src)
    assert code == 0, stderr
    info = json.loads(stdout)
    assert len(info["chain"]["layers"]) == 2 and "Sigmoid" in info["suffix_ops"] + info["prefix_ops"]
    run_ok("run", src, "-p", "sample", "--domain", "-1:1", "-o", out, "--samples", "1000")
    x = rng.uniform(-1, 1, (64, 4)).astype(np.float32)
    assert np.allclose(ort_run(src, x)[0], ort_run(out, x)[0], atol=1e-5)


def test_model_whose_only_output_is_an_integer_label(tmp_path):
    m = mlp(widths=(8, 8), seed=2)
    m.graph.node.append(helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0, name="argmax"))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]))
    src, out = tmp_path / "labels.onnx", tmp_path / "labels_out.onnx"
    save(m, src)
    stdout, _ = run_ok("run", src, "-p", "stable", "--domain", "0:1", "-o", out, "--samples", "2000")
    assert "PASSED" in stdout
    x = np.random.default_rng(1).uniform(0, 1, (500, 4)).astype(np.float32)
    assert np.array_equal(ort_run(src, x)[0], ort_run(out, x)[0])


def test_model_stamped_with_an_ir_version_onnxruntime_does_not_know(tmp_path):
    """onnx.helper.make_model stamps the newest IR version; onnxruntime may refuse to load it."""
    src, out = tmp_path / "new_ir.onnx", tmp_path / "new_ir_out.onnx"
    save(mlp(ir_version=None), src)
    assert onnx.load(src).ir_version == onnx.IR_VERSION
    run_ok("run", src, "-p", "stable", "--domain", "0:1", "-o", out, "--samples", "1000")
    ort_run(out, np.zeros((2, 4), np.float32))  # the output loads in onnxruntime as it is


def _lossy(tmp_path, name, *flags):
    out = tmp_path / f"{name}.onnx"
    run_ok("run", MODELS / "digits_2x32_l1.onnx", *flags, "--data", DIGITS_DATA, "-o", out)
    return out


@pytest.mark.parametrize("name,flags", [
    ("lap80", ("-p", "lap", "--sparsity", "0.8")),
    ("kmeans4", ("-p", "quantize", "--bits", "4")),
    ("int8", ("-p", "quantize", "--quant", "int8")),
])
def test_onnxcomps_compressed_outputs_can_be_read_again(tmp_path, name, flags):
    """A pruned or quantized file stores its weights through small decoder subgraphs (storage.py);
    the reader evaluates them, so ``inspect`` and a further exact ``run`` work on it."""
    small = _lossy(tmp_path, name, *flags)
    decoders = {n.op_type for n in onnx.load(small).graph.node} - {"Gemm", "Relu"}
    assert decoders, "the lossy file should store its weights compactly"
    code, stdout, stderr = onnxcomp("inspect", "--json", small)
    assert code == 0, stderr
    info = json.loads(stdout)
    assert [layer["out"] for layer in info["chain"]["layers"]] == [32, 32, 10]
    assert info["prefix_ops"] == [] and info["suffix_ops"] == []
    # The folded weights are the ones onnxruntime computes: an exact re-run verifies with zero error.
    again = tmp_path / f"{name}_again.onnx"
    stdout, _ = run_ok("run", small, "-p", "stable", "--domain", "0:1", "-o", again, "--samples", "2000",
                       "--atol", "1e-6", "--rtol", "1e-6")
    x = np.load(DIGITS_DATA)["x"][:300].astype(np.float32)
    assert np.allclose(ort_run(small, x)[0], ort_run(again, x)[0], atol=1e-5)
    if name == "lap80":
        nonzero = sum(layer["nonzero"] for layer in info["chain"]["layers"])
        assert nonzero < 0.3 * info["summary"]["params"]


def _weight_only_qdq(opset: int) -> onnx.ModelProto:
    """MatMul layers whose weights are DequantizeLinear(int8, per-channel scale): the form weight-only
    quantizers (onnxruntime's QDQ format, NNCF, Olive) write."""
    rng = np.random.default_rng(0)
    nodes, inits, cur = [], [], "input"
    for k, (i, o) in enumerate([(6, 8), (8, 3)]):
        inits += [numpy_helper.from_array(rng.integers(-127, 128, (i, o)).astype(np.int8), f"q{k}"),
                  numpy_helper.from_array((rng.random(o) * 0.01 + 0.001).astype(np.float32), f"s{k}"),
                  numpy_helper.from_array(np.zeros(o, np.int8), f"z{k}"),
                  numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), f"b{k}")]
        nodes.append(helper.make_node("DequantizeLinear", [f"q{k}", f"s{k}", f"z{k}"], [f"w{k}"], axis=1,
                                      name=f"dq{k}"))
        nodes.append(helper.make_node("MatMul", [cur, f"w{k}"], [f"m{k}"], name=f"mm{k}"))
        out = "y" if k == 1 else "h0"
        nodes.append(helper.make_node("Add", [f"m{k}", f"b{k}"], [out], name=f"add{k}"))
        if k == 0:
            nodes.append(helper.make_node("Relu", ["h0"], ["r0"], name="relu0"))
            cur = "r0"
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8 if opset < 19 else 9)


@pytest.mark.parametrize("opset", [13, 21])
def test_weight_only_dequantize_linear_models_load_and_compile_exactly(tmp_path, opset):
    src, out = tmp_path / "qdq.onnx", tmp_path / "qdq_out.onnx"
    model = _weight_only_qdq(opset)
    onnx.checker.check_model(model)
    save(model, src)
    code, stdout, stderr = onnxcomp("inspect", "--json", src)
    assert code == 0, stderr
    layers = json.loads(stdout)["chain"]["layers"]
    assert [(layer["in"], layer["out"]) for layer in layers] == [(6, 8), (8, 3)]
    stdout, _ = run_ok("run", src, "-p", "stable", "--domain", "-1:1", "-o", out, "--samples", "2000",
                       "--atol", "1e-6", "--rtol", "1e-6")
    assert "PASSED" in stdout
    # The lowered weights are the dequantized ones: (q - zero point) * scale per output channel.
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w0 = (init["q0"].astype(np.float32) - init["z0"]) * init["s0"]
    x = np.random.default_rng(2).uniform(-1, 1, (50, 6)).astype(np.float32)
    h = np.maximum(x @ w0 + init["b0"], 0)
    w1 = (init["q1"].astype(np.float32) - init["z1"]) * init["s1"]
    assert np.allclose(ort_run(out, x)[0], h @ w1 + init["b1"], atol=1e-5)
