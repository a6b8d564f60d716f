"""The ``onnxcomp`` command line: ``run``, ``verify``, ``inspect``, ``passes``, ``precommit``.

A thin face over ``onnxcomp.api``, on typer: the flags of ``run`` and ``verify`` are generated from the
option declarations (``api.RunSettings``, ``api.VerifySettings`` and every pass's options dataclass) as
typer parameters of a generated signature, grouped in help panels; values are passed through unconverted
and checked by the same code as the Python and config faces; an error comes back naming the option, and is
shown here with the flag (or the config file key) that gave it.  ``run`` and ``verify`` are built when
first asked for, so ``onnxcomp --help`` and ``inspect`` import neither the passes nor a solver.

The only module that prints, parses flags or chooses exit codes:
0 ok; 1 verification or budget failed; 2 bad input or usage (one line on stderr naming the file,
node or flag; the traceback only with ``--debug``); 3 internal error (a bug: please report it);
130 interrupted (nothing written).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect as pyinspect
import json
import os
import sys
import time
import traceback
import warnings
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from . import __version__
from .errors import InternalError, OnnxcompError, OptionError, UsageError
from .interrupt import BEFORE_EXIT
from .options import OptionSpec

# Tables keep a readable width when stdout is a file or a CI log (rich assumes 80 columns there).
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, highlight=False, soft_wrap=True)

# The exceptions of the click that typer is built on (typer carries its own copy since 0.2x).
_click_exceptions = importlib.import_module(typer.BadParameter.__module__)

FORMATS = ("text", "json", "md", "junit")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 120}
PROG = "onnxcomp"

# Help panels: which options `onnxcomp run --help` shows together.
IO_PANEL = "Input and output"
RUN_PANEL = "Run settings"
PASS_PANEL = "Pass options"
VERIFY_PANEL = "Verification"


class _RichProgress:
    """The live display of a run (a ``pipeline.Progress`` by its methods: the pipeline module is not
    imported at start-up), transient, on ``console``: the stage and its
    time, the time left of --time-limit, neurons decided / open per layer while a stability pass knows
    them, and a bar for counted tasks.  Shown only when ``console`` is a terminal; the command gives no
    console for --format json|md|junit, so those print none of it."""

    MAX_LAYERS = 8  # layers shown on the layer line (deep networks: the first ones, then a count)

    def __init__(self, console: Console | None) -> None:
        self.console = console if console is not None and console.is_terminal else None
        self._live = None
        self._stage: str | None = None
        self._since = 0.0
        self._deadline = None
        self._layers: list = []
        self._layers_stage: str | None = None
        self._task: list | None = None  # [description, total, completed]
        self._shown = 0.0

    # ---- the Progress interface ---------------------------------------------------------------------------
    def stage(self, name: str, deadline=None) -> None:
        if self.console is None:
            return
        # the counts belong to the pass that told them: a later stage shows its own, if any
        self._stage, self._since, self._deadline, self._task, self._layers = name, time.monotonic(), deadline, None, []
        if self._live is None:
            from rich.live import Live

            self._live = Live(self, console=self.console, transient=True, refresh_per_second=4,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
            BEFORE_EXIT.append(self._give_back_terminal)
        self._refresh()

    def layers(self, counts) -> None:
        if self.console is None:
            return
        first = self._layers_stage != self._stage
        self._layers, self._layers_stage = [(int(k), int(d), int(o)) for k, d, o in counts], self._stage
        if first or time.monotonic() - self._shown > 0.1:  # the first counts of a stage at once, then at most 10/s
            self._refresh()

    def start(self, description: str, total: int) -> None:
        if self.console is not None:
            self._task = [description, int(total), 0]

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._task[2] += int(n)

    def stop(self) -> None:
        self._task = None

    def done(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            BEFORE_EXIT.remove(self._give_back_terminal)

    def _give_back_terminal(self) -> None:
        """Ctrl-C ends the process at once (``onnxcomp.interrupt``), with no ``done()``: show the cursor the
        display hid, and leave the message a line of its own."""
        self.console.file.write("\x1b[?25h\n")
        self.console.file.flush()

    # ---- what it shows ---------------------------------------------------------------------------------------
    def _refresh(self) -> None:
        if self._live is not None:
            self._shown = time.monotonic()
            self._live.refresh()

    def lines(self) -> list[str]:
        """The display as plain lines (the stage, the layers, the counted task)."""
        if self._stage is None:
            return []
        head = f"{self._stage}  {time.monotonic() - self._since:.0f} s"
        if self._deadline is not None and self._deadline.limited:
            head += f"  ·  {max(self._deadline.remaining(), 0.0):.0f} s left of --time-limit"
        out = [head]
        if self._layers:
            shown = [f"layer {k}: {d:,} decided, {o:,} open" for k, d, o in self._layers[:self.MAX_LAYERS]]
            rest = self._layers[self.MAX_LAYERS:]
            if rest:
                shown.append(f"{len(rest)} more layers: {sum(o for _, _, o in rest):,} open")
            out.append("  " + "  ·  ".join(shown))
        if self._task is not None:
            description, total, completed = self._task
            out.append(f"  {description}: {completed:,} / {total:,}")
        return out

    def __rich__(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.text import Text

        lines = self.lines()
        parts: list = [Text(line) for line in lines[:-1 if self._task is not None else None]]
        if self._task is not None:
            _, total, completed = self._task
            parts.append(Group(Text(lines[-1]), ProgressBar(total=max(total, 1), completed=completed, width=40)))
        return Group(*parts)


# ---- options from declarations ----------------------------------------------------------------------------------
def _metavar(spec: OptionSpec) -> str:
    if spec.metavar:
        return spec.metavar
    if spec.choices:
        return "[" + "|".join(str(c) for c in spec.choices) + "]"
    return {int: "INTEGER", float: "FLOAT", str: "TEXT"}.get(spec.type, "VALUE")


def _help(spec: OptionSpec, tag: str = "") -> str:
    text = spec.help
    limited = any(v is not None for v in (spec.min, spec.max, spec.gt, spec.lt))
    if spec.type in (int, float) and limited:
        text += f" ({spec.expectation()})"
    if spec.default is not None and spec.type is not bool:
        text += f"  [default: {spec.default_text()}]"
    return f"{text}  [{tag}]" if tag else text


def _param(name: str, annotation, info, default=None) -> pyinspect.Parameter:
    """One keyword parameter of a generated command signature (typer reads ``Annotated[type, Option]``;
    ``default=...`` makes it required)."""
    return pyinspect.Parameter(name, pyinspect.Parameter.KEYWORD_ONLY, default=default,
                               annotation=Annotated[annotation, info])


def typer_option(spec: OptionSpec, panel: str, tag: str = "") -> pyinspect.Parameter:
    """The typer option for ``spec``, as a parameter of a generated signature: its value reaches the core
    unconverted (a string, ``None`` when not given), so every face checks values the same way."""
    text = escape(_help(spec, tag))  # rich markup would read "[default: 8]" as a style
    if spec.type is bool:
        info = typer.Option(f"{spec.flag}/--no-{spec.flag[2:]}", help=text, rich_help_panel=panel, show_default=False)
        return _param(spec.name, Optional[bool], info)
    names = ([spec.short] if spec.short else []) + [spec.flag]
    info = typer.Option(*names, help=text, metavar=_metavar(spec), rich_help_panel=panel, show_default=False)
    return _param(spec.name, Optional[str], info)


def _generated(name: str, help: str, target: Callable, params: list[pyinspect.Parameter]) -> TyperCommand:
    """A typer command calling ``target(**values)`` whose parameters are ``params`` (made from declarations
    at run time, so written as a signature rather than as a ``def``)."""
    def command(**values):
        return target(**values)

    command.__signature__ = pyinspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    sub = typer.Typer(add_completion=False, rich_markup_mode="rich", pretty_exceptions_enable=False)
    sub.command(name, help=help, context_settings=CONTEXT, cls=_Command)(command)
    return typer.main.get_command(sub)


def _pass_option_specs() -> tuple[dict, dict]:
    """(merged pass options by name, their owners' tags)."""
    from .pipeline import all_option_specs

    merged = all_option_specs()
    return merged, {name: "pass: " + ", ".join(s.owners) for name, s in merged.items()}


def _relabel(exc: OptionError, origins: dict) -> OptionError:
    """The option error in the vocabulary of where the value came from (a flag, a config file key)."""
    return exc.relabel(origins.get(exc.key, "--" + exc.key.replace("_", "-")))


# ---- printing -------------------------------------------------------------------------------------------------------
def _size(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _print_run(report: dict) -> None:
    before, after = report["model"]["before"], report["model"]["after"]
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
    from .formats import active_note

    for entry in report["passes"]:
        out.print(f"  pass {entry['name']:<10} {entry.get('seconds', 0):8.2f} s  {entry.get('message', '')}")
        if entry["name"] == "fold" and active_note(report):
            out.print(f"{'':28}{active_note(report)}", markup=False)
    fid = report.get("fidelity") or {}
    if fid.get("summary"):
        out.print(f"  fidelity on --data ({fid['samples']:,} rows, class predictions against the original): "
                  f"{fid['summary']}")
    if fid.get("budget"):
        b = fid["budget"]
        from .formats import budget_text

        out.print(f"  budget {budget_text(b['flags'])}: validation {b['validation']['top1_agreement']:.4f} agreement, held-out "
                  f"{b['held_out']['top1_agreement']:.4f} agreement, {'met' if b['met_on_held_out'] else 'NOT met'} on held-out")
    lat = report.get("latency_ms")
    if lat:
        out.print("  latency ms " + ", ".join(f"{k}: {lat['before'][k]:.3f} -> {lat['after'].get(k, float('nan')):.3f}"
                                               for k in lat["before"]))
    for line in report.get("warnings", []):
        err.print(f"onnxcomp: warning: {line}", markup=False)
    dom = report.get("domain") or {}
    if dom.get("note"):
        out.print(f"  domain: {dom['note']}")


def _emit(report: dict, fmt: str, report_path: str | None, text) -> None:
    """Print the result in ``fmt``; write ``--report`` (JSON, or JUnit XML with ``--format junit``)."""
    if fmt in ("md", "junit"):
        from . import formats
    if fmt == "text":
        text()
    elif fmt == "json":
        out.print_json(json.dumps(report))
    elif fmt == "md":
        md = formats.markdown(report)
        out.print(md, markup=False)
        formats.append_step_summary(md)
    if report_path:
        from .writer import save_atomic

        body = formats.junit(report) if fmt == "junit" else json.dumps(report, indent=2) + "\n"
        save_atomic(body.encode(), report_path)
    if fmt == "junit":
        text()


# ---- the commands --------------------------------------------------------------------------------------------------
RUN_HELP = ("Compile MODEL with the given passes, verify the result against MODEL, write it to OUTPUT.  Every option "
            "can also come from --config.")
VERIFY_HELP = "Check that CANDIDATE computes what REFERENCE computes (exit 0 PASSED, 1 FAILED)."


def _help_width() -> None:
    """Help in a file or a CI log keeps the width of the tables (typer's rich help assumes 80 columns there,
    and cuts long flags)."""
    if not sys.stdout.isatty():
        from typer import rich_utils

        rich_utils.MAX_WIDTH = rich_utils.MAX_WIDTH or CONTEXT["max_content_width"]


class _Command(TyperCommand):
    """A command whose help keeps its width off a terminal."""

    def format_help(self, ctx, formatter) -> None:
        _help_width()
        return super().format_help(ctx, formatter)


class _Group(TyperGroup):
    """The ``onnxcomp`` group.  ``run`` and ``verify`` are made from the declarations registered when they
    are first asked for (plugins included); listing them in ``--help`` needs only their help line."""

    def list_commands(self, ctx) -> list[str]:
        return sorted(set(self.commands) | set(GENERATED))

    def get_command(self, ctx, name: str):
        if name in GENERATED and name not in self.commands:
            help, build = GENERATED[name]
            if getattr(self, "_listing", False):
                return TyperCommand(name=name, help=help)
            self.commands[name] = build()
        return self.commands.get(name)

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args or ctx.resilient_parsing:
            return super().parse_args(ctx, args)
        with contextlib.redirect_stdout(sys.stderr):  # the help that a bare `onnxcomp` prints is a usage error
            return super().parse_args(ctx, args)

    def format_help(self, ctx, formatter) -> None:
        _help_width()
        self._listing = True
        try:
            return super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(name=PROG, cls=_Group, context_settings=CONTEXT, no_args_is_help=True, rich_markup_mode="rich",
                  pretty_exceptions_enable=False,
                  help="Make ReLU networks smaller: exactly where provable, within a stated budget where allowed.")

DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.", show_default=False)]


def _show_version(value: Optional[bool]) -> None:
    if value:
        out.print(f"{PROG} {__version__}", markup=False)
        raise typer.Exit(0)


@app.callback()
def _root(debug: DebugOption = False,
          version: Annotated[Optional[bool], typer.Option("--version", callback=_show_version, is_eager=True,
                                                          help="Show the version and exit.")] = None) -> None:
    """onnxcomp: an ONNX graph-to-graph compiler for ReLU networks."""


def _output_options() -> list[pyinspect.Parameter]:
    """--report, --format and --debug, the same for run and verify."""
    return [
        _param("report", Optional[str], typer.Option(
            "--report", metavar="FILE", rich_help_panel=IO_PANEL,
            help="Write the report here (JSON; JUnit XML with --format junit).")),
        _param("format", Optional[str], typer.Option(
            "--format", metavar="[" + "|".join(FORMATS) + "]", rich_help_panel=IO_PANEL,
            help="Output: text tables, json, md (Markdown summary, also appended to $GITHUB_STEP_SUMMARY), "
                 "junit (JUnit XML to --report).  \\[default: text]")),
        _param("debug", Optional[bool], typer.Option(
            "--debug", help="Show tracebacks on errors.", rich_help_panel=IO_PANEL)),
    ]


def _run_command() -> TyperCommand:
    from .api import RunSettings
    from .options import specs

    params = [
        _param("model", Optional[str], typer.Argument(metavar="MODEL", show_default=False)),
        _param("passes", Optional[str], typer.Option(
            "-p", "--passes", metavar="NAMES", rich_help_panel=IO_PANEL,
            help="Comma-separated passes, e.g. stable,lap (see `onnxcomp passes`).")),
        _param("output", Optional[str], typer.Option(
            "-o", "--output", metavar="FILE", rich_help_panel=IO_PANEL,
            help="Output ONNX file (written only if verified).")),
        _param("config", Optional[str], typer.Option(
            "--config", metavar="TOML", rich_help_panel=IO_PANEL,
            help="Read the pipeline from a TOML file (keys: the long option names); flags override it.")),
        *_output_options(),
    ]
    params += [typer_option(s, RUN_PANEL) for s in specs(RunSettings)]
    merged, tags = _pass_option_specs()
    params += [typer_option(s, PASS_PANEL, tags[name]) for name, s in merged.items()]
    return _generated("run", RUN_HELP, _run, params)


def _run(model, passes, output, report, config, format, debug, **options) -> None:
    from . import api
    from .options import specs

    merged, _ = _pass_option_specs()
    settings = {s.name: s for s in specs(api.RunSettings)}
    origins: dict = {}
    values: dict = {}
    per_pass: dict = {}
    if config:
        from . import config as config_mod
        from .pipeline import REGISTRY, load_passes

        load_passes()
        cfg = config_mod.load(config, {**settings, **merged},
                              {n: {s.name: s for s in REGISTRY[n].option_specs()} for n in REGISTRY},
                              {"format": FORMATS})
        values.update(cfg.values)
        per_pass = cfg.per_pass
        origins.update({k: cfg.label(k) for k in cfg.values})
    given = {"model": model, "passes": passes, "output": output, "report": report, "format": format}
    given.update(options)
    for key, value in given.items():
        if value is not None:
            values[key] = value
            origins.pop(key, None)
    if format is not None and format not in FORMATS:
        raise UsageError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    if not values.get("model"):
        raise UsageError("missing MODEL (give it as the first argument or as model = ... in --config)")
    if not values.get("output"):
        where = f" (or output = ... in {config})" if config else ""
        raise UsageError(f"missing option -o / --output{where}")
    model_path, out_path = values.pop("model"), values.pop("output")
    report_path, fmt = values.pop("report", None), values.pop("format", "text")
    if fmt == "junit" and not report_path:
        raise UsageError("--format junit writes the JUnit XML to --report; give --report FILE")
    api.check_output_path(out_path, [model_path])
    if report_path:
        api.check_output_path(report_path, [model_path], "--report", other_output=out_path)
    inputs = {k: values.pop(k) for k in ("domain", "data", "labels") if k in values}
    try:
        result = api.compress(model_path, values.pop("passes", ""), pass_options=per_pass,
                              progress=_RichProgress(err if fmt == "text" else None), **inputs, **values)
    except OptionError as exc:
        raise _relabel(exc, origins) from None
    except OnnxcompError as exc:
        failed = getattr(exc, "report", None)
        if failed is not None and report_path:
            _emit(failed, fmt if fmt != "text" else "json", report_path, lambda: None)
        raise
    result.save(out_path)
    rep = result.report

    def text():
        _print_run(rep)
        for line in result.summary().splitlines():
            out.print(line, markup=False)
        out.print(f"wrote {out_path}")

    _emit(rep, fmt, report_path, text)


def _verify_command() -> TyperCommand:
    from .api import VerifySettings
    from .options import specs

    params = [
        _param("reference", str, typer.Argument(metavar="REFERENCE", show_default=False), default=...),
        _param("candidate", str, typer.Argument(metavar="CANDIDATE", show_default=False), default=...),
        *_output_options(),
    ]
    params += [typer_option(s, VERIFY_PANEL) for s in specs(VerifySettings)]
    return _generated("verify", VERIFY_HELP, _verify, params)


GENERATED = {"run": (RUN_HELP, _run_command), "verify": (VERIFY_HELP, _verify_command)}
"""The commands whose flags are generated from declarations: (help line, builder)."""


def _verify(reference, candidate, report, format, debug, **options) -> None:
    from . import api

    fmt = format or "text"
    if fmt not in FORMATS:
        raise UsageError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "junit" and not report:
        raise UsageError("--format junit writes the JUnit XML to --report; give --report FILE")
    if report:
        api.check_output_path(report, [reference, candidate], "--report")
    given = {k: v for k, v in options.items() if v is not None}
    inputs = {k: given.pop(k) for k in ("domain", "data") if k in given}
    try:
        result = api.verify(reference, candidate, progress=_RichProgress(err if fmt == "text" else None), **inputs,
                            **given)
    except OptionError as exc:
        raise _relabel(exc, {}) from None

    def text():
        f = result.formal
        if f:
            out.print(f"formal ({f['solver'] or 'no solver'}, {f['seconds']:.1f} s, {f['compared']}): {f['verdict']}", markup=False)
        out.print(result.summary(), markup=False)
        if not result.passed:
            from .formats import checks

            for check in checks(result.report):
                if not check["passed"]:
                    out.print(f"  {check['name']}: {check['detail']}", markup=False)

    _emit(result.report, fmt, report, text)
    if not result.passed:
        raise SystemExit(1)


@app.command("inspect", context_settings=CONTEXT, cls=_Command)
def inspect_command(model: Annotated[str, typer.Argument(metavar="MODEL", show_default=False)],
                    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.",
                                                          show_default=False)] = False,
                    debug: DebugOption = False) -> None:
    """Show the lowered chain (layers, widths, params), kept prefix/suffix ops and file size."""
    from .api import inspect as inspect_model

    info = inspect_model(model)
    if as_json:
        out.print_json(json.dumps(info))
        return
    i = info["input"]
    out.print(f"{info['file']}  ({_size(info['file_bytes'])}, opset {info['opset']}, IR {info['ir_version']}, "
              f"producer {info['producer'] or '-'})")
    out.print(f"input  {i['name']} {i['shape']} {i['dtype']}")
    for o in info["outputs"]:
        out.print(f"output {o['name']} {o['shape']}")
    table = Table(show_edge=False)
    for col in ("layer", "in", "out", "activation", "params", "nonzero", "source"):
        table.add_column(col, justify="right" if col in ("in", "out", "params", "nonzero") else "left")
    for l in info["chain"]["layers"]:
        table.add_row(str(l["layer"]), str(l["in"]), str(l["out"]), l["activation"], f"{l['params']:,}",
                      f"{l['nonzero']:,}", l["source"])
    out.print(table)
    s = info["summary"]
    out.print(f"hidden widths {s['widths']}, params {s['params']:,}, MACs/sample {s['macs']:,}")
    out.print(f"kept before the chain: {', '.join(info['prefix_ops']) or 'nothing'}")
    out.print(f"kept after the chain:  {', '.join(info['suffix_ops']) or 'nothing'}")
    for k, v in info["metadata"].items():
        out.print(f"{k}: {v if len(v) < 120 else v[:117] + '...'}")


