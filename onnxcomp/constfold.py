"""Constant folding: the value of nodes whose inputs are all constants, computed when the model is read.

Exporters that do not fold constants write a weight as ``Transpose(W)`` or ``Cast(W)``; onnxcomp's own
compact weight storage (``storage.py``) decodes bitmask/delta/packed codes in the graph (``BitShift``,
``CumSum``, ``ScatterElements``, ``ConstantOfShape``, ``ReduceSum``); quantizers write ``DequantizeLinear`` of
int8 weights.  The reader needs those weights as arrays, so such nodes are evaluated here with the ONNX
reference runtime, one node at a time, in graph order.  Only deterministic ops whose output size is known
from their inputs before they run are folded, so a small file cannot make the reader allocate a huge
tensor (:func:`fold_size`).
"""

from __future__ import annotations

from math import prod

import numpy as np
import onnx

FOLDABLE = frozenset({
    "Identity", "Cast", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Neg", "Abs", "Sqrt",
    "Reciprocal", "Add", "Sub", "Mul", "Div", "Concat", "Slice", "Gather", "BitShift", "CumSum",
    "ScatterElements", "ConstantOfShape", "Expand", "ReduceSum", "DequantizeLinear",
})
BATCH = 2**40 + 15
"""The value a symbolic batch size takes in a folded ``Shape`` (no real tensor has that many rows): the
reader accepts it as the first entry of a Reshape target (the batch, as ``x.view(x.size(0), -1)`` means)
and nowhere else, and anything computed from it is too large to fold."""
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "BitShift"})
FOLD_MAX_ELEMENTS = 1 << 24
# The ONNX reference runtime implements DequantizeLinear from opset 19 on; version 19 computes what
# versions 10 and 13 compute for their (int8/uint8/int32) inputs, so older nodes are evaluated as 19.
REFERENCE_OPSET = {"DequantizeLinear": 19}


def fold_size(op: str, arrays: list, attrs: dict) -> int | None:
    """Number of elements ``op`` produces from ``arrays`` (an upper bound), or None if unknown."""
    try:
        if op in ELEMENTWISE:
            return int(prod(np.broadcast_shapes(*(a.shape for a in arrays))))
        if op == "Concat":
            return sum(a.size for a in arrays)
        if op == "Gather":
            data, indices = arrays[0], arrays[1]
            axis = int(attrs.get("axis", 0))
            if data.ndim == 0 or not -data.ndim <= axis < data.ndim or data.shape[axis] == 0:
                return None
            return data.size // data.shape[axis] * indices.size
        if op == "ConstantOfShape":
            dims = [int(d) for d in arrays[0].reshape(-1)]
            return int(prod(dims)) if all(d >= 0 for d in dims) else None
        if op == "Expand":
            dims = tuple(int(d) for d in arrays[1].reshape(-1))
            return int(prod(np.broadcast_shapes(arrays[0].shape, dims))) if all(d >= 0 for d in dims) else None
    except (ValueError, TypeError, IndexError):
        return None
    # Every other foldable op returns at most as many elements as its largest input.
    return max((a.size for a in arrays), default=0)


def fold_constant(node: onnx.NodeProto, args: list, opset: int) -> list | None:
    """The outputs of ``node`` evaluated on the constant ``args`` (ONNX reference semantics), or None."""
    if node.op_type not in FOLDABLE or node.domain not in ("", "ai.onnx"):
        return None
    arrays = [np.asarray(a) for a in args]
    size = fold_size(node.op_type, arrays, {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute})
    if size is None or size > FOLD_MAX_ELEMENTS:
        return None
    if node.op_type == "CumSum" and len(arrays) > 1 and arrays[1].size == 1:
        arrays[1] = arrays[1].reshape(())  # onnxruntime accepts a 1-element axis; the spec says 0-d
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if name else "" for i, name in enumerate(node.input)]
    feeds = {n: a for n, a in zip([n for n in names if n], arrays)}
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
              for n, a in feeds.items()]
    outs = [f"out{i}" for i in range(len(node.output))]
    one = onnx.helper.make_node(node.op_type, names, outs, domain=node.domain)
    one.attribute.extend(node.attribute)
    graph = onnx.helper.make_graph([one], "fold", inputs, [onnx.helper.make_empty_tensor_value_info(o) for o in outs])
    opset = max(opset, REFERENCE_OPSET.get(node.op_type, 0))
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        return list(ReferenceEvaluator(model).run(None, feeds))
    except Exception:  # an op the reference runtime cannot evaluate on these values: not a constant then
        return None


def fold_constants(model: onnx.ModelProto, consts: dict, shapes: dict | None = None) -> set[int]:
    """Evaluate, in graph order, every node of ``model`` whose inputs are all in ``consts`` (and that
    :func:`fold_constant` can evaluate); their outputs are added to ``consts``.  ``shapes`` (inferred
    tensor shapes): a ``Shape`` of a tensor whose shape is fully static is a constant too (an exporter's
    ``x.view(x.size(0), -1)`` with a fixed batch).  Returns the indices of the folded nodes."""
    opset = max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] or [13])
    folded: set[int] = set()
    for i, node in enumerate(model.graph.node):
        if node.op_type == "Shape" and shapes and node.domain in ("", "ai.onnx"):
            dims = shapes.get(node.input[0])
            # a symbolic batch axis (axis 0) stands as BATCH: only a Reshape target may use it, and only there
            dims = None if dims is None else [BATCH if a == 0 and not isinstance(d, int) else d for a, d in enumerate(dims)]
            if dims is not None and all(isinstance(d, int) and d > 0 for d in dims):
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                start, end = int(attrs.get("start", 0)), attrs.get("end")
                consts[node.output[0]] = np.asarray(dims[start:None if end is None else int(end)], dtype=np.int64)
                folded.add(i)
            continue
        if node.op_type == "Constant" or not node.input or not all(n in consts for n in node.input if n):
            continue
        values = fold_constant(node, [consts[n] for n in node.input if n], opset)
        if values is not None and len(values) == len(node.output):
            folded.add(i)
            consts.update({name: v for name, v in zip(node.output, values) if name})
    return folded
