"""Write the bad-input corpus: broken models, data, domains and flag combinations a user can hand
to ``onnxcomp``, each with the one-line refusal it must produce.

Every file is generated here (nothing hand-edited, nothing committed): run

    python tests/bad_inputs/make_corpus.py DIR

to write the files into DIR and print the cases, or call :func:`make_corpus` from a test.  A case is
a command line (placeholders: ``{d}`` the corpus folder, ``{out}`` an empty folder of the case's own
that must stay empty) and the fragments its single ``onnxcomp: error:`` line must contain (file,
node or flag named).  Unless a case says otherwise it must exit 2, print no traceback, write nothing
and leave every input file as it was.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits_2x32_l1.onnx"
"""A valid fixture model (64 inputs, hidden 32/32, 10 logits) that most data/flag cases use."""


@dataclass
class Case:
    """One command line and what its error line must say."""

    name: str
    args: list
    expect: list
    code: int = 2
    cwd: str = "{d}"
    needs_no_cuda: bool = False
    """The case is a refusal only where onnxruntime's CUDA provider does not load."""

    def argv(self, d: Path, out: Path) -> list[str]:
        return [str(a).replace("{d}", str(d)).replace("{out}", str(out)) for a in self.args]

    def fragments(self, d: Path, out: Path) -> list[str]:
        return [str(f).replace("{d}", str(d)).replace("{out}", str(out)) for f in self.expect]


# ---- model builders ------------------------------------------------------------------------------

