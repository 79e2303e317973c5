"""bench/cuda_loop_probe.py: the CUDA projection kernels' instructions per warp per CTA step,
for contiguous x, from nvcc's code (no GPU needed).  The bounds lock in issue 12's changes 3-5
(rademacher 16-bit B128 from ~960 to 170 instructions per step on sm_90, bench/NOTES.md):
bringing back the divisions, the rolled tile loops, the branchy sign expansion, the per-step
row addresses or the range clamp on every step fails them."""

import tempfile
from pathlib import Path

import pytest

from .helpers import load_bench_module

ROOT = Path(__file__).resolve().parents[1]


probe = load_bench_module("cuda_loop_probe")


# A synthetic step loop (addresses as cuobjdump prints them): a wide forward branch around
# everything, inside it a whole-step copy (no ZFILL), the last step's clamped copy under its own
# branch (2 instructions), and the words branch around the Philox rounds (3 instructions).
STEP = [
    (0x00, "BAR", ".SYNC 0x0 ;"),
    (0x10, "BRA", "0xd0 ;"),  # wide: skips 0x20 .. 0xc0
    (0x20, "LDGSTS", ".E.BYPASS.128 [R15], desc[UR8][R12.64] ;"),
    (0x30, "BRA", "0x60 ;"),  # the tail branch: skips 0x40 .. 0x50
    (0x40, "SEL", "R12, R12, 0x8, P1 ;"),
    (0x50, "LDGSTS", ".E.BYPASS.128.ZFILL [R15], desc[UR8][R12.64], P1 ;"),
    (0x60, "LDGDEPBAR", ""),
    (0x70, "BRA", "0xb0 ;"),  # the words branch: skips 0x80 .. 0xa0
    (0x80, "IMAD", ".WIDE.U32 R4, R5, -0x2daee0ad, RZ ; 0xd2511f53"),
    (0x90, "LOP3", ".LUT R6, R7, UR8, R9, 0x96, !PT ;"),
    (0xA0, "STS", "[R7+0x8000], R4 ;"),
    (0xB0, "LDS", "R5, [R99+0x8000] ;"),
    (0xC0, "HMMA", ".16816.F32.BF16 R8, R12, R16, R8 ;"),
    (0xD0, "BRA", "0x0 ;"),
]


def test_words_block_is_the_smallest_branch_around_philox():
    assert probe.words_block(STEP, 0, 13) == 3
    no_philox = STEP[:8] + STEP[10:]  # the Philox rounds taken out: no words block
    assert probe.words_block(no_philox, 0, 11) == 0


def test_tail_block_is_the_smallest_branch_around_the_zero_filling_copies():
    assert probe.tail_block(STEP, 0, 13) == 2
    no_zfill = STEP[:5] + STEP[6:]  # the clamped copy taken out: no tail block
    assert probe.tail_block(no_zfill, 0, 12) == 0


def _relocated(rows, delta):
    """rows moved delta bytes on: their addresses and their branches' targets."""
    return [
        (addr + delta, op, f"{int(operands.split()[0], 16) + delta:#x} ;" if op == "BRA" else operands)
        for addr, op, operands in rows
    ]


# STEP unrolled twice: each body has its own clamped fetch; only the first, whose step can be
# a multiple of 8, has the Philox rounds (the second's multiply is a plain one).
BODY = STEP[:-1]  # without the loop's back branch
UNROLLED = (
    BODY
    + [(a, op, "R4, R5, R6, RZ ;" if op == "IMAD" else x) for a, op, x in _relocated(BODY, 0xD0)]
    + [(0x1A0, "BRA", "0x0 ;")]
)


def test_unrolled_loops_are_read_body_by_body():
    assert probe.step_bodies(UNROLLED, 0, 26) == [(0, 12), (13, 26)]
    assert probe.blocks_per_body(UNROLLED, 0, 26, probe.tail_block) == [2, 2]
    assert probe.blocks_per_body(UNROLLED, 0, 26, probe.words_block) == [3]
    # Without barriers (not a kernel's step loop) the loop is one body.
    no_bar = [row for row in UNROLLED if row[1] != "BAR"]
    assert probe.step_bodies(no_bar, 0, 24) == [(0, 24)]


def test_slowest_warp_carries_the_words_once_per_batch():
    # One warp per step (the former schedule): that warp runs 7/8 of the words block more
    # than the mean warp every step; every warp every 8th step: no warp is slower on average.
    assert probe.slowest_warp_step(100.0, 64, 1) == pytest.approx(100.0 + 64 * 7 / 8)
    assert probe.slowest_warp_step(100.0, 64, 4) == pytest.approx(100.0 + 64 / 8)
    assert probe.slowest_warp_step(100.0, 64, 8) == pytest.approx(100.0)


