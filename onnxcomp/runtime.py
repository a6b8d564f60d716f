"""The one place onnxruntime sessions are made and run.

* CUDA is used only when its execution provider really loads (probed once, quietly); otherwise CPU,
  with no error lines on a machine without a GPU.  ``device`` is ``auto``, ``cpu`` or ``cuda``.
* ``Runner`` feeds a model flattened samples (N, features) in batches, reshaping them to the model
  input.  Models whose input has a fixed batch of 1 are run with a symbolic batch when that is
  proven to give the same outputs on a probe, else one sample per call; a fixed batch B > 1 gets
  B samples per call (the last call padded).
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper

from .errors import InputError
from .onnxio import SUPPORTED_FLOAT, real_inputs, value_shape

if TYPE_CHECKING:
    import onnxruntime as ort

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def _ort():
    """onnxruntime, imported on first use: ``inspect``, ``passes`` and the help need no session, and the
    import is a tenth of their start-up."""
    import onnxruntime

    return onnxruntime


def _quiet_options() -> ort.SessionOptions:
    ort = _ort()
    so = ort.SessionOptions()
    # Fatal only: every error onnxruntime raises becomes onnxcomp's own one-line message, so its log
    # line for the same error (severity 3) would only say it twice, in another format.
    so.log_severity_level = 4
    # onnxruntime rewrites DequantizeLinear(int8 weight) -> MatMul into MatMulNBits, which by default
    # quantizes the activations to int8 as well (accuracy level 4): the model then computes ~0.5%
    # away from what its graph says, and no equivalence check against it could pass.  Level 1 keeps
    # the activations in float32, as the ONNX semantics of the graph do.
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    if os.environ.get("ONNXCOMP_WORKER") == "1":  # a worker process of onnxcomp.workers: one core each
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
    return so


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when onnxruntime's CUDA execution provider actually loads here (not just is listed)."""
    ort = _ort()
    if CUDA not in ort.get_available_providers():
        return False
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    ort.set_default_logger_severity(4)  # a failed CUDA load would otherwise print error lines
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=[CUDA, CPU])
        return sess.get_providers()[0] == CUDA
    except Exception:
        return False
    finally:
        ort.set_default_logger_severity(3)


def providers(device: str = "auto") -> list[str]:
    if device not in DEVICES:
        raise InputError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    if device == "cpu":
        return [CPU]
    if cuda_available():
        return [CUDA, CPU]
    if device == "cuda":
        raise InputError("--device cuda: onnxruntime's CUDA execution provider does not load on this machine")
    return [CPU]


# onnxruntime's MatMulScaleFusion folds a Mul/Div by a scalar into FusedMatMul's ``alpha``, a float32
# attribute: a float64 model then loses precision down to float32 (seen with onnxruntime 1.31).
_FLOAT64_UNSAFE_OPTIMIZERS = ["MatMulScaleFusion"]


def _has_float64_input(model: onnx.ModelProto) -> bool:
    inputs = real_inputs(model)
    return bool(inputs) and inputs[0].type.tensor_type.elem_type == TensorProto.DOUBLE


def session(model: onnx.ModelProto | bytes, device: str = "auto", spinning: bool = True) -> ort.InferenceSession:
    """An inference session on the chosen device; ``InputError`` if onnxruntime refuses the model.

    Float64 models are run without the optimizers that would round their constants to float32.
    ``spinning=False`` stops onnxruntime's worker threads from spinning after a run: for callers that
    do their own numpy work between runs (activation sampling), which spinning threads would slow down.
    """
    if isinstance(model, bytes):
        data, m = model, None
    else:
        data, m = model.SerializeToString(), model
    if m is None:
        m = onnx.ModelProto()
        try:
            m.ParseFromString(data)
        except Exception:
            m = None
    if m is not None and m.ir_version > _max_ir_version():
        # onnx.helper stamps the newest IR version, which onnxruntime may not know yet although the
        # graph uses nothing of it; the IR version says how the file is laid out, not what ops compute
        # (that is the opset), so the model runs stamped with the newest version onnxruntime loads.
        # A graph that really needs the newer IR still fails below, on the feature it needs.
        m2 = onnx.ModelProto()
        m2.CopyFrom(m)
        m2.ir_version = _max_ir_version()
        m, data = m2, m2.SerializeToString()
    disabled = _FLOAT64_UNSAFE_OPTIMIZERS if m is not None and _has_float64_input(m) else None
    provs = providers(device)
    options = _quiet_options()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return _ort().InferenceSession(data, options, providers=provs, disabled_optimizers=disabled)
    except Exception as exc:
        raise InputError(f"onnxruntime cannot load the model: {ort_message(exc)}") from None


def _max_ir_version() -> int:
    from .writer import max_ir_version

    return max_ir_version()


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_CPP_LOCATION = re.compile(r"^/\S+:\d+ .*?\) (?=[A-Z])")


def ort_message(exc: Exception) -> str:
    """The first line of an onnxruntime error without its status code and C++ source location."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    first = _ORT_PREFIX.sub("", first)
    return _CPP_LOCATION.sub("", first) or first


def _with_dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy whose input (and outputs) have a symbolic first dimension instead of a fixed 1."""
    inp = real_inputs(model)[0]
    shape = value_shape(inp)
    if len(shape) < 2 or shape[0] != 1:
        return None
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.name == inp.name or (len(dims) >= 1 and dims[0].HasField("dim_value") and dims[0].dim_value == 1):
            if len(dims) >= 1:
                dims[0].dim_param = "onnxcomp_batch"
    del m.graph.value_info[:]
    return m


