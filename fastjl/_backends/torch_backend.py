"""Pure-PyTorch backend: the reference, the CPU path and the fallback.

``out = x @ P[offset:offset+D, :K]`` computed block by block: a block of ``P`` is generated
from the spec (:func:`fastjl.blocks.generate_block`, exact bits), multiplied into a float32
accumulator, and dropped.  No more than ``block_budget()`` bytes of ``P`` (and of converted
input) exist at once, so D = 10^9 runs in bounded memory.
"""

from __future__ import annotations

import os

import torch

from ..blocks import generate_block

NAME = "torch"

_DEFAULT_BUDGET_MB = 64
# Column tiles are multiples of 128 so no rademacher Philox call is split across tiles.
_COLUMN_QUANTUM = 128
_budget_bytes = int(float(os.environ.get("FASTJL_TORCH_BLOCK_MB", _DEFAULT_BUDGET_MB)) * 2**20)


def block_budget() -> int:
    """Bytes of ``P`` (and of converted input) the torch backend materializes at once."""
    return _budget_bytes


def set_block_budget(num_bytes: int) -> int:
    """Sets the torch backend's memory budget in bytes (also ``FASTJL_TORCH_BLOCK_MB``).

    Returns the previous value.  Smaller budgets trade speed for memory; at least one
    128-column tile of one row must fit (512 bytes in float32).
    """
    global _budget_bytes
    if isinstance(num_bytes, bool) or not isinstance(num_bytes, int) or num_bytes < 1024:
        raise ValueError(f"block budget must be an int of at least 1024 bytes, got {num_bytes!r}")
    previous, _budget_bytes = _budget_bytes, num_bytes
    return previous


def availability(device: torch.device) -> str | None:
    return None  # torch runs wherever the tensor lives


def plan_blocks(batch: int, dim: int, proj_dim: int, itemsize: int, budget: int) -> tuple[int, int]:
    """``(rows, cols)`` of each generated block of ``P`` such that the block, and the input
    slice ``(batch, rows)`` converted to the compute dtype, each fit in ``budget`` bytes."""
    cols = proj_dim
    if cols * itemsize * 256 > budget:  # keep >= 256 rows per block for matmul efficiency
        cols = max(_COLUMN_QUANTUM, budget // (256 * itemsize) // _COLUMN_QUANTUM * _COLUMN_QUANTUM)
        cols = min(cols, proj_dim)
    rows = max(1, budget // (cols * itemsize))
    rows = max(1, min(rows, budget // (max(batch, 1) * itemsize), dim))
    return rows, cols


def project(x: torch.Tensor, out: torch.Tensor, *, seed: int, kind: str, offset: int) -> None:
    """Writes ``x @ P[offset:offset+D, :K]`` into ``out`` (``(B, K)``, float32 or float64)."""
    batch, dim = x.shape
    proj_dim = out.shape[1]
    compute = out.dtype
    itemsize = torch.finfo(compute).bits // 8
    rows, cols = plan_blocks(batch, dim, proj_dim, itemsize, _budget_bytes)
    buffer = torch.empty(min(rows, dim) * cols, dtype=compute, device=x.device)  # reused by every block
    for c0 in range(0, proj_dim, cols):
        c1 = min(proj_dim, c0 + cols)
        acc = torch.zeros((batch, c1 - c0), dtype=compute, device=x.device)
        for r0 in range(0, dim, rows):
            r1 = min(dim, r0 + rows)
            block = buffer[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
            generate_block(seed, kind, offset + r0, r1 - r0, c0, c1 - c0, compute, x.device, out=block)
            acc.addmm_(x[:, r0:r1].to(compute), block)
        out[:, c0:c1] = acc
