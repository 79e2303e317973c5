"""Triton backend vs the float64 reference and the spec: on CPU under TRITON_INTERPRET=1
(set by conftest.py when there is no GPU), on the GPU when there is one."""

import pytest
import torch

import fastjl
from fastjl.spec import matrix_block

from .helpers import poisoned, reference_projection, relative_error

pytest.importorskip("triton", reason="triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
# Relative (Frobenius) error bounds vs float64.  fp32 inputs: tf32 dot on GPU (both operands
# kept to 10 mantissa bits: ~3e-4 over many products, up to 2^-9 for a single-element output;
# an H100 measured 4e-4..8e-4 at B = 33, D = 1000, K = 4097), exact products in the interpreter.
# 16-bit inputs are exact; gaussian entries keep ~16 bits (bf16 hi+lo) or ~22 bits (fp16).
TOLERANCE = {
    ("rademacher", torch.float32): 2.0**-9 if ON_GPU else 1e-6,
    ("rademacher", torch.float16): 1e-6,
    ("rademacher", torch.bfloat16): 1e-6,
    ("gaussian", torch.float32): 2.0**-9 if ON_GPU else 1e-6,
    ("gaussian", torch.float16): 1e-6,
    ("gaussian", torch.bfloat16): 3e-5,
}
SHAPES = [(1, 1, 1), (7, 101, 130), (33, 300, 257)]  # (B, D, K): odd, and D split in two
if ON_GPU:
    SHAPES += [(1000, 10**3 + 1, 4097), (7, 10**6 + 3, 100)]


def test_backend_is_available_here():
    assert fastjl.backends(DEVICE)["triton"].available, fastjl.backends(DEVICE)["triton"].reason


@pytest.mark.parametrize("kind", fastjl.KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,dim,proj_dim", SHAPES)
def test_matches_reference(kind, dtype, batch, dim, proj_dim):
    gen = torch.Generator().manual_seed(batch + dim + proj_dim)
    x = torch.randn(batch, dim, generator=gen).to(dtype)
    offset = 2**40 + 3
    out = poisoned((batch, proj_dim), device=DEVICE)
    y = fastjl.project(x.to(DEVICE), proj_dim, seed=2**64 - 3, kind=kind, offset=offset, out=out, backend="triton")
    assert y is out and not torch.isnan(y).any()
    if dim * proj_dim <= 2 * 10**6:
        ref = reference_projection(x, proj_dim, seed=2**64 - 3, kind=kind, offset=offset)
    else:  # too big for the entry-wise reference: the torch backend in float64
        ref = fastjl.project(x.double(), proj_dim, seed=2**64 - 3, kind=kind, offset=offset, backend="torch")
    assert relative_error(y.cpu(), ref) < TOLERANCE[kind, dtype]


@pytest.mark.parametrize("kind", fastjl.KINDS)
@pytest.mark.parametrize("offset", [0, 2**32 - 10, 2**48 - 37])
def test_one_hot_rows_reproduce_the_matrix(kind, offset):
    """x = I makes y = P[offset : offset + 37, :K]: every generated entry is checked,
    including a tile whose rows cross i = 2^32 and the last rows of P."""
    dim, proj_dim = 37, 300
    eye = torch.eye(dim, device=DEVICE)
    y = fastjl.project(eye, proj_dim, seed=99, kind=kind, offset=offset, backend="triton").cpu()
    p = matrix_block(99, kind, range(offset, offset + dim), range(proj_dim), dtype=torch.float32)
    if kind == "rademacher":
        assert torch.equal(y, p)
    else:  # float32 log/cos/sin of two libraries agree to an ulp or so, not bitwise
        precise = not ON_GPU or fastjl._backends.triton_backend.FP32_PRECISION == "ieee"
        torch.testing.assert_close(y, p, rtol=2e-6 if precise else 2e-3, atol=2e-6 if precise else 2e-3)


def test_strided_input_and_output():
    base = torch.randn(60, 9, device=DEVICE)
    x = base.t()[:, ::2]  # (9, 30), both strides non-unit
    out_storage = poisoned((140, 9), device=DEVICE)
    out = out_storage.t()  # (9, 140) with strides (1, 9)
    y = fastjl.project(x, 140, seed=1, out=out, backend="triton")
    assert not torch.isnan(out_storage).any()
    ref = reference_projection(x.cpu(), 140, seed=1)
    assert relative_error(y.cpu(), ref) < TOLERANCE["rademacher", torch.float32]


@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_deterministic_and_matches_torch_backend(kind):
    x = torch.randn(18, 400, device=DEVICE, dtype=torch.bfloat16)  # 400 rows: split reduction
    first = fastjl.project(x, 200, seed=5, kind=kind, backend="triton")
    second = fastjl.project(x, 200, seed=5, kind=kind, backend="triton")
    assert torch.equal(first, second)
    torch_result = fastjl.project(x, 200, seed=5, kind=kind, backend="torch")
    torch.testing.assert_close(first, torch_result, rtol=1e-4, atol=1e-3)


def test_offsets_are_additive():
    x = torch.randn(5, 300, device=DEVICE)
    whole = fastjl.project(x, 130, seed=3, offset=77, backend="triton")
    parts = fastjl.project(x[:, :111], 130, seed=3, offset=77, backend="triton")
    parts += fastjl.project(x[:, 111:], 130, seed=3, offset=77 + 111, backend="triton")
    tol = 1e-3 if ON_GPU else 1e-5
    torch.testing.assert_close(parts, whole, rtol=tol, atol=tol * 20)


def test_projector_uses_triton():
    grads = {"w": torch.randn(4, 10, 12, device=DEVICE), "b": torch.randn(4, 10, device=DEVICE)}
    proj = fastjl.Projector(130, 64, seed=2, backend="triton")
    ref = fastjl.Projector(130, 64, seed=2, backend="torch").project(grads, model_id=1)
    tol = 1e-3 if ON_GPU else 1e-5
    torch.testing.assert_close(proj.project(grads, model_id=1), ref, rtol=tol, atol=tol * 20)


def test_float64_is_refused():
    with pytest.raises(TypeError, match="float64"):
        fastjl.project(torch.randn(2, 5, dtype=torch.float64, device=DEVICE), 4, backend="triton")


def test_gpu_plan_fills_16_warps_per_sm(monkeypatch):
    """The GPU plan (computed here for a mocked 132-SM device: no GPU needed) splits D over
    one wave of 16 warps per SM: 4 programs per SM for the 4-warp tiles (B <= 32), 2 for the
    8-warp ones; never more programs than that wave, and at least 8 tiles of D per split."""
    from types import SimpleNamespace

    from fastjl._backends import triton_backend as tb

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(multi_processor_count=132))
    cuda = torch.device("cuda")
    assert tb.programs_per_sm(4) == 4 and tb.programs_per_sm(8) == 2
    for batch, proj_dim, warps in [(7, 2048, 4), (32, 2048, 4), (32, 300, 4), (64, 2048, 8), (128, 2048, 8)]:
        cfg, splits, d_per_split = tb._plan(batch, 2 * 10**6, proj_dim, cuda, **tb.project_tiles("rademacher"))
        assert cfg["num_warps"] == warps
        programs = -(-batch // cfg["BLOCK_B"]) * -(-proj_dim // cfg["BLOCK_K"])
        assert splits == tb.one_wave_splits(programs, 132 * 16 // warps), (batch, proj_dim)
        assert splits * programs <= 132 * 16 // warps and splits * d_per_split >= 2 * 10**6
    assert tb._plan(32, 8 * 64 * 3, 2048, cuda, **tb.project_tiles("rademacher"))[1] == 3  # 8 tiles each
    monkeypatch.setenv(tb.WARPS_PER_SM_ENV, "8")  # the former plan: 2 programs per SM at B <= 32
    assert tb._plan(32, 2 * 10**6, 2048, cuda, **tb.project_tiles("rademacher"))[1] == 264 // 16
    for bad in ("0", "-4", "many"):
        monkeypatch.setenv(tb.WARPS_PER_SM_ENV, bad)
        with pytest.raises(ValueError, match="FASTJL_TRITON_WARPS_PER_SM must be a positive integer"):
            tb._plan(32, 2 * 10**6, 2048, cuda, **tb.project_tiles("rademacher"))


def test_triton_and_cuda_plans_split_d_by_the_same_one_wave_rule():
    from fastjl._backends.triton_backend import one_wave_splits

    assert one_wave_splits(16, 264) == 16  # 256 programs: one wave (ceil gave 17: 272, two waves)
    assert one_wave_splits(264, 264) == one_wave_splits(1000, 264) == one_wave_splits(0, 264) == 1
    assert one_wave_splits(1, 264) == 264 and one_wave_splits(100, 264) == 2
    try:
        from fastjl import _C
    except ImportError:
        return  # the CUDA side is checked in tests/test_c_fragments.py when built
    for tiles_n in (1, 3, 16, 100, 263):  # B <= 32: one batch tile; K = 128 * tiles_n; long D
        plan = _C.project_plan(1, 10**9, 128 * tiles_n, 132)
        assert plan["splits"] == one_wave_splits(tiles_n, 6 * 132)  # the 32-row tile plans 6 per SM
        plan = _C.project_plan(65, 10**9, 128 * tiles_n, 132)
        assert plan["splits"] == one_wave_splits(tiles_n, 2 * 132)
