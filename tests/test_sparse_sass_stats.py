"""bench/sparse_sass_stats.py: the sparse kinds' CUDA kernel's instructions per staged 16-byte
copy of x and per summed entry, read from the built module's sm_80 / sm_90 code (no GPU).  The
bounds lock in issue 13's stop-25 and stop-27 changes (bench/NOTES.md): bringing back the
staging loop's division by the pieces per row and its 64-bit clamps (~60 instructions a copy
before), the clamp on whole chunks (23 against 13), the sign flip + add per batch row (FADD),
nvcc's 4x unroll of the run loop (a remainder loop and a 4-entry body per column, for runs of ~1
entry), or a shared load of x per batch row instead of one row of the transposed windows per
entry (stop 29) fails them."""

import pytest

from fastjl._backends import cuda_resources as cr

from .helpers import cubins_or_skip, load_bench_module

stats = load_bench_module("sparse_sass_stats")
ARCHS = ("sm_80", "sm_90")
# Per 16-byte copy of x: whole chunks (since stop 27) measured 12 (sm_80) / 13 (sm_90), the
# clamped loop (a call's last chunk, the last batch tile) 22 / 23, nvcc 13.0.
COPY_BOUND = 15
CLAMPED_BOUND = 26
# Per entry of the (not unrolled) run loop, look-ahead included, since stop 29 (one vector load
# of x per entry); measured on sm_90, nvcc 13.0: fp32 14 (4 rows) / 12 (2), 16-bit 26 (8 rows) /
# 18 (4).  16-bit x pays a conversion per row.  Before: fp32 17, 16-bit 20 for 4 rows.
ENTRY_BOUND = {
    ("float32", 4): 15, ("float32", 2): 13,
    ("float16", 8): 27, ("bfloat16", 8): 27, ("float16", 4): 19, ("bfloat16", 4): 19,
}  # fmt: skip
BATCH_ROWS = {"float32": (2, 4), "float16": (4, 8), "bfloat16": (4, 8)}
# Per row of a chunk, transposing the windows into T (stop 29), measured on sm_90: fp32 4.2 (2
# rows) / 6.2 (4), 16-bit two rows at a time 5.1 (4) / 10.2 (8); a row at a time 8.2 / 14.2.
TRANSPOSE_BOUND = {
    ("float32", 2): 5, ("float32", 4): 7,
    ("float16", 4): 6, ("bfloat16", 4): 6, ("float16", 8): 11, ("bfloat16", 8): 11,
}  # fmt: skip


@pytest.fixture(scope="module")
def rows():
    so, tool = cubins_or_skip()
    found = {}
    for arch, sass in stats.sass_by_arch(tool, so).items():
        if arch not in ARCHS:
            continue
        for name, insts in cr.parse_sass(sass).items():
            one = stats.instantiation_stats(cr, name, insts)
            if one is not None:
                found[(arch, one[0], one[1])] = one[2]
    return found


def test_every_instantiation_is_read(rows):
    expected = {(a, d, r) for a in ARCHS for d in stats.DTYPES.values() for r in BATCH_ROWS[d]}
    assert set(rows) == expected
    assert all(None not in (s["copy"], s["clamped"], s["transpose"], s["entry"]) for s in rows.values()), rows


def test_staging_copies_without_divisions(rows):
    over = {k: s["copy"] for k, s in rows.items() if s["copy"] > COPY_BOUND}
    assert not over, f"instructions per 16-byte copy of x (whole chunks) above {COPY_BOUND}: {over}"
    over = {k: s["clamped"] for k, s in rows.items() if s["clamped"] > CLAMPED_BOUND}
    assert not over, f"instructions per 16-byte copy of x (clamped) above {CLAMPED_BOUND}: {over}"


def test_entries_add_with_one_ffma_per_batch_row_in_a_rolled_loop(rows):
    assert {s["adds"] for s in rows.values()} == {"FFMA"}
    assert {s["unroll"] for s in rows.values()} == {1.0}
    over = {k: s["entry"] for k, s in rows.items() if s["entry"] > ENTRY_BOUND[k[1:]]}
    assert not over, f"instructions per entry above the bounds: {over}"


