"""Register and local-memory budget of the CUDA kernels compiled into fastjl._C, without a GPU.

Every kernel instantiation of the built module is read from its embedded sm_80 and sm_90
cubins (fastjl/_backends/cuda_resources.py: ``cuobjdump --dump-resource-usage`` for
registers / stack / shared memory, ``cuobjdump --dump-sass`` for the STL / LDL instructions
that every local-memory access compiles to), and checked:

* both cubins are there, for every .cu file and every kernel (a build that dropped an
  architecture fails here, not on a user's GPU);
* every ``project_kernel`` instantiation fits its ``__launch_bounds__(256, 2)``: <= 128
  registers per thread (two CTAs of 256 threads share an SM's 65536 registers);
* no function uses local memory (stack frame, STL, LDL) beyond its entry in the tables
  below: register spills are listed in SPILL_ALLOWANCES, the local array of sinf/cosf's
  slow path in LOCAL_ARRAYS.  A new spill, or more spill than allowed, fails; an entry above
  today's use only warns (tighten it).

``python bench/cuda_resources.py`` prints the same table for every architecture.  Skipped
only where fastjl._C is not built, is its host-only build (no nvcc at install: no cubins), or
no cuobjdump is found (CI has all: it builds _C with nvcc, and cuobjdump comes with the CUDA
toolkit or with Triton's NVIDIA backend).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import pytest

from fastjl._backends import cuda_resources as cr

from .helpers import cubins_or_skip

REQUIRED_ARCHS = ("sm_80", "sm_90")
# __launch_bounds__(kThreads = 256, 2) on project_kernel (csrc/project_kernel.cuh).
PROJECT_KERNEL_MAX_REGISTERS = 65536 // (2 * 256)


@dataclass(frozen=True)
class Local:
    """Local memory of one function on one arch: stack frame bytes, STL and LDL instructions."""

    stack: int
    stl: int
    ldl: int


NONE = Local(0, 0, 0)

# Names below are the demangled instantiations, shortened (cuda_resources.short_name):
#   project_kernel<TileConfig<BLOCK_B, WARPS_B>, PRODUCER, KIND>  (csrc/project_plan.cuh)
#   PRODUCER: XTileProducer<0 | 1 | 2> = project with fp32 | fp16 | bf16 x (project_kernel.cu),
#             GradTileProducer = project_linear's gradient tiles (linear_kernel.cu);
#   KIND: 0 = rademacher, 1 = gaussian.
# Values are today's measurements (nvcc 13.0, Release).  Lower is always fine; tighten an
# entry when a change lowers it (the test warns), and remove it when a kernel stops spilling.

# Not spills: sinf/cosf (Box-Muller, csrc/matrix_entries.cuh) carry the Payne-Hanek slow path
# of their argument reduction, which stores the reduced argument's words to a local array and
# reads them back by index: a 32-byte frame and 2 STL + 3 LDL per inlined sin/cos call site
# (8 in gaussian_generate).  The angle is 2*pi*u < 2*pi, so that path never runs: it costs the
# frame, not memory traffic.  Every gaussian project_kernel (KIND 1) is allowed exactly this
# unless SPILL_ALLOWANCES says otherwise.
SINCOS_F32 = Local(stack=32, stl=16, ldl=24)
LOCAL_ARRAYS: dict[str, dict[str, Local]] = {
    # device_block.cu's P-block filler: the same float sin/cos slow path, 2 call sites.
    "fill_block<float>": {"sm_80": Local(32, 4, 6), "sm_90": Local(32, 4, 6)},
    # The double sin/cos slow path: a 40-byte reduction array.
    "fill_block<double>": {"sm_80": Local(40, 2, 3), "sm_90": Local(40, 2, 3)},
}

# Register spills today, as totals (a gaussian kernel's sincos array included: its spill is
# what lies beyond SINCOS_F32).  All of them sit at their launch bounds' register cap (128 for
# 2 CTAs per SM, 80 for the 32-row tiles' 3); why each spills, and each is tracked by the CUDA
# speed issue:
SPILL_ALLOWANCES: dict[str, dict[str, Local]] = {
    # Gaussian B128 tiles with fp32 operands (project's fp32 x, project_linear's gradient
    # tiles): a 32x64 warp tile keeps 64 float accumulators per thread; fp32 x is fed as
    # bf16 hi + lo (a_hi/a_lo: twice the A fragments), gaussian P as hi + lo (b_hi/b_lo), and
    # each k16 slice's sum is promoted into acc through a 4-float temporary.  The largest
    # spills of the build (a GPU build log on sm_90 once read "96 bytes stack frame, 60 bytes
    # spill stores, 152 bytes spill loads" for the GradTileProducer one).
    # Tracked by the CUDA speed issue.
    "project_kernel<TileConfig<128, 4>, XTileProducer<0>, 1>": {
        # sm_80 16 bytes more, sm_90 8 bytes less since the tile writers' TileCode split
        # (csrc/project_tiles.cuh; before: sm_80 Local(120, 39, 47), sm_90 Local(120, 47, 50)).
        # sm_90 24 bytes more since stop 27's 32-bit step indices (cta_steps.cuh; before
        # Local(112, 34, 42)): nvcc allocates these capped kernels anew on any change; their
        # ~1400-instruction steps are bound by generating P, not by the ~12 more local loads.
        "sm_80": Local(136, 48, 53),
        "sm_90": Local(136, 51, 55),
    },
    "project_kernel<TileConfig<128, 4>, GradTileProducer, 1>": {
        # Likewise since stop 27 (before: sm_80 Local(112, 63, 61), sm_90 Local(80, 35, 43)).
        "sm_80": Local(112, 65, 62),
        "sm_90": Local(88, 50, 52),
    },
    # Gaussian B32 project_linear on sm_80: one 8-byte slot beyond the sincos array since stop
    # 27's 32-bit step indices.  Tracked by the CUDA speed issue.
    "project_kernel<TileConfig<32, 2>, GradTileProducer, 1>": {"sm_80": Local(40, 17, 25), "sm_90": SINCOS_F32},
    # Gaussian B64 with fp32 x on sm_80: one 8-byte spill slot beyond the sincos array (one
    # STL.64 in the prologue, one LDL.64 per step).  Tracked by the CUDA speed issue.
    "project_kernel<TileConfig<64, 2>, XTileProducer<0>, 1>": {"sm_80": Local(40, 17, 25), "sm_90": SINCOS_F32},
    # Rademacher B128 with fp32 x since stop 27 (the whole-step fetch's step count held in a
    # register, 32-bit step indices; csrc/cta_steps.cuh): one 8-byte slot; on sm_80 one
    # local load a step of ~700 instructions, on sm_90 none in the loop; against ~58 fewer
    # instructions a whole step (396 -> 338, bench/cuda_loop_probe.py).  Tracked by the CUDA
    # speed issue.
    "project_kernel<TileConfig<128, 4>, XTileProducer<0>, 0>": {"sm_80": Local(8, 3, 3), "sm_90": Local(8, 2, 2)},
    # Gone since the TileCode split (no longer listed): rademacher B128 fp32 x on sm_80
    # (8 bytes) and project_linear rademacher B128 on sm_90 (24 bytes).  Gone since stop 27's
    # whole-step fetch and 32-bit step indices: the 8-byte slots of gaussian B64 fp32 x on
    # sm_90, B32 fp32 x (both; since stop 26's 80-register cap) and B128 16-bit x (sm_90 since
    # stop 24's swizzled x rows; sm_80 had two).
}

_GAUSSIAN_PROJECT_KERNEL = re.compile(r"^project_kernel<.*, 1>$")


def allowance(name: str, arch: str) -> tuple[Local, str]:
    """The local memory ``name`` may use on ``arch``, and which table allows it."""
    if name in SPILL_ALLOWANCES:
        return SPILL_ALLOWANCES[name][arch], "spill allowance"
    if name in LOCAL_ARRAYS:
        return LOCAL_ARRAYS[name][arch], "local array"
    if _GAUSSIAN_PROJECT_KERNEL.match(name):
        return SINCOS_F32, "sincos array"
    return NONE, "none"


def exceeds(k: cr.KernelResources, allowed: Local) -> bool:
    return k.stack > allowed.stack or k.stl > allowed.stl or k.ldl > allowed.ldl or k.local > 0


def measured(k: cr.KernelResources) -> Local:
    return Local(k.stack, k.stl, k.ldl)


@pytest.fixture(scope="module")
def report() -> cr.Report:
    so, tool = cubins_or_skip()
    return cr.collect(so, archs=list(REQUIRED_ARCHS), cuobjdump=tool)


def table(report: cr.Report, marks: dict[tuple[str, str], str] | None = None) -> str:
    return f"{report.path.name}:\n" + cr.format_table(report.kernels, marks)


# --------------------------------------------------------------------------- the build


def test_cubins_for_required_archs(report):
    archs = report.archs()
    missing = [a for a in REQUIRED_ARCHS if a not in report.cubins]
    assert not missing, (
        f"{report.path.name} embeds no cubin for {missing} (it has {archs}); build with the default "
        "CMAKE_CUDA_ARCHITECTURES (CUDAARCHS unset)"
    )
    # One cubin per .cu file with device code, for every architecture.  Architecture-specific
    # cubins (sm_90a: project_kernel_sm90.cu alone, tests/test_cuda_wgmma.py) are not counted.
    expected = max(report.cubins.values())
    short = {a: n for a, n in report.cubins.items() if n != expected and not a.endswith("a")}
    assert not short, f"cubins per arch differ: {report.cubins} (a .cu file dropped an architecture)"
    names = {a: {k.name for k in report.kernels if k.arch == a} for a in REQUIRED_ARCHS}
    union = set().union(*names.values())
    for a in REQUIRED_ARCHS:
        assert names[a] == union, f"{a} lacks {sorted(union - names[a])}"
    for family in ("project_kernel<", "sum_splits_kernel", "fill_block<", "sparse_project_kernel<"):
        assert any(n.startswith(family) for n in union), f"no {family} kernel in {report.path.name}\n{table(report)}"


def test_project_kernel_registers(report):
    kernels = [k for k in report.kernels if k.name.startswith("project_kernel<")]
    assert kernels, f"no project_kernel instantiation found\n{table(report)}"
    over = {
        (k.name, k.arch): f"regs > {PROJECT_KERNEL_MAX_REGISTERS}"
        for k in kernels
        if k.registers > PROJECT_KERNEL_MAX_REGISTERS
    }
    if over:
        pytest.fail(
            f"{len(over)} project_kernel cubins exceed __launch_bounds__(256, 2)'s "
            f"{PROJECT_KERNEL_MAX_REGISTERS} registers:\n{table(report, over)}"
        )


# __launch_bounds__(kThreads = 1024, 1) on sparse_project_kernel (csrc/sparse_kernel.cu): one CTA
# of 1024 threads per SM may use the whole register file, 64 registers a thread.  Every (x dtype code, batch rows)
# instantiation must be there; the local-memory test below allows them none (no spills).
SPARSE_THREADS = 1024  # kThreads of csrc/sparse_chunk_args.h
SPARSE_KERNEL_MAX_REGISTERS = 65536 // SPARSE_THREADS
# Batch rows per x dtype code: a 16- or 8-byte row of the transposed windows (sparse_chunk.cuh).
SPARSE_ROWS = {0: (2, 4), 1: (4, 8), 2: (4, 8)}
SPARSE_KERNELS = {f"sparse_project_kernel<{dtype}, {rows}>" for dtype, counts in SPARSE_ROWS.items() for rows in counts}


def test_sparse_kernel_instantiations_and_registers(report):
    for arch in REQUIRED_ARCHS:
        found = {k.name for k in report.kernels if k.arch == arch and k.name.startswith("sparse_project_kernel<")}
        assert found == SPARSE_KERNELS, f"{arch}: sparse kernels {sorted(found)}\n{table(report)}"
    over = {
        (k.name, k.arch): f"regs > {SPARSE_KERNEL_MAX_REGISTERS}"
        for k in report.kernels
        if k.name in SPARSE_KERNELS and k.registers > SPARSE_KERNEL_MAX_REGISTERS
    }
    assert not over, f"sparse kernels above __launch_bounds__({SPARSE_THREADS}, 1):\n{table(report, over)}"


def test_local_memory_within_allowances(report):
    marks: dict[tuple[str, str], str] = {}
    failures = []
    for k in report.kernels:
        allowed, source = allowance(k.name, k.arch)
        if exceeds(k, allowed):
            what = "NEW SPILL" if source == "none" else f"> {source} {allowed}"
            marks[(k.name, k.arch)] = f"<- {what}"
            local = f" LOCAL={k.local}" if k.local else ""
            failures.append(f"{k.name} [{k.arch}]: uses {measured(k)}{local} {what}")
        elif allowed != NONE:
            marks[(k.name, k.arch)] = f"({source})"
    if failures:
        pytest.fail(
            "local memory (stack bytes / STL / LDL) beyond the allowance tables in "
            "tests/test_cuda_compile.py -- a register spill is new or grew:\n  "
            + "\n  ".join(failures)
            + f"\n\n{table(report, marks)}"
        )
    # Entries the build no longer needs: tighten them (warn only: lower is never a failure).
    present = {(k.name, k.arch): k for k in report.kernels}
    stale = []
    for name, per_arch in {**LOCAL_ARRAYS, **SPILL_ALLOWANCES}.items():
        for arch, allowed in per_arch.items():
            k = present.get((name, arch))
            if k is None:
                stale.append(f"{name} [{arch}]: not in the build")
            elif measured(k) != allowed:
                stale.append(f"{name} [{arch}]: allowed {allowed}, uses {measured(k)}")
    if stale:
        warnings.warn("allowance entries above today's use (tighten them):\n  " + "\n  ".join(stale), stacklevel=1)


# --------------------------------------------------------------------------- the tables


def test_allowance_tables_cover_required_archs():
    for table_ in (LOCAL_ARRAYS, SPILL_ALLOWANCES):
        for name, per_arch in table_.items():
            assert set(per_arch) == set(REQUIRED_ARCHS), f"{name}: list exactly {REQUIRED_ARCHS}"
            assert name == cr.short_name(name), f"{name}: use the short name (cuda_resources.short_name)"
    assert not set(LOCAL_ARRAYS) & set(SPILL_ALLOWANCES)


# --------------------------------------------------------------------------- the parsing


RESOURCE_USAGE = """
Fatbin elf code:
================
arch = sm_80
code version = [1,8]

