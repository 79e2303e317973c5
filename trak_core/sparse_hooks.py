"""The sparse kinds (``sjlt``, ``grass``) on the hooks path: gradients formed one bounded block at a time.

``fastjl.project_linear`` serves the dense and kronecker kinds only: there is no sparse kernel
that projects ``G_b = Σ_t g_bt a_btᵀ`` from ``a`` and ``g``.  The sparse kinds are cheap to
apply (one signed add per nonzero of P, reading G once), so the hooks path forms G instead,
in blocks of whole rows holding at most :func:`fastjl.block_budget` bytes (the torch
backend's budget, ``FASTJL_TORCH_BLOCK_MB``, 64 MiB by default), and projects each
block with :func:`fastjl.project` at its row offset; the blocks' projections add up to the
projection of the whole gradient (offsets work as for the dense kinds), so the features equal
the ``torch.func`` path's to float32 rounding.  The per-example gradient of a layer never
exists whole: memory stays bounded for any layer size, at the cost of one ``bmm`` over the
layer's ``B·d_out·d_in`` entries.  An embedding's gradient is nonzero only in the rows of the
tokens it looked up; each run of consecutive looked-up token ids is projected at its offset.
"""

from __future__ import annotations

import torch

import fastjl
from fastjl._backends.linear_chunked import gradient_blocks


def formed_block_bytes() -> int:
    """Bytes of G formed at once: the torch backend's budget (``FASTJL_TORCH_BLOCK_MB``)."""
    return fastjl.block_budget()


def _float32(t: torch.Tensor) -> torch.Tensor:
    return t.double() if t.dtype == torch.float64 else t.float()


def project_linear_formed(a: torch.Tensor, g: torch.Tensor, proj_dim: int, *, offset: int, **options) -> torch.Tensor:
    """``(B, K)``: ``fastjl.project(G.flatten(1), proj_dim, offset=offset, **options)`` with
    ``G_b = Σ_t g[b, t] a[b, t]ᵀ`` (``(d_g, d_a)``, as ``fastjl.project_linear(a, g)`` defines
    it), G formed in blocks of at most :func:`formed_block_bytes` bytes.

    Args:
        a: ``(B, T, d_a)`` inputs of the layer (or its output gradients, for a transposed weight).
        g: ``(B, T, d_g)``.
        offset: the weight's first row of P.
        options: ``seed``, ``kind``, ``backend``, ``scale``, ``sparsity``, ``mask_rate``.
    """
    a, g = _float32(a), _float32(g)
    d_a = a.shape[2]
    result = torch.zeros(a.shape[0], proj_dim, dtype=torch.float32, device=a.device)
    for b0, b1, r0, block in gradient_blocks(a, g, formed_block_bytes()):
        result[b0:b1] += fastjl.project(block, proj_dim, offset=offset + r0 * d_a, **options)
    return result


def project_token_rows(
    distinct: torch.Tensor, rows: torch.Tensor, proj_dim: int, *, offset: int, width: int, **options
) -> torch.Tensor:
    """``(B, K)``: the projection of gradients nonzero only in the rows ``distinct`` of a
    ``(V, width)`` weight at ``offset``.

    Args:
        distinct: ``(n,)`` sorted distinct row (token) ids.
        rows: ``(B, n, width)`` float32: example b's gradient in row ``distinct[j]``.
        options: as in :func:`project_linear_formed`.
    """
    batch = rows.shape[0]
    result = torch.zeros(batch, proj_dim, dtype=torch.float32, device=rows.device)
    if distinct.numel() == 0:
        return result
    # Runs of consecutive ids are contiguous rows of P: one fastjl.project call each.
    breaks = (torch.nonzero(distinct[1:] != distinct[:-1] + 1).reshape(-1) + 1).tolist()
    for start, stop in zip([0] + breaks, breaks + [distinct.numel()]):
        run = rows[:, start:stop].reshape(batch, -1)
        result += fastjl.project(run, proj_dim, offset=offset + int(distinct[start]) * width, **options)
    return result
