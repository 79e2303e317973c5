"""bench/triton_loop_stats.py: a Triton kernel compiled for sm_90 read with the CUDA kernels'
SASS parser (no GPU needed)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed")

from .helpers import compiling_env

ROOT = Path(__file__).resolve().parents[1]


def test_the_rademacher_b128_loop_is_read():
    """One configuration: its main loop has wgmma instructions on sm_90 and the row reports
    instructions per m16n8k16-equivalent (4.6 with Triton 3.9 on 2026-11-27 as specialized for
    contiguous x, 7.1 generic; the CUDA kernel's was ~30 before stop 23): a loop grown to that
    size would fail the bound.  In a fresh process without TRITON_INTERPRET (conftest.py sets it
    for this one), so Triton compiles.  The default compile is the JIT's specialization for
    contiguous x (cp.async vector loads in the loop); --generic, for any strides, has none."""
    rows = {}
    for extra in ([], ["--generic"]):
        proc = subprocess.run(
            [sys.executable, "bench/triton_loop_stats.py", "--match", "project-rademacher-bfloat16-B128", *extra],
            cwd=ROOT, env=compiling_env(ROOT), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        rows[bool(extra)] = next(line for line in proc.stdout.splitlines() if line.startswith("project-")).split()
    _, instructions, mma, equivalents, per_mma, ldgsts = rows[False]
    assert int(mma) > 0 and float(equivalents) > 0
    assert float(per_mma) == pytest.approx(int(instructions) / float(equivalents), abs=0.05)
    assert float(per_mma) < 10
    assert int(ldgsts) > 0, "the contiguous specialization should load x with cp.async"
    _, generic_instructions, *_, generic_ldgsts = rows[True]
    assert int(generic_ldgsts) == 0 and int(generic_instructions) > int(instructions)


def test_the_rademacher_b32_loop_builds_16_bit_signs_directly():
    """The B32 configuration, where the tile of P costs most per MMA: since stop 27 its 16-bit
    ±1 are built as bits (``_rademacher_tile_of_rows``) instead of float32 ``1 - 2 * bit``
    converted to 16 bits: 13.7 -> 10.4 instructions per m16n8k16-equivalent with Triton 3.9
    (Triton 3.6, the GPU image's: 20.3 -> 11.7), bench/NOTES.md.  The float path fails this."""
    proc = subprocess.run(
        [sys.executable, "bench/triton_loop_stats.py", "--match", "project-rademacher-bfloat16-B32"],
        cwd=ROOT, env=compiling_env(ROOT), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("project-")).split()
    assert float(row[4]) < 12.5, row
