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


def test_words_block_is_the_smallest_branch_around_philox():
    """Synthetic SASS: a step with one forward branch around the Philox rounds (3 instructions
    inside) and a wider one around everything: the words block is the inner 3."""
    insts = [
        (0x00, "BAR", ".SYNC 0x0 ;"),
        (0x10, "BRA", "0x90 ;"),  # wide: skips 0x20 .. 0x80
        (0x20, "IMAD", "R1, R2, R3, RZ ;"),
        (0x30, "BRA", "0x70 ;"),  # the words branch: skips 0x40 .. 0x60
        (0x40, "IMAD", ".WIDE.U32 R4, R5, -0x2daee0ad, RZ ; 0xd2511f53"),
        (0x50, "LOP3", ".LUT R6, R7, UR8, R9, 0x96, !PT ;"),
        (0x60, "STS", "[R7+0x8000], R4 ;"),
        (0x70, "LDS", "R5, [R99+0x8000] ;"),
        (0x80, "HMMA", ".16816.F32.BF16 R8, R12, R16, R8 ;"),
        (0x90, "BRA", "0x0 ;"),
    ]
    assert probe.words_block(insts, 0, 9) == 3
    assert probe.words_block(insts[:4] + insts[6:], 0, 7) == 0  # no Philox: no words block


def test_tail_block_is_the_smallest_branch_around_the_zero_filling_copies():
    """Synthetic SASS: a whole-step copy (no ZFILL) on the path every step takes, and the last
    step's clamped copy (ZFILL) under a branch of 2 instructions inside a wider one: the tail
    block is the inner 2; without a ZFILL copy there is none."""
    insts = [
        (0x00, "BAR", ".SYNC 0x0 ;"),
        (0x10, "BRA", "0x80 ;"),  # wide: skips 0x20 .. 0x70
        (0x20, "LDGSTS", ".E.BYPASS.128 [R15], desc[UR8][R12.64] ;"),
        (0x30, "BRA", "0x60 ;"),  # the tail branch: skips 0x40 .. 0x50
        (0x40, "SEL", "R12, R12, 0x8, P1 ;"),
        (0x50, "LDGSTS", ".E.BYPASS.128.ZFILL [R15], desc[UR8][R12.64], P1 ;"),
        (0x60, "LDGDEPBAR", ""),
        (0x70, "HMMA", ".16816.F32.BF16 R8, R12, R16, R8 ;"),
        (0x80, "BRA", "0x0 ;"),
    ]
    assert probe.tail_block(insts, 0, 8) == 2
    assert probe.tail_block(insts[:4] + insts[6:], 0, 6) == 0


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
# 134 -> 112, wgmma B128 170 -> 114.
STEP_BOUNDS = {
    ("project_kernel<TileConfig<128, 4>, VectorOnly<2, SwizzledXLayout>, 0>", "sm_90"): 160,
    ("project_kernel<TileConfig<32, 2>, VectorOnly<2, SwizzledXLayout>, 0>", "sm_90"): 118,
    ("project_kernel_sm90<TileConfig<128, 4>, VectorOnly<2, XTileK64B>, 0>", "sm_90a"): 120,
}


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
        assert r["step"] == pytest.approx(r["loop"] - r["words"] * 7 / 8 - r["tail"])
    for r in gaussian:
        assert r["words"] == 0, f"{r['name']}: every warp generates gaussian P; nothing to amortize"
        assert r["tail"] == 0, f"{r['name']}: one fetch for every step; nothing to leave out"
    for (name, bound_arch), bound in STEP_BOUNDS.items():
        if bound_arch == arch:
            assert rows[name]["step"] <= bound, f"{name}: {rows[name]['step']:.0f} instructions per step > {bound}"
