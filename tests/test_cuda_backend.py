"""CUDA backend (csrc/project_kernel.cu through fastjl._C) vs the float64 reference.

The agreement suite mirrors tests/test_triton.py and needs a GPU (compute capability >= 8.0);
without one only the availability report is checked here, and the kernel's decomposition is
checked on the CPU by tests/test_c_fragments.py.
"""


import pytest
import torch

import fastjl
from fastjl.spec import matrix_block

from .helpers import needs_cuda_kernels, poisoned, reference_projection, relative_error

needs_gpu = needs_cuda_kernels
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SEED = 2**64 - 3
# Relative (Frobenius) error bounds vs float64 of the same (rounded) input.  Predicted:
# fp32 x as bf16 hi + lo ~5e-6 (the target is 1e-3); 16-bit x exact; rademacher P
# exact; gaussian P hi + lo: ~22 bits with fp16 operands, ~16 bits with bf16 operands.
TOLERANCE = {
    ("rademacher", torch.float32): 1e-4,
    ("rademacher", torch.float16): 1e-6,
    ("rademacher", torch.bfloat16): 1e-6,
    ("gaussian", torch.float32): 1e-4,
    ("gaussian", torch.float16): 1e-6,
    ("gaussian", torch.bfloat16): 3e-5,
}
# (B, D, K) from the odd sizes: B = 1, 7, 33, 1000; K = 1, 100, 4097; D = 1, 1001.
SHAPES = [
    (1, 1, 1),
    (7, 1001, 100),
    (33, 1001, 4097),
    (1000, 1001, 4097),
    (1000, 1, 1),
    (33, 1, 100),
    (1, 1001, 4097),
    (7, 10**5 + 3, 100),  # D split over many CTAs
]


def run(x, proj_dim, *, out=None, seed=SEED, kind="rademacher", offset=0):
    return fastjl.project(x, proj_dim, seed=seed, kind=kind, offset=offset, out=out, backend="cuda")


def reference(x, proj_dim, *, seed=SEED, kind="rademacher", offset=0):
    """float64 x @ P on the CPU (entry-wise spec) or, for big shapes, the torch backend."""
    if x.shape[1] * proj_dim <= 2 * 10**6:
        return reference_projection(x.cpu(), proj_dim, seed=seed, kind=kind, offset=offset)
    return fastjl.project(x.double(), proj_dim, seed=seed, kind=kind, offset=offset, backend="torch").cpu()


def random_input(batch, dim, dtype, device="cuda"):
    gen = torch.Generator(device=device).manual_seed(batch + dim)
    return torch.randn(batch, dim, generator=gen, device=device).to(dtype)


