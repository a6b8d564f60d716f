"""onnxcomp.linalg.pivoted_qr against scipy.linalg.qr(pivoting=True) (LAPACK's geqp3) on random matrices, and
its rank revealing on matrices of a planted rank."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxcomp.linalg import NUMPY_WORK, householder_pivoted_qr, pivoted_qr


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_same_diagonal_and_pivots_as_lapack_on_generic_matrices(m, n, seed):
    a = np.random.default_rng(seed).standard_normal((m, n))
    diag, piv = householder_pivoted_qr(a)
    _, r, lapack_piv = scipy.linalg.qr(a, mode="economic", pivoting=True)
    np.testing.assert_allclose(diag, np.abs(np.diag(r)), rtol=1e-9, atol=1e-12 * np.abs(a).max())
    assert list(piv) == list(lapack_piv)
    assert np.all(np.diff(diag) <= 1e-12 * diag[0])  # non-increasing


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.integers(2, 40), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_the_diagonal_reveals_a_planted_rank_and_the_first_pivots_span(m, n, rank, seed):
    rng = np.random.default_rng(seed)
    rank = min(rank, m, n)
    a = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n)) * 10.0 ** rng.integers(-3, 4)
    diag, piv = householder_pivoted_qr(a)
    tol = diag[0] * max(a.shape) * np.finfo(float).eps * 16  # the threshold onnxcomp.leo uses
    assert int(np.sum(diag > tol)) == rank == np.linalg.matrix_rank(a)
    basis, rest = a[:, piv[:rank]], a[:, piv[rank:]]
    if rest.size:
        coef, *_ = np.linalg.lstsq(basis, rest, rcond=None)
        assert np.abs(basis @ coef - rest).max() <= 1e-9 * np.abs(a).max()
    assert sorted(piv) == list(range(n))


def test_zero_and_degenerate_inputs():
    diag, piv = householder_pivoted_qr(np.zeros((3, 4)))
    assert list(diag) == [0, 0, 0] and sorted(piv) == [0, 1, 2, 3]
    diag, piv = householder_pivoted_qr(np.array([[0.0, 3.0], [0.0, 4.0]]))
    assert diag[0] == pytest.approx(5.0) and diag[1] == 0 and list(piv) == [1, 0]
    with pytest.raises(ValueError, match="expected a matrix"):
        householder_pivoted_qr(np.zeros(3))


def test_large_matrices_go_to_lapack_with_the_same_answer():
    rng = np.random.default_rng(3)
    small, large = rng.standard_normal((50, 40)), rng.standard_normal((800, 500))
    assert 50 * 40 * 40 <= NUMPY_WORK < 800 * 500 * 500
    for a in (small, large):
        diag, piv = pivoted_qr(a)
        _, r, lapack_piv = scipy.linalg.qr(a, mode="economic", pivoting=True)
        np.testing.assert_allclose(diag, np.abs(np.diag(r)), rtol=1e-9)
        assert list(piv) == list(lapack_piv)