Resource usage:
 Common:
  GLOBAL:24 CONSTANT[4]:8
 Function _ZN6fastjl4proj14project_kernelINS0_10TileConfigILi64ELi2EEENS0_16GradTileProducerELi1EEEvv:
  REG:128 STACK:40 SHARED:1024 LOCAL:0 CONSTANT[2]:8 CONSTANT[0]:408 TEXTURE:0 SURFACE:0 SAMPLER:0

Fatbin ptx code:
================
arch = sm_90
compressed

Fatbin elf code:
================
arch = sm_90
code version = [1,8]

Resource usage:
 Function _Z3foov:
  REG:30 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:584 TEXTURE:0 SURFACE:0 SAMPLER:0
"""

SASS = """
	code for sm_80
		Function : _Z3foov
	.headerflags	@"EF_CUDA_TEXMODE_UNIFIED EF_CUDA_64BIT_ADDRESS EF_CUDA_SM80"
        /*0000*/                   MOV R1, c[0x0][0x28] ;      /* 0x00000a0000017a02 */
        /*0010*/                   STL.64 [R1+0x8], R4 ;       /* 0x0000080401007387 */
        /*0020*/               @P3 LDL.64 R14, [R1+0x8] ;      /* 0x00000800010e3983 */
        /*0030*/              @!P0 LDL.LU R6, [R1+0x10] ;      /* 0x0000100001067983 */
        /*0040*/                   LDS R6, [R1+0x10] ;         /* 0x0000100001067983 */
		Function : _Z3barv
        /*0000*/                   STS [R1], R2 ;              /* 0x0000000201007387 */
