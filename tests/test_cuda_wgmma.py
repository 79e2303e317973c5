"""The sm_90a (wgmma) projection kernel: ``_C.project_sm90`` (csrc/wgmma_kernel.cuh).

On a GPU of compute capability 9.0 (``@pytest.mark.gpu``, skipped elsewhere): agreement with
the float64 reference and with the mma.sync kernel (``_C.project``), bitwise repeat, poisoned
outputs fully overwritten, odd sizes, strided input, and the ``FASTJL_CUDA_WGMMA=1`` opt-in of
the cuda backend.  Without a GPU: the opt-in's gating, and the sm_90a cubin's static budget
(registers, local memory, the HGMMAs of its main loop) read with cuobjdump.  The layouts and
descriptors are checked on the CPU by tests/test_wgmma_layouts.py.
"""

from __future__ import annotations

import pytest
import torch

import fastjl
from fastjl._backends import cuda_backend
from fastjl._backends import cuda_resources as cr

from .helpers import HAS_EXTENSION, poisoned, reference_projection, relative_error
from .test_cuda_backend import TOLERANCE as CUDA_TOLERANCE

SEED = 2**64 - 3
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# The mma.sync kernel's bounds (fp32 x as bf16 hi + lo; 16-bit x and rademacher P exact; gaussian
# P hi + lo): the same operands, so the same bounds.
TOLERANCE = CUDA_TOLERANCE
# (B, D, K), B >= 64 (the kernel's 64- and 128-row tiles): one tile, a partial tile, several
# tiles; K below, at and past 128 columns; D = 1, a partial step, D split over many CTAs.
SHAPES = [
    (64, 1, 1),
    (65, 1001, 100),
    (128, 32, 128),
    (129, 1001, 4097),
    (1000, 333, 129),
    (64, 10**5 + 3, 100),
    (200, 10**5 + 3, 300),
]


def _hopper() -> bool:
    return (
        HAS_EXTENSION
        and torch.cuda.is_available()
        and torch.cuda.get_device_capability() == cuda_backend.WGMMA_CAPABILITY
        and hasattr(fastjl._C, "project_sm90")
    )


needs_hopper = pytest.mark.skipif(
    not _hopper(), reason="needs a GPU of compute capability 9.0 and fastjl._C built with project_sm90"
)


def run_kernel(kernel, x, proj_dim, *, out=None, seed=SEED, kind="rademacher", offset=0):
    """``kernel`` (_C.project_sm90 or _C.project) into ``out`` (poisoned if not given)."""
    if out is None:
        out = poisoned((x.shape[0], proj_dim), device=x.device)
    args = cuda_backend.tensor_args(x, out, seed=seed, kind=kind, offset=offset)
    cuda_backend._launch(kernel, args, fastjl._C.project_workspace_bytes, (*x.shape, proj_dim), x.device)
    torch.cuda.synchronize()
    return out


def sm90(x, proj_dim, **kw):
    return run_kernel(fastjl._C.project_sm90, x, proj_dim, **kw)


def mma_sync(x, proj_dim, **kw):
    return run_kernel(fastjl._C.project, x, proj_dim, **kw)


def reference(x, proj_dim, *, seed=SEED, kind="rademacher", offset=0):
    if x.shape[1] * proj_dim <= 2 * 10**6:
        return reference_projection(x.cpu(), proj_dim, seed=seed, kind=kind, offset=offset)
    return fastjl.project(x.double(), proj_dim, seed=seed, kind=kind, offset=offset, backend="torch").cpu()


def random_input(batch, dim, dtype):
    gen = torch.Generator(device="cuda").manual_seed(batch + dim)
    return torch.randn(batch, dim, generator=gen, device="cuda").to(dtype)


