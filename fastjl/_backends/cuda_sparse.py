"""CUDA backend of the sparse kinds (sjlt, grass): the host side of ``fastjl._C.project_sparse``
(csrc/sparse_kernel.cu, per-chunk code in csrc/sparse_chunk.cuh).

``out = x @ P[offset:offset+D, :K]`` (entries ±1, GraSS's masked rows 0) from P's chunk
structure (:mod:`.sparse_chunks`, the format the Triton kernel reads, kept in
:mod:`.sparse_cache`): chunks of ``nonzeros / s`` rows, each chunk's nonzeros sorted by column.
A CTA owns 4096 columns and as many batch rows as one 8- or 16-byte vector of x holds (2 or 4
float32, 4 or 8 16-bit: :func:`launch_shape`, which also picks the nonzeros per chunk: 4096,
8192 or 16384, at most 4096 rows); each of its 1024 threads sums the runs of its 4 columns in
float32, rows ascending, for all its batch rows, loading an entry's x for all of them at once.
No atomics and no float64: the order of every sum is fixed by the structure and the plan
(chunks in order within a split, splits added in order), and those depend only on (B, D, K, s,
the GPU's SM count and shared memory), so a call is bitwise the same run after run on one GPU
model (``tests/test_cuda_sparse.py`` checks it on a GPU).  ``backend="auto"`` picks this
backend first for the sparse kinds on CUDA tensors.

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

# csrc/sparse_chunk_args.h: valid_chunk_nonzeros, kMaxChunkRows (the binding
# checks them).  Larger chunks: a column has ~nonzeros / K entries a chunk, so the lanes of a
# warp (one column each) walk runs of more even length; s = 1 stays at 4096 (4096 rows).
CHUNK_NONZEROS = (16384, 8192, 4096)  # preferred first
MAX_CHUNK_ROWS = 4096
COLUMN_RANGE = sparse_chunks.COLUMN_RANGE
PIECE_NONZEROS = sparse_chunks.PIECE_NONZEROS
PIECE_POINTERS = sparse_chunks.PIECE_POINTERS


def full_batch_rows(dtype: torch.dtype) -> int:
    """Batch rows per CTA whose x fill a 16-byte row of the kernel's transposed windows (4
    float32, 8 float16/bfloat16; csrc/sparse_chunk_args.h's full_batch_rows); half as many fill
    8 bytes."""
    return 16 // dtype.itemsize


def launch_shape(dtype: torch.dtype, sparsity: int, device: torch.device) -> tuple[int, int]:
    """(batch rows per CTA, nonzeros per chunk) for x of ``dtype`` on ``device``.  First the
    largest chunk of at most 4096 rows (16384, 8192 or 4096 nonzeros: a column's runs grow with
    it, so a warp's lanes are busier), then the most batch rows that fit beside it in the GPU's
    shared memory: a 16-byte row of the transposed windows (4 float32 / 8 16-bit rows), else 8
    bytes (2 / 4).  H100: 16384 nonzeros for s >= 4 with 16-byte rows; A100: 16-byte rows at s = 1,
    8-byte rows with the larger chunks at s >= 2; sm_86/sm_89 (99 KiB): 8-byte rows, 4096."""
    code = DTYPE_CODES[dtype]
    full = full_batch_rows(dtype)
    # Unknown limit (a torch without the property): the smallest shape, which every sm_80+ GPU
    # can hold.
    limit = getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", 0)
    for nonzeros in CHUNK_NONZEROS:
        if nonzeros // sparsity > MAX_CHUNK_ROWS:
            continue
        for rows in (full, full // 2):
            if _C.project_sparse_smem_bytes(code, rows, nonzeros) <= limit:
                return rows, nonzeros
    return full // 2, CHUNK_NONZEROS[-1]


# One piece: (x piece (B, rows), entries, col_ptr, destination (B, width) float32) -> None.
RunPiece = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


def _for_each_piece(x, out, seed, offset, sparsity, threshold, nonzeros, run: RunPiece) -> None:
    """Cuts the product into column ranges and row pieces and runs each with its structure
    (chunks of ``nonzeros`` nonzeros)."""
    batch, dim = x.shape
    proj_dim = out.shape[1]
    chunk = nonzeros // sparsity
    for col0 in range(0, proj_dim, COLUMN_RANGE):
        width = min(COLUMN_RANGE, proj_dim - col0)
        dest = out[:, col0 : col0 + width]
        pieces = sparse_chunks.pieces(dim, chunk, nonzeros, width, PIECE_NONZEROS, PIECE_POINTERS)
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
        entries.shape[1], dest.data_ptr(), dest.shape[1], dest.stride(0), dest.stride(1),
    )  # fmt: skip


def project_sparse(
    x: torch.Tensor, out: torch.Tensor, *, seed: int, offset: int, sparsity: int, threshold: int | None
) -> None:
    """Writes ``x @ P`` (unscaled entries ±1) into ``out`` ``(B, K)`` float32 (any strides) for a
    CUDA tensor ``x`` (float32/float16/bfloat16, any strides); ``threshold`` is GraSS's mask
    threshold, None for sjlt.  Arguments arrive validated.  Runs on x's device's current stream."""
    device = x.device
    rows_per_cta, nonzeros = launch_shape(x.dtype, sparsity, device)

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

    _for_each_piece(x, out, seed, offset, sparsity, threshold, nonzeros, run)


def emulate_project_sparse(
    x: torch.Tensor,
    out: torch.Tensor,
    *,
    seed: int,
    offset: int,
    sparsity: int,
    threshold: int | None,
    num_sms: int,
    rows_per_cta: int | None = None,
    chunk_nonzeros: int = 4096,
) -> list[bool]:
    """:func:`project_sparse` on CPU tensors through ``_C.host_emulate_project_sparse`` (the
    kernel's plan for a GPU of ``num_sms`` SMs and per-thread code, run thread by thread), with
    chunks of ``chunk_nonzeros`` nonzeros and ``rows_per_cta`` batch rows per CTA (default: the
    16-byte rows, 4 for float32 x, 8 for 16-bit).
    Returns, per piece, whether the vector (cp.async) staging path was taken.  For tests."""
    vector: list[bool] = []
    if rows_per_cta is None:
        rows_per_cta = full_batch_rows(x.dtype)

    def run(xp, entries, col_ptr, dest):
        args = _args(xp, entries, col_ptr, dest, sparsity)
        vector.append(_C.host_emulate_project_sparse(*args, rows_per_cta, num_sms))

    _for_each_piece(x, out, seed, offset, sparsity, threshold, chunk_nonzeros, run)
    return vector
