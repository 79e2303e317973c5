"""The sparse kinds' fast CPU product: ``fastjl._C.host_sparse_block`` (``csrc/sparse_cpu.cpp``).

Used by the torch backend (:mod:`.sparse_torch`) for CPU tensors when the compiled module is
built; without it the backend keeps its CSR product.  Both sum every output in ascending row
order; the C++ loop reads the block of ``x`` once, in place, where the CSR product needs it
transposed first (a strided copy that cost about half of that path's time).

A block's structure, built here from the spec's generator (:mod:`fastjl.sparse_blocks`) and
cached by the caller: ``packed``, one 32-bit word per nonzero (the column in bits 0..30, bit 31
set for -1; K <= 2^31 leaves the bit free), ``s`` words per used row in row order; and for
GraSS ``kept``, the block-local rows the mask keeps (int32, ascending), None for sjlt.
"""

from __future__ import annotations

import torch

from .._extension import _C
from ..sparse_blocks import grass_keep_block, sjlt_block

# dtype codes of csrc/block_args.h
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
# Tests set this to False to run the CSR product on the CPU.
ENABLED = True


def serves(x: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether the C++ product takes this call: built, and the accumulation dtype it implements
    (float64 for float64 x, else float32) is ``out``'s."""
    if not ENABLED or _C is None or not hasattr(_C, "host_sparse_block") or x.dtype not in _DTYPE_CODES:
        return False
    return out.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)


def packed_block(seed: int, row0: int, nrows: int, proj_dim: int, sparsity: int, threshold: int | None):
    """``(packed, kept)`` of rows ``row0 .. row0+nrows-1`` (see the module docstring)."""
    columns, negative = sjlt_block(seed, row0, nrows, proj_dim, sparsity, "cpu")
    words = columns | (negative.to(torch.int64) << 31)  # < 2^32: columns < 2^31
    kept = None
    if threshold is not None:
        keep = grass_keep_block(seed, row0, nrows, threshold, "cpu")
        kept = torch.nonzero(keep).view(-1).to(torch.int32)
        words = words[keep]
    # uint32 bit patterns stored in int32 (the C++ side reads them as uint32).
    packed = (words - ((words >> 31) << 32)).to(torch.int32).reshape(-1).contiguous()
    return packed, kept


def block_product(x_block: torch.Tensor, structure, proj_dim: int, sparsity: int, compute: torch.dtype):
    """``x_block @ P_block`` ``(B, K)`` in ``compute`` dtype from the block's structure."""
    packed, kept = structure
    if kept is not None and kept.numel() == 0:  # GraSS masked every row of the block
        return torch.zeros((x_block.shape[0], proj_dim), dtype=compute)
    if x_block.shape[1] > 1 and x_block.stride(1) != 1:
        x_block = x_block.contiguous()
    batch, rows = x_block.shape
    out = torch.empty((batch, proj_dim), dtype=compute)
    _C.host_sparse_block(
        x_block.data_ptr(),
        _DTYPE_CODES[x_block.dtype],
        batch,
        rows,
        x_block.stride(0) if batch > 1 else rows,
        packed.data_ptr(),
        kept.data_ptr() if kept is not None else 0,
        kept.numel() if kept is not None else 0,
        sparsity,
        out.data_ptr(),
        _DTYPE_CODES[compute],
        proj_dim,
        proj_dim,
    )
    return out
