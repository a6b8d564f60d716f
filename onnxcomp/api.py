"""The Python face: :func:`compress`, :func:`verify` and :func:`inspect`.

``cli.py`` and the ``--config`` loader are thin faces over these; all three take the same options by the
same long names, declared once (``RunSettings`` and ``VerifySettings`` here, each pass's options dataclass
in ``onnxcomp.passes``) and checked the same way.  Nothing touches the disk unless asked:
``compress`` returns a :class:`Result` whose ``save(path)`` writes the model atomically.

Every input is loaded and checked before any work; passes run under the command's one deadline
(``time_limit``); the candidate is verified against the original with onnxruntime before it is returned.
Errors are typed (``onnxcomp.errors``); ``cli.py`` turns them into one-line messages and exit codes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import __version__, certificate, pipeline
from .data import check_data, check_labels, labels_from_data_file, load_data, load_labels
from .domain import check_box, parse_domain
from .equivalence import ATOL, CORNERS, RTOL, SAMPLES, VerifyResult, verify_models
from .errors import BudgetNotMet, InputError, OptionError, OutputGrew, UsageError, VerificationFailed
from .fidelity import Budget, against_original, assess_run
from .ir import Box
from .milp import SOLVERS
from .onnxio import check_model, load_model, real_inputs, value_shape
from .options import build, option, specs
from .pipeline import REGISTRY, Context, Options, PassManager, Progress, all_option_specs, expand, load_passes, lowers_conv
from .reader import check_input, lower, model_input_features
from .report import Report, domain_summary, model_summary
from .runtime import Runner, providers
from .timing import Deadline
from .writer import META_PREFIX, save_atomic, to_model

DEFAULT_TIME_LIMIT = 600.0
VERIFY_RESERVE = 0.05
"""Share of the time limit kept back from the passes for writing and verifying the result (at most 10 s)."""


@dataclass(frozen=True)
class RunSettings:
    """Options of ``run`` / :func:`compress` that are not a pass's: inputs, verification, limits, budgets."""

    domain: str | None = option(None, "input domain: LO:HI, a .vnnlib file, a .npz with lo/hi, or 'data'")
    data: str | None = option(None, "samples (.npy, or .npz with 'x'), shape (N, features)")
    labels: str | None = option(None, "class labels (.npy, or .npz with 'y'), one per --data row")
    seed: int = option(0, "random seed (the same inputs and seed give the same output file)")
    device: str = option("auto", "onnxruntime device", choices=("auto", "cpu", "cuda"))
    samples: int = option(SAMPLES, "uniform domain samples for sampling and verification", min=0)
    corners: int = option(CORNERS, "maximum number of domain corners used", min=0)
    atol: float = option(ATOL, "absolute tolerance of the verification", min=0.0)
    rtol: float = option(RTOL, "tolerance relative to the output scale", min=0.0)
    time_limit: float = option(DEFAULT_TIME_LIMIT, "seconds for the whole command; proofs not finished by then "
                               "leave neurons undecided (kept)", gt=0.0)
    jobs: int | None = option(None, "worker processes for independent proofs (default: all cores)", min=1)
    cluster: str | None = option(None, "run proofs on a Ray cluster: auto or HOST:PORT (pip install 'onnxcomp[ray]')")
    max_drop: float | None = option(None, "budget: max accuracy drop in points (needs labels)", min=0.0, max=100.0)
    min_agreement: float | None = option(None, "budget: min top-1 agreement with the original, in %", min=0.0,
                                         max=100.0)
    max_class_drop: float | None = option(None, "budget: max accuracy drop of the worst class, in points (needs "
                                          "labels)", min=0.0, max=100.0)
    fail_on_growth: bool = option(False, "fail (exit 1, nothing written) when the written model would be larger "
                                  "than its input; without it a warning says so")