@dataclass
class Runner:
    """Runs one model on flattened samples, in batches, returning every graph output.

    ``group`` is how many samples one call must get: 1 for a 1-D input (no batch axis) or when the
    model runs batched, else the fixed batch size of the input (a last partial group is padded with
    copies of its last sample, whose outputs are dropped).  ``output_batch_axes[j]`` is the axis of
    output ``j`` that carries the samples (the input's symbolic batch dim when it appears elsewhere
    than axis 0, e.g. a [classes, N] output); outputs are returned as (N, -1) in sample order.
    """

    sess: ort.InferenceSession
    input_name: str
    sample_shape: tuple  # shape of one sample (without the batch axis when there is one)
    has_batch: bool
    batchable: bool
    np_dtype: type
    output_names: list
    group: int = 1
    output_batch_axes: tuple = ()

    @classmethod
    def create(cls, model: onnx.ModelProto, device: str = "auto", output_names: list | None = None,
               spinning: bool = True) -> "Runner":
        inp = real_inputs(model)[0]
        shape = value_shape(inp)
        elem = inp.type.tensor_type.elem_type
        np_dtype = SUPPORTED_FLOAT.get(elem, np.float32)
        has_batch = len(shape) >= 2
        sample_shape = tuple(shape[1:]) if has_batch else tuple(shape)
        names = output_names or [o.name for o in model.graph.output]
        batchable = has_batch and not (isinstance(shape[0], int))
        group = shape[0] if has_batch and isinstance(shape[0], int) and shape[0] > 1 else 1
        axes = _output_batch_axes(model, names, shape[0] if has_batch else None)
        sess = None
        if has_batch and shape[0] == 1:
            dyn = _with_dynamic_batch(model)
            if dyn is not None:
                try:
                    sess = session(dyn, device, spinning)
                    batchable = True
                except InputError:
                    sess = None
        if sess is None:
            sess = session(model, device, spinning)
        runner = cls(sess, inp.name, sample_shape, has_batch, batchable, np_dtype, names, group, axes)
        if batchable and has_batch and isinstance(shape[0], int):
            # The graph was written for batch 1: trust the batched copy only if it agrees.
            if not runner._batched_agrees():
                runner.sess, runner.batchable = session(model, device, spinning), False
        return runner

    @property
    def features(self) -> int:
        return int(prod(self.sample_shape)) if self.sample_shape else 1

    def _batched_agrees(self) -> bool:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((3, self.features))
        try:
            together = self._run(x)
            apart = [self._run(x[i : i + 1]) for i in range(3)]
        except Exception:
            return False
        for j in range(len(together)):
            joined = np.concatenate([a[j] for a in apart], axis=0)
            if joined.shape != together[j].shape or not np.allclose(joined, together[j], rtol=1e-5, atol=1e-6):
                return False
        return True

    def _call(self, feed: np.ndarray) -> list:
        try:
            return self.sess.run(self.output_names, {self.input_name: feed})
        except Exception as exc:  # a model that loads but cannot compute (shapes clash at run time)
            raise InputError(f"onnxruntime cannot run the model: {ort_message(exc)}") from None

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        feed = x.astype(self.np_dtype, copy=False).reshape((x.shape[0],) + self.sample_shape)
        outs = self._call(feed)
        result = []
        for j, o in enumerate(outs):
            o = np.asarray(o)
            axis = self.output_batch_axes[j] if j < len(self.output_batch_axes) else 0
            if o.ndim > axis > 0 and o.shape[axis] == x.shape[0]:
                o = np.moveaxis(o, axis, 0)
            if o.size % x.shape[0] or (o.ndim == 0 and x.shape[0] > 1):
                raise InputError(f"output '{self.output_names[j]}' has shape {list(o.shape)} for a batch of "
                                 f"{x.shape[0]} samples: onnxcomp needs the same number of outputs for every sample")
            result.append(o.reshape(x.shape[0], -1) if o.ndim >= 1 else o.reshape(1, 1))
        return result

    def run(self, x: np.ndarray, batch_size: int = 4096) -> list[np.ndarray]:
        """All outputs for samples ``x`` (N, features), each reshaped to (N, -1)."""
        parts = list(self.iter_batches(x, batch_size))
        if not parts:
            return [np.empty((0, 0)) for _ in self.output_names]
        return [np.concatenate([p[j] for p in parts], axis=0) for j in range(len(self.output_names))]

    def iter_batches(self, x: np.ndarray, batch_size: int = 4096) -> Iterator[list[np.ndarray]]:
        x = np.asarray(x).reshape(-1, self.features)
        if self.batchable:
            for start in range(0, x.shape[0], batch_size):
                yield self._run(x[start : start + batch_size])
        elif not self.has_batch:
            for i in range(x.shape[0]):
                yield self._run_single(x[i])
        else:
            for start in range(0, x.shape[0], self.group):
                part = x[start : start + self.group]
                n = part.shape[0]
                if n < self.group:
                    part = np.concatenate([part, np.repeat(part[-1:], self.group - n, axis=0)])
                yield [o[:n] for o in self._run(part)]

    def _run_single(self, row: np.ndarray) -> list[np.ndarray]:
        feed = row.astype(self.np_dtype).reshape(self.sample_shape)
        outs = self._call(feed)
        return [np.asarray(o).reshape(1, -1) for o in outs]


def _output_batch_axes(model: onnx.ModelProto, names: list, batch) -> tuple:
    """For each output, the axis holding the input's symbolic batch dim (0 when absent or unknown)."""
    if not isinstance(batch, str):
        return tuple(0 for _ in names)
    shapes = {o.name: value_shape(o) for o in model.graph.output}
    axes = []
    for name in names:
        dims = shapes.get(name, ())
        axes.append(dims.index(batch) if batch in dims and dims.count(batch) == 1 else 0)
    return tuple(axes)
