"""fastjl.project_linear (dense kinds, torch backend): equal to fastjl.project of the
materialized per-example gradient, in bounded memory."""

import pytest
import torch

import fastjl

from .helpers import TOLERANCE, materialized_linear_gradient, poisoned, reference_projection, relative_error

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# (B, T, d_in, d_out, K): odd sizes, T = 1 and T = 5, K = 1 and K past one 128-column tile
SHAPES = [(1, 1, 1, 1, 1), (3, 1, 7, 5, 130), (4, 5, 9, 3, 33), (2, 5, 1, 11, 7)]
BIG_OFFSET = 2**40 + 3


def _inputs(batch, tokens, d_in, d_out, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, tokens, d_in, generator=gen).to(dtype)
    g = torch.randn(batch, tokens, d_out, generator=gen).to(dtype)
    return a, g


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kind", fastjl.KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,tokens,d_in,d_out,proj_dim", SHAPES)
def test_matches_projection_of_materialized_gradient(batch, tokens, d_in, d_out, proj_dim, dtype, kind, bias):
    a, g = _inputs(batch, tokens, d_in, d_out, dtype, seed=batch + 10 * d_in)
    out = poisoned((batch, proj_dim), dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    y = fastjl.project_linear(a, g, proj_dim, seed=9, kind=kind, offset=BIG_OFFSET, bias=bias, out=out, backend="torch")
    assert y is out and not torch.isnan(y).any()
    # The reference forms G in float64 from the same (possibly 16-bit) values, then projects
    # entry by entry; G is exact in float32 for T = 1, so only accumulation rounding remains.
    ref = reference_projection(materialized_linear_gradient(a, g, bias), proj_dim, seed=9, kind=kind, offset=BIG_OFFSET)
    assert relative_error(y, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_equals_unfused_project_to_float32_rounding(kind):
    a, g = _inputs(6, 3, 40, 25, torch.float32)
    grads = materialized_linear_gradient(a, g, bias=True).float()
    fused = fastjl.project_linear(a, g, 300, seed=3, kind=kind, offset=77, bias=True)
    unfused = fastjl.project(grads, 300, seed=3, kind=kind, offset=77)
    assert relative_error(fused, unfused.double()) < 1e-6


@pytest.mark.parametrize("budget", [1024, 4096, 1 << 16])
@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_small_budgets_split_the_weight_rows_and_agree(kind, budget):
    # 1024 bytes hold fewer rows than d_in (pieces of one output's row); 1 << 16 holds
    # several whole outputs; every plan must give the same numbers.
    a, g = _inputs(5, 2, 37, 6, torch.float32, seed=1)
    ref = reference_projection(materialized_linear_gradient(a, g, True), 140, seed=1, kind=kind, offset=5)
    previous = fastjl.set_block_budget(budget)
    try:
        y = fastjl.project_linear(a, g, 140, seed=1, kind=kind, offset=5, bias=True)
    finally:
        fastjl.set_block_budget(previous)
    assert relative_error(y, ref) < 1e-6


def test_two_dimensional_inputs_mean_one_token():
    a, g = _inputs(4, 1, 8, 3, torch.float32)
    torch.testing.assert_close(
        fastjl.project_linear(a[:, 0], g[:, 0], 50, bias=True), fastjl.project_linear(a, g, 50, bias=True)
    )


@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_strided_inputs(kind):
    a_base, g_base = _inputs(3, 8, 20, 12, torch.float32, seed=4)
    a, g = a_base.transpose(0, 1)[::2].transpose(0, 1), g_base[:, ::2, ::3]  # (3, 4, 20), (3, 4, 4)
    assert not a.is_contiguous() and not g.is_contiguous()
    y = fastjl.project_linear(a, g, 70, seed=2, kind=kind, bias=True)
    ref = reference_projection(materialized_linear_gradient(a, g, True), 70, seed=2, kind=kind)
    assert relative_error(y, ref) < 1e-6


def test_layers_projected_one_by_one_sum_to_the_whole_gradient():
    # Two Linear layers: the second's offset is the first's size, as in a model's parameter order.
    a1, g1 = _inputs(4, 1, 6, 5, torch.float32, seed=7)
    a2, g2 = _inputs(4, 1, 5, 3, torch.float32, seed=8)
    first_size = 5 * 6 + 5
    parts = fastjl.project_linear(a1, g1, 90, seed=1, bias=True) + fastjl.project_linear(
        a2, g2, 90, seed=1, offset=first_size, bias=True
    )
    whole = torch.cat([materialized_linear_gradient(a1, g1, True), materialized_linear_gradient(a2, g2, True)], 1)
    assert relative_error(parts, reference_projection(whole, 90, seed=1)) < 1e-6


def test_scale_jl_and_empty_batch():
    a, g = _inputs(3, 1, 4, 4, torch.float32)
    plain = fastjl.project_linear(a, g, 16, seed=1)
    torch.testing.assert_close(fastjl.project_linear(a, g, 16, seed=1, scale="jl"), plain / 4)
    assert fastjl.project_linear(a[:0], g[:0], 16).shape == (0, 16)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_public_api_dispatches_to_the_kernels(backend):
    # On CPU the triton backend runs in the interpreter; cuda needs a GPU (and says so).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, g = _inputs(3, 2, 5, 4, torch.float32)
    a, g = a.to(device), g.to(device)
    status = fastjl.backends(device)[backend]
    if not status.available:
        with pytest.raises(RuntimeError, match=f"backend '{backend}' cannot run project_linear"):
            fastjl.project_linear(a, g, 20, bias=True, backend=backend)
        return
    y = fastjl.project_linear(a, g, 20, bias=True, backend=backend)
    ref = reference_projection(materialized_linear_gradient(a, g, True).cpu(), 20)
    assert relative_error(y.cpu(), ref) < 2e-3  # tf32 on a GPU; exact float32 in the interpreter
