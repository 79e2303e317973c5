"""Triton kernel of the sparse kinds (sjlt, grass): ``x @ P`` from P's column-sorted structure.

Imported lazily by ``triton_sparse`` (``triton.jit`` reads ``TRITON_INTERPRET`` when the kernel is
defined).  The host (``triton_sparse``) cuts the rows of P into chunks of ``CHUNK`` rows and
gives, per chunk, its nonzeros sorted by column (rows ascending within a column), one int16
``entry`` each: ``local row << 2 | negative << 1 | first of its column``, and ``col_ptr``, the
start of each column's run (``K + 1`` int16 per chunk).

Grid: (column tiles, batch tiles, splits); program (k, b, s) walks chunks ``s·cps ..`` in order.
Per chunk it loads the ``(BLOCK_B, CHUNK)`` window of x once, coalesced, and for the nonzeros of
its columns, ``NNZ`` at a time: gathers their x values from the window (``tl.gather``: through
shared memory, not the L1 cache), signs them, sums each column's run with a segmented scan, and
gathers each column's sum at its run's last position.  No atomics: every output element is a
sum in an order fixed by the structure and the tiles (the scan's tree within a block, blocks
and chunks in sequence, splits added by ``_sum_splits_kernel`` in order), so results are
bitwise the same run after run on the same GPU and plan.
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
    entries_ptr,  # int16 (chunks, CHUNK * s)
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
    nnz_per_chunk,  # CHUNK * s: the entries' stride between chunks
    chunks,
    chunks_per_split,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    CHUNK: tl.constexpr,
    NNZ: tl.constexpr,  # nonzeros per gather-and-scan step (CHUNK * s by the host's plan)
):
    pid_k = tl.program_id(0)  # fastest: programs that share a window of x run side by side
    pid_b = tl.program_id(1)
    pid_s = tl.program_id(2)
    k0 = pid_k * BLOCK_K
    offs_k = k0 + tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    k_end = tl.minimum(k0 + BLOCK_K, K)
    rows = tl.arange(0, CHUNK).to(tl.int64)
    lane = tl.arange(0, NNZ)
    tile_rows = tl.arange(0, BLOCK_B)
    acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
    c_start = pid_s.to(tl.int64) * chunks_per_split  # c runs in int64: 64-bit offsets below
    c_stop = tl.minimum(c_start + chunks_per_split, chunks)
    for c in range(c_start, c_stop):
        d = c * CHUNK + rows
        ptr = col_ptr_ptr + c * (K + 1)
        starts = tl.load(ptr + offs_k, mask=k_mask, other=0).to(tl.int32)
        ends = tl.load(ptr + offs_k + 1, mask=k_mask, other=0).to(tl.int32)
        p_lo = tl.load(ptr + k0).to(tl.int32)
        p_hi = tl.load(ptr + k_end).to(tl.int32)
        entries = entries_ptr + c * nnz_per_chunk
        for p0 in range(p_lo, p_hi, NNZ):
            # The block's structure, decoded once for the tile's BLOCK_B batch rows.
            pos = p0 + lane
            live = pos < p_hi
            e = tl.load(entries + pos, mask=live, other=0).to(tl.int32)
            row = e >> 2
            negative = ((e >> 1) & 1) != 0
            first = (e & 1) | (pos == p0).to(tl.int32)  # a block starts a segment too
            # Column k's entries in this block: [max(start, p0), min(end, p0 + NNZ)); its sum
            # sits at the last of them.
            lo = tl.maximum(starts, p0)
            hi = tl.minimum(ends, p0 + NNZ)
            has = (hi > lo) & k_mask
            last = tl.where(has, hi - 1 - p0, 0)
            for i in tl.static_range(BLOCK_B):
                # 1-D gathers: Triton lowers them through shared memory (for 2-D ones it
                # picks a warp-local layout that holds the whole window in every warp).
                b = pid_b * BLOCK_B + i
                d_stop = tl.where(b < B, D, 0)  # a row past B loads nothing
                window = tl.load(x_ptr + b.to(tl.int64) * stride_xb + d * stride_xd, mask=d < d_stop, other=0.0)
                v = tl.gather(window.to(tl.float32), row, 0)
                v = tl.where(live, tl.where(negative, -v, v), 0.0)
                sums, _ = tl.associative_scan((v, first), 0, _segmented_add)
                part = tl.where(has, tl.gather(sums, last, 0), 0.0)
                acc += tl.where(tile_rows[:, None] == i, part[None, :], 0.0)
    offs_b = pid_b * BLOCK_B + tile_rows
    dest = dest_ptr + pid_s.to(tl.int64) * stride_ds + offs_b.to(tl.int64)[:, None] * stride_db
    tl.store(dest + offs_k[None, :].to(tl.int64) * stride_dk, acc, mask=(offs_b < B)[:, None] & k_mask[None, :])