# --------------------------------------------------------------------------- on an H100


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, dim, proj_dim", SHAPES)
def test_matches_reference_and_the_mma_sync_kernel(kind, dtype, batch, dim, proj_dim):
    x = random_input(batch, dim, dtype)
    y = sm90(x, proj_dim, kind=kind, offset=17)
    assert not torch.isnan(y).any(), "an output was never written"
    ref = reference(x, proj_dim, kind=kind, offset=17)
    assert relative_error(y.cpu(), ref) < TOLERANCE[(kind, dtype)]
    other = mma_sync(x, proj_dim, kind=kind, offset=17)
    # Two float32 accumulations in different orders: each within the tolerance of the reference.
    assert relative_error(y, other.double()) < 2 * TOLERANCE[(kind, dtype)]


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_two_runs_are_bitwise_equal(kind, dtype):
    x = random_input(300, 10**5 + 3, dtype)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert fastjl._C.project_plan(300, 10**5 + 3, 256, sms)["splits"] > 1  # the reduction runs
    assert torch.equal(sm90(x, 256, kind=kind), sm90(x, 256, kind=kind))


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_input_and_output(dtype):
    base = random_input(300, 2 * 777, dtype)
    x = base[::2, 1::2]  # element path: no unit stride along D
    out = poisoned((x.shape[0], 2 * 200), device="cuda")[:, ::2]
    sm90(x, 200, out=out)
    assert relative_error(out.cpu(), reference(x, 200)) < TOLERANCE[("rademacher", dtype)]


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_one_hot_rows_reproduce_the_matrix(kind):
    from fastjl.spec import matrix_block

    dim, proj_dim, offset = 70, 300, 2**40 + 5
    x = torch.eye(dim, device="cuda", dtype=torch.float32)  # B = 70: the 128-row tile, partly empty
    y = sm90(x, proj_dim, kind=kind, offset=offset).cpu().double()
    p = matrix_block(SEED, kind, range(offset, offset + dim), range(proj_dim))
    assert torch.allclose(y, p, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_hopper
def test_small_batches_are_refused():
    x = random_input(32, 100, torch.bfloat16)
    with pytest.raises(ValueError, match="fastjl._C.project_sm90: the wgmma kernel needs B > 32"):
        sm90(x, 100)


@pytest.mark.gpu
@needs_hopper
def test_project_routes_through_the_wgmma_kernel_where_measured_faster(monkeypatch):
    x = random_input(256, 5000, torch.bfloat16)
    monkeypatch.delenv(cuda_backend.WGMMA_ENV, raising=False)  # default: rademacher, 16-bit, B > 64
    assert torch.equal(fastjl.project(x, 300, seed=SEED, backend="cuda"), sm90(x, 300))
    gauss = fastjl.project(x, 300, seed=SEED, kind="gaussian", backend="cuda")  # not measured: mma.sync
    assert torch.equal(gauss, mma_sync(x, 300, kind="gaussian"))
    b64 = random_input(64, 5000, torch.bfloat16)  # the 64-row tile: opt-in only
    assert torch.equal(fastjl.project(b64, 300, seed=SEED, backend="cuda"), mma_sync(b64, 300))
    monkeypatch.setenv(cuda_backend.WGMMA_ENV, "1")
    assert torch.equal(fastjl.project(b64, 300, seed=SEED, backend="cuda"), sm90(b64, 300))
    small = random_input(63, 5000, torch.bfloat16)  # below WGMMA_MIN_BATCH: mma.sync
    assert torch.equal(fastjl.project(small, 300, seed=SEED, backend="cuda"), mma_sync(small, 300))
    monkeypatch.setenv(cuda_backend.WGMMA_ENV, "0")
    assert torch.equal(fastjl.project(x, 300, seed=SEED, backend="cuda"), mma_sync(x, 300))


# --------------------------------------------------------------------------- without a GPU


class _FakeC:
    def project_sm90(self, *args):  # pragma: no cover - never called
        raise AssertionError


BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


@pytest.mark.parametrize(
    "env, batch, kind, dtype, capability, built, expected",
    [
        ("1", 64, "rademacher", BF16, (9, 0), True, True),
        ("1", 63, "rademacher", BF16, (9, 0), True, False),  # below the 64-row tile
        ("1", 4096, "gaussian", FP32, (9, 0), True, True),  # opted in: any kind and dtype
        ("", 65, "rademacher", BF16, (9, 0), True, True),  # the default where measured faster
        ("", 4096, "rademacher", FP16, (9, 0), True, True),
        ("", 64, "rademacher", BF16, (9, 0), True, False),  # the 64-row tile: not measured
        ("", 4096, "gaussian", BF16, (9, 0), True, False),  # not measured: mma.sync
        ("", 4096, "rademacher", FP32, (9, 0), True, False),
        ("0", 4096, "rademacher", BF16, (9, 0), True, False),  # turned off
        ("1", 4096, "rademacher", BF16, (8, 0), True, False),  # mma.sync on sm_80/86/89
        ("", 4096, "rademacher", BF16, (10, 0), True, False),  # sm_90a code runs on 9.0 only
        ("", 4096, "rademacher", BF16, (9, 0), False, False),  # a build without the sm_90a kernel
    ],
)
def test_wgmma_gating(monkeypatch, env, batch, kind, dtype, capability, built, expected):
    monkeypatch.setenv(cuda_backend.WGMMA_ENV, env)
    monkeypatch.setattr(cuda_backend, "_C", _FakeC() if built else object())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert cuda_backend.use_wgmma(batch, torch.device("cuda", 0), kind=kind, dtype=dtype) is expected


# The sm_90a cubin's static budget.  Registers: 2 CTAs per SM (<= 128) except gaussian B128
# (__launch_bounds__(256, 1): 64 accumulators + 64 of the per-step sum).  HGMMAs per step
# (static): one per k16 slice (2) per operand pair: 16-bit x 1 (rademacher) / 2 (gaussian),
# fp32 x 2 / 3.  Local memory as measured with nvcc 13.0 (stack bytes, local accesses in the
# main loop): gaussian has sincos's local array, as the mma.sync kernel (40 bytes, 21 in the
# loop there); fp32 rademacher B128 spills a few registers.
SM90_REGISTER_CAP = {0: 128, 1: 255}
SM90_HGMMA = {(False, 0): 2, (False, 1): 4, (True, 0): 4, (True, 1): 6}
SM90_LOCAL = {(True, 0, 128): (24, 5), (True, 0, 64): (0, 0), (False, 0, 128): (0, 0), (False, 0, 64): (0, 0)}
SM90_GAUSSIAN_LOCAL = (40, 21)


@pytest.fixture(scope="module")
def sm90a_kernels():
    if not HAS_EXTENSION or not hasattr(fastjl._C, "project_sm90"):
        pytest.skip("fastjl._C is not built with the sm_90a kernel (nvcc >= 12.0 at install builds it)")
    tool = cr.find_cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found ($CUOBJDUMP, PATH, CUDA_HOME/bin, /usr/local/cuda/bin, triton's bin)")
    report = cr.collect(cr.extension_path(), archs=["sm_90a"], cuobjdump=tool)
    return [k for k in report.kernels if k.name.startswith("project_kernel_sm90<")]


def _instantiation(name: str) -> tuple[bool, int, int]:
    """(fp32 x?, kind code, block_b) from project_kernel_sm90<TileConfig<128, 4>, XTileProducerIn<0, ...>, 1>."""
    block_b = 128 if "TileConfig<128" in name else 64
    fp32 = "XTileProducerIn<0" in name
    return fp32, int(name.rstrip(">").rsplit(",", 1)[1]), block_b


def test_sm90a_cubin_has_every_instantiation(sm90a_kernels):
    names = {k.name for k in sm90a_kernels}
    # 2 tile configurations x 3 x dtypes x 2 kinds, all in the sm_90a cubin only.
    assert len(names) == 12, sorted(names)
    assert {k.arch for k in sm90a_kernels} == {"sm_90a"}


def test_sm90a_registers_local_memory_and_main_loop(sm90a_kernels):
    table = cr.format_table(sm90a_kernels)
    for k in sm90a_kernels:
        fp32, kind, block_b = _instantiation(k.name)
        gauss_b128 = int(kind == 1 and block_b == 128)
        assert k.registers <= SM90_REGISTER_CAP[gauss_b128], f"{k.name}\n{table}"
        assert k.loop is not None, f"{k.name}: no HGMMA main loop\n{table}"
        # per step: an unrolled loop (csrc/cta_steps.cuh step_unroll) holds one barrier a step
        assert k.loop.mma == SM90_HGMMA[(fp32, kind)] * k.loop.bar, f"{k.name}\n{table}"
        assert k.loop.mma_equiv == k.loop.mma * (16 if block_b == 128 else 8), f"{k.name}\n{table}"
        assert k.loop.ldsm == 0, f"{k.name}: wgmma reads shared memory itself\n{table}"
        stack, in_loop = SM90_GAUSSIAN_LOCAL if kind == 1 else SM90_LOCAL[(fp32, kind, block_b)]
        assert k.stack <= stack and k.loop.local <= in_loop, f"{k.name}: new local memory\n{table}"


SASS_LOOP = """
        Function : _Z6kernelv
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0020*/                   WARPGROUP.ARRIVE ;
        /*0030*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR20].tnspB, R24 ;
        /*0040*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR20].tnspB, R24, gsb0 ;
        /*0050*/                   IMAD R2, R3, R4, R5 ;
        /*0060*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0070*/              @P0  BRA 0x10 ;
        /*0080*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0090*/                   EXIT ;
"""


def test_loop_stats_count_hgmma_as_m16n8k16_equivalents():
    loop = cr.main_loop_stats(SASS_LOOP)["_Z6kernelv"]
    assert (loop.instructions, loop.mma, loop.bar) == (7, 2, 1)
    assert loop.mma_equiv == 32  # a warp's share of each m64n128k16: 16 m16n8k16
    assert loop.per_mma == 7 / 32
    assert cr.mma_equivalents("HGMMA", ".64x64x16.F32.F16 R24, gdesc[UR4], R24") == 8
    assert cr.mma_equivalents("HMMA", ".16816.F32.BF16 R4, R8, R12, R4") == 1
    assert cr.mma_equivalents("HMMA", ".1688.F32.TF32 R4, R8, R12, R4") == 0.5
    assert cr.mma_equivalents("HGMMA", ".64x128x8.F32.TF32 R24, gdesc[UR4], R24") == 8  # Triton's tf32
    assert cr.mma_equivalents("IMAD", "R2, R3, R4, R5") == 0
