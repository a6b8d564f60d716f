"""The library face of the commands: ``compile_model`` (``run``), ``verify_files`` and ``inspect_model``.

These load and check every input before any work, run the passes, write nothing unless verification
passed, and return a ``Report``.  They raise typed errors (``onnxcomp.errors``); ``cli.py`` turns those
into one-line messages and exit codes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from . import __version__
from .data import labels_from_data_file, load_data, load_labels
from .domain import check_box, parse_domain
from .errors import BudgetNotMet, InputError, UsageError, VerificationFailed
from .fidelity import Budget, assess_run
from .ir import Box
from .onnxio import load_model, real_inputs, value_shape
from .pipeline import REGISTRY, Context, PassManager, Progress, expand
from .reader import check_input, has_prefix, lower, model_input_features
from .report import Report, domain_summary, model_summary
from .runtime import Runner, providers
from .verify import ATOL, CORNERS, RTOL, SAMPLES, VerifyResult, verify_models
from .writer import META_PREFIX, save_atomic, to_model


@dataclass
class RunOptions:
    """Everything ``run`` takes besides the model and passes (flag values)."""

    domain: str | None = None
    data: str | None = None
    labels: str | None = None
    seed: int = 0
    device: str = "auto"
    samples: int = SAMPLES
    corners: int = CORNERS
    atol: float = ATOL
    rtol: float = RTOL
    report: str | None = None
    pass_options: dict = field(default_factory=dict)


def check_output_path(out: str | os.PathLike, inputs: list[str | os.PathLike], flag: str = "-o",
                      other_output: str | os.PathLike | None = None) -> Path:
    """Refuse an output that is a directory, overwrites an input (or ``other_output``, the file
    another flag writes), or lies in a missing, non-folder or unwritable folder."""
    p = Path(out)
    if p.exists() and p.is_dir():
        raise InputError(f"{flag} {out}: is a directory")
    named = [(inp, "the input") for inp in inputs if inp is not None]
    if other_output is not None:
        named.append((other_output, "the output"))
    for inp, what in named:
        ip = Path(inp)
        # resolve() also covers paths that do not exist yet (the -o file named again by --report).
        same = p.resolve() == ip.resolve() or (p.exists() and ip.exists() and os.path.samefile(p, ip))
        if same:
            raise InputError(f"{flag} {out}: is the same file as {what} {inp}; refusing to overwrite it")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"{flag} {out}: folder {parent} does not exist")
    if not parent.is_dir():
        raise InputError(f"{flag} {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {out}: folder {parent} is not writable")
    return p


def check_runs(model: onnx.ModelProto, path: str | os.PathLike, device: str) -> None:
    """Refuse, naming the file, a model onnxruntime cannot load or run on one sample (an opset it does
    not know, shapes that do not match), before any pass spends time on it."""
    providers(device)  # a bad --device is the flag's fault, not the file's
    try:
        runner = Runner.create(model, "cpu")
        runner.run(np.zeros((1, runner.features)))  # shapes that only clash when the graph runs
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def _sample_shape(model: onnx.ModelProto) -> tuple:
    shape = value_shape(real_inputs(model)[0])
    return tuple(shape[1:]) if len(shape) >= 2 else tuple(shape)


def load_inputs(model: onnx.ModelProto, n_features: int, opts: RunOptions) -> tuple[Box | None, np.ndarray | None, np.ndarray | None]:
    """(domain box, data, labels) from the flags, all checked against the model."""
    data = load_data(opts.data, n_features, _sample_shape(model)) if opts.data else None
    labels = None
    if opts.labels:
        if data is None:
            raise UsageError("--labels needs --data (one label per data row)")
        labels = load_labels(opts.labels, data.shape[0])
    elif opts.data:
        labels = labels_from_data_file(opts.data, data.shape[0])
    box = parse_domain(opts.domain, n_features, data) if opts.domain else None
    return box, data, labels


def domain_metadata(box: Box | None) -> str:
    """Compact JSON of the domain for the output file's metadata (``verify`` reads it back)."""
    if box is None:
        return ""
    uniform = np.all(box.lo == box.lo[0]) and np.all(box.hi == box.hi[0])
    lo = float(box.lo[0]) if uniform else box.lo.tolist()
    hi = float(box.hi[0]) if uniform else box.hi.tolist()
    return json.dumps({"source": box.source, "lo": lo, "hi": hi}, separators=(",", ":"))


def domain_from_metadata(model: onnx.ModelProto, n_features: int) -> Box | None:
    meta = {p.key: p.value for p in model.metadata_props}
    raw = meta.get(META_PREFIX + "domain")
    if not raw:
        return None
    try:
        d = json.loads(raw)
        lo = np.broadcast_to(np.asarray(d["lo"], dtype=np.float64), (n_features,)).copy()
        hi = np.broadcast_to(np.asarray(d["hi"], dtype=np.float64), (n_features,)).copy()
    except Exception:
        return None
    box = Box(lo, hi, source=f"metadata ({d.get('source', '')})")
    check_box(box, n_features, "domain in metadata")
    return box


