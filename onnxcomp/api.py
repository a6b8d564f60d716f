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
from .reader import has_prefix, lower, model_input_features
from .report import Report, domain_summary, model_summary
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


def check_output_path(out: str | os.PathLike, inputs: list[str | os.PathLike], flag: str = "-o") -> Path:
    """Refuse an output that is a directory, overwrites an input, or lies in an unwritable folder."""
    p = Path(out)
    if p.exists() and p.is_dir():
        raise InputError(f"{flag} {out}: is a directory")
    for inp in inputs:
        if inp is None:
            continue
        ip = Path(inp)
        same = ip.exists() and (p.resolve() == ip.resolve() or (p.exists() and os.path.samefile(p, ip)))
        if same:
            raise InputError(f"{flag} {out}: is the same file as the input {inp}; refusing to overwrite it")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"{flag} {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {out}: folder {parent} is not writable")
    return p


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
        check_output_path(opts.report, [model_path, out_path], "--report")
    model = load_model(model_path)
    net = lower(model, source=str(model_path))
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
                 rtol: float = RTOL, device: str = "auto", report_path: str | None = None) -> tuple[Report, VerifyResult]:
    """Compare two ONNX files (see ``onnxcomp.verify``).  The domain defaults to the one onnxcomp
    recorded in the candidate's metadata."""
    if report_path:
        check_output_path(report_path, [ref_path, cand_path], "--report")
    ref = load_model(ref_path)
    cand = load_model(cand_path)
    for m, p in ((ref, ref_path), (cand, cand_path)):
        if len(real_inputs(m)) != 1:
            raise InputError(f"{p}: model has {len(real_inputs(m))} inputs; onnxcomp handles single-input models")
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
    report.verification = result.to_dict()
    if report_path:
        report.write(report_path)
    return report, result


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