def test_availability_reason_on_cpu_tensors():
    status = fastjl.backends("cpu")["cuda"]
    assert not status.available
    assert "CUDA tensor" in status.reason or "fastjl._C" in status.reason


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("kind", fastjl.KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,dim,proj_dim", SHAPES)
def test_matches_reference(kind, dtype, batch, dim, proj_dim):
    x = random_input(batch, dim, dtype)
    offset = 2**40 + 3
    out = poisoned((batch, proj_dim), device="cuda")
    y = run(x, proj_dim, out=out, kind=kind, offset=offset)
    assert y is out and not torch.isnan(y).any()
    ref = reference(x, proj_dim, kind=kind, offset=offset)
    assert relative_error(y.cpu(), ref) < TOLERANCE[kind, dtype]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_dim_of_10_to_the_8(kind):
    """D = 10^8: 64-bit offsets into x, thousands of steps per CTA, hundreds of D-splits.
    K = 1 keeps the float64 reference affordable; K = 100 must agree bitwise on column 0
    (same plan: one column tile), i.e. P[:, :1] is a prefix."""
    dim = 10**8
    x = random_input(2, dim, torch.bfloat16)
    y1 = run(x, 1, kind=kind, offset=2**40)
    y100 = run(x, 100, kind=kind, offset=2**40)
    assert torch.equal(y100[:, :1], y1)
    ref = fastjl.project(x.double(), 1, seed=SEED, kind=kind, offset=2**40, backend="torch")
    # fp32 accumulation over ~4e5 rows per split: allow more than the short-D bound.
    assert relative_error(y1, ref) < 1e-4


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("kind", fastjl.KINDS)
@pytest.mark.parametrize("offset", [0, 2**32 - 10, 2**48 - 37])
def test_one_hot_rows_reproduce_the_matrix(kind, offset):
    """x = I gives y = P[offset : offset + 37, :K]: every generated entry is checked,
    including rows across i = 2^32 and the last rows of P."""
    dim, proj_dim = 37, 300
    if kind == "rademacher":  # ±1 and an exact split of 1.0: bit for bit
        y = run(torch.eye(dim, device="cuda"), proj_dim, seed=99, kind=kind, offset=offset).cpu()
        p = matrix_block(99, kind, range(offset, offset + dim), range(proj_dim), dtype=torch.float32)
        assert torch.equal(y, p)
    else:  # through fp16 operands: P kept to ~22 bits
        eye = torch.eye(dim, device="cuda", dtype=torch.float16)
        y = run(eye, proj_dim, seed=99, kind=kind, offset=offset).cpu().double()
        p = matrix_block(99, kind, range(offset, offset + dim), range(proj_dim), dtype=torch.float64)
        torch.testing.assert_close(y, p, rtol=2e-6, atol=2e-6)


@pytest.mark.gpu
@needs_gpu
def test_strided_input_and_output():
    base = torch.randn(60, 9, device="cuda")
    x = base.t()[:, ::2]  # (9, 30), both strides non-unit: the element-load path
    out_storage = poisoned((140, 9), device="cuda")
    out = out_storage.t()  # (9, 140) with strides (1, 9)
    y = run(x, 140, out=out, seed=1)
    assert not torch.isnan(out_storage).any()
    assert relative_error(y.cpu(), reference(x, 140, seed=1)) < TOLERANCE["rademacher", torch.float32]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shift", [0, 1])
def test_memory_outside_x_is_never_read(dtype, shift):
    """x is a window of a NaN-filled buffer.  shift 0: aligned rows, cp.async path with a
    partial (zero-filled) last chunk; shift 1: misaligned, element path."""
    batch, dim = 37, 1001
    big = torch.full((batch + 3, 1024 + 8), float("nan"), device="cuda").to(dtype)
    values = random_input(batch, dim, dtype)
    big[:batch, shift : shift + dim] = values
    y = run(big[:batch, shift : shift + dim], 130, kind="gaussian")
    assert relative_error(y.cpu(), reference(values, 130, kind="gaussian")) < TOLERANCE["gaussian", dtype]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("kind", fastjl.KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_two_runs_are_bitwise_equal(kind, dtype):
    batch, dim, proj_dim = 18, 200_003, 200
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert fastjl._C.project_plan(batch, dim, proj_dim, sms)["splits"] > 1  # the reduction runs
    x = random_input(batch, dim, dtype)
    first = run(x, proj_dim, kind=kind)
    second = run(x, proj_dim, kind=kind)
    assert torch.equal(first, second)


@pytest.mark.gpu
@needs_gpu
def test_offsets_are_additive():
    x = torch.randn(5, 3000, device="cuda")
    whole = run(x, 130, seed=3, offset=77)
    parts = run(x[:, :1111], 130, seed=3, offset=77) + run(x[:, 1111:], 130, seed=3, offset=77 + 1111)
    torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-3)


@pytest.mark.gpu
@needs_gpu
def test_runs_on_the_current_stream():
    x = random_input(40, 5000, torch.float16)
    expected = run(x, 300)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        y = run(x, 300)
    stream.synchronize()
    assert torch.equal(y, expected)


@pytest.mark.gpu
@needs_gpu
def test_matches_triton_when_present():
    if fastjl.backends("cuda")["triton"].available is False:
        pytest.skip("triton unavailable: " + fastjl.backends("cuda")["triton"].reason)
    x = random_input(64, 4096, torch.bfloat16)
    ours = run(x, 512, kind="gaussian")
    theirs = fastjl.project(x, 512, seed=SEED, kind="gaussian", backend="triton")
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3)


@pytest.mark.gpu
@needs_gpu
def test_projector_and_auto_use_cuda():
    assert fastjl.backends("cuda")["cuda"].available
    grads = {"w": torch.randn(4, 10, 12, device="cuda"), "b": torch.randn(4, 10, device="cuda")}
    ours = fastjl.Projector(130, 64, seed=2, backend="cuda").project(grads, model_id=1)
    ref = fastjl.Projector(130, 64, seed=2, backend="torch").project(grads, model_id=1)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@needs_gpu
def test_host_pointers_are_refused():
    buf = torch.zeros(64)
    with pytest.raises(ValueError, match="fastjl._C.project: x_ptr is not CUDA device memory"):
        fastjl._C.project(buf.data_ptr(), 0, 2, 3, 3, 1, buf.data_ptr(), 4, 4, 1, 1, 0, 0, 0, 0, 132, 0)


@pytest.mark.gpu
@needs_gpu
def test_float64_is_refused():
    with pytest.raises(TypeError, match="float64"):
        fastjl.project(torch.randn(2, 5, dtype=torch.float64, device="cuda"), 4, backend="cuda")
