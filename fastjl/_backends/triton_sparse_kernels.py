"""Triton kernel of the sparse kinds (sjlt, grass): ``x @ P`` from P's column-sorted structure.

Imported lazily by ``triton_sparse`` (``triton.jit`` reads ``TRITON_INTERPRET`` when the kernel is
defined).  The host (``triton_sparse``) cuts the rows of P into chunks of ``CHUNK`` rows and
gives, per chunk, its nonzeros sorted by column (rows ascending within a column), one int16
``entry`` each: ``local row << 2 | negative << 1 | first of its column``, and ``col_ptr``, the
start of each column's run (``K + 1`` int16 per chunk).

Grid: (column tiles, batch rows, splits); program (k, b, s) walks chunks ``s·cps ..`` in order.
Per chunk it loads row b's window of x (``CHUNK`` values, coalesced) and the chunk's entries for
its columns (at most ``CHUNK·s <= NNZ``: one step), gathers their x values from the window
(``tl.gather``: through shared memory, not the L1 cache), signs them, sums each column's run
with a segmented scan, and gathers each column's sum at its run's last position.  No atomics:
every output element is a sum in an order fixed by the structure and the plan (the scan's tree
within a chunk, chunks in sequence, splits added by ``_sum_splits_kernel`` in order), so results
are bitwise the same run after run on the same GPU and plan.
"""

import triton
import triton.language as tl


@triton.jit
def _segmented_add(v1, f1, v2, f2):
    """Combine of a segmented inclusive sum: a flagged element starts a new segment."""
    return tl.where(f2 != 0, v2, v1 + v2), f1 | f2


@triton.jit
def _sparse_project_kernel(
    x_ptr,
    entries_ptr,  # int16 (chunks, nnz_per_chunk)
    col_ptr_ptr,  # int16 (chunks, K + 1)
    dest_ptr,
    B,
    D,
    K,
    stride_xb,
    stride_xd,
    stride_ds,  # destination strides: split, batch, column
    stride_db,
    stride_dk,
    nnz_per_chunk,  # CHUNK * s <= NNZ: the entries' stride between chunks
    chunks,
    chunks_per_split,
    BLOCK_K: tl.constexpr,
    CHUNK: tl.constexpr,
    NNZ: tl.constexpr,  # a power of two >= CHUNK * s: a chunk's nonzeros in one gather-and-scan step
):
    """Program (k, b, s): ``dest[s, b, k-tile]`` = the sum over its chunks of ``x[b, chunk] @ P[chunk, k-tile]``.

    One batch row per program: Triton lowers 1-D gathers through shared memory (for 2-D ones
    it picks a warp-local layout holding the whole window in every warp: hundreds of spilled
    registers).  The next chunk's window of x and its first entries are loaded while the
    current chunk is summed (carried through the loop), so a program keeps a load in flight.
    """
    pid_k = tl.program_id(0)  # fastest: programs that share a window of x run side by side
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)
    k0 = pid_k * BLOCK_K
    offs_k = k0 + tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    k_end = tl.minimum(k0 + BLOCK_K, K)
    rows = tl.arange(0, CHUNK).to(tl.int64)
    lane = tl.arange(0, NNZ)
    x_row = x_ptr + pid_b * stride_xb
    d_stop = tl.where(pid_b < B, D, 0)  # scalar bounds: the interpreter rejects vector & scalar masks
    acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
    c_start = pid_s.to(tl.int64) * chunks_per_split  # c runs in int64: 64-bit offsets below
    c_stop = tl.minimum(c_start + chunks_per_split, chunks)
    # The first chunk's window, block bounds and entries (the loop prefetches the next ones).
    d = c_start * CHUNK + rows
    window = tl.load(x_row + d * stride_xd, mask=d < tl.where(c_start < c_stop, d_stop, 0), other=0.0)
    p_lo = tl.load(col_ptr_ptr + c_start * (K + 1) + k0, mask=c_start < c_stop, other=0).to(tl.int32)
    p_hi = tl.load(col_ptr_ptr + c_start * (K + 1) + k_end, mask=c_start < c_stop, other=0).to(tl.int32)
    e = tl.load(entries_ptr + c_start * nnz_per_chunk + p_lo + lane, mask=lane < p_hi - p_lo, other=0)
    for c in range(c_start, c_stop):
        ptr = col_ptr_ptr + c * (K + 1)
        starts = tl.load(ptr + offs_k, mask=k_mask, other=0).to(tl.int32)
        ends = tl.load(ptr + offs_k + 1, mask=k_mask, other=0).to(tl.int32)
        more = c + 1 < c_stop
        d_next = d + CHUNK
        window_next = tl.load(x_row + d_next * stride_xd, mask=d_next < tl.where(more, d_stop, 0), other=0.0)
        p_lo_next = tl.load(ptr + (K + 1) + k0, mask=more, other=0).to(tl.int32)
        p_hi_next = tl.load(ptr + (K + 1) + k_end, mask=more, other=0).to(tl.int32)
        # The tile's entries of this chunk, (column, row) order: x value, sign, segmented sum.
        code = e.to(tl.int32)
        v = tl.gather(window.to(tl.float32), code >> 2, 0)
        v = tl.where(lane < p_hi - p_lo, tl.where(((code >> 1) & 1) != 0, -v, v), 0.0)
        sums, _ = tl.associative_scan((v, code & 1), 0, _segmented_add)
        # Column k's entries are [start, end) (relative to p_lo); its sum sits at the last one.
        has = (ends > starts) & k_mask
        acc += tl.where(has, tl.gather(sums, tl.where(has, ends - 1 - p_lo, 0), 0), 0.0)
        next_entries = entries_ptr + (c + 1) * nnz_per_chunk + p_lo_next
        e = tl.load(next_entries + lane, mask=lane < p_hi_next - p_lo_next, other=0)
        window, d, p_lo, p_hi = window_next, d_next, p_lo_next, p_hi_next
    dest = dest_ptr + pid_s.to(tl.int64) * stride_ds + pid_b * stride_db
    tl.store(dest + offs_k.to(tl.int64) * stride_dk, acc, mask=offs_k < tl.where(pid_b < B, K, 0))
