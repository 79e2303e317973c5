"""bench/sparse_smem_model.py: the banking rules it counts with, and its reading of a real chunk."""

import numpy as np

from .helpers import load_bench_module

model = load_bench_module("sparse_smem_model")


def lanes(addresses):
    return np.stack([np.arange(len(addresses)), np.asarray(addresses)], 1)


def test_banking_rules():
    wavefronts = model.request_wavefronts
    assert wavefronts(lanes(4 * np.arange(32)), 4) == 1  # one word per bank
    assert wavefronts(lanes(np.zeros(32, dtype=np.int64)), 4) == 1  # broadcast
    assert wavefronts(lanes(128 * np.arange(32)), 4) == 32  # every lane in bank 0
    assert wavefronts(lanes(2 * np.arange(32)), 2) == 1  # two 16-bit lanes per word
    assert wavefronts(lanes(16 * np.arange(32)), 16) == 4  # 4 phases of 8 lanes, no conflict
    assert wavefronts(lanes(8 * np.arange(32)), 8) == 2  # 2 phases of 16 lanes
    assert wavefronts(lanes(np.zeros(0, dtype=np.int64)), 4) == 0


def test_chunk_counts_follow_the_structure():
    """Transposing the windows cuts the x wavefronts (one load of all batch rows per entry) for
    the cost of the transposition in staging; everything else is the layout's own constant
    (pointers: 2 loads x 4 columns x 32 warps, conflict-free)."""
    entries, ptr = model.chunk_structure(0, 0, 4096, 4096, 1, None, 4096, 0, 4096, "cpu")
    rows = model.chunk_wavefronts(entries[0].numpy(), ptr[0].numpy(), 4, "rows")
    inter = model.chunk_wavefronts(entries[0].numpy(), ptr[0].numpy(), 4, "transposed")
    assert rows["pointers"] == inter["pointers"] == 2 * model.COLS_PER_THREAD * model.THREADS // 32
    assert rows["entries"] == inter["entries"] > 0
    assert 0 < inter["x"] < rows["x"]
    assert inter["staging"] == rows["staging"] + 4 * 4096 // 32 + 4096 * 16 // 128
    assert rows["total"] == sum(v for k, v in rows.items() if k not in ("total", "per row"))
    # 8 rows of 16-bit x: one 16-byte load too, so per batch row fewer x wavefronts than 4.
    four = model.chunk_wavefronts(entries[0].numpy(), ptr[0].numpy(), 2, "transposed", 4)
    eight = model.chunk_wavefronts(entries[0].numpy(), ptr[0].numpy(), 2, "transposed", 8)
    assert eight["x"] / 8 < 0.8 * four["x"] / 4  # 236 against 305 per batch row
    assert eight["per row"] < four["per row"]
