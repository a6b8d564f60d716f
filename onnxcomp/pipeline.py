"""Pass declarations, the registry, ``-p`` expansion and the PassManager.

A pass is ONE declaration (``@register``): its name, kind (analysis / exact transform / lossy
transform), paper, what it needs from the user (an input domain, data rows, labels), which annotations
it requires from earlier passes and which it provides (by type), and its options as a typed dataclass
(:mod:`onnxcomp.options`).  The CLI flags, the ``--config`` keys and the ``onnxcomp.compress`` keywords
are all generated from these declarations; nothing else in the core knows a pass by name.

The manager:

* expands composite names (``stable`` = sample, bounds, falsify, milp, fold) and inserts the provider of
  every required annotation that no earlier pass provides (``-p fold`` runs ``bounds`` first);
* checks needs before a pass runs (a missing domain is one message, here, naming the pass and the flag);
* runs the pass with its typed options, timing it;
* checks the contract of its kind after: an analysis returns exactly its declared annotations and leaves
  the network untouched (the IR's arrays are read-only, and the weights' fingerprint is compared); a
  transform returns a ``Network`` with the same input and output sizes.  A broken contract is an
  internal error (exit code 3), never blamed on the user's input.

Passes return a :class:`PassResult`: their annotations or new network, the report entry, and report
sections (``stable``).  A later pass reads an earlier one's annotation by type (``ctx.get(Stability)``),
never through a dictionary of extras.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .errors import InputError, InternalError, OnnxcompError, OptionError, PostconditionError, PreconditionError, UsageError
from .ir import Box, Network
from .options import OptionSpec, build, merge_specs, specs
from .timing import Deadline

ANALYSIS = "analysis"
EXACT = "exact"
LOSSY = "lossy"
KIND_NAMES = {ANALYSIS: "analysis", EXACT: "exact transform", LOSSY: "lossy transform"}

DOMAIN = "domain"
INPUTS = "inputs"
DATA = "data"
LABELS = "labels"
NEEDS = {
    DOMAIN: ("proves facts over an input domain", "--domain"),
    INPUTS: ("runs the model on inputs", "--domain or --data"),
    DATA: ("needs calibration samples", "--data"),
    LABELS: ("needs class labels", "--labels (or 'y' in the --data .npz)"),
}
"""What a pass may need from the user: why (for the message) and the flag that provides it."""

RUN_NEEDS = (INPUTS,)
"""What every run needs whatever its passes: inputs to verify the written model on (``api.compress``)."""
RUN = "run"

PASSES_PACKAGE = "onnxcomp.passes"
ENTRY_POINT_GROUP = "onnxcomp.passes"
PLUGINS_ENV = "ONNXCOMP_PASSES"
"""Comma-separated modules imported for their passes (besides the entry point group), e.g. a pass of
your own in ``my_pass.py`` on the Python path: ``ONNXCOMP_PASSES=my_pass onnxcomp run ...``."""


@dataclass(frozen=True)
class NoOptions:
    """The options of a pass that has none."""


@dataclass(frozen=True)
class PassSpec:
    """One registered pass (see the module docstring)."""

    name: str
    kind: str
    summary: str
    fn: Callable
    paper: str = ""
    options: type = NoOptions
    needs: tuple = ()
    requires: tuple | Callable = ()
    uses: tuple = ()
    provides: tuple = ()
    doc: str = ""
    conv: bool = False
    """The pass handles convolution layers (``onnxcomp.conv.Conv``) as well as dense ones."""

    @property
    def exact(self) -> bool:
        return self.kind != LOSSY

    @property
    def is_transform(self) -> bool:
        return self.kind != ANALYSIS

    def required(self, opts: Any) -> tuple:
        """Annotation types this pass needs before it runs, for its options ``opts``."""
        return tuple(self.requires(opts)) if callable(self.requires) else tuple(self.requires)

    def option_specs(self) -> list[OptionSpec]:
        return specs(self.options, self.name)

    def defaults(self) -> Any:
        return self.options()


@dataclass(frozen=True)
class Composite:
    """A name standing for a sequence of passes.  ``default_next`` is appended only when the user did
    not name a transform right after it (``fisher`` alone means fisher then prune)."""

    name: str
    steps: tuple
    summary: str
    paper: str = ""
    default_next: str = ""


@dataclass
class PassResult:
    """What a pass returns: an analysis its ``annotations`` (exactly the declared types), a transform the
    new ``network``; both their report ``entry`` (merged into the pass's line of the report) and report
    ``sections`` (top-level report blocks such as ``stable``)."""

    annotations: tuple = ()
    network: Network | None = None
    entry: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)


REGISTRY: dict[str, PassSpec] = {}
COMPOSITES: dict[str, Composite] = {}


def register(name: str, *, kind: str, summary: str, paper: str = "", options: type = NoOptions,
             needs: Iterable[str] = (), requires: tuple | Callable = (), uses: Iterable[type] = (),
             provides: Iterable[type] = (), conv: bool = False):
    """Decorator declaring ``fn(net, ctx, opts) -> PassResult`` as pass ``name``; ``conv``: it handles
    convolution layers too."""
    if kind not in KIND_NAMES:
        raise ValueError(f"pass kind must be one of {', '.join(KIND_NAMES)}")
    bad = [n for n in needs if n not in NEEDS]
    if bad:
        raise ValueError(f"unknown need {bad[0]!r}; expected one of {', '.join(NEEDS)}")
    specs(options, name)  # a malformed options class fails here, at import, not when a user runs the pass

    def deco(fn):
        doc = (sys.modules[fn.__module__].__doc__ or "").strip()
        REGISTRY[name] = PassSpec(name, kind, summary, fn, paper, options, tuple(needs), requires, tuple(uses),
                                  tuple(provides), doc, conv)
        return fn

    return deco


def register_composite(name: str, steps, summary: str, paper: str = "", default_next: str = "") -> None:
    COMPOSITES[name] = Composite(name, tuple(steps), summary, paper, default_next)


_loaded = False


def load_passes() -> None:
    """Import every module of ``onnxcomp.passes`` (each registers itself), the passes other packages
    declare under the ``onnxcomp.passes`` entry point group, and the modules named in
    ``$ONNXCOMP_PASSES`` (idempotent)."""
    global _loaded
    if _loaded:
        return
    pkg = importlib.import_module(PASSES_PACKAGE)
    for info in sorted(pkgutil.walk_packages(pkg.__path__, PASSES_PACKAGE + "."), key=lambda i: i.name):
        importlib.import_module(info.name)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()
    for name in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UsageError(f"${PLUGINS_ENV}: cannot import pass module '{name}' ({exc})") from None
    _loaded = True


def available() -> list[str]:
    load_passes()
    return sorted(set(REGISTRY) | set(COMPOSITES))


def spec_of(name: str) -> PassSpec:
    load_passes()
    return REGISTRY[name]


def all_option_specs() -> dict[str, OptionSpec]:
    """Every pass option, merged by name (passes may share one, e.g. ``score``)."""
    load_passes()
    return merge_specs([REGISTRY[n].option_specs() for n in sorted(REGISTRY)])


def expand(spec: str | Sequence[str]) -> list[str]:
    """``"stable,lap"`` -> registered pass names in run order (composites expanded, no repeats).

    Required annotations are not inserted here (that needs the options, see :func:`plan`)."""
    load_passes()
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    for item in items:
        if item not in REGISTRY and item not in COMPOSITES:
            raise UsageError(f"unknown pass '{item}'; available: {', '.join(available())}")
    out: list[str] = []
    for i, item in enumerate(items):
        comp = COMPOSITES.get(item)
        if comp is not None and (item not in REGISTRY or comp.default_next):
            steps = list(comp.steps)
            nxt = items[i + 1] if i + 1 < len(items) else None
            follows_transform = nxt is not None and nxt in REGISTRY and REGISTRY[nxt].is_transform
            if comp.default_next and not follows_transform:
                steps.append(comp.default_next)
        else:
            steps = [item]
        out.extend(s for s in steps if s not in out)
    return out


def source_of(annotation: type) -> PassSpec:
    """The pass inserted when ``annotation`` is required and absent: the first registered pass that
    provides it without requiring it itself (an origin, not a refinement)."""
    load_passes()
    for spec in REGISTRY.values():
        if annotation in spec.provides and annotation not in spec.required(spec.defaults()):
            return spec
    raise InternalError(f"no pass provides {annotation.__name__}")


class Options:
    """The option values a user gave (only those; defaults come from each pass's declaration).

    ``flat`` maps long names to values for every pass that declares them; ``per_pass`` maps a pass name
    to values for that pass only (``[pass.NAME]`` tables of a config file), which win."""

    def __init__(self, flat: dict | None = None, per_pass: dict | None = None):
        self.flat = {k: v for k, v in (flat or {}).items() if v is not None}
        self.per_pass = {name: {k: v for k, v in values.items() if v is not None}
                         for name, values in (per_pass or {}).items()}

    def check_names(self) -> None:
        """Refuse names no pass declares (a misspelt option must not silently give the default)."""
        load_passes()
        known = all_option_specs()
        for key in self.flat:
            if key not in known:
                raise OptionError(key, "unknown option")
        for name, values in self.per_pass.items():
            if name not in REGISTRY:
                raise UsageError(f"options for unknown pass '{name}'; passes: {', '.join(sorted(REGISTRY))}")
            declared = {s.name for s in REGISTRY[name].option_specs()}
            for key in values:
                if key not in declared:
                    raise OptionError(key, f"not an option of pass '{name}'")

    def for_pass(self, spec: PassSpec) -> Any:
        declared = {s.name for s in spec.option_specs()}
        values = {k: v for k, v in self.flat.items() if k in declared}
        values.update(self.per_pass.get(spec.name, {}))
        return build(spec.options, values)

    def unused(self, names: Sequence[str]) -> list[str]:
        """Flat options that none of the passes ``names`` declares (given, but without effect)."""
        declared = {s.name for n in names for s in REGISTRY[n].option_specs()}
        return [k for k in self.flat if k not in declared]


class Progress:
    """What a run is doing, for a live display (the command line's, on a terminal); here every method does
    nothing.  Library code only calls these, through ``ctx.progress``:

    * ``stage(name, deadline)``: a stage began (the manager calls it before each pass, ``compress``
      before the verification); ``deadline`` is the run's :class:`~onnxcomp.timing.Deadline`;
    * ``layers(counts)``: neurons decided and still open per hidden ReLU layer, ``[(layer, decided,
      open), ...]`` (``layer`` the id the report names it by), whenever a stability analysis knows more
      (decided: proven stable, or seen on both sides);
    * ``start(description, total)`` / ``advance(n)`` / ``stop()``: a counted task inside the stage (the
      rows sampling runs);
    * ``done()``: the run is over (called once, also on failure); a display goes away before the result.
    """

    def stage(self, name: str, deadline: Deadline | None = None) -> None:  # pragma: no cover - trivial
        pass

    def layers(self, counts: Sequence[tuple[int, int, int]]) -> None:  # pragma: no cover - trivial
        pass

    def start(self, description: str, total: int) -> None:  # pragma: no cover - trivial
        pass

    def advance(self, n: int) -> None:  # pragma: no cover - trivial
        pass

    def stop(self) -> None:  # pragma: no cover - trivial
        pass

    def done(self) -> None:  # pragma: no cover - trivial
        pass


@dataclass
class Context:
    """What a pass may read, and the run-wide services.

    Inputs: the domain ``box``, ``data`` rows and ``labels``; ``seed``, ``device``, ``samples`` and
    ``corners`` (how many domain samples and corners sampling analyses draw); the fidelity ``budget``
    (``onnxcomp.budget.Budget`` or None); the command's ``deadline``; ``jobs``/``cluster`` for the worker
    pool; ``options`` the user gave (:class:`Options`, or a plain dict of flat options).
    State: ``annotations`` by type, the report ``log`` (one entry per pass), report ``sections``,
    ``warnings``, and the ``original`` network the run started from.
    """

    box: Box | None = None
    data: np.ndarray | None = None
    labels: np.ndarray | None = None
    seed: int = 0
    device: str = "auto"
    samples: int = 10000
    corners: int = 1024
    budget: Any = None
    deadline: Deadline = field(default_factory=Deadline)
    jobs: int | None = None
    cluster: str | None = None
    options: Any = None
    annotations: dict = field(default_factory=dict)
    log: list = field(default_factory=list)
    sections: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    progress: Progress = field(default_factory=Progress)
    original: Network | None = None
    source: str = "the model"
    planned: tuple = ()
    _memo: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.options, Options):
            self.options = Options(self.options or {})

    def get(self, annotation: type) -> Any:
        """The annotation of exactly this type an earlier pass left, or ``None``."""
        return self.annotations.get(annotation)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def rng(self, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, salt])

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """A value computed once per run (e.g. the original model's scores on ``data``)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def budget_active(self) -> bool:
        return self.budget is not None and self.budget.active

    def calibration(self):
        """The rows and domain samples data-driven passes fit on (``onnxcomp.calibration``): the data rows,
        only the validation half when a fidelity budget is active, plus domain samples and corners."""
        from .calibration import CalibrationSet, fitting_rows

        rows = None
        if self.data is not None:
            rows = fitting_rows(int(self.data.shape[0]), self.labels, self.seed, self.budget_active)
        return CalibrationSet(self.data, rows, self.box, self.samples, self.corners, self.seed, self.device)

    def fidelity_probe(self):
        """Fidelity of candidate networks to the original model on the data rows (``onnxcomp.budget``)."""
        from .budget import FidelityProbe

        return self.memo("fidelity_probe", lambda: FidelityProbe(self.original, self.data, self.labels, self.device))

    def workers(self):
        """The run's worker pool (:class:`onnxcomp.workers.Workers`), created on first use."""
        from .workers import Workers

        return self.memo("workers", lambda: Workers(self.jobs, self.cluster))

    def close(self) -> None:
        pool = self._memo.pop("workers", None)
        if pool is not None:
            pool.close()


def plan(names: Sequence[str], ctx: Context) -> list[str]:
    """``names`` with the source of every required annotation inserted before its first consumer,
    unless an earlier pass provides it or ``ctx`` already holds it."""
    load_passes()
    have = set(ctx.annotations)
    out: list[str] = []

    def add(name: str, chain: tuple) -> None:
        spec = REGISTRY[name]
        for need in spec.required(ctx.options.for_pass(spec)):
            if need not in have:
                source = source_of(need)
                if source.name in chain:
                    raise InternalError(f"passes require each other in a cycle: {' -> '.join(chain + (source.name,))}")
                add(source.name, chain + (name,))
        out.append(name)
        have.update(spec.provides)

    for name in names:
        add(name, ())
    return out


def lowers_conv(names: Sequence[str]) -> bool:
    """Whether a pipeline reads convolutions into the IR: only when every pass of it handles them (else the
    convolutional prefix stays an opaque part of the graph, and the dense passes work on the head)."""
    load_passes()
    return all(REGISTRY[name].conv for name in expand(list(names)))


def check_needs(spec: PassSpec, net: Network, ctx: Context) -> None:
    """Refuse, in one place and naming the pass and the flag, a pass whose inputs the user did not give."""
    missing = {
        DOMAIN: ctx.box is None,
        INPUTS: ctx.box is None and ctx.data is None,
        DATA: ctx.data is None,
        LABELS: ctx.labels is None,
    }
    for need in spec.needs:
        if missing[need]:
            why, flag = NEEDS[need]
            raise UsageError(f"pass '{spec.name}' {why}: give {flag}")
        if need == DOMAIN and net.onnx is not None and net.onnx.prefix_ops:
            hint = ""
            if spec.conv and "Conv" in net.onnx.prefix_ops:
                others = sorted({n for n in ctx.planned if not REGISTRY[n].conv})
                if others:
                    hint = (f" (convolutions are read into the chain only when every pass handles them, and "
                            f"{', '.join(others)} do{'es' if len(others) == 1 else ''} not yet: run the exact "
                            f"passes alone first (-p stable), then the others on the output)")
            stop = getattr(net.onnx, "input_stop", "")
            if stop and not hint:
                hint = f" (from the input, the chain stops at {stop})"
            raise InputError(f"{ctx.source}: the chain starts after {', '.join(net.onnx.prefix_ops)} ops; pass "
                             f"'{spec.name}' {NEEDS[DOMAIN][0]} and needs the chain to start at the model input"
                             + hint)


def missing_input(need: str, ctx: Context) -> bool:
    """Whether the user gave nothing that meets ``need`` (a domain, inputs, data rows, labels)."""
    return {DOMAIN: ctx.box is None, INPUTS: ctx.box is None and ctx.data is None, DATA: ctx.data is None,
            LABELS: ctx.labels is None}[need]


def run_needs(names: Sequence[str], ctx: Context | None = None) -> list[tuple[str, str]]:
    """What a run of ``names`` needs from the user, as ``(need, who)`` pairs: the declared needs of every
    pass the plan runs (composites expanded, required analyses inserted, for ``ctx``'s options), ``who``
    the pass, then the run's own (:data:`RUN_NEEDS`, ``who`` = ``"run"``).  A need another one implies is
    left out (inputs, when a domain or data is needed).  :func:`check_run_needs` refuses on exactly these,
    and ``onnxcomp passes`` shows them, so the two cannot differ."""
    ctx = ctx if ctx is not None else Context()
    out: list[tuple[str, str]] = []
    for name in plan(expand(list(names)), ctx):
        out += [(need, name) for need in REGISTRY[name].needs if need not in {n for n, _ in out}]
    out += [(need, RUN) for need in RUN_NEEDS if need not in {n for n, _ in out}]
    have = {n for n, _ in out}
    if have & {DOMAIN, DATA}:
        out = [(n, who) for n, who in out if n != INPUTS]
    return out


def check_run_needs(names: Sequence[str], ctx: Context) -> None:
    """Refuse, before any pass runs, a run missing one of :func:`run_needs`, naming the pass and the flag."""
    for need, who in run_needs(names, ctx):
        if missing_input(need, ctx):
            why, flag = NEEDS[need]
            if who == RUN:
                raise UsageError(f"give {flag} (verification needs inputs)")
            raise UsageError(f"pass '{who}' {why}: give {flag}")


class PassManager:
    """Runs passes in order: needs checked, providers inserted, contracts checked, every pass timed."""

    def run(self, net: Network, names: Sequence[str], ctx: Context) -> Network:
        load_passes()
        ctx.options.check_names()
        names = plan(expand(list(names)), ctx)
        ctx.planned = tuple(names)
        for name in names:  # every need checked before any pass spends time
            check_needs(REGISTRY[name], net, ctx)
        if ctx.original is None:
            ctx.original = net
        for name in names:
            net = self.run_one(REGISTRY[name], net, ctx)
        return net

    def run_one(self, spec: PassSpec, net: Network, ctx: Context) -> Network:
        check_needs(spec, net, ctx)
        opts = ctx.options.for_pass(spec)
        for need in spec.required(opts):
            if need not in ctx.annotations:
                raise PreconditionError(f"pass '{spec.name}' requires {need.__name__}, which no earlier pass provided")
        ctx.progress.stage(spec.name, ctx.deadline)
        start = time.perf_counter()
        before = net.fingerprint()
        try:
            result = spec.fn(net, ctx, opts)
        except OnnxcompError as exc:
            # the report still says how far the pass got (e.g. a budget search's trials)
            ctx.log.append({"name": spec.name, "kind": "transform" if spec.is_transform else "analysis",
                            **getattr(exc, "entry", {}), "error": str(exc),
                            "seconds": round(time.perf_counter() - start, 4)})
            err = type(exc)(f"pass '{spec.name}': {exc}") if not isinstance(exc, OptionError) else exc
            raise err from exc
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            raise InternalError(f"internal error in pass '{spec.name}': {type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - start
        if not isinstance(result, PassResult):
            raise PostconditionError(f"pass '{spec.name}' returned {type(result).__name__}, not a PassResult")
        if net.fingerprint() != before:
            raise PostconditionError(f"pass '{spec.name}' changed the network it was given")
        got = [type(a) for a in result.annotations]
        if sorted(t.__name__ for t in got) != sorted(t.__name__ for t in spec.provides):
            raise PostconditionError(f"pass '{spec.name}' returned annotations {[t.__name__ for t in got]}, "
                                     f"declared {[t.__name__ for t in spec.provides]}")
        if spec.is_transform:
            new = result.network
            if not isinstance(new, Network):
                raise PostconditionError(f"transform pass '{spec.name}' did not return a Network")
            if new.input_size != net.input_size or new.output_size != net.output_size:
                raise PostconditionError(f"transform pass '{spec.name}' changed the network's input or output size "
                                         f"({net.input_size}->{net.output_size} became "
                                         f"{new.input_size}->{new.output_size})")
        elif result.network is not None:
            raise PostconditionError(f"analysis pass '{spec.name}' returned a network")
        for annotation in result.annotations:
            ctx.annotations[type(annotation)] = annotation
        ctx.sections.update(result.sections)
        entry = {"name": spec.name, "kind": "transform" if spec.is_transform else "analysis"}
        entry.update(result.entry)
        entry["seconds"] = round(seconds, 4)
        ctx.log.append(entry)
        return result.network if spec.is_transform else net