def _needs_text(pairs: list) -> str:
    """``--domain (bounds proves facts over an input domain); ...`` for :func:`pipeline.run_needs`' pairs."""
    from .pipeline import NEEDS, RUN

    return "; ".join(f"{NEEDS[need][1]} ({'the run verifies the written file on them' if who == RUN else who + ' ' + NEEDS[need][0]})"
                     for need, who in pairs)


def _needs_with_options(name: str) -> list[str]:
    """``with --score fisher: --data (...)`` for each option choice that makes the run of ``name`` need more
    than its defaults do (an analysis it then inserts)."""
    from .pipeline import COMPOSITES, REGISTRY, Context, Options, expand, run_needs

    base = run_needs([name])
    steps = expand([name]) if name in COMPOSITES else [name]
    out = []
    for spec in {s.name: s for step in steps for s in REGISTRY[step].option_specs()}.values():
        for choice in spec.choices or ():
            extra = [p for p in run_needs([name], Context(options=Options({spec.name: choice})))
                     if p[0] not in {n for n, _ in base}]
            if extra:
                out.append(f"with {spec.flag} {choice}: {_needs_text(extra)}")
    return out


def _print_needs(name: str) -> None:
    from .pipeline import run_needs

    out.print(f"  needs:    {_needs_text(run_needs([name])) or 'nothing from the user'}", markup=False)
    for line in _needs_with_options(name):
        out.print(f"            {line}", markup=False)