def test_windows_transposed_in_few_instructions_per_row(rows):
    over = {k: s["transpose"] for k, s in rows.items() if s["transpose"] > TRANSPOSE_BOUND[k[1:]]}
    assert not over, f"instructions per row transposed above the bounds: {over}"


def test_entries_load_x_for_every_batch_row_at_once(rows):
    """One shared load of x per entry (a row of the transposed windows), whatever the batch rows."""
    assert {k: s["x_loads"] for k, s in rows.items()} == {k: 1.0 for k in rows}


def test_kernel_stats_on_synthetic_sass():
    """Four loops: x's clamped copy loop (2 .ZFILL copies in 10 instructions), the whole-chunk
    loop after it (2 plain copies in 6), the structure's copy loop (not x's: 1 copy in 4) and a
    run loop (8 FFMA for 4 batch rows, i.e. 2 entries, in 12, with a vector load of x per entry
    and a 16-bit entry load): 5 and 3 per copy, 6 per entry."""
    clamped_loop = [(i * 16, "IMAD", "R1, R2, R3, RZ ;") for i in range(8)]
    clamped_loop[3] = (0x30, "LDGSTS", ".E.BYPASS.128.ZFILL [R1], desc[UR4][R2.64], P0 ;")
    clamped_loop[6] = (0x60, "LDGSTS", ".E.BYPASS.128.ZFILL [R1], desc[UR4][R4.64], P0 ;")
    clamped_loop += [(0x80, "LDGSTS", ".E.BYPASS.128 [R5], desc[UR4][R6.64] ;"), (0x90, "BRA", "0x0 ;")]
    whole_loop = [(0xA0 + i * 16, "IADD3", "R8, P0, R8, UR4, RZ ;") for i in range(3)]
    whole_loop[1] = (0xB0, "LDGSTS", ".E.BYPASS.128 [R5], desc[UR4][R8.64] ;")
    whole_loop += [
        (0xD0, "LDGSTS", ".E.BYPASS.128 [R7], desc[UR4][R8.64+0x10] ;"),
        (0xE0, "IADD3", "R9, R9, 0x1, RZ ;"),
        (0xF0, "BRA", "0xa0 ;"),
    ]
    structure_loop = [
        (0x100, "IADD3", "R3, R3, 0x400, RZ ;"),
        (0x110, "LDGSTS", ".E.BYPASS.128 [R3], desc[UR4][R4.64] ;"),
        (0x120, "ISETP", ".GE.AND P0, PT, R3, R2, PT ;"),
        (0x130, "BRA", "0x100 ;"),
    ]
    run_loop = [(0x200 + i * 16, "FFMA", "R8, R9, R10, R8 ;") for i in range(8)]
    run_loop += [(0x280 + i * 16, "LDS", ".128 R12, [R1] ;") for i in range(2)]  # x: one load an entry
    run_loop += [(0x2A0, "LDS", ".U16 R9, [R2+0x2] ;"), (0x2B0, "BRA", "0x200 ;")]  # the look-ahead
    s = stats.kernel_stats(cr, clamped_loop + whole_loop + structure_loop + run_loop, 4)
    assert s == {"static": 32, "copy": 3.0, "clamped": 5.0, "transpose": None, "entry": 6.0, "per_row": 1.5,
                 "unroll": 2.0, "x_loads": 1.0, "adds": "FFMA"}  # fmt: skip


def test_transpose_rows_count_the_bytes_stored():
    """nvcc merges two adjacent 8-byte rows of T into one STS.128: rows are bytes stored over
    the bytes of a row (here 16 + 8 bytes of 8-byte rows: 3 rows in 9 instructions)."""
    loop = [(i * 16, "LDS", "R4, [R2] ;") for i in range(6)]
    loop += [(0x60, "STS", ".128 [R3], R4 ;"), (0x70, "STS", ".64 [R3+0x10], R8 ;"), (0x80, "BRA", "0x0 ;")]
    assert stats.kernel_stats(cr, loop, 2, row_bytes=8)["transpose"] == 3.0
