"""Shared-memory wavefronts per chunk of the sparse kinds' CUDA kernel (csrc/sparse_chunk.cuh),
counted on the real chunk structure: the static measure of that kernel's summing step.

    python bench/sparse_smem_model.py                      # s = 1, 2, 4, 8; fp32 and 16-bit x
    python bench/sparse_smem_model.py --sparsity 1 --chunks 8

A CTA of 1024 threads (32 warps) owns 4096 columns; lane l of warp w owns columns
c·1024 + 32·w + l, c = 0..3 (``chunk_columns``).  Per column a lane loads its two pointers and
its run's first entry, then walks the run; per entry it loads the next entry (one past the
run's end at its last) and, per batch row, that row's x.  The warp repeats an iteration until
its longest run ends (lanes past their run are inactive).  The
model replays those accesses warp by warp with the banking rules of sm_70+ shared memory
(32 banks of 4 bytes; per request, distinct 4-byte words in one bank serialize, equal words
broadcast; 64-bit requests run as 2 phases of 16 lanes, 128-bit as 4 phases of 8 lanes) and
counts wavefronts, the cycles the SM's shared memory spends (one wavefront per cycle).  It adds
the staging writes (``cp.async``, 128 bytes per wavefront).

Layouts: ``rows`` (the kernel until stop 29: one window per batch row, one load per row per
entry, 4 batch rows) and ``transposed`` (the kernel since stop 29: the windows transposed per
chunk into ``T[row][r]``, so one 16-byte load gives an entry's x for all its batch rows, 4 of
fp32 or 8 of 16-bit x; the transposition's loads and stores count as staging).  ``per row``
divides the total by the batch rows: the layouts' CTAs own different numbers of them.

The H100 runs of 2026-11-27 (bench/NOTES.md, runs 5-6) measured ~6.1 µs per chunk per CTA for
fp32 x, s = 1 and ~4.4 µs for bf16 x, s = 4 (B = 32, D = 10^7, K = 4096).
"""

from __future__ import annotations

import argparse

import numpy as np

from fastjl._backends.sparse_chunks import GPU_NONZEROS, chunk_structure

THREADS, COLS_PER_THREAD, WARP, BANKS = 1024, 4, 32, 32  # csrc/sparse_chunk_args.h
MAX_CHUNK_ROWS = 4096  # kMaxChunkRows: every x window is sized for it
CLOCK_GHZ = 1.98  # H100 SXM's maximum SM clock (nvidia-smi clocks.max.sm in run 5)