@app.command("passes", context_settings=CONTEXT, cls=_Command)
def list_passes(name: Annotated[Optional[str], typer.Argument(metavar="NAME", show_default=False)] = None) -> None:
    """List the passes (what each needs, provides and its options), or show one pass in full."""
    from .pipeline import COMPOSITES, KIND_NAMES, NEEDS, REGISTRY, load_passes, run_needs

    load_passes()
    if name is not None:
        if name in COMPOSITES:
            c = COMPOSITES[name]
            steps = " -> ".join(c.steps + ((f"[{c.default_next}]",) if c.default_next else ()))
            out.print(f"{name}: composite, {c.summary}\n  runs: {steps}\n  paper: {c.paper}")
            _print_needs(name)
            if name not in REGISTRY:
                return
            out.print("")
        if name not in REGISTRY:
            raise UsageError(f"unknown pass '{name}'; available: {', '.join(sorted(set(REGISTRY) | set(COMPOSITES)))}")
        p = REGISTRY[name]
        out.print(f"{p.name}: {KIND_NAMES[p.kind]}, {p.summary}", markup=False)
        if p.paper:
            out.print(f"  paper:    {p.paper}", markup=False)
        _print_needs(p.name)
        req = p.required(p.defaults())
        out.print(f"  requires: {', '.join(t.__name__ for t in req) or 'no earlier annotation'}"
                  + (" (more with some options, see below)" if callable(p.requires) else ""), markup=False)
        if p.uses:
            out.print(f"  uses:     {', '.join(t.__name__ for t in p.uses)} when present", markup=False)
        out.print(f"  provides: {', '.join(t.__name__ for t in p.provides) or ('a new network' if p.is_transform else '-')}",
                  markup=False)
        specs = p.option_specs()
        if specs:
            out.print("  options (flag / config key / compress() keyword):", markup=False)
            for s in specs:
                default = f" [default: {s.default_text()}]" if s.default is not None else ""
                out.print(f"    {s.flag} / {s.name}: {s.help}; {s.expectation()}{default}", markup=False)
        if p.doc:
            out.print("")
            out.print(p.doc, markup=False)
        return
    table = Table(show_edge=False)
    for col in ("name", "kind", "needs", "provides", "options", "what it does"):
        table.add_column(col)
    for cname in sorted(COMPOSITES):
        c = COMPOSITES[cname]
        steps = " -> ".join(c.steps + ((c.default_next,) if c.default_next else ()))
        table.add_row(cname, "composite", ", ".join(NEEDS[n][1] for n, _ in run_needs([cname])), "", "",
                      escape(f"{c.summary} ({steps})"))
    for pname in sorted(REGISTRY):
        p = REGISTRY[pname]
        provides = ", ".join(t.__name__ for t in p.provides) or ("network" if p.is_transform else "")
        table.add_row(pname, KIND_NAMES[p.kind], ", ".join(NEEDS[n][1] for n, _ in run_needs([pname])), provides,
                      " ".join(s.flag for s in p.option_specs()), escape(p.summary))
    out.print(table)


