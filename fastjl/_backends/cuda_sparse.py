"""CUDA backend of the sparse kinds (sjlt, grass): the host side of ``fastjl._C.project_sparse``
(csrc/sparse_kernel.cu, per-chunk code in csrc/sparse_chunk.cuh).

``out = x @ P[offset:offset+D, :K]`` (entries ±1, GraSS's masked rows 0) from P's chunk
structure (:mod:`.sparse_chunks`, the one the Triton kernel reads, shared through
:mod:`.sparse_cache`): chunks of ``4096 / s`` rows, each chunk's nonzeros sorted by column.
A CTA owns 2 or 4 batch rows (:func:`batch_rows`) and 4096 columns; each of its 1024 threads
sums the runs of its 4 columns in float32, rows ascending, for all its batch rows.  No atomics and no float64:
the order of every sum is fixed by the structure and the plan (chunks in order within a split,
splits added in order), and the plan depends only on (B, D, K, s, the GPU's SM count), so a
call is bitwise the same run after run on one GPU model (``tests/test_cuda_sparse.py`` checks
it on a GPU).  ``backend="auto"`` picks this backend first for the sparse kinds on CUDA tensors.

K beyond ``COLUMN_RANGE`` goes one range of columns at a time (a pass over x each), D in pieces
of at most ``PIECE_NONZEROS`` nonzeros (the structure's build memory); pieces after the first
are computed into a temporary and added to ``out`` in piece order (deterministic).
:func:`emulate_project_sparse` runs the same plan on the CPU (``_C.host_emulate_project_sparse``)
for the tests.
"""

from __future__ import annotations

from typing import Callable

import torch

from .._extension import _C
from . import sparse_chunks
from .cuda_backend import DTYPE_CODES

# = kChunkNonzeros in csrc/sparse_chunk_args.h (checked by the binding: chunks must match).
CHUNK_NONZEROS = sparse_chunks.GPU_NONZEROS
COLUMN_RANGE = sparse_chunks.COLUMN_RANGE
PIECE_NONZEROS = sparse_chunks.PIECE_NONZEROS
PIECE_POINTERS = sparse_chunks.PIECE_POINTERS


def batch_rows(dtype: torch.dtype, device: torch.device) -> int:
    """Batch rows per CTA: 4 where the GPU lets a CTA have the shared memory that takes (A100,
    H100: 160 KiB for float32 x), else 2 (e.g. sm_86/sm_89, 99 KiB)."""
    need = _C.project_sparse_smem_bytes(DTYPE_CODES[dtype], 4)
    # Unknown limit (a torch without the property): 2 rows, which every sm_80+ GPU can hold.
    limit = getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", 0)
    return 4 if limit >= need else 2


# One piece: (x piece (B, rows), entries, col_ptr, destination (B, width) float32) -> None.
RunPiece = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


def _for_each_piece(x, out, seed, offset, sparsity, threshold, run: RunPiece) -> None:
    """Cuts the product into column ranges and row pieces and runs each with its structure."""
    batch, dim = x.shape
    proj_dim = out.shape[1]
    chunk = CHUNK_NONZEROS // sparsity
    for col0 in range(0, proj_dim, COLUMN_RANGE):
        width = min(COLUMN_RANGE, proj_dim - col0)
        dest = out[:, col0 : col0 + width]
        pieces = sparse_chunks.pieces(dim, chunk, CHUNK_NONZEROS, width, PIECE_NONZEROS, PIECE_POINTERS)
        partial = torch.empty((batch, width), dtype=torch.float32, device=x.device) if len(pieces) > 1 else None
        for i, (r0, r1) in enumerate(pieces):
            entries, col_ptr = sparse_chunks.cached_structure(
                seed, offset + r0, r1 - r0, proj_dim, sparsity, threshold, chunk, col0, width, x.device
            )
            run(x[:, r0:r1], entries, col_ptr, dest if i == 0 else partial)
            if i > 0:
                dest.add_(partial)  # pieces in order: a fixed summation order


def _args(x, entries, col_ptr, dest, sparsity) -> tuple:
    """The leading arguments of ``_C.project_sparse`` / ``_C.host_emulate_project_sparse``."""
    return (
        x.data_ptr(), DTYPE_CODES[x.dtype], x.shape[0], x.shape[1], x.stride(0), x.stride(1),
        entries.data_ptr(), col_ptr.data_ptr(), col_ptr.stride(0), entries.shape[0], sparsity,
        dest.data_ptr(), dest.shape[1], dest.stride(0), dest.stride(1),
    )  # fmt: skip


def project_sparse(
    x: torch.Tensor, out: torch.Tensor, *, seed: int, offset: int, sparsity: int, threshold: int | None
) -> None:
    """Writes ``x @ P`` (unscaled entries ±1) into ``out`` ``(B, K)`` float32 (any strides) for a
    CUDA tensor ``x`` (float32/float16/bfloat16, any strides); ``threshold`` is GraSS's mask
    threshold, None for sjlt.  Arguments arrive validated.  Runs on x's device's current stream."""
    device = x.device
    rows_per_cta = batch_rows(x.dtype, device)

    def run(xp, entries, col_ptr, dest):
        with torch.cuda.device(device):
            num_sms = torch.cuda.get_device_properties(device).multi_processor_count
            plan = (xp.shape[0], entries.shape[0], dest.shape[1], num_sms, rows_per_cta)
            size = _C.project_sparse_workspace_bytes(*plan)
            # On the kernel's stream: the caching allocator reuses it only for later work.
            workspace = torch.empty(size, dtype=torch.uint8, device=device) if size else None
            _C.project_sparse(
                *_args(xp, entries, col_ptr, dest, sparsity),
                rows_per_cta,
                workspace.data_ptr() if workspace is not None else 0,
                size,
                num_sms,
                torch.cuda.current_stream(device).cuda_stream,
            )

    _for_each_piece(x, out, seed, offset, sparsity, threshold, run)


def emulate_project_sparse(
    x: torch.Tensor,
    out: torch.Tensor,
    *,
    seed: int,
    offset: int,
    sparsity: int,
    threshold: int | None,
    num_sms: int,
    rows_per_cta: int = 4,
) -> list[bool]:
    """:func:`project_sparse` on CPU tensors through ``_C.host_emulate_project_sparse`` (the
    kernel's plan for a GPU of ``num_sms`` SMs and per-thread code, run thread by thread).
    Returns, per piece, whether the vector (cp.async) staging path was taken.  For tests."""
    vector: list[bool] = []

    def run(xp, entries, col_ptr, dest):
        args = _args(xp, entries, col_ptr, dest, sparsity)
        vector.append(_C.host_emulate_project_sparse(*args, rows_per_cta, num_sms))

    _for_each_piece(x, out, seed, offset, sparsity, threshold, run)
    return vector
