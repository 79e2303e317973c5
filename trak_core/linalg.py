"""Streaming ``XᵀX`` and the regularized solve ``X (XᵀX + λI)⁻¹``, block by block."""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger("trak_core")

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def row_blocks(num_rows: int, block_rows: int):
    """``(start, stop)`` pairs covering ``range(num_rows)`` in blocks of ``block_rows``."""
    for start in range(0, num_rows, block_rows):
        yield start, min(start + block_rows, num_rows)


def load_rows(array: np.ndarray, start: int, stop: int, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Rows ``start:stop`` of an (on-disk) array as a tensor on ``device``.

    Copies: a read-only memmap must not back a tensor that torch might write to.
    """
    return torch.from_numpy(np.array(array[start:stop])).to(device=device, dtype=dtype)


def accumulate_xtx(x: np.ndarray, dtype: torch.dtype, device, block_rows: int) -> torch.Tensor:
    """``XᵀX`` in one streaming pass over the rows of ``x``.

    Args:
        x: ``(n, K)`` array (a memmap: only ``block_rows`` rows are in memory at a time).
        dtype: accumulation dtype, ``torch.float32`` or ``torch.float64``.
        device: where to accumulate.
        block_rows: rows per block.
    Returns:
        ``(K, K)`` tensor of ``dtype`` on ``device``.
    """
    k = x.shape[1]
    xtx = torch.zeros(k, k, dtype=dtype, device=device)
    for start, stop in row_blocks(x.shape[0], block_rows):
        block = load_rows(x, start, stop, device, dtype)
        xtx.addmm_(block.T, block)
    return xtx


class RegularizedSolver:
    """Applies ``(XᵀX + λI)⁻¹`` to rows: Cholesky factor once, then triangular solves.

    If the Cholesky factorization fails (only possible when λ is 0 or tiny, i.e. the matrix is
    singular to working precision) it falls back to an LU solve, which is what an explicit
    inverse as in TRAK amounts to, and logs a warning: the result is then dominated by rounding.
    If LU meets an exactly zero pivot too (λ = 0 and rank(XᵀX) < K, e.g. K > n, where rounding
    decides whether the last pivot is exactly 0), a solve would divide by zero: it uses the
    pseudo-inverse instead (from the symmetric eigendecomposition, eigenvalues below K·eps·max
    treated as 0) and says so, so the scores stay finite whatever the platform's LAPACK rounds.

    Args:
        xtx: ``(K, K)`` ``XᵀX``.
        lam: λ >= 0.
    Attributes:
        method: ``"cholesky"``, ``"lu"`` or ``"pinv"``.
    """

    def __init__(self, xtx: torch.Tensor, lam: float):
        self.dtype = xtx.dtype
        a = xtx + lam * torch.eye(xtx.shape[0], dtype=xtx.dtype, device=xtx.device)
        factor, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            self.method, self._factor = "cholesky", factor
            return
        logger.warning(
            "XᵀX + λI (λ=%g) is not positive definite to %s precision (Cholesky failed at column %d): "
            "falling back to an LU solve; scores will be dominated by rounding. Use the default λ "
            "(lambda_reg=None) or a larger one.",
            lam,
            self.dtype,
            int(info),
        )
        lu, pivots, info = torch.linalg.lu_factor_ex(a)
        if int(info) == 0:
            self.method, self._factor = "lu", (lu, pivots)
            return
        logger.warning(
            "XᵀX + λI (λ=%g) is exactly singular to %s precision (LU pivot %d is zero): using its "
            "pseudo-inverse instead of an LU solve.",
            lam,
            self.dtype,
            int(info),
        )
        self.method, self._factor = "pinv", torch.linalg.pinv(a, hermitian=True)

    def solve_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows (XᵀX + λI)⁻¹`` for ``rows`` of shape ``(b, K)``; returns ``(b, K)`` in the solver dtype."""
        rhs = rows.to(self.dtype).T  # the matrix is symmetric: (A⁻¹ rowsᵀ)ᵀ = rows A⁻¹
        if self.method == "cholesky":
            out = torch.cholesky_solve(rhs, self._factor)
        elif self.method == "lu":
            out = torch.linalg.lu_solve(*self._factor, rhs)
        else:
            out = self._factor @ rhs
        return out.T
