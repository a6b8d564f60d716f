"""Fuzzing the command line with mutated models: whatever a file holds, ``onnxcomp`` exits 0, 1 or 2
and never prints a traceback or an internal error.

Valid fixture models (hand-built MLPs in float32/float64, with Gemm or MatMul+Add, a Softmax/ArgMax
suffix, the committed digits model, a Marabou model with BatchNormalization) are mutated by
hypothesis: initializer and input dims, node attributes, element types, dropped initializers,
dropped / shuffled / re-typed nodes, rewired inputs, and corrupted bytes of the serialized file.
Each mutant goes through ``inspect``, ``run -p sample,bounds,fold`` and ``verify`` in-process
(``onnxcomp.cli.main``), with stderr captured at the file-descriptor level so onnxruntime's own
log lines would show too.  Set ``ONNXCOMP_FUZZ_RANDOM=1`` for fresh random examples (CI runs the
derandomized sequence) and ``ONNXCOMP_FUZZ_DEBUG=1`` to see the traceback of a failing example.

Budget: ~60 examples per test, ~30 s in all.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent / "bad_inputs"))
from make_corpus import mlp  # noqa: E402

from onnxcomp.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=not os.environ.get("ONNXCOMP_FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)


def _with_suffix(model: onnx.ModelProto) -> onnx.ModelProto:
    """The MLP's logits through Softmax (probabilities) and ArgMax (label): two outputs, one int."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    logits = m.graph.output[0].name
    m.graph.node.extend([helper.make_node("Softmax", [logits], ["probs"], axis=1, name="softmax"),
                         helper.make_node("ArgMax", [logits], ["label"], axis=1, keepdims=0, name="argmax")])
    del m.graph.output[:]
    m.graph.output.extend([helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3]),
                           helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])])
    return m


def _matmul_mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    nodes, inits = [], []
    cur = "x"
    for k, (i, o) in enumerate([(4, 6), (6, 3)]):
        inits += [numpy_helper.from_array(rng.standard_normal((i, o)).astype(np.float32), f"W{k}"),
                  numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), f"B{k}")]
        nodes += [helper.make_node("MatMul", [cur, f"W{k}"], [f"m{k}"], name=f"mm{k}"),
                  helper.make_node("Add", [f"m{k}", f"B{k}"], [f"a{k}"], name=f"add{k}")]
        cur = f"a{k}"
        if k == 0:
            nodes.append(helper.make_node("Relu", [cur], ["r0"], name="relu0"))
            cur = "r0"
    nodes.append(helper.make_node("Identity", [cur], ["y"], name="out"))
    graph = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


FIXTURES = {
    "mlp": mlp(widths=(8, 8)),
    "mlp64": mlp(widths=(6,), dtype=np.float64, seed=1),
    "suffix": _with_suffix(mlp(widths=(8,), seed=2)),
    "matmul": _matmul_mlp(),
    "digits": onnx.load(ROOT / "models" / "digits_2x32_l1.onnx"),
    "batchnorm": onnx.load(ROOT / "models" / "external" / "marabou" / "linear2-3_bn1-linear3-1.onnx"),
}

OPS = ["Relu", "Sigmoid", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Identity", "Flatten", "Reshape",
       "Transpose", "Softmax", "Conv", "BatchNormalization", "Cast", "Dropout", "Squeeze", "Unsqueeze",
       "DequantizeLinear", "Gather", "NoSuchOp"]
ELEM_TYPES = [TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.INT8,
              TensorProto.UINT8, TensorProto.BOOL, TensorProto.STRING, TensorProto.BFLOAT16, 0, 999]
ATTR_VALUES = st.one_of(st.integers(-3, 5), st.floats(allow_nan=True, allow_infinity=True, width=32),
                        st.lists(st.integers(-2, 4), min_size=1, max_size=4), st.text(max_size=4))
DIMS = st.lists(st.integers(-2, 12), max_size=4)


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


