"""Runtime: device choice (CUDA only when it really loads, quiet fallback to CPU) and the batched
``Runner`` on every input layout (symbolic batch, fixed batch 1 and B, 1-D input)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from builders import GraphBuilder, assert_same, mlp, run_ort
from onnxcomp.errors import InputError
from onnxcomp.runtime import CPU, CUDA, Runner, cuda_available, providers, session

ROOT = Path(__file__).resolve().parents[1]


def test_auto_uses_cuda_only_when_it_loads():
    expected = [CUDA, CPU] if cuda_available() else [CPU]
    assert providers("auto") == expected
    assert session(mlp(4, [5], 3), "auto").get_providers()[0] == expected[0]
    assert providers("cpu") == [CPU]
    if CUDA not in ort.get_available_providers():
        assert not cuda_available()


def test_device_cuda_without_cuda_is_an_input_error():
    if cuda_available():
        assert providers("cuda") == [CUDA, CPU]
        assert session(mlp(4, [5], 3), "cuda").get_providers()[0] == CUDA
    else:
        with pytest.raises(InputError, match="--device cuda: .*CUDA execution provider does not load"):
            providers("cuda")
        with pytest.raises(InputError):
            session(mlp(4, [5], 3), "cuda")


def test_unknown_device_is_an_input_error():
    with pytest.raises(InputError, match="--device 'tpu': expected one of auto, cpu, cuda"):
        providers("tpu")


def test_auto_session_prints_nothing_on_stderr():
    # A fresh interpreter: the CUDA probe runs for the first time there, as it does for a user.
    code = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "import numpy as np\n"
        "from builders import mlp\n"
        "from onnxcomp.runtime import Runner, session\n"
        "s = session(mlp(4, [5], 3), 'auto')\n"
        "r = Runner.create(mlp(4, [5], 3), 'auto')\n"
        "print(r.run(np.ones((3, 4)))[0].shape)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.strip() == "(3, 3)"
    assert proc.stderr == ""


def test_broken_model_is_one_input_error_line():
    g = GraphBuilder(("N", 4))
    model = g.build(g.gemm(g.input, 3))
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(InputError) as info:
        session(model, "cpu")
    assert str(info.value).startswith("onnxruntime cannot load the model") and "\n" not in str(info.value)


@pytest.mark.parametrize("batch_size", [1, 5, 4096])
def test_symbolic_batch_runs_in_batches(batch_size):
    model = mlp(6, [8], 3, dtype=np.float64)
    x = np.random.default_rng(0).uniform(-1, 1, (23, 6))
    runner = Runner.create(model)
    assert runner.batchable and runner.np_dtype == np.float64
    batches = list(runner.iter_batches(x, batch_size))
    assert len(batches) == -(-23 // batch_size)
    assert_same(runner.run(x, batch_size)[0], run_ort(model, x)[0], rtol=1e-15)


def test_fixed_batch_one_is_batched_when_proven_equal():
    model = load(ROOT / "models/external/acasxu/ACASXU_run2a_1_1_batch_2000.onnx")
    runner = Runner.create(model)
    assert runner.batchable and runner.sample_shape == (1, 1, 5)
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (40, 5))
    assert_same(runner.run(x)[0], run_ort(model, x)[0])


def test_fixed_batch_one_that_cannot_batch_runs_one_sample_per_call():
    # Reshape to a hard-coded [1, 6]: a symbolic-batch copy cannot take 3 samples at once.
    g = GraphBuilder((1, 2, 3))
    h = g.reshape(g.input, [1, 6])
    model = g.build(g.gemm(g.relu(g.gemm(h, 4)), 2))
    runner = Runner.create(model)
    assert not runner.batchable
    x = np.random.default_rng(2).uniform(-1, 1, (7, 6))
    assert_same(runner.run(x)[0], run_ort(model, x)[0])


def test_fixed_batch_larger_than_one_is_fed_in_padded_groups():
    # Each of the 2 batch rows gets its own offset, so samples must keep their position in a group.
    g = GraphBuilder((2, 4))
    h = g.elementwise(g.input, "Add", np.arange(8.0).reshape(2, 4))
    model = g.build(g.gemm(h, 3))
    runner = Runner.create(model)
    assert runner.group == 2 and not runner.batchable
    x = np.random.default_rng(3).uniform(-1, 1, (5, 4))
    padded = np.vstack([x, x[-1:]])
    assert_same(runner.run(x)[0], run_ort(model, padded)[0][:5])


def test_one_dimensional_input_runs_sample_by_sample():
    model = load(ROOT / "models/external/vnncomp-test/test_small.onnx")
    runner = Runner.create(model)
    assert not runner.has_batch and runner.features == 1
    x = np.linspace(-1, 1, 9)[:, None]
    assert_same(runner.run(x)[0], run_ort(model, x)[0])


def test_outputs_with_the_batch_on_another_axis_come_back_sample_major():
    g = GraphBuilder(("N", 4))
    y = g.gemm(g.relu(g.gemm(g.input, 5, weight_left=True, transB=1)), 3, weight_left=True, transB=0)
    model = g.build(y)
    x = np.random.default_rng(4).uniform(-1, 1, (6, 4)).astype(np.float32)
    cols = ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})[0]
    assert cols.shape == (3, 6)
    assert_same(Runner.create(model).run(x)[0], cols.T)


def test_empty_input_gives_empty_outputs():
    runner = Runner.create(mlp(4, [5], 3))
    assert runner.run(np.empty((0, 4)))[0].shape[0] == 0


def load(path):
    from onnxcomp.onnxio import load_model

    return load_model(path)


def test_float64_model_keeps_float64_precision():
    # Div by a scalar before MatMul: onnxruntime would fuse it into a float32 alpha by default.
    g = GraphBuilder(("N", 1), dtype=np.float64)
    c, w = 1.4554425309821815, 0.6404226504432821
    model = g.build(g.matmul(g.elementwise(g.input, "Div", c), 1, bias=False, weight=[[w]]))
    x = np.array([[1.0], [2.0], [-3.0]])
    got = Runner.create(model).run(x)[0]
    np.testing.assert_allclose(got, x / c * w, rtol=1e-15)