def compile_model(model_path: str, passes: str, out_path: str, opts: RunOptions,
                  progress: Progress | None = None) -> tuple[Report, VerifyResult]:
    """Load, run passes, verify against the original, and write ``out_path`` only if verified.

    Raises ``VerificationFailed`` (exit 1) with the report still available as ``exc.report``.
    """
    names = expand(passes)
    out = check_output_path(out_path, [model_path])
    if opts.report:
        check_output_path(opts.report, [model_path], "--report", other_output=out_path)
    model = load_model(model_path)
    net = lower(model, source=str(model_path))
    check_runs(model, model_path, opts.device)
    n_features = model_input_features(net)
    box, data, labels = load_inputs(model, n_features, opts)
    needs_box = [n for n in names if n in ("bounds", "milp", "falsify")]
    if needs_box and box is None:
        raise UsageError(f"pass '{needs_box[0]}' proves facts over an input domain: give --domain")
    if needs_box and has_prefix(net):
        raise InputError(
            f"{model_path}: the chain starts after {', '.join(net.onnx.prefix_ops)} ops; exact stability over an "
            f"input domain needs the chain to start at the model input"
        )
    if box is None and data is None:
        raise UsageError("give --domain or --data (verification needs inputs)")
    budget = Budget.from_options(opts.pass_options)
    budget.check_usage([n for n in names if not REGISTRY[n].exact], data is not None, labels is not None)
    ctx = Context(box=box, data=data, labels=labels, seed=opts.seed, device=opts.device,
                  options=dict(opts.pass_options, samples=opts.samples, corners=opts.corners),
                  progress=progress or Progress())
    report = Report(command="run", input=str(model_path), output=str(out_path))
    report.domain = domain_summary(box)
    original_bytes = Path(model_path).stat().st_size
    report.model["before"] = model_summary(net, original_bytes)
    new_net = PassManager().run(net, names, ctx)
    report.passes = ctx.log
    report.warnings = list(ctx.warnings)
    for key in ("stable", "fidelity", "latency_ms"):
        if key in ctx.extra:
            setattr(report, key, ctx.extra[key])
    exact = all(REGISTRY[n].exact for n in names)
    meta = {
        "passes": ",".join(names),
        "domain": domain_metadata(box),
        "exact": str(exact).lower(),
        "summary": f"widths {net.widths} -> {new_net.widths}; params {net.params} -> {new_net.params}",
    }
    if "stable" in ctx.extra:
        meta["stable"] = json.dumps(ctx.extra["stable"].get("totals", {}), separators=(",", ":"))
    candidate = to_model(new_net, metadata=meta)
    cand_bytes = candidate.SerializeToString()
    # Exact runs must match the original.  Lossy runs (issue 4) must match the transformed IR written with
    # plain dense weights (the writer check), and their fidelity to the original is measured and budgeted.
    reference = model if exact else to_model(new_net, plain_weights=True)
    result = verify_models(reference, candidate, box=box, data=data, samples=opts.samples, corners=opts.corners,
                           seed=opts.seed, atol=opts.atol, rtol=opts.rtol, device=opts.device)
    report.verification = dict(result.to_dict(), against="original" if exact else "transformed network (writer check)")
    report.model["after"] = model_summary(new_net, len(cand_bytes))
    assessment = assess_run(model, candidate, data, labels, budget, exact=exact, seed=opts.seed, device=opts.device,
                            latency_inputs=None if data is not None or box is None else box.sample(1024, ctx.rng(7)))
    report.fidelity, report.latency_ms = assessment.fidelity, assessment.latency_ms
    if not result.passed or assessment.violations:
        report.output = None
        if opts.report:
            report.write(opts.report)
        if result.passed:
            err = BudgetNotMet(f"budget not met on the held-out half, nothing written: {'; '.join(assessment.violations)}")
        else:
            err = VerificationFailed(f"verification failed, nothing written: {result.summary()}")
        err.report = report
        raise err
    save_atomic(cand_bytes, out)
    if opts.report:
        report.write(opts.report)
    return report, result