@app.command("precommit", context_settings=CONTEXT, cls=_Command)
def precommit(files: Annotated[Optional[list[str]], typer.Argument(metavar="FILES...", show_default=False)] = None,
              config: Annotated[str, typer.Option(
                  "--config", help="TOML file naming, per candidate model, the reference it must match.",
                  show_default=True)] = "onnxcomp-verify.toml",
              debug: DebugOption = False) -> None:
    """Verify changed ONNX FILES against the references the config names (a pre-commit hook)."""
    from . import api
    from .precommit import checks_for, load_config, unchecked

    files = files or []
    cfg = load_config(config)
    checks = checks_for(cfg, list(files))
    failed = 0
    for check in checks:
        result = api.verify(check.reference, check.candidate, **check.verify_options())
        word = "PASSED" if result.passed else "FAILED"
        out.print(f"{check.candidate} vs {check.reference}: {word}: {result.summary()}", markup=False)
        failed += not result.passed
    for path in unchecked(cfg, list(files)):
        err.print(f"onnxcomp: warning: {path} changed but no check in {config} names it", markup=False)
    if failed:
        raise SystemExit(1)


def command() -> _Group:
    """The command group as typer builds it now; ``run`` and ``verify`` are made from the declarations
    registered when they are first looked up (plugins included)."""
    return typer.main.get_command(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map every failure to one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    with warnings.catch_warnings():
        if not debug:  # library warnings (numpy overflow, deprecations) would break the one-line contract
            warnings.simplefilter("ignore")
        return _run_app(argv, debug)


def _run_app(argv: list[str], debug: bool) -> int:
    try:
        group = command()
        if os.environ.get(f"_{PROG.upper()}_COMPLETE"):  # a shell asks for completions: typer answers and exits
            group.main(args=argv, prog_name=PROG)
        with group.make_context(PROG, argv) as ctx:
            rv = group.invoke(ctx)
        return rv if isinstance(rv, int) else 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except _click_exceptions.NoArgsIsHelpError:  # the group printed its help on stderr
        return 2
    except _click_exceptions.UsageError as exc:
        msg = exc.format_message().strip().splitlines()
        err.print(f"onnxcomp: error: {' '.join(m.strip() for m in msg)}", markup=False)
        return 2
    except BrokenPipeError:  # stdout closed early (`| head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (KeyboardInterrupt, typer.Abort):
        err.print("onnxcomp: interrupted; nothing written", markup=False)
        return 130
    except InternalError as exc:
        if debug:
            traceback.print_exc()
        err.print(f"onnxcomp: internal error: {exc} (a bug in onnxcomp; rerun with --debug for the traceback)",
                  markup=False)
        return exc.exit_code
    except OnnxcompError as exc:
        if debug:
            traceback.print_exc()
        err.print(f"onnxcomp: error: {exc}", markup=False)
        return exc.exit_code
    except Exception as exc:  # a bug: still one line unless --debug
        if debug:
            traceback.print_exc()
        err.print(f"onnxcomp: internal error: {type(exc).__name__}: {exc} (a bug in onnxcomp; rerun with --debug "
                  f"for the traceback)", markup=False)
        return InternalError.exit_code


def entry() -> None:
    sys.exit(main())
