"""CUDA project_linear (csrc/linear_kernel.cu through fastjl._C) vs a float64 reference.

Needs a GPU (compute capability >= 8.0); without one every test here skips and the kernel's
decomposition (gradient-tile producer included) is checked on the CPU by
tests/test_c_linear.py.  What only a GPU can show: the producer's device code (synchronous
loads into shared memory between the pipeline's barriers), the launch, and the results of
the real MMAs.
"""


import pytest
import torch

import fastjl
from fastjl._backends import cuda_backend
from fastjl.spec import matrix_block

from .helpers import linear_reference, materialized_linear_gradient, needs_cuda_kernels, poisoned, relative_error

needs_gpu = needs_cuda_kernels

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SEED = 2**64 - 3
OFFSET = 2**40 + 3
# Relative (Frobenius) error vs float64 of the same (rounded) inputs.  G is formed in float32
# and enters the MMAs as bf16 hi + lo (~16 bits: ~5e-6 predicted) whatever the input dtype.
TOLERANCE = 1e-4
# (B, T, d_in, d_out, K): odd sizes, every batch-tile config, K = 1 .. 4097, long T, and a D
# of 10^6 split over many CTAs.
SHAPES = [
    (1, 1, 1, 1, 1),
    (7, 1, 100, 33, 100),
    (33, 5, 64, 48, 4097),
    (1000, 1, 65, 17, 130),
    (8, 129, 96, 40, 257),
    (3, 2, 1000, 1000, 100),
]


def run(a, g, proj_dim, *, out=None, seed=SEED, kind="rademacher", offset=OFFSET, bias=False):
    """cuda_backend.project_linear into ``out`` (poisoned if not given)."""
    if out is None:
        out = poisoned((a.shape[0], proj_dim), device="cuda")
    cuda_backend.project_linear(a, g, out, seed=seed, kind=kind, offset=offset, bias=bias)
    return out


def reference(a, g, proj_dim, *, seed=SEED, kind="rademacher", offset=OFFSET, bias=False):
    return linear_reference(a, g, proj_dim, seed=seed, kind=kind, offset=offset, bias=bias)


def random_inputs(batch, tokens, d_in, d_out, dtype):
    gen = torch.Generator(device="cuda").manual_seed(batch + tokens + d_in + d_out)
    a = torch.randn(batch, tokens, d_in, generator=gen, device="cuda").to(dtype)
    g = torch.randn(batch, tokens, d_out, generator=gen, device="cuda").to(dtype)
    return a, g


pytestmark = [pytest.mark.gpu, needs_gpu]


