"""The chunked project_linear that sequences take on a GPU (fastjl._backends.linear_chunked),
run here on the CPU with the torch backend's ``project`` as the chunk kernel: chunk boundaries,
the bias chunk and the ordered sum must give the spec's product, whatever the chunk size."""

import pytest
import torch

from fastjl._backends import linear_chunked, torch_backend

from .helpers import linear_reference, poisoned, relative_error


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 100])  # 7 rows: an uneven last chunk of 5 x d_in
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_chunks_give_the_spec_product(monkeypatch, chunk_rows, bias, dtype):
    batch, tokens, d_in, d_out, proj_dim = 5, 9, 13, 12, 70
    monkeypatch.setattr(linear_chunked, "CHUNK_BYTES", chunk_rows * 4 * batch * d_in)
    gen = torch.Generator().manual_seed(chunk_rows * 10 + bias)
    a = torch.randn(batch, tokens, d_in, generator=gen).to(dtype)
    g = torch.randn(batch, tokens, d_out, generator=gen).to(dtype)
    out = poisoned((proj_dim, batch)).t()  # a transposed out, NaN until written
    opts = dict(seed=11, kind="rademacher", offset=2**40 + 3, bias=bias)
    linear_chunked.project_linear(torch_backend.project, a, g, out, **opts)
    ref = linear_reference(a, g, proj_dim, **opts)
    assert torch.isfinite(out).all() and relative_error(out, ref) < 1e-6


def test_gaussian_and_repeatable(monkeypatch):
    monkeypatch.setattr(linear_chunked, "CHUNK_BYTES", 2 * 4 * 3 * 8)  # 2 rows per chunk
    a, g = torch.randn(3, 4, 8), torch.randn(3, 4, 5)
    outs = [torch.empty(3, 33), torch.empty(3, 33)]
    for out in outs:
        linear_chunked.project_linear(torch_backend.project, a, g, out, seed=2, kind="gaussian", offset=0, bias=True)
    assert torch.equal(outs[0], outs[1])
    assert relative_error(outs[0], linear_reference(a, g, 33, seed=2, kind="gaussian", bias=True)) < 1e-6


def test_only_gpu_sequences_take_chunks():
    assert linear_chunked.use_chunks(2, torch.device("cuda"))
    assert not linear_chunked.use_chunks(1, torch.device("cuda"))  # T = 1: the fused kernel
    assert not linear_chunked.use_chunks(64, torch.device("cpu"))  # CPU: the torch backend's own blocks


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_chunks_and_fused_kernel_both_match_the_spec(monkeypatch, backend, dtype):
    """Sequences on a GPU take the chunks; the fused kernel (forced) still computes the same."""
    import fastjl

    if not fastjl.backends("cuda")[backend].available:
        pytest.skip(fastjl.backends("cuda")[backend].reason)
    monkeypatch.setattr(linear_chunked, "CHUNK_BYTES", 3 * 4 * 6 * 77)  # 3 rows per chunk
    gen = torch.Generator().manual_seed(3)
    a, g = torch.randn(6, 5, 77, generator=gen).to(dtype), torch.randn(6, 5, 10, generator=gen).to(dtype)
    opts = dict(seed=4, kind="rademacher", offset=2**40 + 3, bias=True)
    ref = linear_reference(a, g, 300, **opts)
    for fused_max in (1, 10**9):  # chunks, then the fused kernel
        monkeypatch.setattr(linear_chunked, "FUSED_MAX_TOKENS", fused_max)
        out = poisoned((6, 300), device="cuda")
        fastjl.project_linear(a.cuda(), g.cuda(), 300, out=out, backend=backend, **opts)
        # float32 G: CUDA splits it into bf16 hi + lo (~1e-5); Triton's tf32 dot keeps 10 bits of
        # both operands (fastjl.check's bound 2^-9; measured up to 1.2e-3 on small products).
        assert relative_error(out.cpu(), ref) < 2**-8, f"FUSED_MAX_TOKENS={fused_max}"


def test_examples_are_split_when_one_row_of_every_example_does_not_fit(monkeypatch):
    batch, d_in, d_out = 5, 13, 4
    monkeypatch.setattr(linear_chunked, "CHUNK_BYTES", 2 * 4 * d_in)  # 2 examples x 1 row per block
    a, g = torch.randn(batch, 3, d_in), torch.randn(batch, 3, d_out)
    blocks = [(b0, b1, o0) for b0, b1, o0, _ in linear_chunked.gradient_blocks(a, g, 2 * 4 * d_in)]
    assert blocks == [(b, min(b + 2, batch), o) for b in (0, 2, 4) for o in range(d_out)]
    out = poisoned((batch, 40))
    linear_chunked.project_linear(torch_backend.project, a, g, out, seed=1, kind="rademacher", offset=7, bias=True)
    assert relative_error(out, linear_reference(a, g, 40, seed=1, offset=7, bias=True)) < 1e-6