def mlp(n_in: int = 4, widths=(8,), n_out: int = 3, *, dtype=np.float32, input_shape=None, seed: int = 0,
        opset: int = 13, ir_version: int | None = 8, input_name: str = "input", output_name: str = "logits",
        tweak=None) -> onnx.ModelProto:
    """Gemm(transB=1)+Relu layers named fc0/relu0/...; ``tweak(weights)`` may edit the weight list
    (a list of [W, b] numpy pairs) before the model is built."""
    rng = np.random.default_rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    sizes = [n_in, *widths, n_out]
    weights = [[rng.standard_normal((o, i)).astype(dtype), rng.standard_normal(o).astype(dtype)]
               for i, o in zip(sizes[:-1], sizes[1:])]
    if tweak is not None:
        tweak(weights)
    nodes, inits, cur = [], [], input_name
    for k, (w, b) in enumerate(weights):
        inits += [numpy_helper.from_array(w, f"W{k}"), numpy_helper.from_array(b, f"B{k}")]
        last = k == len(weights) - 1
        out = output_name if last else f"h{k}"
        nodes.append(helper.make_node("Gemm", [cur, f"W{k}", f"B{k}"], [out], transB=1, name=f"fc{k}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"a{k}"], name=f"relu{k}"))
            out = f"a{k}"
        cur = out
    x = helper.make_tensor_value_info(input_name, elem, list(input_shape or ["N", n_in]))
    y = helper.make_tensor_value_info(output_name, elem, ["N", n_out])
    graph = helper.make_graph(nodes, "mlp", [x], [y], initializer=inits)
    kwargs = {} if ir_version is None else {"ir_version": ir_version}
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kwargs)


def graph_model(nodes, inputs, outputs, inits=(), opset: int = 13, extra_opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def save(model: onnx.ModelProto, path: Path) -> None:
    # Raw bytes: onnx.save would refuse or rewrite some of the deliberately broken models.
    path.write_bytes(model.SerializeToString())


def vnnlib(n: int, body: str) -> str:
    decl = "".join(f"(declare-const X_{i} Real)\n" for i in range(n))
    return decl + "(declare-const Y_0 Real)\n" + body


def box_asserts(n: int, lo: float = 0.0, hi: float = 1.0, skip_upper=()) -> str:
    out = []
    for i in range(n):
        out.append(f"(assert (>= X_{i} {lo}))")
        if i not in skip_upper:
            out.append(f"(assert (<= X_{i} {hi}))")
    return "\n".join(out) + "\n"


# ---- the corpus ----------------------------------------------------------------------------------

def _models(d: Path) -> list[Case]:
    cases: list[Case] = []
    dom = ["--domain", "0:1"]

    def run_case(name, model_file, expect, extra=(), **kw):
        cases.append(Case(name, ["run", f"{{d}}/{model_file}", *dom, *extra, "-o", "{out}/o.onnx"], expect, **kw))

    good = DIGITS.read_bytes()
    (d / "digits.onnx").write_bytes(good)

    # Files that are not ONNX models at all.
    (d / "truncated.onnx").write_bytes(good[: len(good) // 2 + 3])
    run_case("truncated_protobuf", "truncated.onnx", ["truncated.onnx", "not an ONNX model"])
    (d / "garbage.onnx").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    run_case("garbage_protobuf", "garbage.onnx", ["garbage.onnx", "not an ONNX model"])
    # A PNG signature + IHDR chunk: what a mis-typed path in a pipeline hands over.
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02\x00\x00\x00\x90\x91h6"
    (d / "picture.png").write_bytes(png)
    run_case("png_file", "picture.png", ["picture.png", "not an ONNX model"])
    (d / "notes.txt").write_text("name,value\nlayers,3\n")
    run_case("text_file", "notes.txt", ["notes.txt", "not an ONNX model"])
    (d / "empty.onnx").write_bytes(b"")
    run_case("empty_file", "empty.onnx", ["empty.onnx", "empty file"])
    (d / "a_folder.onnx").mkdir()
    run_case("directory_as_model", "a_folder.onnx", ["a_folder.onnx", "is a directory"])
    run_case("missing_file", "nowhere.onnx", ["nowhere.onnx", "no such file"])
    cases.append(Case("inspect_missing_file", ["inspect", "{d}/nowhere.onnx"], ["nowhere.onnx", "no such file"]))
    # A valid protobuf message that is not a model (a TensorProto).
    save(numpy_helper.from_array(np.ones(3, np.float32), "t"), d / "tensor.onnx")
    run_case("protobuf_not_a_model", "tensor.onnx", ["tensor.onnx", "not an ONNX model"])

    # Graphs onnxcomp cannot lower.
    x4 = vi("input", TensorProto.FLOAT, ["N", 4])
    save(graph_model([helper.make_node("Sigmoid", ["input"], ["y"], name="squash")], [x4],
                     [vi("y", TensorProto.FLOAT, ["N", 4])]), d / "no_chain.onnx")
    run_case("no_lowerable_chain", "no_chain.onnx", ["no_chain.onnx", "no lowerable", "Sigmoid node 'squash'"])
    # The Gemm's weight comes out of Sin (not a constant onnxcomp evaluates): the chain cannot start.
    c = numpy_helper.from_array(np.ones((3, 4), np.float32), "C")
    save(graph_model([helper.make_node("Sin", ["C"], ["W"], name="weight_fn"),
                      helper.make_node("Gemm", ["input", "W"], ["y"], transB=1, name="fc")],
                     [x4], [vi("y", TensorProto.FLOAT, ["N", 3])], [c]), d / "op_blocks_chain.onnx")
    run_case("unsupported_op_leaves_no_chain", "op_blocks_chain.onnx",
             ["op_blocks_chain.onnx", "Gemm node 'fc'", "not a constant"])
    # A custom-domain op where the chain would start.
    save(graph_model([helper.make_node("FancyNorm", ["input"], ["z"], name="custom", domain="com.example"),
                      helper.make_node("Sigmoid", ["z"], ["y"], name="squash")],
                     [x4], [vi("y", TensorProto.FLOAT, ["N", 4])], extra_opsets=[("com.example", 1)]),
         d / "custom_domain.onnx")
    run_case("custom_domain_op", "custom_domain.onnx", ["custom_domain.onnx", "FancyNorm node 'custom'"])
    save(mlp(input_shape=["N", "F"]), d / "dynamic_features.onnx")
    run_case("dynamic_feature_dim", "dynamic_features.onnx", ["dynamic_features.onnx", "'F'", "axis 1"])
    save(mlp(input_shape=["N", 0]), d / "zero_dim.onnx")
    run_case("zero_size_input_dim", "zero_dim.onnx", ["zero_dim.onnx", "dimension 0"])
    save(mlp(dtype=np.float16), d / "float16.onnx")
    run_case("float16_model", "float16.onnx", ["float16.onnx", "float16", "float32 and float64"])

    def put(value, layer=0, part=0):
        def tweak(ws):
            ws[layer][part].reshape(-1)[1] = value
        return tweak

    save(mlp(tweak=put(np.nan)), d / "nan_weight.onnx")
    run_case("nan_weight", "nan_weight.onnx", ["nan_weight.onnx", "Gemm node 'fc0'", "NaN or Inf", "'W0'"])
    save(mlp(tweak=put(np.inf, layer=1, part=1)), d / "inf_bias.onnx")
    run_case("inf_bias", "inf_bias.onnx", ["inf_bias.onnx", "Gemm node 'fc1'", "NaN or Inf", "'B1'"])

    def wrong_width(ws):
        ws[1][0] = ws[1][0][:, :5].copy()  # fc1 takes 5 features, fc0 gives 8

    save(mlp(tweak=wrong_width), d / "gemm_mismatch.onnx")
    run_case("gemm_shape_mismatch", "gemm_mismatch.onnx", ["gemm_mismatch.onnx", "(fc1)", "Dimension mismatch"])

    # Finite constants whose product overflows once folded (input scaling 1e200 x weights 1e200).
    m = mlp(dtype=np.float64, tweak=lambda ws: ws[0][0].__imul__(1e200))
    m.graph.node.insert(0, helper.make_node("Mul", ["input", "scale"], ["scaled"], name="normalise"))
    m.graph.node[1].input[0] = "scaled"
    m.graph.initializer.append(numpy_helper.from_array(np.array(1e200), "scale"))
    save(m, d / "overflow.onnx")
    run_case("weights_overflow_when_folded", "overflow.onnx", ["overflow.onnx", "layer 0", "'fc0'", "non-finite"])

    m = mlp()
    m.graph.node[2].name = "fc0"
    save(m, d / "duplicate_node_names.onnx")
    run_case("duplicate_node_names", "duplicate_node_names.onnx",
             ["duplicate_node_names.onnx", "duplicate node name 'fc0'"])
    m = mlp(widths=(8, 8))
    m.graph.node[3].output[0] = "a0"  # relu1 writes the tensor relu0 already wrote
    m.graph.node[4].input[0] = "a0"
    save(m, d / "duplicate_tensor.onnx")
    run_case("duplicate_tensor_names", "duplicate_tensor.onnx", ["duplicate_tensor.onnx", "'a0'"])
    m = mlp(widths=(8, 8))
    m.graph.node.reverse()
    save(m, d / "unsorted.onnx")
    run_case("nodes_not_topologically_sorted", "unsorted.onnx",
             ["unsorted.onnx", "invalid ONNX model", "sorted", "name: fc2 OpType: Gemm"])

    two = graph_model([helper.make_node("Add", ["a", "b"], ["s"], name="join"),
                       helper.make_node("Gemm", ["s", "W"], ["y"], transB=1, name="fc")],
                      [vi("a", TensorProto.FLOAT, ["N", 4]), vi("b", TensorProto.FLOAT, ["N", 4])],
                      [vi("y", TensorProto.FLOAT, ["N", 3])],
                      [numpy_helper.from_array(np.ones((3, 4), np.float32), "W")])
    save(two, d / "two_inputs.onnx")
    run_case("multiple_inputs", "two_inputs.onnx", ["two_inputs.onnx", "2 inputs", "a, b"])
    cases.append(Case("inspect_multiple_inputs", ["inspect", "{d}/two_inputs.onnx"], ["two_inputs.onnx", "2 inputs"]))
    cases.append(Case("verify_multiple_inputs", ["verify", "{d}/two_inputs.onnx", "{d}/two_inputs.onnx", *dom],
                      ["two_inputs.onnx", "2 inputs"]))

    # Initializers that lie about their data.
    m = mlp()
    huge = onnx.TensorProto(name="W0", data_type=TensorProto.FLOAT, dims=[100000, 100000])
    m.graph.initializer[0].CopyFrom(huge)
    save(m, d / "huge_absent.onnx")
    run_case("huge_initializer_absent", "huge_absent.onnx", ["huge_absent.onnx", "'W0'", "[100000, 100000]", "holds 0"])
    m = mlp()
    m.graph.initializer[0].dims[0] = -8
    save(m, d / "negative_dim.onnx")
    run_case("negative_initializer_dim", "negative_dim.onnx", ["negative_dim.onnx", "'W0'", "negative dimension"])

    # The external-data models live in a subfolder so that '../x' still points inside the corpus.
    (d / "ext").mkdir()

    def external(location: str, fname: str) -> None:
        m = mlp()
        t = m.graph.initializer[0]
        t.ClearField("raw_data")
        del t.float_data[:]
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", "0"), ("length", str(8 * 4 * 4))):
            t.external_data.add(key=k, value=v)
        save(m, d / "ext" / fname)

    (d / "outside_secret.bin").write_bytes(np.ones(32, np.float32).tobytes())
    external("../outside_secret.bin", "ext_traversal.onnx")
    run_case("external_data_path_traversal", "ext/ext_traversal.onnx",
             ["ext_traversal.onnx", "'W0'", "../outside_secret.bin", "outside the model's folder"])
    external("/etc/hostname", "ext_absolute.onnx")
    run_case("external_data_absolute_path", "ext/ext_absolute.onnx", ["ext_absolute.onnx", "/etc/hostname", "outside"])
    external("weights.bin", "ext_missing.onnx")
    run_case("external_data_missing", "ext/ext_missing.onnx", ["ext_missing.onnx", "weights.bin", "missing"])

    # Versions onnxruntime cannot run: an opset from the future, and an IR version it refuses.
    save(mlp(opset=99), d / "opset_too_new.onnx")
    run_case("opset_too_new", "opset_too_new.onnx", ["opset_too_new.onnx", "opset"])
    save(mlp(ir_version=onnx.IR_VERSION + 5), d / "ir_too_new.onnx")
    run_case("ir_version_unknown_to_onnx", "ir_too_new.onnx", ["ir_too_new.onnx", f"ir_version {onnx.IR_VERSION + 5}"])
    return cases


def _data_and_domains(d: Path) -> list[Case]:
    cases: list[Case] = []
    rng = np.random.default_rng(0)
    model = "{d}/digits.onnx"
    base = ["run", model, "-o", "{out}/o.onnx"]

    def case(name, extra, expect, **kw):
        cases.append(Case(name, base + list(extra), expect, **kw))

    good = rng.random((40, 64)).astype(np.float32)
    np.save(d / "x_good.npy", good)
    np.save(d / "y_good.npy", rng.integers(0, 10, 40))
    np.save(d / "x_10_features.npy", rng.random((40, 10)).astype(np.float32))
    case("data_wrong_feature_count", ["--data", "{d}/x_10_features.npy"],
         ["--data", "x_10_features.npy", "10 features", "takes 64"])
    np.save(d / "x_strings.npy", np.array([["a"] * 64] * 3))
    case("data_wrong_dtype", ["--data", "{d}/x_strings.npy"], ["--data", "x_strings.npy", "not numeric"])
    bad = good.copy()
    bad[7, 3] = np.nan
    np.save(d / "x_nan.npy", bad)
    case("data_nan", ["--data", "{d}/x_nan.npy"], ["--data", "x_nan.npy", "row 7", "NaN"])
    np.save(d / "x_zero_rows.npy", np.zeros((0, 64), np.float32))
    case("data_zero_rows", ["--data", "{d}/x_zero_rows.npy"], ["--data", "x_zero_rows.npy", "no rows"])
    (d / "x_corrupt.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    case("data_corrupt_npy", ["--data", "{d}/x_corrupt.npy"], ["--data", "x_corrupt.npy", "cannot read"])
    (d / "x.csv").write_text("0,1\n")
    case("data_csv", ["--data", "{d}/x.csv"], ["--data", "x.csv", ".npy or .npz"])
    np.savez(d / "x_two_arrays.npz", a=good, b=good)
    case("data_npz_without_x", ["--data", "{d}/x_two_arrays.npz"], ["--data", "x_two_arrays.npz", "'x'"])
    case("data_missing", ["--data", "{d}/x_nowhere.npy"], ["--data", "x_nowhere.npy", "no such file"])
    np.save(d / "y_short.npy", np.zeros(39, np.int64))
    case("labels_wrong_length", ["--data", "{d}/x_good.npy", "--labels", "{d}/y_short.npy"],
         ["--labels", "y_short.npy", "39 labels for 40"])
    np.save(d / "y_fractional.npy", np.full(40, 0.5))
    case("labels_not_whole", ["--data", "{d}/x_good.npy", "--labels", "{d}/y_fractional.npy"],
         ["--labels", "y_fractional.npy", "whole"])
    np.save(d / "y_negative.npy", np.full(40, -1))
    case("labels_negative", ["--data", "{d}/x_good.npy", "--labels", "{d}/y_negative.npy"],
         ["--labels", "y_negative.npy", "negative"])

    # Domains.
    case("domain_lo_above_hi", ["--domain", "1:0"], ["--domain 1:0", "lo > hi"])
    case("domain_nan", ["--domain", "nan:1"], ["--domain nan:1", "NaN"])
    case("domain_unbounded_range", ["--domain=-inf:1"], ["--domain -inf:1", "unbounded"])
    case("domain_not_a_range", ["--domain", "zero-to-one"], ["--domain zero-to-one", "LO:HI"])
    np.savez(d / "box_3.npz", lo=np.zeros(3), hi=np.ones(3))
    case("domain_wrong_length", ["--domain", "{d}/box_3.npz"], ["box_3.npz", "3 inputs", "takes 64"])
    np.savez(d / "box_nan.npz", lo=np.zeros(64), hi=np.r_[np.ones(63), np.nan])
    case("domain_npz_nan", ["--domain", "{d}/box_nan.npz"], ["box_nan.npz", "input 63", "NaN"])
    np.savez(d / "box_keys.npz", low=np.zeros(64), high=np.ones(64))
    case("domain_npz_without_lo_hi", ["--domain", "{d}/box_keys.npz"], ["box_keys.npz", "'lo' and 'hi'"])
    (d / "no_bounds.vnnlib").write_text(vnnlib(64, "(assert (<= Y_0 0.0))\n"))
    case("vnnlib_no_input_bounds", ["--domain", "{d}/no_bounds.vnnlib"], ["no_bounds.vnnlib", "no input bounds"])
    (d / "unbounded.vnnlib").write_text(vnnlib(64, box_asserts(64, skip_upper=(5,))))
    case("vnnlib_unbounded_input", ["--domain", "{d}/unbounded.vnnlib"], ["unbounded.vnnlib", "X_5", "unbounded"])
    (d / "syntax.vnnlib").write_text(vnnlib(64, box_asserts(64) + "(assert (<= X_0 1.0)\n"))
    case("vnnlib_syntax_error", ["--domain", "{d}/syntax.vnnlib"], ["syntax.vnnlib", "unbalanced"])
    (d / "five_inputs.vnnlib").write_text(vnnlib(5, box_asserts(5)))
    case("vnnlib_wrong_input_count", ["--domain", "{d}/five_inputs.vnnlib"], ["five_inputs.vnnlib", "5 inputs", "64"])
    (d / "empty_box.vnnlib").write_text(vnnlib(64, box_asserts(64) + "(assert (>= X_3 2.0))\n"))
    case("vnnlib_empty_box", ["--domain", "{d}/empty_box.vnnlib"], ["empty_box.vnnlib", "empty"])
    (d / "binary.vnnlib").write_bytes(b"\xff\xfe\x00(\x00d")
    case("vnnlib_not_text", ["--domain", "{d}/binary.vnnlib"], ["binary.vnnlib", "cannot read"])
    return cases


def _flags(d: Path) -> list[Case]:
    cases: list[Case] = []
    model = "{d}/digits.onnx"
    base = ["run", model, "-o", "{out}/o.onnx"]
    data = ["--data", "{d}/x_good.npy"]

    def case(name, extra, expect, **kw):
        cases.append(Case(name, base + list(extra), expect, **kw))

    case("unknown_pass", ["-p", "stable,shrinkwrap", "--domain", "0:1"], ["unknown pass 'shrinkwrap'", "available:"])
    case("sparsity_with_max_drop", ["-p", "lap", "--sparsity", "0.5", "--max-drop", "1", *data,
                                    "--labels", "{d}/y_good.npy"], ["--sparsity", "--max-drop"])
    case("max_drop_without_labels", ["-p", "lap", "--max-drop", "1", *data], ["--max-drop", "labels"])
    case("labels_without_data", ["--domain", "0:1", "--labels", "{d}/y_good.npy"], ["--labels", "--data"])
    case("budget_on_exact_passes", ["-p", "sample", "--min-agreement", "99", *data], ["--min-agreement", "lossy pass"])
    case("no_domain_no_data", [], ["--domain or --data"])
    case("stable_without_domain", ["-p", "stable", *data], ["'bounds'", "--domain"])
    case("sparsity_out_of_range", ["-p", "lap", "--sparsity", "1.5", *data], ["--sparsity"])
    case("bits_out_of_range", ["-p", "quantize", "--bits", "9", *data], ["--bits"])
    case("unknown_granularity", ["-p", "lap", "--sparsity", "0.5", "--granularity", "block", *data], ["--granularity"])
    case("unknown_quant", ["-p", "quantize", "--bits", "4", "--quant", "fp4", *data], ["--quant"])
    case("unknown_lap_variant", ["-p", "lap", "--sparsity", "0.5", "--lap-variant", "sideways", *data],
         ["--lap-variant"])
    case("unknown_solver", ["-p", "stable", "--domain", "0:1", "--solver", "cplex"], ["--solver", "cplex"])
    case("unknown_stability_method", ["-p", "stable", "--domain", "0:1", "--stability-method", "magic"],
         ["--stability-method", "magic"])
    case("unknown_device", ["--domain", "0:1", "--device", "tpu"], ["--device", "tpu"])
    case("cuda_without_cuda", ["--domain", "0:1", "--device", "cuda"], ["--device cuda"], needs_no_cuda=True)
    case("samples_negative", ["--domain", "0:1", "--samples", "-5"], ["--samples"])
    case("threads_zero", ["-p", "stable", "--domain", "0:1", "--threads", "0"], ["--threads"])
    case("time_limit_zero", ["-p", "stable", "--domain", "0:1", "--time-limit", "0"], ["--time-limit"])
    case("atol_negative", ["--domain", "0:1", "--atol", "-1"], ["--atol"])
    case("seed_not_a_number", ["--domain", "0:1", "--seed", "abc"], ["--seed"])
    cases.append(Case("unknown_command", ["shrink", model], ["shrink"]))
    cases.append(Case("missing_output_flag", ["run", model, "--domain", "0:1"], ["-o"]))

    # Output paths.
    (d / "plain_file").write_text("not a folder\n")
    cases.append(Case("output_under_a_regular_file", ["run", model, "--domain", "0:1", "-o", "{d}/plain_file/o.onnx"],
                      ["-o", "plain_file", "is not a folder"]))
    if os.geteuid() != 0:  # root writes into a read-only folder anyway: no refusal to expect then
        (d / "read_only").mkdir(mode=0o500)
        cases.append(Case("output_folder_not_writable", ["run", model, "--domain", "0:1", "-o", "{d}/read_only/o.onnx"],
                          ["-o", "read_only", "not writable"]))
    cases.append(Case("output_folder_missing", ["run", model, "--domain", "0:1", "-o", "{out}/no/such/o.onnx"],
                      ["-o", "does not exist"]))
    cases.append(Case("output_is_a_directory", ["run", model, "--domain", "0:1", "-o", "{out}"],
                      ["-o", "is a directory"]))
    cases.append(Case("output_is_the_input", ["run", model, "--domain", "0:1", "-o", model],
                      ["digits.onnx", "same file as the input"]))
    cases.append(Case("output_is_the_input_dot_slash", ["run", "digits.onnx", "--domain", "0:1", "-o", "./digits.onnx"],
                      ["digits.onnx", "same file as the input"]))
    cases.append(Case("output_is_the_input_dotdot",
                      ["run", model, "--domain", "0:1", "-o", "{d}/a_folder.onnx/../digits.onnx"],
                      ["digits.onnx", "same file as the input"]))
    os.symlink(d / "digits.onnx", d / "link.onnx")
    cases.append(Case("output_is_a_symlink_to_the_input", ["run", model, "--domain", "0:1", "-o", "{d}/link.onnx"],
                      ["link.onnx", "same file as the input"]))
    cases.append(Case("report_is_a_directory",
                      ["run", model, "--domain", "0:1", "-o", "{out}/o.onnx", "--report", "{out}"],
                      ["--report", "is a directory"]))
    cases.append(Case("report_is_the_input", ["run", model, "--domain", "0:1", "-o", "{out}/o.onnx", "--report", model],
                      ["--report", "same file as the input"]))
    cases.append(Case("report_is_the_output", ["run", model, "--domain", "0:1", "-o", "{out}/o.onnx", "--report",
                                               "{out}/o.onnx"], ["--report", "same file as the output"]))

    # verify and inspect.
    cases.append(Case("verify_feature_mismatch", ["verify", model, "{d}/no_chain.onnx", "--domain", "0:1"],
                      ["no_chain.onnx", "4 input features", "64"]))
    cases.append(Case("verify_garbage_candidate", ["verify", model, "{d}/garbage.onnx", "--domain", "0:1"],
                      ["garbage.onnx", "not an ONNX model"]))
    cases.append(Case("verify_report_is_candidate", ["verify", model, "{d}/link.onnx", "--domain", "0:1", "--report",
                                                     "{d}/link.onnx"], ["--report", "same file as the input"]))
    cases.append(Case("inspect_directory", ["inspect", "{d}/a_folder.onnx"], ["a_folder.onnx", "is a directory"]))
    return cases


def make_corpus(dest: str | os.PathLike) -> list[Case]:
    """Write every input file into ``dest`` (created; must be empty) and return the cases."""
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    if any(d.iterdir()):
        raise SystemExit(f"{d}: not empty")
    cases = _models(d) + _data_and_domains(d) + _flags(d)
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: make_corpus.py DIR", file=sys.stderr)
        return 2
    cases = make_corpus(argv[0])
    (Path(argv[0]) / "cases.json").write_text(json.dumps([asdict(c) for c in cases], indent=1))
    for c in cases:
        print(f"{c.name:<36} onnxcomp {' '.join(c.args)}")
    print(f"{len(cases)} cases written to {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