@pytest.mark.parametrize("kind", fastjl.KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch,tokens,d_in,d_out,proj_dim", SHAPES)
def test_matches_reference(kind, dtype, bias, batch, tokens, d_in, d_out, proj_dim):
    a, g = random_inputs(batch, tokens, d_in, d_out, dtype)
    y = run(a, g, proj_dim, kind=kind, bias=bias)
    assert not torch.isnan(y).any()
    assert relative_error(y, reference(a, g, proj_dim, kind=kind, bias=bias)) < TOLERANCE


@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_transformer_sized_layer(kind):
    """A BERT-base MLP layer (768 -> 3072, D = 2.4M + bias) over 128 tokens."""
    a, g = random_inputs(8, 128, 768, 3072, torch.bfloat16)
    y = run(a, g, 512, kind=kind, bias=True)
    assert relative_error(y, reference(a, g, 512, kind=kind, bias=True)) < TOLERANCE


@pytest.mark.parametrize("offset", [0, 2**32 - 20, 2**48 - 40])
def test_one_hot_gradients_reproduce_the_matrix(offset):
    """Example b's gradient is the b-th unit vector (weight rows from a = e_i, g = e_o at token
    0 and g = -e_o at token 1 where a = 0; bias rows from g = e_o alone): y = P[offset : offset
    + D] bit for bit."""
    d_in, d_out, proj_dim = 7, 5, 300
    dim = d_out * d_in + d_out
    a = torch.zeros(dim, 2, d_in)
    g = torch.zeros(dim, 2, d_out)
    for b in range(dim):
        if b < d_out * d_in:
            o, i = divmod(b, d_in)
            a[b, 0, i] = 1.0
            g[b, 1, o] = -1.0
        else:
            o = b - d_out * d_in
        g[b, 0, o] = 1.0
    y = run(a.cuda(), g.cuda(), proj_dim, seed=99, offset=offset, bias=True).cpu()
    p = matrix_block(99, "rademacher", range(offset, offset + dim), range(proj_dim), dtype=torch.float32)
    assert torch.equal(y, p)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_same_pipeline_as_project(dtype, kind):
    """T = 1, 16-bit inputs: the products are exact in float32, so the result is bit for bit
    cuda project() of the float32 materialized gradient (same plan, P tiles, MMAs, reduction)."""
    a, g = random_inputs(40, 1, 300, 90, dtype)
    x = torch.cat([(g[:, 0, :, None].float() * a[:, 0, None, :].float()).reshape(40, -1), g[:, 0].float()], dim=1)
    ours = run(a, g, 300, kind=kind, bias=True)
    theirs = poisoned((40, 300), device="cuda")
    cuda_backend.project(x, theirs, seed=SEED, kind=kind, offset=OFFSET)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_memory_outside_a_and_g_is_never_read(dtype):
    batch, tokens, d_in, d_out = 37, 4, 101, 30
    a_values, g_values = random_inputs(batch, tokens, d_in, d_out, dtype)
    a_big = torch.full((batch + 2, tokens + 1, 2 * d_in + 3), float("nan"), device="cuda").to(dtype)
    g_big = torch.full((batch + 1, 2 * tokens + 2, d_out + 2), float("nan"), device="cuda").to(dtype)
    a = a_big[:batch, :tokens, 1 : 2 * d_in + 1 : 2]
    g = g_big[:batch, 1 : 2 * tokens + 1 : 2, :d_out]
    a.copy_(a_values)
    g.copy_(g_values)
    y = run(a, g, 130, kind="gaussian", bias=True)
    assert relative_error(y, reference(a_values, g_values, 130, kind="gaussian", bias=True)) < TOLERANCE


def test_permuted_inputs_and_strided_output():
    batch, tokens, d_in, d_out = 6, 5, 110, 70
    a = torch.randn(tokens, batch, d_in, device="cuda").transpose(0, 1)
    g = torch.randn(batch, d_out, tokens, device="cuda").transpose(1, 2)
    out_storage = poisoned((140, batch), device="cuda")
    y = run(a, g, 140, out=out_storage.t(), bias=True)
    assert not torch.isnan(out_storage).any()
    assert relative_error(y, reference(a, g, 140, bias=True)) < TOLERANCE


def test_matches_host_emulation():
    """The GPU and the CPU emulation form the same float32 gradient tiles (fused multiply-adds
    in the same order); only the MMAs' internal summation order differs."""
    a, g = random_inputs(9, 3, 50, 40, torch.float32)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    y = run(a, g, 200, kind="gaussian", bias=True).cpu()
    emulated = poisoned((9, 200))
    a_cpu, g_cpu = a.cpu(), g.cpu()
    fastjl._C.host_emulate_project_linear(
        *cuda_backend.linear_tensor_args(a_cpu, g_cpu, emulated, seed=SEED, kind="gaussian", offset=OFFSET, bias=True),
        sms,
    )
    # Relative to the whole output: single elements near cancellation differ by more than
    # their own size (seen on an H100: 1.2e-4 on an element of 1.5e-3, outputs of norm ~80).
    assert relative_error(y, emulated.double()) < 1e-6


@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_two_runs_are_bitwise_equal(kind):
    batch, tokens, d_in, d_out, proj_dim = 5, 3, 700, 300, 200
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert fastjl._C.project_plan(batch, d_out * d_in, proj_dim, sms)["splits"] > 1  # the reduction runs
    a, g = random_inputs(batch, tokens, d_in, d_out, torch.bfloat16)
    assert torch.equal(run(a, g, proj_dim, kind=kind), run(a, g, proj_dim, kind=kind))


def test_offsets_are_additive_over_layers():
    """Two layers projected at consecutive offsets sum to the projection of both gradients."""
    a1, g1 = random_inputs(4, 3, 30, 20, torch.float32)
    a2, g2 = random_inputs(4, 3, 17, 11, torch.float32)
    d1 = 20 * 30 + 20
    x = torch.cat([materialized_linear_gradient(a1, g1, bias=True), materialized_linear_gradient(a2, g2)], dim=1)
    both = fastjl.project(x, 64, seed=SEED, offset=5, backend="torch")
    parts = run(a1, g1, 64, offset=5, bias=True) + run(a2, g2, 64, offset=5 + d1)
    assert relative_error(parts, both) < TOLERANCE


def test_runs_on_the_current_stream():
    a, g = random_inputs(40, 4, 200, 100, torch.float16)
    expected = run(a, g, 300)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        y = run(a, g, 300)
    stream.synchronize()
    assert torch.equal(y, expected)


def test_public_api_uses_this_kernel():
    a, g = random_inputs(4, 2, 30, 20, torch.bfloat16)
    ours = fastjl.project_linear(a, g, 100, seed=SEED, offset=OFFSET, bias=True, backend="cuda")
    assert torch.equal(ours, run(a, g, 100, bias=True))


def test_host_pointers_are_refused():
    buf = torch.zeros(64)
    args = (buf.data_ptr(), buf.data_ptr(), 0, 2, 3, 4, 5, 12, 4, 1, 15, 5, 1, buf.data_ptr(), 4, 4, 1, 1, 0, 0, True)
    with pytest.raises(ValueError, match="fastjl._C.project_linear: a_ptr is not CUDA device memory"):
        fastjl._C.project_linear(*args, 0, 0, 132, 0)
