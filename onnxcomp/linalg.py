"""Small dense linear algebra in numpy alone, where importing scipy for one routine would cost more than the
routine: ``import scipy.linalg`` takes 0.15-0.3 s (it loads numpy.f2py through its array-API layer), a
third of a small run's start-up (``bench/startup.py``)."""

from __future__ import annotations

import numpy as np


NUMPY_WORK = 1e8
"""Above this many multiply-adds (``m * n * min(m, n)``) :func:`pivoted_qr` hands over to LAPACK: the
unblocked numpy loop then takes longer than importing scipy (0.1-0.3 s at this size)."""


def pivoted_qr(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """QR with column pivoting of ``a`` (m x n): ``(|diag(R)|, piv)`` with ``a[:, piv] = Q R``; numpy for
    the small matrices most layers give (see :func:`householder_pivoted_qr`), LAPACK's ``geqp3`` (the
    same pivoting rule, blocked) above :data:`NUMPY_WORK`."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2 and a.shape[0] * a.shape[1] * min(a.shape) > NUMPY_WORK:
        import scipy.linalg

        _, r, piv = scipy.linalg.qr(a, mode="economic", pivoting=True)
        return np.abs(np.diag(r)), piv
    return householder_pivoted_qr(a)


def householder_pivoted_qr(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pivoted_qr` in numpy alone.

    Householder reflections, each step moving the column of largest remaining norm to the front
    (Businger and Golub's pivoting, the rule of LAPACK's ``geqp3`` that ``scipy.linalg.qr(...,
    pivoting=True)`` calls), so ``|diag(R)|`` is non-increasing and reveals the numerical rank: the
    first ``rank`` pivots are a well-conditioned basis of the column space.  The remaining column norms
    are recomputed at each step rather than downdated (downdating loses them to cancellation exactly
    when they become small, where the rank is decided).  ``diag`` has ``min(m, n)`` entries."""
    r = np.array(a, dtype=np.float64, copy=True)
    if r.ndim != 2:
        raise ValueError(f"pivoted_qr: expected a matrix, got shape {r.shape}")
    m, n = r.shape
    steps = min(m, n)
    piv = np.arange(n)
    diag = np.zeros(steps)
    for j in range(steps):
        rest = r[j:, j:]
        norms = np.einsum("ij,ij->j", rest, rest)
        p = j + int(np.argmax(norms))
        if p != j:
            r[:, [j, p]] = r[:, [p, j]]
            piv[[j, p]] = piv[[p, j]]
        x = r[j:, j]
        size = float(np.sqrt(norms[p - j]))
        if size == 0.0:
            break  # every remaining column is zero: the rest of the diagonal is 0
        alpha = -size if x[0] >= 0 else size
        v = x.copy()
        v[0] -= alpha
        vv = float(v @ v)
        if vv > 0.0:
            r[j:, j:] -= np.outer(v, (2.0 / vv) * (v @ r[j:, j:]))
        diag[j] = abs(alpha)
    return diag, piv
