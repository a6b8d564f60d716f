"""ONE input-splitting branch-and-bound driver, for every search over pieces of an input box.

The stability proof on low-dimensional inputs (``stability.split``) and ``verify --formal``'s bound on
``|f1 - f2|`` (``formal``) both bisect the input box until every piece is settled.  They differ in what
they bound and what "settled" means; that is theirs (a :class:`Search`), the driving is this module's:

* pieces are taken from a stack, ``batch`` at a time, and bounded together (one vectorised call);
* for each piece the search decides: settled, bisect along an input, or run an exact *leaf* unit first
  (a MILP over the piece) and decide after it;
* the leaf units of a batch go to the worker pool together (:mod:`onnxcomp.workers`) and come back in
  order, and each is built from what was known when the batch started, so the result is the same
  whatever the number of workers;
* the search stops at its deadline; the pieces still on the stack are returned (a later search can
  resume from them), and nothing is claimed for them.

Bisection is at the midpoint of the chosen input; the left child is pushed first (the right one is taken
next), as the stability search always did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from .timing import Deadline

DONE, SPLIT, LEAF = "done", "split", "leaf"


@dataclass
class Piece:
    """A box ``[lo, hi]`` of the input and what the search keeps about it (``data``, e.g. open neurons)."""

    lo: np.ndarray
    hi: np.ndarray
    data: Any = None


@dataclass
class Decision:
    """What to do with a piece: ``done``; ``split`` along input ``dim`` (the children get ``data``, or the
    piece's own when ``None``); or ``leaf``: run ``unit`` (a picklable argument of the search's
    ``leaf_fn``) and let :meth:`Search.after_leaf` decide."""

    kind: str
    dim: int | None = None
    data: Any = None
    unit: Any = None


class Search(Protocol):
    leaf_fn: Callable | None

    def assess(self, pieces: list[Piece]) -> list[Decision]: ...

    def after_leaf(self, piece: Piece, decision: Decision, result: Any) -> Decision: ...


@dataclass
class Outcome:
    """How the search ended: ``open`` the unfinished pieces, counts, whether it finished."""

    open: list = field(default_factory=list)
    pieces: int = 0
    leaves: int = 0
    leaf_seconds: float = 0.0
    seconds: float = 0.0
    complete: bool = True


def bisect(piece: Piece, dim: int, data: Any = None) -> tuple[Piece, Piece]:
    mid = (piece.lo[dim] + piece.hi[dim]) / 2
    left_hi, right_lo = piece.hi.copy(), piece.lo.copy()
    left_hi[dim], right_lo[dim] = mid, mid
    payload = piece.data if data is None else data
    return Piece(piece.lo, left_hi, payload), Piece(right_lo, piece.hi, payload)


def run(search: Search, roots: list[Piece], deadline: Deadline, *, batch: int = 128, workers=None) -> Outcome:
    """Branch and bound from ``roots`` until every piece is settled or ``deadline`` passes."""
    start = time.perf_counter()
    out = Outcome()
    stack = list(roots)
    while stack:
        if deadline.expired():
            out.complete = False
            break
        chunk, stack = stack[-batch:], stack[:-batch]
        out.pieces += len(chunk)
        decisions = search.assess(chunk)
        leaves = [i for i, d in enumerate(decisions) if d.kind == LEAF]
        if leaves:
            t0 = time.perf_counter()
            units = [decisions[i].unit for i in leaves]
            results = workers.map(search.leaf_fn, units) if workers is not None else [search.leaf_fn(u) for u in units]
            out.leaf_seconds += time.perf_counter() - t0
            out.leaves += len(leaves)
            for i, result in zip(leaves, results):
                decisions[i] = search.after_leaf(chunk[i], decisions[i], result)
        for piece, decision in zip(chunk, decisions):
            if decision.kind == SPLIT:
                stack.extend(bisect(piece, decision.dim, decision.data))
            elif decision.kind != DONE:
                raise ValueError(f"search decided {decision.kind!r} after its leaf; expected done or split")
    out.open = stack
    out.seconds = time.perf_counter() - start
    return out


def split_dimension(width: np.ndarray, sensitivity: np.ndarray, width0: np.ndarray) -> int:
    """The input to bisect: largest ``width * sensitivity`` (how much the bounds depend on it), else the
    widest relative to the whole box."""
    score = width * sensitivity
    if np.any(score > 0):
        return int(np.argmax(score))
    return int(np.argmax(width / width0))
