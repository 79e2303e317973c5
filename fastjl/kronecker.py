"""The structured ``kronecker`` kind of :func:`fastjl.project_linear` (LoGra-style).

A Linear layer's per-example weight gradient ``G_b = Σ_t g_bt a_btᵀ`` is projected with
``P = F_out ⊗ F_in``: ``y_b = Σ_t (F_outᵀ g_bt) ⊗ (F_inᵀ a_bt)``, i.e. ``F_outᵀ G_b F_in``
flattened row-major (output column ``j_out * k_in + j_in``).  The factors ``F_in (d_in, k_in)``
and ``F_out (d_out, k_out)`` are spec v1's (:func:`fastjl.spec.kronecker_factor`).  Only
``B·T·(k_in + k_out)`` numbers are formed: no per-example gradient and nothing of size
``d_out·d_in``.  With ``bias``, the input gets a constant 1 appended (``F_in`` has
``d_in + 1`` rows), so the bias gradient is projected as the extra input column.
"""

from __future__ import annotations

import functools
import math

import torch

from .spec import check_int, kronecker_factor
from .validation import check_proj_dim


def split_proj_dim(proj_dim, d_out: int, d_in: int) -> tuple[int, int]:
    """``(k_out, k_in)`` with ``k_out * k_in = K``.

    ``proj_dim`` may be the pair itself, or an int K: it is split as evenly as K's divisors
    allow (the smaller factor is K's largest divisor <= sqrt(K)), the larger factor going to
    the wider side of the layer (``d_in`` on ties).  A prime K gives a factor of 1.
    """
    if isinstance(proj_dim, (tuple, list)):
        if len(proj_dim) != 2:
            raise ValueError(f"kronecker proj_dim must be an int K or a pair (k_out, k_in), got {proj_dim!r}")
        k_out = check_int(proj_dim[0], "k_out", low=1, high=1 << 31)
        k_in = check_int(proj_dim[1], "k_in", low=1, high=1 << 31)
        check_proj_dim(k_out * k_in)
        return k_out, k_in
    total = check_proj_dim(proj_dim)
    small = max(d for d in range(1, math.isqrt(total) + 1) if total % d == 0)
    large = total // small
    return (large, small) if d_out > d_in else (small, large)


@functools.lru_cache(maxsize=256)
def _factor(seed: int, offset: int, factor: str, nrows: int, ncols: int, dtype, device) -> torch.Tensor:
    # Cached: a layer's factors are the same for every batch of a checkpoint, and generating
    # them (Philox + Box-Muller) costs more than using them.
    return kronecker_factor(seed, offset, factor, nrows, ncols, dtype=dtype, device=device)


def kronecker_factors(seed: int, offset: int, d_out: int, d_in: int, k_out: int, k_in: int, bias: bool,
                      dtype=torch.float32, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(F_out (d_out, k_out), F_in (d_in + bias, k_in))`` of the layer at ``offset`` (read-only)."""
    device = torch.device(device)
    f_out = _factor(seed, offset, "out", d_out, k_out, dtype, device)
    f_in = _factor(seed, offset, "in", d_in + int(bias), k_in, dtype, device)
    return f_out, f_in


def project_kronecker(a: torch.Tensor, g: torch.Tensor, out: torch.Tensor, *, seed: int, offset: int,
                      k_out: int, k_in: int, bias: bool) -> None:  # fmt: skip
    """Writes ``Σ_t (F_outᵀ g_bt) ⊗ (F_inᵀ [a_bt; 1])`` into ``out`` ``(B, k_out * k_in)``.

    ``a`` ``(B, T, d_in)``, ``g`` ``(B, T, d_out)``, validated; computed in ``out.dtype``.
    """
    batch, tokens, d_in = a.shape
    compute = out.dtype
    f_out, f_in = kronecker_factors(seed, offset, g.shape[2], d_in, k_out, k_in, bias, compute, a.device)
    pa = a.to(compute) @ f_in[:d_in]  # (B, T, k_in)
    if bias:
        pa += f_in[d_in]
    pg = g.to(compute) @ f_out  # (B, T, k_out)
    result = out.view(batch, k_out, k_in) if out.is_contiguous() else torch.empty_like(out).view(batch, k_out, k_in)
    if tokens == 1:
        torch.mul(pg[:, 0, :, None], pa[:, 0, None, :], out=result)
    else:
        torch.bmm(pg.transpose(1, 2), pa, out=result)
    if result.data_ptr() != out.data_ptr():
        out.copy_(result.view(batch, -1))