def request_wavefronts(byte_addresses: np.ndarray, width: int) -> int:
    """Wavefronts of one warp-wide shared-memory request of ``width`` bytes per active lane."""
    if byte_addresses.size == 0:
        return 0
    lanes_per_phase = {1: 32, 2: 32, 4: 32, 8: 16, 16: 8}[width]
    total = 0
    for start in range(0, WARP, lanes_per_phase):
        phase = byte_addresses[(byte_addresses[:, 0] >= start) & (byte_addresses[:, 0] < start + lanes_per_phase), 1]
        if phase.size == 0:
            continue
        words = np.unique(np.concatenate([phase // 4 + i for i in range(max(1, width // 4))]))
        total += int(np.bincount(words % BANKS, minlength=BANKS).max())
    return total


def chunk_wavefronts(
    entries: np.ndarray, ptr: np.ndarray, esize: int, layout: str, batch_rows: int = 4, chunk_rows: int | None = None
) -> dict:
    """Summing-step wavefronts of one chunk for one CTA (``batch_rows`` batch rows), by access
    kind; the chunk's nonzeros (the kernel's chunk_nonzeros) are ``entries.size``, its rows
    ``chunk_rows`` (default: as many as nonzeros, at most 4096: s = 1's, an upper bound)."""
    nonzeros = entries.size
    window_bytes = MAX_CHUNK_ROWS * esize
    entries_offset = 2 * batch_rows * window_bytes  # raw windows and T (their sizes in the kernel)
    ptr_offset = entries_offset + nonzeros * 2
    counts = {"pointers": 0, "entries": 0, "x": 0}
    for warp in range(THREADS // WARP):
        lanes = np.arange(WARP)
        for c in range(COLS_PER_THREAD):
            k = c * THREADS + warp * WARP + lanes
            begin, end = ptr[k].astype(np.int64), ptr[k + 1].astype(np.int64)
            for p in (k, k + 1):
                counts["pointers"] += request_wavefronts(np.stack([lanes, ptr_offset + 2 * p], 1), 2)
            counts["entries"] += request_wavefronts(np.stack([lanes, entries_offset + 2 * begin], 1), 2)
            for t in range(int((end - begin).max(initial=0))):
                active = lanes[begin + t < end]
                j = begin[active] + t
                look_ahead = entries_offset + 2 * (j + 1)
                counts["entries"] += request_wavefronts(np.stack([active, look_ahead], 1), 2)
                row = entries[j].astype(np.int64) >> 1
                if layout == "rows":
                    for r in range(batch_rows):
                        addr = r * window_bytes + row * esize
                        counts["x"] += request_wavefronts(np.stack([active, addr], 1), esize)
                else:
                    addr = row * esize * batch_rows
                    counts["x"] += request_wavefronts(np.stack([active, addr], 1), esize * batch_rows)
    rows = chunk_rows or min(MAX_CHUNK_ROWS, nonzeros)
    counts["staging"] = (batch_rows * rows * esize + nonzeros * 2 + (ptr.size * 2)) // 128
    if layout == "transposed":  # per row of the chunk: a warp-wide load per batch row, one store
        counts["staging"] += batch_rows * rows // WARP + rows * esize * batch_rows // 128
    counts["total"] = sum(counts.values())
    counts["per row"] = counts["total"] / batch_rows
    return counts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sparsity", default="1,2,4,8")
    p.add_argument("--chunks", type=int, default=4, help="chunks averaged per row of the table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--chunk-nonzeros", type=int, default=GPU_NONZEROS, help="4096, 8192 or 16384 (at most 4096 rows a chunk)"
    )
    args = p.parse_args(argv)
    nnz = args.chunk_nonzeros
    print(f"wavefronts per chunk of {nnz} nonzeros per CTA (K = 4096), µs at {CLOCK_GHZ} GHz")
    columns = ("rows", 4), ("pointers", 9), ("entries", 8), ("x", 7), ("staging", 8), ("total", 7), ("per row", 8)
    columns += (("µs", 6),)
    print(f"{'s':>2} {'x':>5} {'layout':>10} " + " ".join(f"{name:>{width}}" for name, width in columns))
    for s in (int(v) for v in args.sparsity.split(",")):
        rows = nnz // s
        if rows > MAX_CHUNK_ROWS:
            continue  # the kernel takes at most 4096 rows a chunk
        entries, ptr = chunk_structure(args.seed, 0, rows * args.chunks, 4096, s, None, rows, 0, 4096, "cpu")
        for esize, name in ((4, "fp32"), (2, "16bit")):
            for layout, batch_rows in (("rows", 4), ("transposed", 16 // esize)):
                runs = [
                    chunk_wavefronts(entries[i].numpy(), ptr[i].numpy(), esize, layout, batch_rows, rows)
                    for i in range(args.chunks)
                ]
                mean = {key: sum(r[key] for r in runs) / len(runs) for key in runs[0]}
                us = mean["total"] / (CLOCK_GHZ * 1e3)
                figures = " ".join(f"{mean[name]:>{width}.0f}" for name, width in columns[1:-1])
                print(f"{s:>2} {name:>5} {layout:>10} {batch_rows:>4} {figures} {us:>6.2f}")


if __name__ == "__main__":
    main()
