"""P's chunk structure for the GPU kernels of the sparse kinds (Triton: ``triton_sparse``; CUDA:
``cuda_sparse`` and csrc/sparse_chunk_args.h): the rows of P cut into chunks of ``chunk`` rows,
each chunk's nonzeros sorted by column (rows ascending within a column) as int16 entries
``local row << 1 | negative``, plus int16 column pointers.  Generated from the spec's exact
bits (:mod:`fastjl.sparse_blocks`); it does not depend on x, so it is kept in
:mod:`.sparse_cache` (both kernels read the same structure, so a Triton call and a CUDA call
with the same matrix share it).
"""

from __future__ import annotations

import torch

from ..sparse_blocks import grass_keep_block, sjlt_block
from . import sparse_cache

# Nonzeros per chunk on a GPU (both kernels: rows per chunk = GPU_NONZEROS / s).
GPU_NONZEROS = 4096
COLUMN_RANGE = 1 << 16  # K beyond this: one structure (and one pass over x) per range of columns
PIECE_NONZEROS = 1 << 22
PIECE_POINTERS = 1 << 22  # with PIECE_NONZEROS: the build's int64 temporaries stay ~100-200 MB
_ENTRY_ROW_LIMIT = 1 << 14  # local rows fit 14 bits next to the sign bit in an int16 entry
POINTER_ALIGN = 16  # column pointers of a chunk start on a multiple of 16 (aligned vector loads)


def chunk_structure(
    seed: int, row0: int, nrows: int, proj_dim: int, sparsity: int, threshold, chunk: int, col0: int, width: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's view of rows ``row0 .. row0+nrows-1`` of P, columns ``col0 .. col0+width-1``:
    ``entries`` int16 ``(chunks, chunk·s)``, ``local row << 1 | negative`` in (column, row) order
    per chunk, zero-padded, and ``col_ptr`` int16 ``(chunks, width + 1)`` (in a buffer whose rows
    are padded to a multiple of ``POINTER_ALIGN``), the start of each column's entries
    (``col_ptr[:, -1]`` the chunk's count)."""
    chunks = -(-nrows // chunk)
    columns, negative = sjlt_block(seed, row0, nrows, proj_dim, sparsity, device)
    local = torch.arange(nrows, dtype=torch.int64, device=device)[:, None].expand(nrows, sparsity)
    selected = (columns >= col0) & (columns < col0 + width)
    if threshold is not None:
        selected &= grass_keep_block(seed, row0, nrows, threshold, device)[:, None]
    # Boolean indexing keeps row-major order: rows ascend, so the stable sort keeps them
    # ascending within a column.
    local, columns, negative = local[selected], columns[selected] - col0, negative[selected]
    chunk_id = local // chunk
    key = chunk_id * width + columns
    order = torch.argsort(key, stable=True)
    key, local, negative, chunk_id = key[order], local[order], negative[order], chunk_id[order]
    counts = torch.bincount(key, minlength=chunks * width).view(chunks, width)
    col_ptr = torch.zeros((chunks, width + 1), dtype=torch.int64, device=device)
    torch.cumsum(counts, 1, out=col_ptr[:, 1:])
    per_chunk = col_ptr[:, -1]
    chunk_base = torch.cumsum(per_chunk, 0) - per_chunk
    slot = chunk_id * (chunk * sparsity) + torch.arange(key.numel(), device=device) - chunk_base[chunk_id]
    code = ((local % chunk) << 1) | negative.to(torch.int64)
    entries = torch.zeros(chunks * chunk * sparsity, dtype=torch.int16, device=device)
    entries[slot] = code.to(torch.int16)
    stride = -(-(width + 1) // POINTER_ALIGN) * POINTER_ALIGN
    pointers = torch.zeros((chunks, stride), dtype=torch.int16, device=device)
    pointers[:, : width + 1] = col_ptr
    return entries.view(chunks, chunk * sparsity), pointers[:, : width + 1]


def cached_structure(
    seed: int, row0: int, nrows: int, proj_dim: int, sparsity: int, threshold, chunk: int, col0: int, width: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`chunk_structure` through :mod:`.sparse_cache` (keyed by every argument)."""
    args = (seed, row0, nrows, proj_dim, sparsity, threshold, chunk, col0, width, device)
    key = ("sparse-chunks", str(device), *args[:-1])
    return sparse_cache.get_or_build(key, lambda: chunk_structure(*args))


def pieces(
    dim: int, chunk: int, nonzeros: int, width: int, piece_nonzeros: int, piece_pointers: int
) -> list[tuple[int, int]]:
    """Row ranges ``[r0, r1)`` of x built (and launched) one at a time: a whole number of chunks
    (of ``chunk`` rows, ``nonzeros`` entries), at most ``piece_nonzeros`` nonzeros and
    ``piece_pointers`` column pointers each."""
    piece_chunks = max(1, min(piece_nonzeros // nonzeros, piece_pointers // (width + 1)))
    step = piece_chunks * chunk
    return [(r0, min(dim, r0 + step)) for r0 in range(0, dim, step)]