"""


def test_parse_resource_usage():
    rows = cr.parse_resource_usage(RESOURCE_USAGE)
    assert [(a, n[:12], f["REG"], f["STACK"], f["SHARED"]) for a, n, f in rows] == [
        ("sm_80", "_ZN6fastjl4p", 128, 40, 1024),
        ("sm_90", "_Z3foov", 30, 0, 0),
    ]
    assert cr.count_elf_blocks(RESOURCE_USAGE) == {"sm_80": 1, "sm_90": 1}


def test_count_local_accesses():
    assert cr.count_local_accesses(SASS) == {"_Z3foov": (1, 2), "_Z3barv": (0, 0)}


def test_short_name():
    demangled = (
        "void fastjl::proj::project_kernel<fastjl::proj::TileConfig<128, 4>, fastjl::proj::(anonymous "
        "namespace)::GradTileProducer, 1>(fastjl::proj::KernelParams<fastjl::proj::(anonymous "
        "namespace)::GradTileProducer>)"
    )
    assert cr.short_name(demangled) == "project_kernel<TileConfig<128, 4>, GradTileProducer, 1>"
    assert cr.short_name("fastjl::proj::(anonymous namespace)::sum_splits_kernel(float const*, long)") == (
        "sum_splits_kernel"
    )
    if cr.find_demangler() is not None:
        assert cr.demangle(["_Z3foov"]) == {"_Z3foov": "foo()"}
