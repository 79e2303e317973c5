"""Triton backend of the sparse kinds (sjlt, grass): the host side of ``triton_sparse_kernels``.

``out = x @ P[offset:offset+D, :K]`` (entries ±1, GraSS's masked rows 0).  The rows of P are cut
into chunks of ``CHUNK = NNZ / s`` rows (so a chunk has at most ``NNZ`` nonzeros: one
gather-and-scan step per chunk and column tile); each chunk's nonzeros, generated from the spec
(:mod:`fastjl.sparse_blocks`, exact bits) and sorted by column with rows ascending, are stored as
int16 entries plus int16 column pointers (:func:`chunk_structure`); the kernel sums each column's
run as a difference of a float64 prefix sum over the chunk.  That structure does not
depend on x, so it is kept in :mod:`.sparse_cache` for the next call with the same matrix.

Bytes per input row (x of B rows, itemsize ``w``): ``B·w`` of x, read once (coalesced, a chunk
window at a time), plus ``2s + 2K/CHUNK`` of structure, read once per batch tile (from L2 when
the batch tiles of a chunk run side by side, as the grid order makes them), plus the per-split
partial sums (``splits·B·K·4`` bytes, written once and summed in order).  Memory: the structure
is built ``PIECE_NONZEROS`` nonzeros (and at most ``PIECE_POINTERS`` column pointers) at a time.

K beyond ``COLUMN_RANGE`` is done one range of columns at a time, each range a pass over x (the
column pointers are K-sized per chunk); every K used by TRAK-style projections fits one range.
B beyond ``MAX_GRID_ROWS`` (a CUDA grid's second axis) is done in slices of batch rows.

Determinism: no atomics; every sum has an order fixed by the structure and the plan (tiles,
chunks, splits), and the plan depends only on (B, D, K, s, the GPU's SM count): the same call is
bitwise the same run after run.  The order differs from the torch backend's (results agree to
float32 rounding, not bitwise).
"""

from __future__ import annotations

import torch

from .sparse_chunks import (  # noqa: F401  (chunk_structure, POINTER_ALIGN: re-exported for the tests)
    _ENTRY_ROW_LIMIT,
    COLUMN_RANGE,
    GPU_NONZEROS,
    PIECE_NONZEROS,
    PIECE_POINTERS,
    POINTER_ALIGN,
    cached_structure,
    chunk_structure,
)
from .sparse_chunks import pieces as chunk_pieces
from .triton_backend import _interpreting, _sum_splits, availability, one_wave_splits  # noqa: F401

NAME = "triton"

# Nonzeros per chunk on a GPU: at 16 warps the chunk's window of x, its gathered values and
# their scan, and a 4096-column accumulator stay in registers (tests/test_triton_compile.py
# bounds the spills; two batch rows per program spilled, so a program takes one).  int16
# entries hold a local row below 2^14 next to the sign bit, and column pointers up to CHUNK * s.
GPU_NNZ = GPU_NONZEROS
GPU_WARPS = 16
INTERPRETER_NNZ = 64  # small steps: Triton's interpreter runs each in numpy, its scans one element at a time
MAX_BLOCK_K = 4096
INTERPRETER_MAX_BLOCK_K = 32
MAX_GRID_ROWS = 65535  # CUDA's limit on a grid's second axis (batch rows): larger B goes in slices


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def plan(width: int, sparsity: int, device: torch.device) -> dict:
    """Tiles and launch options for ``width`` output columns: ``BLOCK_K``, ``CHUNK`` (rows of P
    per chunk), ``NNZ`` (= ``CHUNK·s``, so a chunk is one gather-and-scan step) and ``num_warps``.
    One column tile covers up to 4096 columns, so at K <= 4096 each window of x is read by one
    program only."""
    on_gpu = device.type == "cuda"
    nnz = GPU_NNZ if on_gpu else INTERPRETER_NNZ
    block_k = max(16, min(_next_pow2(width), MAX_BLOCK_K if on_gpu else INTERPRETER_MAX_BLOCK_K))
    chunk = nnz // sparsity
    assert chunk <= _ENTRY_ROW_LIMIT and chunk * sparsity <= nnz < 1 << 15
    return dict(BLOCK_K=block_k, CHUNK=chunk, NNZ=nnz, num_warps=GPU_WARPS if on_gpu else 4)


def _splits(programs: int, chunks: int, device: torch.device) -> int:
    """Splits of a piece's chunks: one wave of one program per SM (16 warps of ~128 registers
    fill an SM's register file), at least 2 chunks per split.  The interpreter splits whenever
    it can, to exercise the reduction."""
    if device.type != "cuda":
        return 1 if chunks < 2 else 2
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(one_wave_splits(programs, sms), chunks // 2))


def project_sparse(
    x: torch.Tensor, out: torch.Tensor, *, seed: int, offset: int, sparsity: int, threshold: int | None
) -> None:
    """Writes ``x @ P`` (unscaled entries ±1) into ``out`` ``(B, K)`` float32 (any strides);
    ``threshold`` is GraSS's mask threshold, None for sjlt.  Arguments arrive validated."""
    batch, proj_dim = out.shape
    for b0 in range(0, batch, MAX_GRID_ROWS):
        rows = slice(b0, min(batch, b0 + MAX_GRID_ROWS))
        for col0 in range(0, proj_dim, COLUMN_RANGE):
            width = min(COLUMN_RANGE, proj_dim - col0)
            _project_columns(x[rows], out[rows, col0 : col0 + width], seed, offset, sparsity, threshold, proj_dim, col0)


def _project_columns(x, out, seed, offset, sparsity, threshold, proj_dim, col0) -> None:
    from . import triton_sparse_kernels as k  # lazily: see triton_sparse_kernels' docstring

    batch, dim = x.shape
    width = out.shape[1]
    cfg = plan(width, sparsity, x.device)
    launch = {"num_warps": cfg.pop("num_warps")}
    chunk = cfg["CHUNK"]
    pieces = chunk_pieces(dim, chunk, cfg["NNZ"], width, PIECE_NONZEROS, PIECE_POINTERS)
    grid_k = -(-width // cfg["BLOCK_K"])
    chunks = [-(-(r1 - r0) // chunk) for r0, r1 in pieces]
    splits = [_splits(grid_k * batch, n, x.device) for n in chunks]
    if sum(splits) == 1:
        dest = out.unsqueeze(0)
    else:
        dest = torch.empty((sum(splits), batch, width), dtype=torch.float32, device=x.device)
    slot = 0
    for (r0, r1), n, split in zip(pieces, chunks, splits):
        rows = (offset + r0, r1 - r0)
        entries, col_ptr = cached_structure(seed, *rows, proj_dim, sparsity, threshold, chunk, col0, width, x.device)
        part = dest[slot : slot + split]
        k._sparse_project_kernel[(grid_k, batch, split)](
            x[:, r0:r1],
            entries,
            col_ptr,
            part,
            batch,
            r1 - r0,
            width,
            x.stride(0),
            x.stride(1),
            *part.stride(),
            col_ptr.stride(0),
            n,
            -(-n // split),
            **cfg,
            **launch,
        )
        slot += split
    if dest.shape[0] > 1:
        _sum_splits(dest, out)
