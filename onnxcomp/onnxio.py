"""Loading ONNX files safely: every way a file can be broken becomes one ``InputError`` line.

Shared by the reader (lowering) and by ``verify`` (which compares files it does not lower).
"""

from __future__ import annotations

import os
from math import prod
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .errors import InputError
from .storage import sparse_to_dense

# Element types we can run; float16/bfloat16 models are refused with a clear message.
SUPPORTED_FLOAT = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}

_FIELD_FOR_TYPE = {
    TensorProto.FLOAT: "float_data",
    TensorProto.DOUBLE: "double_data",
    TensorProto.INT64: "int64_data",
    TensorProto.UINT64: "uint64_data",
    TensorProto.STRING: "string_data",
}


_KNOWN_TYPES = frozenset(v for v in TensorProto.DataType.values() if v != TensorProto.UNDEFINED)


def elem_type_name(elem_type: int) -> str:
    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"type {elem_type}"


def check_path(path: str | os.PathLike, what: str = "model") -> Path:
    """Refuse missing files, directories and empty files with one line naming the path."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected an ONNX {what} file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: empty file")
    return p


def _declared_count(t: TensorProto, name: str) -> int:
    n = 1
    for d in t.dims:
        if d < 0:
            raise InputError(f"{name}: initializer '{t.name}' has a negative dimension {list(t.dims)}")
        n *= int(d)
    return n


# Element types packed several to a byte (bits per value); their count is checked on raw data only.
_PACKED_BITS = {getattr(TensorProto, n): b for n, b in (("UINT4", 4), ("INT4", 4), ("FLOAT4E2M1", 4), ("UINT2", 2),
                                                        ("INT2", 2), ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6))
                if hasattr(TensorProto, n)}


def _held_count(t: TensorProto, declared: int) -> int | None:
    """How many values the tensor actually carries (None for external data, checked elsewhere, and
    for packed sub-byte types not stored as raw bytes)."""
    if t.data_location == TensorProto.EXTERNAL:
        return None
    bits = _PACKED_BITS.get(t.data_type)
    if bits is not None:
        if not t.HasField("raw_data"):
            return None
        return declared if len(t.raw_data) == -(-declared * bits // 8) else len(t.raw_data) * 8 // bits
    if t.HasField("raw_data"):
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        return len(t.raw_data) // max(itemsize, 1)
    field = _FIELD_FOR_TYPE.get(t.data_type, "int32_data")
    if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
        return len(getattr(t, _FIELD_FOR_TYPE.get(t.data_type, "float_data"))) // 2
    return len(getattr(t, field))


def _check_external_data(model: onnx.ModelProto, base: Path, name: str) -> None:
    """External data must live inside the model's folder (no absolute paths, no '..' escapes)."""
    base_resolved = base.resolve()
    for t in _all_tensors(model):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if not loc:
            raise InputError(f"{name}: initializer '{t.name}' is stored externally but names no location")
        target = (base / loc).resolve()
        if os.path.isabs(loc) or (base_resolved != target and base_resolved not in target.parents):
            raise InputError(
                f"{name}: initializer '{t.name}' points to external data '{loc}' outside the model's folder (refused)"
            )
        if not target.is_file():
            raise InputError(f"{name}: external data file '{loc}' of initializer '{t.name}' is missing")
        length = int(info.get("length", "0") or 0)
        offset = int(info.get("offset", "0") or 0)
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        need = _declared_count(t, name) * itemsize
        have = target.stat().st_size - offset
        if (length and length != need) or have < need:
            raise InputError(
                f"{name}: initializer '{t.name}' declares {need} bytes but its external data holds {max(have, 0)}"
            )


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read, validate and return an ONNX model; any defect is one ``InputError`` line."""
    p = check_path(path)
    name = str(p)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{name}: cannot read ({exc.strerror})") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # protobuf raises DecodeError or RuntimeError depending on backend
        raise InputError(f"{name}: not an ONNX model (protobuf parse error)") from None
    return check_model(model, name, p.parent)


def check_model(model: onnx.ModelProto, name: str = "model", folder: Path | None = None) -> onnx.ModelProto:
    """Validate a model (read from a file in ``folder``, or built in memory); any defect is one
    ``InputError`` line naming ``name``.  External data is loaded from ``folder``."""
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise InputError(f"{name}: not an ONNX model (no graph)")
    for t in _all_tensors(model):
        if t.data_type not in _KNOWN_TYPES:
            raise InputError(f"{name}: initializer '{t.name}' has unknown element type {t.data_type}")
        declared = _declared_count(t, name)
        held = _held_count(t, declared)
        if held is not None and held != declared and not (held == 0 and t.data_type == TensorProto.STRING):
            raise InputError(
                f"{name}: initializer '{t.name}' declares shape {list(t.dims)} ({declared} values) but holds {held}"
            )
    if folder is not None:
        _check_external_data(model, folder, name)
        try:
            onnx.load_external_data_for_model(model, str(folder))
        except Exception as exc:
            raise InputError(f"{name}: cannot load external data ({exc})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        # The checker's message may span lines (it prints the node); one line, of bounded length.
        text = " ".join(str(exc).split()) or type(exc).__name__
        text = text if len(text) <= 300 else text[:297] + "..."
        raise InputError(f"{name}: invalid ONNX model: {text}") from None
    _check_unique_names(model, name)
    return model


def _check_unique_names(model: onnx.ModelProto, name: str) -> None:
    seen: set[str] = set()
    for node in model.graph.node:
        if node.name and node.name in seen:
            raise InputError(f"{name}: duplicate node name '{node.name}'")
        seen.add(node.name)
    produced: set[str] = set(i.name for i in model.graph.input) | set(t.name for t in model.graph.initializer)
    for node in model.graph.node:
        for out in node.output:
            if out and out in produced:
                raise InputError(f"{name}: tensor '{out}' is produced twice (node '{node.name or node.op_type}')")
            produced.add(out)


SPARSE_DENSIFY_MAX = 1 << 26
"""Largest sparse initializer (in elements) made dense to be read as a constant."""


def constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every tensor whose value is fixed: initializers (dense or sparse) and outputs of Constant nodes."""
    values: dict[str, np.ndarray] = {}
    for t in model.graph.initializer:
        values[t.name] = numpy_helper.to_array(t)
    for sp in model.graph.sparse_initializer:
        # A COO weight (onnxcomp writes pruned layers so) is densified, unless that would be huge.
        if prod(int(d) for d in sp.dims) <= SPARSE_DENSIFY_MAX:
            values[sp.values.name] = sparse_to_dense(sp)
    for node in model.graph.node:
        if node.op_type != "Constant" or not node.output:
            continue
        attr = {a.name: a for a in node.attribute}
        if "value" in attr:
            values[node.output[0]] = numpy_helper.to_array(attr["value"].t)
        elif "value_float" in attr:
            values[node.output[0]] = np.array(attr["value_float"].f, dtype=np.float32)
        elif "value_floats" in attr:
            values[node.output[0]] = np.array(list(attr["value_floats"].floats), dtype=np.float32)
        elif "value_int" in attr:
            values[node.output[0]] = np.array(attr["value_int"].i, dtype=np.int64)
        elif "value_ints" in attr:
            values[node.output[0]] = np.array(list(attr["value_ints"].ints), dtype=np.int64)
    return values


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (old IR versions list initializers as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def value_shape(vi: onnx.ValueInfoProto) -> tuple:
    """Dims of a value info: int for fixed, str for symbolic, None for unknown."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return ()
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)