@dataclass(frozen=True)
class VerifySettings:
    """Options of ``verify`` / :func:`verify`."""

    domain: str | None = option(None, "LO:HI, .vnnlib, .npz (lo/hi) or 'data'; default: the domain onnxcomp recorded "
                                "in the candidate")
    data: str | None = option(None, "samples (.npy, or .npz with 'x')")
    samples: int = option(SAMPLES, "uniform domain samples", min=0)
    corners: int = option(CORNERS, "maximum number of domain corners", min=0)
    seed: int = option(0, "random seed of the samples")
    atol: float = option(ATOL, "absolute tolerance", min=0.0)
    rtol: float = option(RTOL, "tolerance relative to the output scale", min=0.0)
    device: str = option("auto", "onnxruntime device", choices=("auto", "cpu", "cuda"))
    formal: bool = option(False, "also certify max |difference| over the domain box")
    time_limit: float = option(60.0, "seconds for --formal (the bound stays valid, only looser)", gt=0.0)
    solver: str = option("auto", "MILP solver for --formal: auto, scip or gurobi", choices=SOLVERS)
    jobs: int | None = option(None, "worker processes for --formal's independent proofs (default: all cores)", min=1)
    cluster: str | None = option(None, "run --formal's proofs on a Ray cluster: auto or HOST:PORT")


RUN_KEYS = {s.name for s in specs(RunSettings)}
VERIFY_KEYS = {s.name for s in specs(VerifySettings)}
_INPUT_KEYS = ("domain", "data", "labels")


