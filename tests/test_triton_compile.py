"""Every Triton kernel configuration the backend can launch, compiled for real GPUs (sm_80 and
sm_90) with no GPU present: Triton's interpreter, which runs the other Triton tests on CPU,
checks none of this (a non-constexpr global, a layout the sm_90 MMA lowering rejects and
register spills all passed it; see fastjl/_backends/triton_aot.py).

The compiles run once per session in a pool of fresh processes (CPU-bound, independent).
"""

import functools
import os

import pytest

pytest.importorskip("triton", reason="triton is not installed")

from fastjl._backends import triton_aot  # noqa: E402

# FASTJL_COMPILE_CCS=90 narrows a run (CI's second pass, with the GPU machines' Triton 3.6,
# compiles for their sm_90 only; the first pass covers sm_80 and sm_90 with the pinned Triton).
CCS = tuple(int(cc) for cc in os.environ.get("FASTJL_COMPILE_CCS", "80,90").split(","))
# Spill bytes per thread allowed per (configuration, cc), as measured with Triton 3.9 and 3.6
# (the larger); everything else: none.  project at BLOCK_B = 128 on sm_80 keeps a 128 x 128
# float32 accumulator (64 registers a thread), and gaussian tiles a promoted partial sum of the
# same size, next to a generated tile: a few dozen bytes spill there, once per 32-64 rows of
# D, small next to generating P.  Anything new that spills, or spills more, fails the test.
SPILL_ALLOWANCE = {
    # Triton 3.9 only (3.6: none): float32 x at 64 rows per step next to the accumulator.
    ("project-rademacher-float32-B128", 80): 372,
    ("project-rademacher-bfloat16-B128", 80): 24,
    ("project-gaussian-float16-B128", 80): 56,
    ("project-gaussian-bfloat16-B128", 80): 56,
    # sm_90, batch tile 16 (4 warps): Triton caps these at 128 registers.
    ("project-gaussian-float16-B16", 90): 16,
    ("project-gaussian-bfloat16-B16", 90): 16,
    # project_rows (the same kernel loading each tile row's index; Triton 3.9, 2026-11-27): the
    # project entries' spills, plus a few bytes where the index vector takes registers.
    ("project_rows-rademacher-float32-B128", 80): 268,
    ("project_rows-rademacher-bfloat16-B128", 80): 24,
    ("project_rows-rademacher-float16-B128", 80): 24,
    ("project_rows-gaussian-float16-B128", 80): 56,
    ("project_rows-gaussian-bfloat16-B128", 80): 56,
    ("project_rows-rademacher-float32-B64", 80): 4,
    ("project_rows-rademacher-float32-B16", 90): 4,
    ("project_rows-gaussian-float16-B16", 90): 24,
    ("project_rows-gaussian-bfloat16-B16", 90): 24,
}
# Philox calls (10 mul.hi.u32 each in the PTX) per thread per loop step, counted over the
# kernel: rademacher makes one call per (row, 128 columns), so a 64-row tile over 128
# threads needs < 1 per thread (2 with the software pipeline's prologue copy); broadcasting
# the words instead of gathering them once cost ~100 calls per thread (the defect fixed).
MAX_RADEMACHER_MUL_HI = 40


@functools.cache
def reports():
    """{(config name, cc): CompileReport or the error text} for every config and cc."""
    return triton_aot.compile_all(CCS)


def _table(rows) -> str:
    return "\n".join(str(r) for r in rows)


def test_the_plan_enumerates_every_batch_tile():
    assert triton_aot.block_sizes("project") == (16, 32, 64, 128)
    assert max(triton_aot.block_sizes("project_linear")) <= 64
    names = {c.name for c in triton_aot.configs()}
    assert "sum_splits" in names and len(names) == len(triton_aot.configs())


def test_the_sparse_plan_is_covered():
    """Every sparsity and input dtype, and the widest column tile the plan picks, compile."""
    import torch

    from fastjl._backends import triton_sparse

    sparse = [c for c in triton_aot.configs() if c.op == "project_sparse"]
    assert {c.sparsity for c in sparse} == {1, 2, 4, 8}
    assert {c.dtype for c in sparse} == {"float32", "float16", "bfloat16"}
    widest = triton_sparse.plan(10**6, 1, torch.device("cuda"))["BLOCK_K"]
    assert widest == max(c.block_k for c in sparse) and min(c.block_k for c in sparse) == 16


@pytest.mark.parametrize("cc", CCS)
def test_sparse_kernel_stays_in_registers(cc):
    """One program per SM: 16 warps may use at most 128 registers a thread (the register file)."""
    rows = [r for (n, c), r in reports().items() if c == cc and not isinstance(r, str)]
    rows = [r for r in rows if r.config.op == "project_sparse"]
    assert rows and all(0 < r.registers <= 128 for r in rows), _table(rows)


@pytest.mark.parametrize("cc", CCS)
def test_every_configuration_compiles(cc):
    failed = {name: r for (name, c), r in reports().items() if c == cc and isinstance(r, str)}
    assert not failed, "\n".join(f"{n}: {e}" for n, e in sorted(failed.items()))


@pytest.mark.parametrize("cc", CCS)
def test_no_spills_beyond_the_allowance(cc):
    rows = sorted((r for (n, c), r in reports().items() if c == cc and not isinstance(r, str)), key=str)
    over = [r for r in rows if r.spills > SPILL_ALLOWANCE.get((r.config.name, cc), 0)]
    assert not over, "spills over the allowance:\n" + _table(over) + "\n\nall:\n" + _table(rows)


@pytest.mark.parametrize("cc", CCS)
def test_rademacher_generates_each_word_once(cc):
    rows = [
        r
        for (n, c), r in reports().items()
        if c == cc and not isinstance(r, str) and r.config.kind == "rademacher" and r.config.op != "sum_splits"
    ]
    assert rows
    many = [r for r in rows if r.mul_hi > MAX_RADEMACHER_MUL_HI]
    assert not many, _table(many)
    assert all(r.mul_hi >= 10 for r in rows), "no Philox call found in the PTX: the count is broken"
