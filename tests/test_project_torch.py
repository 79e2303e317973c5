"""fastjl.project with the torch backend against the float64 entry-wise reference."""

import math

import pytest
import torch

import fastjl
from fastjl._backends import torch_backend

from .helpers import TOLERANCE, poisoned, reference_projection, relative_error

SHAPES = [(1, 1, 1), (7, 1001, 100), (33, 300, 4097), (5, 2000, 129)]  # (B, D, K)
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.mark.parametrize("kind", fastjl.KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,dim,proj_dim", SHAPES)
def test_matches_reference(kind, dtype, batch, dim, proj_dim):
    torch.manual_seed(batch * dim + proj_dim)
    x = torch.randn(batch, dim).to(dtype)
    out = poisoned((batch, proj_dim), dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    y = fastjl.project(x, proj_dim, seed=11, kind=kind, offset=2**40 + 3, out=out, backend="torch")
    assert y is out and not torch.isnan(y).any()
    ref = reference_projection(x, proj_dim, seed=11, kind=kind, offset=2**40 + 3)
    assert relative_error(y, ref) < TOLERANCE[dtype]


def test_default_output_is_float32_and_inputs_are_not_modified():
    x = torch.randn(4, 50, dtype=torch.bfloat16)
    before = x.clone()
    y = fastjl.project(x, 8)
    assert y.dtype == torch.float32 and y.shape == (4, 8)
    assert torch.equal(x, before)


@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_strided_inputs(kind):
    base = torch.randn(300, 14)
    for x in (base.t(), base.t()[:, ::3], base[::2].t()[1::2]):
        assert not x.is_contiguous()
        y = fastjl.project(x, 70, seed=4, kind=kind)
        y_contig = fastjl.project(x.contiguous(), 70, seed=4, kind=kind)
        torch.testing.assert_close(y, y_contig, rtol=1e-6, atol=1e-5)
        assert relative_error(y, reference_projection(x, 70, seed=4, kind=kind)) < 1e-5


@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_offsets_are_additive(kind):
    x = torch.randn(6, 2500)
    whole = fastjl.project(x, 300, seed=2, kind=kind, offset=1000)
    for cut in (1, 1200, 2499):
        parts = fastjl.project(x[:, :cut], 300, seed=2, kind=kind, offset=1000) + fastjl.project(
            x[:, cut:], 300, seed=2, kind=kind, offset=1000 + cut
        )
        torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_batch_invariance_and_k_prefix(kind):
    x = torch.randn(9, 777)
    full = fastjl.project(x, 513, seed=8, kind=kind)
    # Same matrix whatever the batch; only float32 summation order may differ (BLAS picks
    # different kernels for one row and for nine).
    close = dict(rtol=1e-5, atol=1e-4)
    for i in (0, 4, 8):
        torch.testing.assert_close(fastjl.project(x[i : i + 1], 513, seed=8, kind=kind), full[i : i + 1], **close)
    torch.testing.assert_close(fastjl.project(x, 200, seed=8, kind=kind), full[:, :200], **close)


def test_dtype_does_not_change_the_matrix():
    # bf16 values are exact in fp32 and fp16, so all three dtypes project the same numbers.
    x = torch.randn(3, 400).to(torch.bfloat16)
    ys = [fastjl.project(x.to(d), 64, seed=5) for d in (torch.bfloat16, torch.float16, torch.float32)]
    assert torch.equal(ys[0], ys[1]) and torch.equal(ys[0], ys[2])


def test_empty_batch():
    y = fastjl.project(torch.randn(0, 10), 5)
    assert y.shape == (0, 5)


def test_jl_scale():
    x = torch.randn(2, 100)
    torch.testing.assert_close(fastjl.project(x, 64, scale="jl"), fastjl.project(x, 64) / 8)


@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_jl_norm_and_inner_product_preservation(kind):
    """With scale='jl', ||xP||^2 / ||x||^2 has mean 1 and variance about 2/K; check both
    over independent seeds, with bounds derived from K and the number of trials."""
    proj_dim, trials, dim = 256, 100, 1000
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, dim, generator=gen)
    ratios, inner_errors = [], []
    for seed in range(trials):
        y = fastjl.project(x, proj_dim, seed=seed, kind=kind, scale="jl").double()
        ratios.append((y[0].norm() ** 2 / x[0].double().norm() ** 2).item())
        # <xP, yP> - <x, y> has variance (|x|^2|y|^2 + <x,y>^2) / K for gaussian, <= for ±1
        xd = x.double()
        sigma = math.sqrt(((xd[0].norm() * xd[1].norm()) ** 2 + (xd[0] @ xd[1]) ** 2).item() / proj_dim)
        inner_errors.append(((y[0] @ y[1]) - (xd[0] @ xd[1])).item() / sigma)
    ratios, inner_errors = torch.tensor(ratios), torch.tensor(inner_errors)
    var = 2 / proj_dim
    assert abs(ratios.mean().item() - 1) < 4 * math.sqrt(var / trials)
    # Sample variance of ~normal data has relative std sqrt(2 / (trials - 1)) ~ 0.14.
    assert 0.5 * var < ratios.var().item() < 1.5 * var
    assert abs(inner_errors.mean().item()) < 4 / math.sqrt(trials)
    assert 0.5 < inner_errors.std().item() < 1.5


def test_plan_is_memory_bounded_at_a_billion_parameters():
    budget = torch_backend.block_budget()
    for batch, proj_dim in ((1, 2048), (32, 2048), (100_000, 2048), (8, 10**7)):
        rows, cols = torch_backend.plan_blocks(batch, 10**9, proj_dim, 4, budget)
        assert rows * cols * 4 <= budget and batch * rows * 4 <= max(budget, batch * 4)
        assert 1 <= rows <= 10**9 and 1 <= cols <= proj_dim


@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_small_budget_gives_same_result_and_small_blocks(kind, monkeypatch):
    x = torch.randn(5, 3000, dtype=torch.float16)
    expected = fastjl.project(x, 700, seed=3, kind=kind)
    sizes = []
    real = torch_backend.generate_block

    def recording(*args, **kwargs):
        block = real(*args, **kwargs)
        sizes.append(block.numel() * block.element_size())
        return block

    monkeypatch.setattr(torch_backend, "generate_block", recording)
    previous = fastjl.set_block_budget(16 * 1024)
    try:
        y = fastjl.project(x, 700, seed=3, kind=kind)
    finally:
        fastjl.set_block_budget(previous)
    assert max(sizes) <= 16 * 1024 and len(sizes) > 10
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-4)


def test_set_block_budget_rejects_nonsense():
    with pytest.raises(ValueError):
        fastjl.set_block_budget(10)
    with pytest.raises(ValueError):
        fastjl.set_block_budget("big")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_backend_on_cuda_matches_cpu(dtype):
    x = torch.randn(33, 10**3 + 1).to(dtype)
    for kind in fastjl.KINDS:
        cpu = fastjl.project(x, 4097, seed=1, kind=kind, offset=2**40, backend="torch")
        out = poisoned((33, 4097), device="cuda")
        gpu = fastjl.project(x.cuda(), 4097, seed=1, kind=kind, offset=2**40, out=out, backend="torch")
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-3)
