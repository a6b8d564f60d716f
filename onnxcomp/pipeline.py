"""Pass registry, ``-p`` parsing and the PassManager.

Passes register themselves with ``@register(name, kind, ...)``; the registry is filled by importing the
``passes`` package (nothing else in ``onnxcomp/`` knows a pass by name).  Composite names expand to
sequences (``stable`` = sample, bounds, falsify, milp, fold).  The manager times every pass, checks
the contract of its kind (an analysis leaves the network's weights untouched; a transform returns a
``Network`` with the same input and output sizes) and prefixes errors with the pass name.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import OnnxcompError, PassError, UsageError
from .ir import Box, Network

ANALYSIS = "analysis"
TRANSFORM = "transform"


@dataclass(frozen=True)
class PassInfo:
    """A registered pass: ``fn(net, ctx)`` returns an annotation (analysis) or a Network (transform)."""

    name: str
    kind: str
    fn: Callable
    summary: str
    paper: str = ""
    exact: bool = True
    requires: tuple = ()


@dataclass(frozen=True)
class Composite:
    """A name standing for a sequence of passes.  ``default_next`` is appended only when the user did
    not name a transform right after it (``fisher`` alone means fisher then prune)."""

    name: str
    steps: tuple
    summary: str
    paper: str = ""
    default_next: str = ""


REGISTRY: dict[str, PassInfo] = {}
COMPOSITES: dict[str, Composite] = {}


def register(name: str, kind: str, summary: str, paper: str = "", exact: bool = True, requires: tuple = ()):
    """Decorator registering ``fn`` as pass ``name``."""
    if kind not in (ANALYSIS, TRANSFORM):
        raise ValueError(f"pass kind must be {ANALYSIS!r} or {TRANSFORM!r}")

    def deco(fn):
        REGISTRY[name] = PassInfo(name, kind, fn, summary, paper, exact, tuple(requires))
        return fn

    return deco


def register_composite(name: str, steps, summary: str, paper: str = "", default_next: str = "") -> None:
    COMPOSITES[name] = Composite(name, tuple(steps), summary, paper, default_next)


def load_passes() -> None:
    """Import the ``passes`` package so that every pass registers itself (idempotent)."""
    importlib.import_module("passes")


def available() -> list[str]:
    load_passes()
    return sorted(set(REGISTRY) | set(COMPOSITES))


def expand(spec: str) -> list[str]:
    """``"stable,lap"`` -> concrete pass names in run order, requirements inserted, no repeats."""
    load_passes()
    items = [s.strip() for s in (spec or "").split(",") if s.strip()]
    for item in items:
        if item not in REGISTRY and item not in COMPOSITES:
            raise UsageError(f"unknown pass '{item}'; available: {', '.join(available())}")
    out: list[str] = []

    def add(name: str) -> None:
        info = REGISTRY[name]
        for req in info.requires:
            if req not in out:
                add(req)
        if name not in out:
            out.append(name)

    for i, item in enumerate(items):
        comp = COMPOSITES.get(item)
        if comp is not None and (item not in REGISTRY or comp.default_next):
            steps = list(comp.steps)
            nxt = items[i + 1] if i + 1 < len(items) else None
            follows_transform = nxt is not None and REGISTRY.get(nxt) is not None and REGISTRY[nxt].kind == TRANSFORM
            if comp.default_next and not follows_transform:
                steps.append(comp.default_next)
            for step in steps:
                add(step)
        else:
            add(item)
    return out


class Progress:
    """Progress hook; the CLI swaps in a rich progress bar.  Library code only calls these."""

    def start(self, description: str, total: int) -> None:  # pragma: no cover - trivial
        pass

    def advance(self, n: int) -> None:  # pragma: no cover - trivial
        pass

    def stop(self) -> None:  # pragma: no cover - trivial
        pass


@dataclass
class Context:
    """Everything a pass may read: the domain, data, labels, options from flags, and annotations
    left by earlier passes.  ``entry`` is the report entry of the pass now running."""

    box: Box | None = None
    data: np.ndarray | None = None
    labels: np.ndarray | None = None
    seed: int = 0
    device: str = "auto"
    options: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)
    log: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    progress: Progress = field(default_factory=Progress)
    original: Network | None = None
    entry: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def opt(self, key: str, default: Any = None) -> Any:
        value = self.options.get(key)
        return default if value is None else value

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def need_box(self) -> Box:
        """The domain box, for passes that cannot run without one (usage error otherwise)."""
        if self.box is None:
            raise UsageError("needs --domain")
        return self.box

    def rng(self, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, salt])


class PassManager:
    """Runs passes in order, timing them and checking their contracts."""

    def run(self, net: Network, names: list[str], ctx: Context) -> Network:
        load_passes()
        if ctx.original is None:
            ctx.original = net
        for name in names:
            info = REGISTRY[name]
            ctx.entry = {"name": name, "kind": info.kind}
            start = time.perf_counter()
            try:
                if info.kind == ANALYSIS:
                    before = net.fingerprint()
                    ctx.annotations[name] = info.fn(net, ctx)
                    if net.fingerprint() != before:
                        raise RuntimeError("analysis pass changed the network")
                else:
                    new = info.fn(net, ctx)
                    if not isinstance(new, Network):
                        raise RuntimeError("transform pass did not return a Network")
                    if new.input_size != net.input_size or new.output_size != net.output_size:
                        raise RuntimeError("transform pass changed the network's input or output size")
                    net = new
            except OnnxcompError as exc:
                err = type(exc)(f"pass '{name}': {exc}")
                raise err from exc
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                raise PassError(f"internal error in pass '{name}': {type(exc).__name__}: {exc}") from exc
            ctx.entry["seconds"] = round(time.perf_counter() - start, 4)
            ctx.log.append(ctx.entry)
        return net
