"""Deadlines: one time limit for a whole command, shared out to its stages.

``--time-limit`` bounds the command, not one stage: the pass manager holds one :class:`Deadline` and every
stage that can take long (sampling, falsification, MILPs, input splitting) asks it how much time is left,
or takes a share of it (``deadline.share(0.2)``: at most a fifth of what is left).  A stage that runs out
stops and reports what it settled; nothing is ever claimed for what it did not finish.
"""

from __future__ import annotations

import math
import time


class Deadline:
    """An absolute point in time (``time.monotonic``), or none (``seconds=None``: no limit)."""

    def __init__(self, seconds: float | None = None, *, at: float | None = None):
        if at is None:
            at = math.inf if seconds is None else time.monotonic() + max(float(seconds), 0.0)
        self.at = at

    @property
    def limited(self) -> bool:
        return math.isfinite(self.at)

    def remaining(self) -> float:
        """Seconds left (``inf`` without a limit, never negative)."""
        return max(self.at - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def within(self, seconds: float | None) -> "Deadline":
        """A deadline ``seconds`` from now, never later than this one."""
        if seconds is None:
            return Deadline(at=self.at)
        return Deadline(at=min(self.at, time.monotonic() + max(float(seconds), 0.0)))

    def share(self, fraction: float, *, at_most: float | None = None, at_least: float = 0.0) -> "Deadline":
        """A deadline after ``fraction`` of the time left (capped by ``at_most`` seconds, and by this one)."""
        left = self.remaining()
        if not math.isfinite(left):
            return Deadline(at_most) if at_most is not None else Deadline()
        seconds = max(left * fraction, min(at_least, left))
        if at_most is not None:
            seconds = min(seconds, at_most)
        return self.within(seconds)

    def reserve(self, seconds: float) -> "Deadline":
        """This deadline moved ``seconds`` earlier (time kept back for the stages after)."""
        return Deadline(at=self.at - seconds) if self.limited else Deadline()

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Deadline(remaining={self.remaining():.3f}s)" if self.limited else "Deadline(none)"