def test_kernels_batch_the_words_over_every_warp():
    # Stop 28 (bench/NOTES.md): the slowest warp's step was 25-55% above the mean warp's
    # with one warp per step computing words.  Read from csrc/words_pipeline.h, the one
    # definition both shared-memory layouts size their words slots by.
    assert probe.words_batch() == probe.WARPS


def _probe_rows(arch):
    nvcc = probe.find_nvcc()
    cr = probe._load_cuda_resources()
    cuobjdump = cr.find_cuobjdump()
    if nvcc is None or cuobjdump is None:
        pytest.skip("needs nvcc and cuobjdump (CI installs both with the CUDA toolkit)")
    with tempfile.TemporaryDirectory() as tmp:
        return {r["name"]: r for r in probe.probe_rows(probe.compile_probe(arch, nvcc, Path(tmp)), cuobjdump)}


# (kernel, arch) -> the most instructions per warp per (whole) step allowed.  Measured
# 2026-11-27 (nvcc 13.0): 170 and 164; before issue 12's changes 3-5 838 and 830 (plus the
# bodies of two rolled loops the static count charged once).  B128 since stop 25: 188 (176
# with the producer before both k16 slices; the split costs ~12 rematerialized addresses at
# 128 registers, bench/NOTES.md).  Stop 27 (whole-step fetch, descriptors advanced, fused
# sign ops, byte loads of the signs, 32-bit step indices): mma.sync B128 187 -> 151, B32
# 134 -> 112, wgmma B128 170 -> 114.  Stop 28 (loops unrolled 4): 149 -> 108, 111 -> 86,
# 114 -> 95; then the mma.sync kernel's four x stages: 108 -> 112, 86 -> 92.
STEP_BOUNDS = {
    ("project_kernel<TileConfig<128, 4>, VectorOnly<2, SwizzledXLayout>, 0>", "sm_90"): 118,
    ("project_kernel<TileConfig<32, 2>, VectorOnly<2, SwizzledXLayout>, 0>", "sm_90"): 97,
    ("project_kernel_sm90<TileConfig<128, 4>, VectorOnly<2, XTileK64B>, 0>", "sm_90a"): 101,
}
# The most instructions a rademacher step loop may have: 12 KiB of code, the order of the
# instruction cache a scheduler fetches from (csrc/cta_steps.cuh step_unroll).
MAX_LOOP_INSTRUCTIONS = 768


@pytest.mark.parametrize("arch", ["sm_90", "sm_90a"])
def test_rademacher_steps_are_straight_line_and_lean(arch):
    rows = _probe_rows(arch)
    rademacher = [r for name, r in rows.items() if name.endswith(", 0>")]
    gaussian = [r for name, r in rows.items() if name.endswith(", 1>")]
    assert rademacher and gaussian, sorted(rows)
    for r in rademacher:
        assert r["inner"] == 0, f"{r['name']}: a tile loop is no longer unrolled"
        assert r["local"] == 0 and r["stack"] == 0, f"{r['name']}: spills"
        assert 30 < r["words"] < 120, f"{r['name']}: words block {r['words']} (one Philox call per lane)"
        assert 20 < r["tail"] < 150, f"{r['name']}: tail block {r['tail']} (the last step's clamped fetch)"
        # one clamped fetch per step body, one words block per loop (the body whose step can
        # be a multiple of 8)
        assert r["tails"] == r["unroll"] and r["words_blocks"] == 1, r
        skipped = r["words"] * r["words_blocks"] + r["tail"] * r["tails"]
        assert r["step"] == pytest.approx((r["loop"] - skipped) / r["unroll"] + r["words"] / 8)
        assert r["slowest"] == pytest.approx(r["step"]), f"{r['name']}: a warp carries the words every step"
        assert r["loop"] <= MAX_LOOP_INSTRUCTIONS, f"{r['name']}: a {r['loop']}-instruction loop"
        if "PaddedXLayout" not in r["name"]:  # 16-bit tiles: x fetched three steps ahead
            assert r["unroll"] == 4, f"{r['name']}: unrolled {r['unroll']}"
            assert r["x_wait"] == 2, f"{r['name']}: waits for x with {r['x_wait']} newer fetches in flight"
    for r in gaussian:
        assert r["words"] == 0, f"{r['name']}: every warp generates gaussian P; nothing to amortize"
        assert r["tail"] == 0, f"{r['name']}: one fetch for every step; nothing to leave out"
    for (name, bound_arch), bound in STEP_BOUNDS.items():
        if bound_arch == arch:
            assert rows[name]["step"] <= bound, f"{name}: {rows[name]['step']:.0f} instructions per step > {bound}"
