"""trak_core.linalg.RegularizedSolver: Cholesky, then LU, then the pseudo-inverse, each only when
the one before cannot factor the matrix; the result stays finite whatever the platform's LAPACK
rounds."""

import logging

import pytest
import torch

from trak_core.linalg import RegularizedSolver


def test_positive_definite_uses_cholesky():
    x = torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    xtx = x.T @ x
    solver = RegularizedSolver(xtx, 0.5)
    rows = torch.randn(3, 6, dtype=torch.float64)
    assert solver.method == "cholesky"
    expected = rows @ torch.linalg.inv(xtx + 0.5 * torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(solver.solve_rows(rows), expected)


def test_indefinite_but_invertible_falls_back_to_lu(caplog):
    a = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # Cholesky fails, LU pivots
    with caplog.at_level(logging.WARNING, logger="trak_core"):
        solver = RegularizedSolver(a, 0.0)
    assert solver.method == "lu" and "falling back to an LU solve" in caplog.text
    rows = torch.tensor([[2.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(solver.solve_rows(rows), torch.tensor([[3.0, 2.0]], dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exactly_singular_uses_the_pseudo_inverse(caplog, dtype):
    """λ = 0 and a zero eigenvalue that LU meets as an exactly zero pivot: a solve would divide by
    zero (torch's lu_factor raises); the pseudo-inverse gives the minimum-norm solution."""
    a = torch.diag(torch.tensor([1.0, 2.0, 0.0], dtype=dtype))
    with caplog.at_level(logging.WARNING, logger="trak_core"):
        solver = RegularizedSolver(a, 0.0)
    assert solver.method == "pinv" and "pseudo-inverse" in caplog.text
    rows = torch.tensor([[4.0, 4.0, 4.0], [1.0, -2.0, 7.0]], dtype=dtype)
    out = solver.solve_rows(rows)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, rows * torch.tensor([1.0, 0.5, 0.0], dtype=dtype))


def test_rank_deficient_gram_matrix_gives_finite_rows():
    """K > n: XᵀX has rank n; whichever of LU or the pseudo-inverse the rounding leads to, the
    rows come back finite."""
    x = torch.randn(5, 12, dtype=torch.float32, generator=torch.Generator().manual_seed(1))
    solver = RegularizedSolver(x.T @ x, 0.0)
    assert solver.method in ("lu", "pinv")
    assert torch.isfinite(solver.solve_rows(x[:2])).all()
