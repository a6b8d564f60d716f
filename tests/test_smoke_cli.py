"""End-to-end smoke test of the README's first command (a verified round trip)."""

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

pytestmark = pytest.mark.slow  # end to end (subprocesses, solvers); `make test-fast` leaves these out


def test_round_trip_command_writes_an_equivalent_model(tmp_path, repo_root):
    out = tmp_path / "out.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "onnxcomp", "run", str(repo_root / "models/digits_2x32_l1.onnx"), "--domain", "0:1",
         "-o", str(out)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "PASSED" in proc.stdout
    x = np.random.default_rng(0).uniform(0, 1, (64, 64)).astype(np.float32)
    a = ort.InferenceSession(str(repo_root / "models/digits_2x32_l1.onnx")).run(None, {"input": x})[0]
    b = ort.InferenceSession(str(out)).run(None, {"input": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