@st.composite
def mutated_models(draw) -> onnx.ModelProto:
    """A fixture model with 1..3 structural mutations."""
    m = onnx.ModelProto()
    m.CopyFrom(FIXTURES[draw(st.sampled_from(sorted(FIXTURES)))])
    g = m.graph
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["init_dims", "input_dims", "attribute", "elem_type", "init_dtype",
                                     "drop_init", "drop_node", "shuffle", "op_type", "rewire", "init_values"]))
        if kind == "init_dims" and g.initializer:
            t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
            del t.dims[:]
            t.dims.extend(draw(DIMS))
        elif kind == "input_dims" and g.input:
            shape = g.input[0].type.tensor_type.shape
            del shape.dim[:]
            for d in draw(st.lists(st.one_of(st.integers(-1, 70), st.sampled_from(["N", "F", ""])), max_size=4)):
                dim = shape.dim.add()
                if isinstance(d, int):
                    dim.dim_value = d
                elif d:
                    dim.dim_param = d
        elif kind == "attribute" and g.node:
            node = g.node[draw(st.integers(0, len(g.node) - 1))]
            name = draw(st.sampled_from(["transA", "transB", "alpha", "beta", "axis", "perm", "to", "epsilon",
                                         "keepdims", "allowzero", "training_mode", "direction"]))
            _set_attr(node, name, draw(ATTR_VALUES))
        elif kind == "elem_type":
            vis = list(g.input) + list(g.output)
            if vis:
                vis[draw(st.integers(0, len(vis) - 1))].type.tensor_type.elem_type = draw(st.sampled_from(ELEM_TYPES))
        elif kind == "init_dtype" and g.initializer:
            g.initializer[draw(st.integers(0, len(g.initializer) - 1))].data_type = draw(st.sampled_from(ELEM_TYPES))
        elif kind == "drop_init" and g.initializer:
            del g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        elif kind == "drop_node" and g.node:
            del g.node[draw(st.integers(0, len(g.node) - 1))]
        elif kind == "shuffle" and len(g.node) > 1:
            nodes = list(g.node)
            order = draw(st.permutations(range(len(nodes))))
            del g.node[:]
            g.node.extend(nodes[i] for i in order)
        elif kind == "op_type" and g.node:
            g.node[draw(st.integers(0, len(g.node) - 1))].op_type = draw(st.sampled_from(OPS))
        elif kind == "rewire" and g.node:
            node = g.node[draw(st.integers(0, len(g.node) - 1))]
            names = [i.name for i in g.input] + [t.name for t in g.initializer] + [o for n in g.node for o in n.output]
            if node.input and names:
                node.input[draw(st.integers(0, len(node.input) - 1))] = draw(st.sampled_from(names + ["", "ghost"]))
        elif kind == "init_values" and g.initializer:
            t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
            arr = None
            if t.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE):
                try:  # an earlier mutation may have made the tensor inconsistent: leave it then
                    arr = numpy_helper.to_array(t).copy()
                except ValueError:
                    pass
            if arr is not None:
                if arr.size:
                    arr.reshape(-1)[draw(st.integers(0, arr.size - 1))] = draw(
                        st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e38, -1e-45]))
                    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return m


@st.composite
def corrupted_bytes(draw) -> bytes:
    data = bytearray(FIXTURES[draw(st.sampled_from(sorted(FIXTURES)))].SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if how == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif how == "truncate":
            del data[pos:]
        elif how == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
    return bytes(data)


def _features(model_bytes: bytes) -> int | None:
    m = onnx.ModelProto()
    try:
        m.ParseFromString(model_bytes)
        dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    except Exception:
        return None
    return int(np.prod(dims[1:])) if len(dims) >= 2 and all(d > 0 for d in dims[1:]) else None


def check_cli(model_bytes: bytes, capfd) -> None:
    """``inspect``, ``run -p sample,bounds,fold`` and ``verify`` on the bytes: exit 0/1/2, clean stderr."""
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        src = d / "m.onnx"
        src.write_bytes(model_bytes)
        out = d / "out.onnx"
        commands = [
            ["inspect", str(src)],
            ["run", str(src), "-p", "sample,bounds,fold", "--domain", "0:1", "-o", str(out), "--samples", "40",
             "--corners", "4"],
            ["verify", str(src), str(src), "--domain", "0:1", "--samples", "40", "--corners", "4"],
        ]
        for argv in commands:
            capfd.readouterr()
            debug = bool(os.environ.get("ONNXCOMP_FUZZ_DEBUG"))
            code = main(["--debug", *argv] if debug else argv)
            captured = capfd.readouterr()
            assert code in (0, 1, 2), (argv, code, captured.err)
            lines = [line for line in captured.err.splitlines() if line.strip()]
            assert not any("internal error" in line for line in lines), captured.err
            if debug:  # tracebacks are expected then; only the internal errors above count
                continue
            assert not any(line.startswith("Traceback") for line in lines), captured.err
            # Nothing but onnxcomp's own lines (no onnxruntime log spam, no Python warnings).
            assert all(line.startswith("onnxcomp: ") for line in lines), captured.err
            if code == 2:
                assert len(lines) == 1, captured.err
            if argv[0] == "run":
                # A run writes a loadable model exactly when it succeeds, and never leaves temp files.
                assert out.exists() == (code == 0), (code, captured.err)
                if out.exists():
                    onnx.checker.check_model(onnx.load(out))
                    out.unlink()
                assert sorted(p.name for p in d.iterdir()) == ["m.onnx"]


@FUZZ
@given(model=mutated_models())
def test_mutated_models_never_crash_the_cli(model, capfd):
    check_cli(model.SerializeToString(), capfd)


@FUZZ
@given(data=corrupted_bytes())
def test_corrupted_files_never_crash_the_cli(data, capfd):
    check_cli(data, capfd)


def test_the_fixtures_themselves_run(capfd):
    """The unmutated fixtures pass all three commands (else the fuzz tests above would only test refusals)."""
    for name, model in FIXTURES.items():
        with tempfile.TemporaryDirectory() as d:
            src, out = Path(d) / "m.onnx", Path(d) / "o.onnx"
            src.write_bytes(model.SerializeToString())
            assert main(["inspect", str(src)]) == 0, name
            assert main(["run", str(src), "-p", "sample", "--domain", "0:1", "-o", str(out), "--samples", "40"]) == 0, (
                name, capfd.readouterr().err)
            assert main(["verify", str(src), str(out), "--samples", "40"]) == 0, name
