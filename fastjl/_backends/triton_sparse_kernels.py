"""Triton kernel of the sparse kinds (sjlt, grass): ``x @ P`` from P's column-sorted structure.

Imported lazily by ``triton_sparse`` (``triton.jit`` reads ``TRITON_INTERPRET`` when the kernel is
defined).  The host (``triton_sparse``) cuts the rows of P into chunks of ``CHUNK = NNZ / s`` rows
and gives, per chunk, its nonzeros sorted by column (rows ascending within a column), one int16
``entry`` each, ``local row << 1 | negative``, padded with zeros to ``NNZ``, and ``col_ptr``, the
start of each column's run (``K + 1`` int16 per chunk).

Grid: (column tiles, batch rows, splits); program (k, b, s) walks chunks ``s·cps ..`` in order.
Per chunk it loads row b's window of x (``CHUNK`` values, coalesced) and the chunk's entries,
gathers their x values from the window (``tl.gather``: through shared memory, not the L1 cache),
signs them, forms their float64 prefix sum, and adds to each of its columns the difference of
the prefix at the column's run's end and start.  No atomics: every output element is a sum in
an order fixed by the structure and the plan (the prefix sum's fixed tree within a chunk, chunks
in sequence, splits added by ``_sum_splits_kernel`` in order), so results are bitwise the same
run after run on the same GPU and plan.
"""

import triton
import triton.language as tl


@triton.jit
def _sparse_project_kernel(
    x_ptr,
    entries_ptr,  # int16 (chunks, NNZ)
    col_ptr_ptr,  # int16 (chunks, ptr_stride): K + 1 used
    dest_ptr,
    B,
    D,
    K,
    stride_xb,
    stride_xd,
    stride_ds,  # destination strides: split, batch, column
    stride_db,
    stride_dk,
    ptr_stride,  # a multiple of 16: column pointer loads start aligned
    chunks,
    chunks_per_split,
    BLOCK_K: tl.constexpr,
    CHUNK: tl.constexpr,
    NNZ: tl.constexpr,  # CHUNK * s, a power of two: a chunk's entries in one step
):
    """Program (k, b, s): ``dest[s, b, k-tile]`` = the sum over its chunks of ``x[b, chunk] @ P[chunk, k-tile]``.

    One batch row per program: Triton lowers 1-D gathers through shared memory (for 2-D ones
    it picks a warp-local layout holding the whole window in every warp: hundreds of spilled
    registers).  A program reads all of a chunk's entries (aligned, vectorized loads, so each
    thread holds 8 contiguous ones and the prefix sum runs mostly in registers); its columns'
    runs pick out their own.  The next chunk's window of x and entries are loaded while the
    current chunk is summed (carried through the loop).
    """
    pid_k = tl.program_id(0)  # fastest: programs that share a window of x run side by side
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)
    k0 = pid_k * BLOCK_K
    offs_k = k0 + tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    rows = tl.arange(0, CHUNK).to(tl.int64)
    lane = tl.arange(0, NNZ)
    x_row = x_ptr + pid_b * stride_xb
    acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
    c_start = pid_s.to(tl.int64) * chunks_per_split  # c runs in int64: 64-bit offsets below
    c_stop = tl.minimum(c_start + chunks_per_split, chunks)
    # The first chunk's window and entries (the loop prefetches the next ones; past the last
    # chunk of the split it reloads that one, so no load needs a mask beyond D).
    c_first = tl.minimum(c_start, chunks - 1)
    d = c_first * CHUNK + rows
    window = tl.load(x_row + d * stride_xd, mask=d < D, other=0.0)
    e = tl.load(entries_ptr + c_first * NNZ + lane)
    for c in range(c_start, c_stop):
        ptr = col_ptr_ptr + c * ptr_stride
        starts = tl.load(ptr + offs_k, mask=k_mask, other=0).to(tl.int32)
        ends = tl.load(ptr + offs_k + 1, mask=k_mask, other=0).to(tl.int32)
        c_next = tl.minimum(c + 1, c_stop - 1)
        d_next = c_next * CHUNK + rows
        window_next = tl.load(x_row + d_next * stride_xd, mask=d_next < D, other=0.0)
        e_next = tl.load(entries_ptr + c_next * NNZ + lane)
        # The chunk's entries in (column, row) order: x value, sign, prefix sum.  Entries past
        # the chunk's count (zeros) and other tiles' columns lie outside this tile's runs.
        code = e.to(tl.int32)
        v = tl.gather(window.to(tl.float32), code >> 1, 0)
        v = (v.to(tl.int32, bitcast=True) ^ (code << 31)).to(tl.float32, bitcast=True)  # the sign bit
        # Column k's sum is the difference of an inclusive float64 prefix sum at its run's last
        # entry and just before its first: the prefix of <= 4096 float32 values errs by at most
        # 2^-41 of the chunk's absolute sum, so float32 sees no cancellation in the difference
        # (docs/design.md bounds it).  A NaN spreads to the chunk's later columns: never hidden.
        # An empty column (start == end, columns past K included) subtracts a value from itself:
        # exactly 0.
        prefix = tl.cumsum(v.to(tl.float64), 0)
        at_end = tl.where(ends > 0, tl.gather(prefix, tl.maximum(ends - 1, 0), 0), 0.0)
        before = tl.where(starts > 0, tl.gather(prefix, tl.maximum(starts - 1, 0), 0), 0.0)
        acc += (at_end - before).to(tl.float32)
        window, e = window_next, e_next
    dest = dest_ptr + pid_s.to(tl.int64) * stride_ds + pid_b * stride_db
    tl.store(dest + offs_k.to(tl.int64) * stride_dk, acc, mask=k_mask)
