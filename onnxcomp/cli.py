"""The ``onnxcomp`` command line: ``run``, ``verify``, ``inspect``, ``passes``.

The only module that prints, parses flags or chooses exit codes:
0 ok; 1 verification or budget failed; 2 bad input or usage (one line on stderr naming the file,
node or flag; the traceback only with ``--debug``); 130 interrupted (nothing written).
"""

from __future__ import annotations

import sys
import traceback
import warnings
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .api import RunOptions, compile_model, inspect_model, verify_files
from .errors import OnnxcompError
from .milp import SOLVERS
from .pipeline import COMPOSITES, REGISTRY, Progress, load_passes
from .verify import ATOL, CORNERS, RTOL, SAMPLES

try:  # typer >= 0.25 vendors click; older versions use click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exceptions

app = typer.Typer(
    name="onnxcomp",
    help="Make ReLU networks smaller: exactly where provable, within a stated budget where allowed.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Tables keep a readable width when stdout is a file or a CI log (rich assumes 80 columns there).
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class _RichProgress(Progress):
    """A transient progress bar on stderr, shown only on a terminal and for long runs."""

    def __init__(self) -> None:
        self._bar = None
        self._task = None

    def start(self, description: str, total: int) -> None:
        if not sys.stderr.isatty() or total < 50_000:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TimeRemainingColumn

        self._bar = Bar("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=err, transient=True)
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _version(value: bool) -> None:
    if value:
        out.print(f"onnxcomp {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    """onnxcomp: an ONNX graph-to-graph compiler for ReLU networks."""


def _size(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _print_run(report) -> None:
    before, after = report.model["before"], report.model["after"]
    table = Table(title="onnxcomp run", show_edge=False)
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("hidden widths", str(before["widths"]), str(after["widths"]))
    table.add_row("params", f"{before['params']:,}", f"{after['params']:,}")
    table.add_row("nonzero params", f"{before['nonzero_params']:,}", f"{after['nonzero_params']:,}")
    table.add_row("MACs / sample", f"{before['macs']:,}", f"{after['macs']:,}")
    table.add_row("file size", _size(before["file_bytes"]), _size(after["file_bytes"]))
    out.print(table)
    for entry in report.passes:
        extra = entry.get("message", "")
        out.print(f"  pass {entry['name']:<10} {entry.get('seconds', 0):8.2f} s  {extra}")
    fid = report.fidelity or {}
    if fid.get("summary"):
        out.print(f"  fidelity ({'exact, no change' if fid.get('exact') else 'lossy'}): {fid['summary']}")
    if fid.get("budget"):
        b = fid["budget"]
        out.print(f"  budget {b['flags']}: validation {b['validation']['top1_agreement']:.4f} agreement, held-out "
                  f"{b['held_out']['top1_agreement']:.4f} agreement, {'met' if b['met_on_held_out'] else 'NOT met'} on held-out")
    if report.latency_ms:
        lat = report.latency_ms
        out.print("  latency ms " + ", ".join(f"{k}: {lat['before'][k]:.3f} -> {lat['after'].get(k, float('nan')):.3f}"
                                               for k in lat["before"]))
    for line in report.warnings:
        err.print(f"onnxcomp: warning: {line}")
    if report.domain and report.domain.get("note"):
        out.print(f"  domain: {report.domain['note']}")


"""--solver values (those ``onnxcomp.milp.select`` takes)."""

_LAP_VARIANTS = {"full": ("full", None), "lap": ("full", None), "forward": ("forward", None), "lfp": ("forward", None),
                 "backward": ("backward", None), "lbp": ("backward", None), "lap-forward": ("full", "forward"),
                 "lap-backward": ("full", "backward"), "lap-forward-seq": ("full", "forward-seq"),
                 "lap-backward-seq": ("full", "backward-seq")}


def _lossy_options(sparsity, bits, score, granularity, quant, max_drop, min_agreement, max_class_drop, drop,
                   lap_variant, fisher_objective) -> dict:
    """Flags of the lossy passes (issue 4) as pass options; LAP's ordered variants become ``lap_order``."""
    variant = _LAP_VARIANTS.get(lap_variant.lower())
    if variant is None:
        raise click_exceptions.BadParameter(f"expected one of {', '.join(_LAP_VARIANTS)}", param_hint="--lap-variant")
    return {"sparsity": sparsity, "bits": bits, "score": score, "granularity": granularity, "quant": quant,
            "max_drop": max_drop, "min_agreement": min_agreement, "max_class_drop": max_class_drop, "drop": drop,
            "lap_variant": variant[0], "lap_order": variant[1], "fisher_objective": fisher_objective}


@app.command()
def run(
    model: str = typer.Argument(..., help="Input ONNX model."),
    passes: str = typer.Option("", "-p", "--passes", help="Comma-separated passes, e.g. stable,lap (see `onnxcomp passes`)."),
    output: str = typer.Option(..., "-o", "--output", help="Output ONNX file (written only if verified)."),
    domain: Optional[str] = typer.Option(None, "--domain", help="Input domain: LO:HI, a .vnnlib file, a .npz with lo/hi, or 'data'."),
    data: Optional[str] = typer.Option(None, "--data", help="Samples (.npy or .npz with 'x'), shape (N, features)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Class labels (.npy or .npz with 'y'), one per --data row."),
    report: Optional[str] = typer.Option(None, "--report", help="Write the JSON report here."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same inputs and seed give the same output file)."),
    device: str = typer.Option("auto", "--device", help="onnxruntime device: auto, cpu or cuda."),
    samples: int = typer.Option(SAMPLES, "--samples", min=0, help="Uniform domain samples for sampling and verification."),
    corners: int = typer.Option(CORNERS, "--corners", min=0, help="Maximum number of domain corners used."),
    atol: float = typer.Option(ATOL, "--atol", min=0.0, help="Absolute tolerance of the verification."),
    rtol: float = typer.Option(RTOL, "--rtol", min=0.0, help="Tolerance relative to the output scale."),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", min=0.0, help="Seconds for the MILP proof (undecided neurons are kept)."),
    solver: str = typer.Option("auto", "--solver", help="MILP solver: auto (Gurobi if licensed, else SCIP), scip or gurobi."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Solver threads."),
    stability_method: str = typer.Option("auto", "--stability-method", help="auto, isa, per-neuron, or split (input branch and bound)."),
    sparsity: Optional[float] = typer.Option(None, "--sparsity", help="prune: fraction of weights to zero, 0 <= s < 1."),
    bits: Optional[int] = typer.Option(None, "--bits", help="quantize: bits per weight index, 1..8 (k-means codebook of 2^bits values)."),
    score: Optional[str] = typer.Option(None, "--score", help="Score: magnitude, lap or fisher (drop also: dependence); default: the scoring analysis that ran."),
    granularity: str = typer.Option("layer", "--granularity", help="prune: the sparsity per layer or global (one threshold)."),
    quant: str = typer.Option("kmeans", "--quant", help="quantize: kmeans (codebook + packed indices) or int8 (per-channel DequantizeLinear)."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Budget: max accuracy drop in points (needs labels)."),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="Budget: min top-1 agreement with the original, in %."),
    max_class_drop: Optional[float] = typer.Option(None, "--max-class-drop", help="Budget: max accuracy drop of the worst class, in points (needs labels)."),
    drop: Optional[float] = typer.Option(None, "--drop", help="drop: fraction of hidden neurons to remove."),
    lap_variant: str = typer.Option("full", "--lap-variant", help="LAP variant: full, forward (LFP), backward (LBP), lap-forward, lap-backward, lap-forward-seq, lap-backward-seq."),
    fisher_objective: str = typer.Option("auto", "--fisher-objective", help="fisher: auto, unsupervised, gradient or gradient+hessian."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    """Compile MODEL with the given passes, verify the result against MODEL, write it to OUTPUT."""
    # Checked here, not where they are used: a pass that never reaches its solver would otherwise
    # accept a misspelt value silently.
    if solver not in SOLVERS:
        raise click_exceptions.BadParameter(f"{solver!r}: expected one of {', '.join(SOLVERS)}", param_hint="--solver")
    from passes.analysis.stability import METHODS

    if stability_method not in METHODS:
        raise click_exceptions.BadParameter(f"{stability_method!r}: expected one of {', '.join(METHODS)}",
                                            param_hint="--stability-method")
    if time_limit is not None and not time_limit > 0:
        raise click_exceptions.BadParameter(f"{time_limit:g}: expected seconds > 0", param_hint="--time-limit")
    pass_options = {"time_limit": time_limit, "solver": solver, "threads": threads,
                    "stability_method": stability_method}
    pass_options.update(_lossy_options(sparsity, bits, score, granularity, quant, max_drop, min_agreement,
                                       max_class_drop, drop, lap_variant, fisher_objective))
    opts = RunOptions(domain=domain, data=data, labels=labels, seed=seed, device=device, samples=samples,
                      corners=corners, atol=atol, rtol=rtol, report=report, pass_options=pass_options)
    rep, result = compile_model(model, passes, output, opts, progress=_RichProgress())
    _print_run(rep)
    out.print(f"verify {result.summary()}")
    out.print(f"wrote {output}")


@app.command()
def verify(
    reference: str = typer.Argument(..., help="The original ONNX model."),
    candidate: str = typer.Argument(..., help="The model that should compute the same function."),
    domain: Optional[str] = typer.Option(None, "--domain", help="LO:HI, .vnnlib, .npz (lo/hi) or 'data'; default: the domain recorded by onnxcomp in CANDIDATE."),
    data: Optional[str] = typer.Option(None, "--data", help="Samples (.npy or .npz with 'x')."),
    samples: int = typer.Option(SAMPLES, "--samples", min=0, help="Uniform domain samples."),
    corners: int = typer.Option(CORNERS, "--corners", min=0, help="Maximum number of domain corners."),
    seed: int = typer.Option(0, "--seed"),
    atol: float = typer.Option(ATOL, "--atol", min=0.0),
    rtol: float = typer.Option(RTOL, "--rtol", min=0.0, help="Tolerance relative to the output scale."),
    device: str = typer.Option("auto", "--device"),
    report: Optional[str] = typer.Option(None, "--report", help="Write the JSON report here."),
    formal: bool = typer.Option(False, "--formal", help="Also certify max |difference| over the domain box with a MILP."),
    time_limit: float = typer.Option(60.0, "--time-limit", min=0.0, help="Seconds for --formal (the bound stays valid, only looser)."),
    solver: str = typer.Option("auto", "--solver", help="MILP solver for --formal: auto, scip or gurobi."),
    debug: bool = typer.Option(False, "--debug"),
) -> None:
    """Check that CANDIDATE computes what REFERENCE computes (exit 0 PASSED, 1 FAILED)."""
    rep, result = verify_files(reference, candidate, domain=domain, data=data, samples=samples, corners=corners,
                               seed=seed, atol=atol, rtol=rtol, device=device, report_path=report,
                               formal=formal, time_limit=time_limit, solver=solver)
    if rep.formal:
        f = rep.formal
        out.print(f"formal ({f['solver']}, {f['seconds']:.1f} s, {f['compared']}): {f['verdict']}")
    out.print(result.summary())
    if not result.passed:
        raise typer.Exit(1)


@app.command()
def inspect(
    model: str = typer.Argument(..., help="ONNX model."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    debug: bool = typer.Option(False, "--debug"),
) -> None:
    """Show the lowered chain (layers, widths, params), kept prefix/suffix ops and file size."""
    info = inspect_model(model)
    if as_json:
        import json

        out.print_json(json.dumps(info))
        return
    i = info["input"]
    out.print(f"{info['file']}  ({_size(info['file_bytes'])}, opset {info['opset']}, IR {info['ir_version']}, producer {info['producer'] or '-'})")
    out.print(f"input  {i['name']} {i['shape']} {i['dtype']}")
    for o in info["outputs"]:
        out.print(f"output {o['name']} {o['shape']}")
    table = Table(show_edge=False)
    for col in ("layer", "in", "out", "activation", "params", "nonzero", "source"):
        table.add_column(col, justify="right" if col in ("in", "out", "params", "nonzero") else "left")
    for l in info["chain"]["layers"]:
        table.add_row(str(l["layer"]), str(l["in"]), str(l["out"]), l["activation"], f"{l['params']:,}", f"{l['nonzero']:,}", l["source"])
    out.print(table)
    s = info["summary"]
    out.print(f"hidden widths {s['widths']}, params {s['params']:,}, MACs/sample {s['macs']:,}")
    out.print(f"kept before the chain: {', '.join(info['prefix_ops']) or 'nothing'}")
    out.print(f"kept after the chain:  {', '.join(info['suffix_ops']) or 'nothing'}")
    for k, v in info["metadata"].items():
        out.print(f"{k}: {v if len(v) < 120 else v[:117] + '...'}")


@app.command("passes")
def list_passes() -> None:
    """List the available passes and composite names."""
    load_passes()
    table = Table(show_edge=False)
    for col in ("name", "kind", "exact", "what it does", "paper"):
        table.add_column(col)
    for name in sorted(COMPOSITES):
        c = COMPOSITES[name]
        steps = " -> ".join(c.steps + ((c.default_next,) if c.default_next else ()))
        table.add_row(name, "composite", "", f"{c.summary} ({steps})", c.paper)
    for name in sorted(REGISTRY):
        p = REGISTRY[name]
        table.add_row(name, p.kind, "yes" if p.exact else "lossy", p.summary, p.paper)
    out.print(table)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map every failure to one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    with warnings.catch_warnings():
        if not debug:  # library warnings (numpy overflow, deprecations) would break the one-line contract
            warnings.simplefilter("ignore")
        return _run_command(argv, debug)


def _run_command(argv: list[str], debug: bool) -> int:
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="onnxcomp", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except click_exceptions.NoArgsIsHelpError as exc:
        err.print(exc.format_message(), markup=False)
        return 2
    except click_exceptions.UsageError as exc:
        msg = exc.format_message().strip().splitlines()
        err.print(f"onnxcomp: error: {' '.join(m.strip() for m in msg)}", markup=False)
        return 2
    except (KeyboardInterrupt, typer.Abort):
        err.print("onnxcomp: interrupted; nothing written", markup=False)
        return 130
    except OnnxcompError as exc:
        if debug:
            traceback.print_exc()
        err.print(f"onnxcomp: error: {exc}", markup=False)
        return exc.exit_code
    except Exception as exc:  # a bug: still one line unless --debug
        if debug:
            traceback.print_exc()
        err.print(f"onnxcomp: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", markup=False)
        return 2


def entry() -> None:
    sys.exit(main())