# ---- results ------------------------------------------------------------------------------------------------
@dataclass
class Result:
    """What :func:`compress` made: ``model`` (the verified ``ModelProto``), ``report`` (the dictionary
    ``--report`` writes), ``verification`` (statistics of the writer check: for an exact run the written
    model against the original, for a lossy one against the transformed network).  :meth:`summary` says
    both what the writer check found and the fidelity to the original (``report["fidelity"]["original"]``)."""

    model: onnx.ModelProto
    report: dict
    verification: VerifyResult
    data: bytes = field(repr=False, default=b"")

    def summary(self) -> str:
        """Two lines, as the command line prints them: the writer check, and the fidelity to the original
        (PASSED or FAILED only when judged: equivalence for an exact run, a budget or tolerance the user
        stated for a lossy one; otherwise the measured figures)."""
        from .formats import original_line, writer_line

        return writer_line(self.report["verification"]) + "\n" + original_line(self.report["fidelity"]["original"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to ``path`` atomically (temporary file, then rename); returns the path."""
        save_atomic(self.data or self.model.SerializeToString(), path)
        self.report["output"] = str(path)
        return Path(path)

    def save_report(self, path: str | os.PathLike) -> Path:
        save_atomic(json.dumps(self.report, indent=2).encode() + b"\n", path)
        return Path(path)


# ---- checks shared by the faces -----------------------------------------------------------------------------
def check_output_path(out: str | os.PathLike, inputs: list, flag: str = "-o",
                      other_output: str | os.PathLike | None = None) -> Path:
    """Refuse an output that is a directory, overwrites an input (or ``other_output``, the file
    another flag writes), or lies in a missing, non-folder or unwritable folder."""
    p = Path(out)
    if p.exists() and p.is_dir():
        raise InputError(f"{flag} {out}: is a directory")
    named = [(inp, "the input") for inp in inputs if isinstance(inp, (str, os.PathLike))]
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


def check_runs(model: onnx.ModelProto, name: str, device: str) -> None:
    """Refuse, naming the model, one onnxruntime cannot load or run on one sample (an opset it does
    not know, shapes that do not match), before any pass spends time on it."""
    providers(device)  # a bad --device is the flag's fault, not the file's
    try:
        runner = Runner.create(model, "cpu")
        runner.run(np.zeros((1, runner.features)))  # shapes that only clash when the graph runs
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None


def _sample_shape(model: onnx.ModelProto) -> tuple:
    shape = value_shape(real_inputs(model)[0])
    return tuple(shape[1:]) if len(shape) >= 2 else tuple(shape)


def _load(model: Any, what: str = "model") -> tuple[onnx.ModelProto, str, int | None]:
    """(model, name for messages, file size) from a path or an in-memory ``ModelProto``."""
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return check_model(copy, f"the {what} (ModelProto)"), f"the {what} (ModelProto)", None
    if isinstance(model, (str, os.PathLike)):
        return load_model(model), str(model), Path(model).stat().st_size
    raise UsageError(f"{what}: expected an onnx.ModelProto or a path, got {type(model).__name__}")


def load_domain(domain: Any, n_features: int, data: np.ndarray | None) -> Box | None:
    """A domain given as ``"LO:HI"``, a ``.vnnlib``/``.npz`` path, ``"data"``, a ``Box``, or a ``(lo, hi)``
    pair of scalars or arrays."""
    if domain is None:
        return None
    if isinstance(domain, Box):
        box = domain
    elif isinstance(domain, (str, os.PathLike)):
        return parse_domain(str(domain), n_features, data)
    elif isinstance(domain, (tuple, list)) and len(domain) == 2:
        try:
            lo = np.broadcast_to(np.asarray(domain[0], dtype=np.float64), (n_features,)).copy()
            hi = np.broadcast_to(np.asarray(domain[1], dtype=np.float64), (n_features,)).copy()
        except (ValueError, TypeError):
            raise InputError(f"domain: (lo, hi) must be numbers or arrays of {n_features} entries") from None
        scalar = np.ndim(domain[0]) == 0 and np.ndim(domain[1]) == 0
        box = Box(lo, hi, source=f"{float(domain[0]):g}:{float(domain[1]):g}" if scalar else "(lo, hi) arrays")
    else:
        raise UsageError(f"domain: expected 'LO:HI', a .vnnlib or .npz path, 'data', or a (lo, hi) pair; got "
                         f"{type(domain).__name__}")
    check_box(box, n_features, "domain")
    return box


def load_inputs(model: onnx.ModelProto, n_features: int, domain: Any = None, data: Any = None,
                labels: Any = None) -> tuple[Box | None, np.ndarray | None, np.ndarray | None]:
    """(domain box, data rows, labels), every one checked against the model."""
    if data is None:
        x = None
    elif isinstance(data, (str, os.PathLike)):
        x = load_data(str(data), n_features, _sample_shape(model))
    else:
        x = check_data(np.asarray(data), n_features, "data")
    y = None
    if labels is not None:
        if x is None:
            raise UsageError("--labels needs --data (one label per data row)")
        y = load_labels(str(labels), x.shape[0]) if isinstance(labels, (str, os.PathLike)) else \
            check_labels(np.asarray(labels), x.shape[0], "labels")
    elif isinstance(data, (str, os.PathLike)):
        y = labels_from_data_file(str(data), x.shape[0])
    return load_domain(domain, n_features, x), x, y


def domain_metadata(box: Box | None) -> str:
    """Compact JSON of the domain for the output file's metadata (``verify`` reads it back)."""
    if box is None:
        return ""
    uniform = np.all(box.lo == box.lo[0]) and np.all(box.hi == box.hi[0])
    # a box per input (an image's eps-ball) is packed: exact float64, zlib, base64 (a tenth of its JSON list)
    lo = float(box.lo[0]) if uniform else certificate.pack_floats(box.lo)
    hi = float(box.hi[0]) if uniform else certificate.pack_floats(box.hi)
    return json.dumps({"source": box.source, "lo": lo, "hi": hi}, separators=(",", ":"))


def domain_from_metadata(model: onnx.ModelProto, n_features: int) -> Box | None:
    meta = {p.key: p.value for p in model.metadata_props}
    raw = meta.get(META_PREFIX + "domain")
    if not raw:
        return None
    try:
        d = json.loads(raw)
        lo = np.broadcast_to(certificate.unpack_floats(d["lo"]), (n_features,)).copy()
        hi = np.broadcast_to(certificate.unpack_floats(d["hi"]), (n_features,)).copy()
    except Exception:
        return None
    box = Box(lo, hi, source=f"metadata ({d.get('source', '')})")
    check_box(box, n_features, "domain in metadata")
    return box


def split_options(options: dict, settings_keys: set) -> tuple[dict, dict]:
    """(settings, pass options) from one dictionary of long option names; unknown names refused."""
    load_passes()
    pass_keys = set(all_option_specs())
    unknown = sorted(k for k in options if k not in settings_keys and k not in pass_keys)
    if unknown:
        raise OptionError(unknown[0], "unknown option")
    settings = {k: v for k, v in options.items() if k in settings_keys}
    return settings, {k: v for k, v in options.items() if k not in settings_keys}


# ---- compress ---------------------------------------------------------------------------------------------------
def compress(model: onnx.ModelProto | str | os.PathLike, passes: str | list, *, domain: Any = None, data: Any = None,
             labels: Any = None, pass_options: dict | None = None, progress: Progress | None = None,
             **options: Any) -> Result:
    """Run ``passes`` on ``model``, verify the result against it, and return it (nothing is written).

    ``model``: an ``onnx.ModelProto`` or a path.  ``passes``: ``"stable,lap"`` or a list of names.
    ``domain``: ``"LO:HI"``, a ``(lo, hi)`` pair of scalars or arrays, or a ``.vnnlib``/``.npz`` path.
    ``data``/``labels``: arrays or paths.  ``options``: any option by its long name (``time_limit=60``,
    ``sparsity=0.5``, ``max_drop=1``; see ``onnxcomp passes NAME``); unknown names are refused.
    ``pass_options``: ``{"prune": {"sparsity": 0.5}}``, options for one pass only.

    ``progress``: a :class:`~onnxcomp.pipeline.Progress` told the stages as they run (``done()`` once at
    the end, whatever the outcome).

    Raises ``VerificationFailed`` or ``BudgetNotMet`` (with the report as ``exc.report``) when the result
    is not verified or misses the budget, and ``InputError``/``UsageError`` for bad input."""
    progress = progress or Progress()
    try:
        return _compress(model, passes, domain, data, labels, pass_options, progress, options)
    finally:
        progress.done()


def _compress(model, passes, domain, data, labels, pass_options, progress: Progress, options: dict) -> Result:
    given, pass_flat = split_options(options, RUN_KEYS - set(_INPUT_KEYS))
    settings = build(RunSettings, given)
    deadline = Deadline(settings.time_limit)
    names = expand(passes)
    opts = Options(pass_flat, pass_options)
    opts.check_names()
    original, name, original_bytes = _load(model)
    net = lower(original, source=name, conv=lowers_conv(names))
    check_runs(original, name, settings.device)
    n_features = model_input_features(net)
    box, x, y = load_inputs(original, n_features, domain, data, labels)
    pipeline.check_run_needs(names, Context(box=box, data=x, labels=y, options=opts))
    budget = Budget(settings.max_drop, settings.min_agreement, settings.max_class_drop)
    budget.check_usage([n for n in names if not REGISTRY[n].exact], x is not None, y is not None)
    reserve = min(VERIFY_RESERVE * settings.time_limit, 10.0)
    ctx = Context(box=box, data=x, labels=y, seed=settings.seed, device=settings.device, samples=settings.samples,
                  corners=settings.corners, budget=budget, deadline=deadline.reserve(reserve), jobs=settings.jobs,
                  cluster=settings.cluster, options=opts, progress=progress, source=name)
    report = Report(command="run", input=name, output=None)
    report.domain = domain_summary(box)
    report.model["before"] = model_summary(net, original_bytes)
    try:
        new_net = PassManager().run(net, names, ctx)
    except BudgetNotMet as exc:  # raised inside a lossy pass: the report says what ran and what was tried
        report.passes, report.warnings = ctx.log, list(ctx.warnings)
        exc.report = report.to_dict()
        raise
    finally:
        ctx.close()
    ran = [e["name"] for e in ctx.log]
    unused = opts.unused(ran)
    if unused:
        ctx.warn(f"option{'s' if len(unused) > 1 else ''} {', '.join(unused)} not used by the passes run "
                 f"({', '.join(ran) or 'none'})")
    report.passes = ctx.log
    report.warnings = list(ctx.warnings)
    report.stable = ctx.sections.get("stable")
    undecided = _undecided(report.stable)
    if undecided:
        report.warnings.append(undecided)
    exact = all(REGISTRY[n].exact for n in ran)
    meta = {
        "passes": ",".join(ran),
        "domain": domain_metadata(box),
        "exact": str(exact).lower(),
        "summary": f"widths {net.widths} -> {new_net.widths}; params {net.params} -> {new_net.params}",
    }
    if report.stable is not None:
        meta["stable"] = json.dumps(report.stable.get("totals", {}), separators=(",", ":"))
    if "certificate" in ctx.sections and exact:
        # the claims the fold rests on, for `verify --formal` to check without trusting this run
        meta[certificate.META_KEY] = certificate.encode(ctx.sections["certificate"])
    candidate = to_model(new_net, metadata=meta)
    cand_bytes = candidate.SerializeToString()
    # Exact runs must match the original.  Lossy runs must match the transformed IR written with plain
    # dense weights (the writer check), and their fidelity to the original is measured and budgeted.
    reference = original if exact else to_model(new_net, plain_weights=True)
    check = dict(box=box, data=x, samples=settings.samples, corners=settings.corners, seed=settings.seed,
                 atol=settings.atol, rtol=settings.rtol, device=settings.device)
    progress.stage("verify", deadline)
    result = verify_models(reference, candidate, **check)
    result.against = "original" if exact else "transformed network (writer check)"
    report.verification = result.to_dict()
    report.model["after"] = model_summary(new_net, len(cand_bytes))
    latency_inputs = None if x is not None or box is None else box.sample(1024, ctx.rng(7))
    assessment = assess_run(original, candidate, x, y, budget, exact=exact, seed=settings.seed,
                            device=settings.device, latency_inputs=latency_inputs)
    report.fidelity, report.latency_ms = assessment.fidelity, assessment.latency_ms
    # The fidelity to the original, on the same inputs as the writer check (for an exact run it is that check).
    to_original = result if exact else verify_models(original, candidate, **check)
    report.fidelity["original"] = against_original(
        to_original.to_dict(), exact=exact, inputs=_inputs_text(box, x), budget=budget,
        budget_met=not assessment.violations if budget.active else None,
        tolerance_stated=any(given.get(k) is not None for k in ("atol", "rtol")))
    grew = _growth(original_bytes if original_bytes is not None else len(original.SerializeToString()),
                   len(cand_bytes))
    if grew:
        report.warnings.append(grew)
    failed = report.fidelity["original"]["passed"] is False and not exact
    if not result.passed or assessment.violations or failed or (grew and settings.fail_on_growth):
        if not result.passed:
            err = VerificationFailed(f"verification failed, nothing written: {result.summary()}")
        elif assessment.violations:
            err = BudgetNotMet(f"budget not met on the held-out half, nothing written: {'; '.join(assessment.violations)}")
        elif failed:
            from .formats import original_line

            err = VerificationFailed(f"nothing written: {original_line(report.fidelity['original'])}")
        else:
            err = OutputGrew(f"{grew}; nothing written (--fail-on-growth)")
        err.report = report.to_dict()
        raise err
    return Result(candidate, report.to_dict(), result, cand_bytes)


def _undecided(stable: dict | None) -> str:
    """One line on the neurons a stable run left undecided (kept): how many, in which layers, what may
    decide them; ``""`` when there are none."""
    per_layer = [(layer["layer"], len(layer.get("undecided") or [])) for layer in (stable or {}).get("layers", [])]
    per_layer = [(k, n) for k, n in per_layer if n]
    total = sum(n for _, n in per_layer)
    if not total:
        return ""
    where = ", ".join(f"layer {k}: {n}" for k, n in per_layer)
    return (f"{total} neuron{'s' if total > 1 else ''} undecided, kept unproven ({where}); a longer --time-limit "
            f"may decide them")


def _inputs_text(box: Box | None, data: np.ndarray | None) -> str:
    """The inputs a run's comparisons use, in words."""
    parts = (["--data rows"] if data is not None else []) + (["domain samples and corners"] if box is not None else [])
    return ", ".join(parts)


def _growth(before: int, after: int) -> str:
    """The warning for a written model larger than its input (both sizes), or ``""``."""
    if after <= before:
        return ""
    return (f"the written model is larger than its input: {before:,} -> {after:,} bytes "
            f"(+{100 * (after - before) / before:.1f}%)")


# ---- verify -------------------------------------------------------------------------------------------------------
def verify(reference: onnx.ModelProto | str | os.PathLike, candidate: onnx.ModelProto | str | os.PathLike, *,
           domain: Any = None, data: Any = None, formal: bool = False, progress: Progress | None = None,
           **options: Any) -> VerifyResult:
    """Check that ``candidate`` computes what ``reference`` computes, with onnxruntime on domain samples,
    the box's corners and ``data`` rows; with ``formal``, also certify ``max |f1 - f2|`` over the box.

    The domain defaults to the one onnxcomp recorded in the candidate's metadata.  Returns the statistics
    (``passed``, ``max_abs_err``, ...), with ``report`` (the dictionary ``--report`` writes) and
    ``formal`` (the certificate block, or ``None``).  ``progress`` (a :class:`~onnxcomp.pipeline.Progress`)
    is told the stages: ``samples``, then with ``formal`` ``formal: certificate replay`` (when the candidate
    carries a certificate) and ``formal: bounds`` (when the replay did not settle it), each with its
    deadline (``--time-limit`` bounds the formal check); ``done()`` once at the end."""
    progress = progress or Progress()
    try:
        return _verify(reference, candidate, domain, data, formal, progress, options)
    finally:
        progress.done()


def _verify(reference, candidate, domain, data, formal: bool, progress: Progress, options: dict) -> VerifyResult:
    unknown = sorted(set(options) - VERIFY_KEYS)
    if unknown:
        raise OptionError(unknown[0], "unknown option")
    s = build(VerifySettings, dict(options, formal=formal))
    ref, ref_name, _ = _load(reference, "reference")
    cand, cand_name, _ = _load(candidate, "candidate")
    for m, name in ((ref, ref_name), (cand, cand_name)):
        check_input(m, name)
        check_runs(m, name, s.device)
    n_ref = int(np.prod(_sample_shape(ref) or (1,)))
    n_cand = int(np.prod(_sample_shape(cand) or (1,)))
    if n_ref != n_cand:
        raise InputError(f"{cand_name}: takes {n_cand} input features but {ref_name} takes {n_ref}")
    box, x, _ = load_inputs(ref, n_ref, domain, data)
    if box is None:
        box = domain_from_metadata(cand, n_ref)
    if box is None and x is None:
        raise UsageError("give --domain or --data (the candidate's metadata records no domain)")
    progress.stage("samples", Deadline())  # the sampled check has no time limit; --time-limit bounds --formal
    result = verify_models(ref, cand, box=box, data=x, samples=s.samples, corners=s.corners, seed=s.seed,
                           atol=s.atol, rtol=s.rtol, device=s.device)
    report = Report(command="verify", input=ref_name, output=cand_name)
    report.domain = domain_summary(box)
    if s.formal:
        from .workers import Workers

        with Workers(s.jobs, s.cluster) as workers:
            report.formal = _formal_check(ref, cand, ref_name, cand_name, box, s, result.output_scale, workers,
                                          progress)
        if not report.formal["passed"]:
            result.passed = False
            result.reason = (result.reason + "; " if result.reason else "") + report.formal["verdict"]
    report.verification = result.to_dict()
    result.formal = report.formal
    result.report = report.to_dict()
    return result


def _formal_check(ref, cand, ref_name, cand_name, box, s: VerifySettings, scale: float, workers,
                  progress: Progress) -> dict:
    """Certified bound on max |ref - cand| over the box, on the dense chains of both models; the tolerance
    is the sampled verification's (``atol + rtol * scale``, scale = max |ref output| on the samples).

    A candidate onnxcomp wrote carries a certificate: it is replayed first (``onnxcomp.replay``); without
    one, or when replay does not certify, differential bounds, input splitting and MILPs
    (``onnxcomp.formal``) get the time left."""
    from .formal import FormalResult, max_difference
    from .reader import has_prefix
    from .replay import replay

    if box is None:
        raise UsageError("--formal needs a domain box (--domain, or one recorded in the candidate's metadata)")
    deadline = Deadline(s.time_limit)
    nets = []
    for model, name in ((ref, ref_name), (cand, cand_name)):
        net = lower(model, source=name, conv=True)
        if has_prefix(net):
            raise InputError(f"{name}: --formal needs the dense chain to start at the model input "
                             f"(kept before it: {', '.join(net.onnx.prefix_ops)})")
        nets.append(net)
    if nets[0].onnx.suffix_ops != nets[1].onnx.suffix_ops:
        raise InputError(f"{cand_name}: --formal compares the dense chains, and the ops after them differ "
                         f"({nets[0].onnx.suffix_ops} vs {nets[1].onnx.suffix_ops})")
    if nets[0].input_size != nets[1].input_size or nets[0].output_size != nets[1].output_size:
        raise InputError(f"{cand_name}: its dense chain has a different input or output size than {ref_name}'s")
    tol = s.atol + s.rtol * scale
    replayed = None
    raw = {p.key: p.value for p in cand.metadata_props}.get(META_PREFIX + certificate.META_KEY)
    if raw:
        try:
            cert = certificate.decode(raw, f"{cand_name}: certificate")
        except InputError as exc:
            replayed = {"certified": False, "reason": str(exc)}
        else:
            dtype = np.dtype(nets[1].onnx.np_dtype).name
            progress.stage("formal: certificate replay", deadline)
            rep = replay(nets[0], nets[1], box, cert, deadline=deadline.share(0.9), workers=workers,
                         candidate_dtype=dtype, tolerance=tol)
            replayed = rep.to_dict()
            if rep.certified and rep.bound <= tol:
                how = "certificate replay" + (f" + {rep.difference_method}" if rep.bound == rep.difference_bound else "")
                res = FormalResult(rep.bound, 0.0, [], True, "highs", rep.seconds, scale, how)
    if replayed is None or not (replayed.get("certified") and replayed.get("bound", np.inf) <= tol):
        progress.stage("formal: bounds", deadline)
        res = max_difference(nets[0], nets[1], box, solver=s.solver, tolerance=tol, workers=workers, deadline=deadline)
    passed = res.certified_max_abs_diff <= tol
    if passed:
        verdict = f"certified max |diff| {res.certified_max_abs_diff:.3g} <= tolerance {tol:.3g} ({res.method})"
    elif res.found_max_abs_diff > tol:
        verdict = f"a difference of {res.found_max_abs_diff:.3g} > tolerance {tol:.3g} exists (input in the report)"
    else:
        verdict = (f"inconclusive: certified bound {res.certified_max_abs_diff:.3g} > tolerance {tol:.3g}"
                   + ("" if res.complete else " (time limit)"))
    out = res.to_dict()
    out.update({"passed": passed, "tolerance": tol, "verdict": verdict, "replay": replayed,
                "compared": "dense chains" + (f" (identical ops after them: {', '.join(nets[0].onnx.suffix_ops)})"
                                              if nets[0].onnx.suffix_ops else "")})
    return out


# ---- inspect ------------------------------------------------------------------------------------------------------
def inspect(model: onnx.ModelProto | str | os.PathLike) -> dict:
    """Facts about a model: input/output, lowered chain, kept prefix/suffix ops, size, onnxcomp metadata."""
    proto, name, size = _load(model)
    net = lower(proto, source=name, conv=True)  # what the exact passes read (the lossy ones keep convolutions)
    inp = real_inputs(proto)[0]
    octx = net.onnx
    layers = [
        {"layer": k, "in": l.n_in, "out": l.n_out, "activation": l.activation, "params": l.params,
         "nonzero": l.nonzero_params, "source": l.source,
         **({"kind": l.op, "shape": list(l.out_shape)} if hasattr(l, "kernel") else {})}
        for k, l in enumerate(net.layers)
    ]
    return {
        "file": name,
        "file_bytes": size if size is not None else len(proto.SerializeToString()),
        "input": {"name": inp.name, "shape": list(value_shape(inp)),
                  "dtype": onnx.TensorProto.DataType.Name(inp.type.tensor_type.elem_type).lower()},
        "outputs": [{"name": o.name, "shape": list(value_shape(o))} for o in proto.graph.output],
        "opset": max([o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] or [0]),
        "ir_version": proto.ir_version,
        "producer": proto.producer_name,
        "chain": {"input": octx.chain_input, "output": octx.chain_output, "layers": layers},
        "prefix_ops": octx.prefix_ops,
        "suffix_ops": octx.suffix_ops,
        "summary": model_summary(net, size if size is not None else len(proto.SerializeToString())),
        "metadata": {p.key: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)},
        "onnxcomp_version": __version__,
    }


def option_names() -> dict[str, list[str]]:
    """Every long option name each face accepts: ``run`` settings, pass options, ``verify`` settings."""
    load_passes()
    return {"run": sorted(RUN_KEYS), "passes": sorted(all_option_specs()), "verify": sorted(VERIFY_KEYS)}


__all__ = ["compress", "verify", "inspect", "Result", "RunSettings", "VerifySettings"]
