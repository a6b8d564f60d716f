"""The run report: one dictionary with stable top-level keys, written as JSON, shown as rich tables.

Keys: ``version``, ``command``, ``input``, ``output``, ``model`` (``before``/``after``: ``widths``,
``params``, ``nonzero_params``, ``macs``, ``file_bytes``, ``layers``), ``domain`` (``lo``, ``hi``,
``source``, ``note``), ``passes`` (list of ``{name, kind, seconds, ...}``), ``verification``
(``passed``, ``max_abs_err``, ``max_rel_err``, ``mean_abs_err``, ``top1_agreement``, ``samples``, ...),
``stable`` (per-layer stability, when the stable passes ran), ``fidelity`` (``fidelity.original``, every
run: the written model against the original on the run's inputs, and whether a stated budget or tolerance
judged it; class metrics on ``--data``) and ``latency_ms`` (lossy passes), ``formal`` (``verify --formal``),
``warnings`` (a model that grew, undecided neurons, ...).  Later passes add keys; existing keys keep their meaning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .ir import Box, Network


def model_summary(net: Network, file_bytes: int | None = None) -> dict:
    return {
        "widths": net.widths,
        "layers": len(net.layers),
        "params": net.params,
        "nonzero_params": net.nonzero_params,
        "macs": net.macs,
        "file_bytes": file_bytes,
    }


def domain_summary(box: Box | None) -> dict | None:
    if box is None:
        return None
    return {"lo": box.lo.tolist(), "hi": box.hi.tolist(), "source": box.source, "note": box.note}


def _clean(value):
    """JSON-safe copy: numpy scalars/arrays to Python, NaN/Inf to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        return _clean(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class Report:
    """What a command did, for humans (tables) and machines (JSON)."""

    command: str
    input: str = ""
    output: str | None = None
    model: dict = field(default_factory=lambda: {"before": None, "after": None})
    domain: dict | None = None
    passes: list = field(default_factory=list)
    verification: dict | None = None
    stable: dict | None = None
    fidelity: dict | None = None
    latency_ms: dict | None = None
    formal: dict | None = None
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        from . import __version__

        return _clean({
            "version": __version__,
            "command": self.command,
            "input": self.input,
            "output": self.output,
            "model": self.model,
            "domain": self.domain,
            "passes": self.passes,
            "verification": self.verification,
            "stable": self.stable,
            "fidelity": self.fidelity,
            "latency_ms": self.latency_ms,
            "formal": self.formal,
            "warnings": self.warnings,
        })

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def write(self, path: str | Path) -> None:
        from .writer import save_atomic

        save_atomic(self.to_json().encode() + b"\n", path)