def verify_files(ref_path: str, cand_path: str, *, domain: str | None = None, data: str | None = None,
                 samples: int = SAMPLES, corners: int = CORNERS, seed: int = 0, atol: float = ATOL,
                 rtol: float = RTOL, device: str = "auto", report_path: str | None = None,
                 formal: bool = False, time_limit: float = 60.0, solver: str = "auto") -> tuple[Report, VerifyResult]:
    """Compare two ONNX files (see ``onnxcomp.verify``).  The domain defaults to the one onnxcomp
    recorded in the candidate's metadata.  With ``formal``, also certify ``max |f1 - f2|`` over the domain
    box with a MILP (``onnxcomp.formal``); the report's ``formal`` block holds the bound, and
    ``result.passed`` then also requires that bound to be within tolerance."""
    if report_path:
        check_output_path(report_path, [ref_path, cand_path], "--report")
    ref = load_model(ref_path)
    cand = load_model(cand_path)
    for m, p in ((ref, ref_path), (cand, cand_path)):
        check_input(m, str(p))
        check_runs(m, p, device)
    n_ref = int(np.prod(_sample_shape(ref) or (1,)))
    n_cand = int(np.prod(_sample_shape(cand) or (1,)))
    if n_ref != n_cand:
        raise InputError(f"{cand_path}: takes {n_cand} input features but {ref_path} takes {n_ref}")
    opts = RunOptions(domain=domain, data=data)
    box, x, _ = load_inputs(ref, n_ref, opts)
    if box is None:
        box = domain_from_metadata(cand, n_ref)
    if box is None and x is None:
        raise UsageError("give --domain or --data (the candidate's metadata records no domain)")
    result = verify_models(ref, cand, box=box, data=x, samples=samples, corners=corners, seed=seed,
                           atol=atol, rtol=rtol, device=device)
    report = Report(command="verify", input=str(ref_path), output=str(cand_path))
    report.domain = domain_summary(box)
    if formal:
        report.formal = _formal_check(ref, cand, ref_path, cand_path, box, atol, rtol, time_limit, solver,
                                      result.output_scale)
        if not report.formal["passed"]:
            result.passed = False
            result.reason = (result.reason + "; " if result.reason else "") + report.formal["verdict"]
    report.verification = result.to_dict()
    if report_path:
        report.write(report_path)
    return report, result


def _formal_check(ref, cand, ref_path, cand_path, box, atol: float, rtol: float, time_limit: float, solver: str,
                  scale: float) -> dict:
    """Certified bound on max |ref - cand| over the box, on the dense chains of both models; the tolerance
    is the sampled verification's (``atol + rtol * scale``, scale = max |ref output| on the samples)."""
    from .formal import max_difference
    from .reader import has_prefix

    if box is None:
        raise UsageError("--formal needs a domain box (--domain, or one recorded in the candidate's metadata)")
    nets = []
    for model, path in ((ref, ref_path), (cand, cand_path)):
        net = lower(model, source=str(path))
        if has_prefix(net):
            raise InputError(f"{path}: --formal needs the dense chain to start at the model input "
                             f"(kept before it: {', '.join(net.onnx.prefix_ops)})")
        nets.append(net)
    if nets[0].onnx.suffix_ops != nets[1].onnx.suffix_ops:
        raise InputError(f"{cand_path}: --formal compares the dense chains, and the ops after them differ "
                         f"({nets[0].onnx.suffix_ops} vs {nets[1].onnx.suffix_ops})")
    if nets[0].input_size != nets[1].input_size or nets[0].output_size != nets[1].output_size:
        raise InputError(f"{cand_path}: its dense chain has a different input or output size than {ref_path}'s")
    tol = atol + rtol * scale
    res = max_difference(nets[0], nets[1], box, time_limit=time_limit, solver=solver, tolerance=tol)
    passed = res.certified_max_abs_diff <= tol
    if passed:
        verdict = f"certified max |diff| {res.certified_max_abs_diff:.3g} <= tolerance {tol:.3g}"
    elif res.found_max_abs_diff > tol:
        verdict = f"a difference of {res.found_max_abs_diff:.3g} > tolerance {tol:.3g} exists (input in the report)"
    else:
        verdict = (f"inconclusive: certified bound {res.certified_max_abs_diff:.3g} > tolerance {tol:.3g}"
                   + ("" if res.complete else " (solver time limit)"))
    out = res.to_dict()
    out.update({"passed": passed, "tolerance": tol, "verdict": verdict,
                "compared": "dense chains" + (f" (identical ops after them: {', '.join(nets[0].onnx.suffix_ops)})"
                                              if nets[0].onnx.suffix_ops else "")})
    return out


def inspect_model(model_path: str) -> dict:
    """Facts about a model: input/output, lowered chain, kept prefix/suffix ops, size, onnxcomp metadata."""
    model = load_model(model_path)
    net = lower(model, source=str(model_path))
    inp = real_inputs(model)[0]
    ctx = net.onnx
    layers = [
        {"layer": k, "in": l.n_in, "out": l.n_out, "activation": l.activation, "params": l.weight.size + l.bias.size,
         "nonzero": int(np.count_nonzero(l.weight) + np.count_nonzero(l.bias)), "source": l.source}
        for k, l in enumerate(net.layers)
    ]
    return {
        "file": str(model_path),
        "file_bytes": Path(model_path).stat().st_size,
        "input": {"name": inp.name, "shape": list(value_shape(inp)),
                  "dtype": onnx.TensorProto.DataType.Name(inp.type.tensor_type.elem_type).lower()},
        "outputs": [{"name": o.name, "shape": list(value_shape(o))} for o in model.graph.output],
        "opset": max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] or [0]),
        "ir_version": model.ir_version,
        "producer": model.producer_name,
        "chain": {"input": ctx.chain_input, "output": ctx.chain_output, "layers": layers},
        "prefix_ops": ctx.prefix_ops,
        "suffix_ops": ctx.suffix_ops,
        "summary": model_summary(net, Path(model_path).stat().st_size),
        "metadata": {p.key: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)},
        "onnxcomp_version": __version__,
    }

