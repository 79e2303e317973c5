"""The kronecker kind of fastjl.project_linear: spec-v1 factors and the structured projection."""

import math

import pytest
import torch

import fastjl
from fastjl.kronecker import split_proj_dim

from . import philox_oracle
from .helpers import materialized_linear_gradient, poisoned, relative_error


def _oracle_factor_entry(seed, offset, factor, r, j):
    """The factor entry from the spec text, with the scalar pure-Python Philox."""
    f = {"in": 0, "out": 1}[factor]
    words = philox_oracle.philox((r, offset & 0xFFFFFFFF, (offset >> 32) | (f << 16), 3 + 4 * (j // 4)),
                                 (seed & 0xFFFFFFFF, seed >> 32))  # fmt: skip
    u = [(2 * (w >> 9) + 1) / 2**24 for w in words]
    lane = j % 4
    radius = math.sqrt(-2.0 * math.log(u[2 * (lane // 2)]))
    angle = 2.0 * math.pi * u[2 * (lane // 2) + 1]
    return radius * (math.cos(angle) if lane % 2 == 0 else math.sin(angle))


@pytest.mark.parametrize("seed,offset", [(0, 0), (12345, 2**40 + 3), (2**64 - 1, 2**48 - 1)])
@pytest.mark.parametrize("factor", ["in", "out"])
def test_factor_entries_follow_the_spec(seed, offset, factor):
    block = fastjl.kronecker_factor(seed, offset, factor, 5, 11)
    for r, j in [(0, 0), (1, 3), (4, 10), (2, 5), (3, 7)]:
        assert block[r, j].item() == pytest.approx(_oracle_factor_entry(seed, offset, factor, r, j), rel=1e-12)
    float32 = fastjl.kronecker_factor(seed, offset, factor, 5, 11, dtype=torch.float32)
    assert relative_error(float32, block) < 1e-6


def test_factors_are_a_prefix_and_differ_per_layer_and_side():
    big = fastjl.kronecker_factor(3, 100, "in", 40, 30)
    torch.testing.assert_close(fastjl.kronecker_factor(3, 100, "in", 7, 9), big[:7, :9], rtol=0, atol=0)
    others = [fastjl.kronecker_factor(3, 101, "in", 40, 30), fastjl.kronecker_factor(3, 100, "out", 40, 30),
              fastjl.kronecker_factor(4, 100, "in", 40, 30)]  # fmt: skip
    for other in others:
        assert (other - big).abs().max() > 0.5  # independent draws, not shifted copies
    # Different counter domain from the dense gaussian kind (which would use c3 = 1).
    dense = fastjl.matrix_block(3, "gaussian", range(100, 140), range(30))
    assert (dense - big).abs().max() > 0.5


@pytest.mark.parametrize("tokens", [1, 5])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_equals_explicit_kronecker_product(tokens, bias, dtype):
    batch, d_in, d_out, k_out, k_in = 3, 7, 5, 3, 4
    gen = torch.Generator().manual_seed(tokens)
    a = torch.randn(batch, tokens, d_in, generator=gen).to(dtype)
    g = torch.randn(batch, tokens, d_out, generator=gen).to(dtype)
    out = poisoned((batch, k_out * k_in))
    y = fastjl.project_linear(a, g, (k_out, k_in), seed=8, offset=2**40 + 3, kind="kronecker", bias=bias, out=out)
    assert y is out and not torch.isnan(y).any()
    f_out = fastjl.kronecker_factor(8, 2**40 + 3, "out", d_out, k_out)
    f_in = fastjl.kronecker_factor(8, 2**40 + 3, "in", d_in + bias, k_in)
    # (P_out ⊗ P_in)ᵀ vec(G), with the bias as input column d_in when present.
    a_aug = torch.cat([a.double(), torch.ones(batch, tokens, 1, dtype=torch.float64)], 2) if bias else a
    ref = materialized_linear_gradient(a_aug, g) @ torch.kron(f_out, f_in)
    assert relative_error(y, ref) < 1e-5


def test_kronecker_int_proj_dim_and_float64():
    a, g = torch.randn(2, 30, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    y = fastjl.project_linear(a, g, 24, kind="kronecker", backend="torch")
    assert y.dtype == torch.float64 and y.shape == (2, 24)
    f_out, f_in = fastjl.kronecker_factors(0, 0, 6, 30, 4, 6, False, torch.float64)  # d_in wider: k_in = 6
    torch.testing.assert_close(y, materialized_linear_gradient(a, g) @ torch.kron(f_out, f_in))


@pytest.mark.parametrize(
    "proj_dim,d_out,d_in,expected",
    [
        (2048, 10, 100, (32, 64)),
        (2048, 100, 10, (64, 32)),
        (16, 5, 5, (4, 4)),
        (13, 3, 8, (1, 13)),
        ((3, 5), 1, 1, (3, 5)),
    ],
)
def test_split_proj_dim(proj_dim, d_out, d_in, expected):
    assert split_proj_dim(proj_dim, d_out, d_in) == expected


def test_kronecker_preserves_squared_norms_on_average():
    # T = 1: y_jl = (f_jᵀ g)(h_lᵀ a) with f_j, h_l iid N(0, I), so ||y||^2 / (K |g|^2 |a|^2) is
    # X·Y with X ~ chi2(k_out)/k_out and Y ~ chi2(k_in)/k_in independent: mean 1, variance
    # (1 + 2/k_out)(1 + 2/k_in) - 1 = 1.25 for k_out = k_in = 4.  Every offset is an
    # independent layer, so the mean of 400 ratios has standard deviation sqrt(1.25/400).
    a, g = torch.randn(1, 20, dtype=torch.float64), torch.randn(1, 10, dtype=torch.float64)
    ratios = [
        fastjl.project_linear(a, g, (4, 4), kind="kronecker", offset=o, backend="torch").pow(2).sum().item()
        / (16 * a.pow(2).sum().item() * g.pow(2).sum().item())
        for o in range(0, 400 * 200, 200)
    ]
    mean = sum(ratios) / len(ratios)
    assert abs(mean - 1.0) < 5 * math.sqrt(1.25 / 400)
