"""``project_linear(kind="factgrass")``: masked factors, their product in bounded blocks, then sjlt.

The matrix is fixed in :mod:`fastjl.factgrass_spec`.  Only ``k_out × k_in`` of each example's
gradient is ever formed, and that one bounded block of whole rows at a time
(:func:`fastjl._backends.linear_chunked.gradient_blocks`, at most :func:`fastjl.block_budget`
bytes), each block projected by :func:`fastjl.project` (``kind="sjlt"``) at its row offset
and added up in block order (deterministic run to run).  Torch operations only, so it runs on
any device; differentiable in ``a`` and ``g`` through them (the sjlt projection has its own
backward).
"""

from __future__ import annotations

import torch

from ._backends.linear_chunked import gradient_blocks
from ._backends.torch_backend import block_budget
from .factgrass_spec import factgrass_masks
from .project import project
from .sparse import sparse_factor


def masked_factors(a: torch.Tensor, g: torch.Tensor, kept_out: torch.Tensor, kept_in: torch.Tensor):
    """``(a', g')``: the kept input coordinates of ``a`` (``d_in`` in ``kept_in`` is the bias's
    column of ones, last since ``kept_in`` increases) and the kept output coordinates of ``g``,
    in float32 (float64 stays float64)."""
    compute = torch.float64 if a.dtype == torch.float64 else torch.float32
    d_in = a.shape[2]
    has_bias_column = bool(kept_in.numel()) and int(kept_in[-1]) == d_in
    weight_in = kept_in[:-1] if has_bias_column else kept_in
    a_kept = a.index_select(2, weight_in).to(compute)
    if has_bias_column:
        a_kept = torch.cat([a_kept, a_kept.new_ones(a.shape[0], a.shape[1], 1)], dim=2)
    return a_kept, g.index_select(2, kept_out).to(compute)


def project_factgrass(
    a: torch.Tensor,
    g: torch.Tensor,
    proj_dim: int,
    *,
    seed: int,
    offset: int,
    factor_masks,
    sparsity: int,
    bias: bool,
    backend: str,
    scale,
) -> torch.Tensor:
    """``(B, K)`` float32 (float64 for float64 inputs): FactGraSS of the layer at ``offset``.

    Arguments as :func:`fastjl.project_linear` (``a``, ``g`` already checked, ``(B, T, d)``);
    ``factor_masks`` is ``(k_out, k_in)``, checked against the factors here.
    """
    kept_out, kept_in = factgrass_masks(seed, offset, g.shape[2], a.shape[2], factor_masks, bias=bias, device=a.device)
    a_kept, g_kept = masked_factors(a, g, kept_out, kept_in)
    return project_kept_factors(a_kept, g_kept, proj_dim, seed=seed, offset=offset, sparsity=sparsity,
                                backend=backend, scale=scale)  # fmt: skip


def project_kept_factors(
    a_kept: torch.Tensor, g_kept: torch.Tensor, proj_dim: int, *, seed: int, offset: int, sparsity: int, backend, scale
) -> torch.Tensor:
    """``(B, K)``: the sjlt stage of FactGraSS on already masked factors ``a'`` ``(B, T, k_in)`` and
    ``g'`` ``(B, T, k_out)`` (float32 or float64): ``G' = Σ_t g'_t a'_tᵀ`` in bounded blocks, row
    ``(p, q)`` of ``G'`` projected as sjlt row ``offset + p·k_in + q``.  Also serves factors that
    are masked without being formed, such as an embedding's one-hot tokens
    (``trak_core.embedding_hooks``)."""
    k_in = a_kept.shape[2]
    result = torch.zeros(a_kept.shape[0], proj_dim, dtype=a_kept.dtype, device=a_kept.device)
    options = dict(seed=seed, kind="sjlt", sparsity=sparsity, backend=backend)
    for b0, b1, p0, block in gradient_blocks(a_kept, g_kept, block_budget()):
        result[b0:b1] += project(block, proj_dim, offset=offset + p0 * k_in, **options)
    factor = sparse_factor(scale, sparsity)
    return result * factor if factor != 1.0 else result
