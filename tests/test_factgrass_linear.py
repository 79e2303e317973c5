"""``project_linear(kind="factgrass")`` against the spec matrix applied to explicitly formed gradients."""

import pytest
import torch

import fastjl
import fastjl.factgrass as factgrass_module
from fastjl.factgrass_spec import factgrass_matrix

from .helpers import materialized_linear_gradient, relative_error


def reference(a, g, proj_dim, *, seed, offset=0, masks, sparsity=1, bias=False, scale=None):
    """Full per-example gradients (float64) times the layer's dense FactGraSS matrix."""
    x = materialized_linear_gradient(a, g, bias)
    matrix = factgrass_matrix(seed, offset, g.shape[-1], a.shape[-1], proj_dim, factor_masks=masks,
                              sparsity=sparsity, bias=bias)  # fmt: skip
    return x @ matrix / (sparsity**0.5 if scale == "jl" else 1.0)


@pytest.mark.parametrize(
    "batch, tokens, d_in, d_out, K, masks, s, bias, offset",
    [
        (3, 5, 7, 6, 16, (4, 5), 1, False, 0),
        (2, 1, 13, 11, 33, (11, 9), 2, True, 1234567),
        (5, 4, 9, 3, 8, (2, 10), 8, True, 2**47),
        (1, 3, 1, 1, 4, (1, 1), 4, False, 5),
    ],
)
def test_matches_reference_float64(batch, tokens, d_in, d_out, K, masks, s, bias, offset):
    a = torch.randn(batch, tokens, d_in, dtype=torch.float64)
    g = torch.randn(batch, tokens, d_out, dtype=torch.float64)
    opts = dict(seed=17, offset=offset, bias=bias)
    y = fastjl.project_linear(a, g, K, kind="factgrass", factor_masks=masks, sparsity=s, backend="torch", **opts)
    assert y.dtype == torch.float64 and y.shape == (batch, K)
    torch.testing.assert_close(y, reference(a, g, K, masks=masks, sparsity=s, **opts), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_accumulate_in_float32(dtype):
    a = torch.randn(4, 6, 21, dtype=dtype)
    g = torch.randn(4, 6, 10, dtype=dtype)
    y = fastjl.project_linear(a, g, 64, seed=3, kind="factgrass", factor_masks=(7, 12), sparsity=2, offset=99,
                              bias=True, scale="jl")  # fmt: skip
    assert y.dtype == torch.float32
    ref = reference(a, g, 64, seed=3, offset=99, masks=(7, 12), sparsity=2, bias=True, scale="jl")
    assert relative_error(y, ref) < 1e-5  # fp16/bf16 inputs are exact in float32: only accumulation rounding


def test_two_dimensional_inputs_are_one_token():
    a, g = torch.randn(3, 9), torch.randn(3, 4)
    opts = dict(seed=1, kind="factgrass", factor_masks=(3, 5))
    torch.testing.assert_close(
        fastjl.project_linear(a, g, 32, **opts), fastjl.project_linear(a[:, None], g[:, None], 32, **opts)
    )


def test_blocks_stay_within_budget_and_do_not_change_the_result(monkeypatch):
    a, g = torch.randn(6, 3, 40), torch.randn(6, 3, 50)
    opts = dict(seed=8, kind="factgrass", factor_masks=(45, 33), offset=10)
    whole = fastjl.project_linear(a, g, 128, **opts)
    assert torch.equal(whole, fastjl.project_linear(a, g, 128, **opts))  # run to run: the same bits
    seen = []
    real = factgrass_module.gradient_blocks

    def recording(a, g, budget):
        for b0, b1, p0, block in real(a, g, budget):
            seen.append(block.numel() * block.element_size())
            yield b0, b1, p0, block

    monkeypatch.setattr(factgrass_module, "gradient_blocks", recording)
    previous = fastjl.set_block_budget(1024)
    try:
        chunked = fastjl.project_linear(a, g, 128, **opts)
    finally:
        fastjl.set_block_budget(previous)
    assert len(seen) > 6 and max(seen) <= 1024  # many blocks, none above the budget
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_out_and_autograd():
    a = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    opts = dict(seed=2, offset=7, bias=True)
    out = torch.full((2, 16), float("nan"), dtype=torch.float64)
    y = fastjl.project_linear(a, g, 16, kind="factgrass", factor_masks=(3, 4), backend="torch", out=out, **opts)
    assert y is out
    weights = torch.randn(2, 16, dtype=torch.float64)
    da, dg = torch.autograd.grad((y * weights).sum(), (a, g))
    ref = reference(a, g, 16, masks=(3, 4), **opts)
    ra, rg = torch.autograd.grad((ref * weights).sum(), (a, g))
    torch.testing.assert_close(y.detach(), ref.detach())
    torch.testing.assert_close(da, ra)
    torch.testing.assert_close(dg, rg)


def test_norms_and_inner_products_are_preserved_on_average():
    """Over layers (offsets) the masks keep k_out k_in / (d_out d_in) of ||G||² and of <G, G'>
    on average (no rescaling), and sjlt with scale="jl" preserves them: each estimate's mean over
    400 independent draws lies within 4 standard errors of its expectation."""
    torch.manual_seed(0)
    a, g = torch.randn(2, 4, 12, dtype=torch.float64), torch.randn(2, 4, 10, dtype=torch.float64)
    x = materialized_linear_gradient(a, g)
    ratio = (5 * 6) / (10 * 12)
    norms, inners = [], []
    for layer in range(400):
        y = fastjl.project_linear(a, g, 256, seed=layer, kind="factgrass", factor_masks=(5, 6), sparsity=4,
                                  offset=layer * 1000, backend="torch", scale="jl")  # fmt: skip
        norms.append(y[0].square().sum() / (ratio * x[0].square().sum()))
        inners.append((y[0] @ y[1]) / (ratio * x[0].square().sum()))
    for values, expected in (
        (torch.stack(norms), 1.0),
        (torch.stack(inners), float(x[0] @ x[1] / x[0].square().sum())),
    ):
        error = values.std() / len(values) ** 0.5
        assert abs(float(values.mean()) - expected) < 4 * error, (float(values.mean()), expected, float(error))


def test_bad_options_are_refused():
    a, g = torch.randn(2, 6), torch.randn(2, 4)
    with pytest.raises(ValueError, match="factor_masks"):
        fastjl.project_linear(a, g, 8, kind="factgrass")
    with pytest.raises(ValueError, match="factgrass"):
        fastjl.project_linear(a, g, 8, kind="rademacher", factor_masks=(2, 2))
    with pytest.raises(ValueError, match="factgrass"):
        fastjl.project_linear(a, g, 8, kind="kronecker", sparsity=2)
    with pytest.raises(ValueError, match="k_out"):
        fastjl.project_linear(a, g, 8, kind="factgrass", factor_masks=(5, 2))
    with pytest.raises(ValueError, match="k_in"):
        fastjl.project_linear(a, g, 8, kind="factgrass", factor_masks=(2, 7))
    fastjl.project_linear(a, g, 8, kind="factgrass", factor_masks=(2, 7), bias=True)  # the bias column counts
    with pytest.raises(ValueError, match="sparsity"):
        fastjl.project_linear(a, g, 8, kind="factgrass", factor_masks=(2, 2), sparsity=3)
    with pytest.raises(ValueError, match="proj_dim"):
        fastjl.project_linear(a, g, 2, kind="factgrass", factor_masks=(2, 2), sparsity=4)
    with pytest.raises(ValueError, match="offset"):
        fastjl.project_linear(a, g, 8, kind="factgrass", factor_masks=(2, 2), offset=2**48 - 10)
    with pytest.raises(TypeError, match="pair"):
        fastjl.project_linear(a, g, 8, kind="factgrass", factor_masks=4)
