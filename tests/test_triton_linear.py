"""Triton backend's fused ``project_linear`` vs a float64 reference that materializes the
per-example gradients: on CPU under TRITON_INTERPRET=1 (set by conftest.py when there is no
GPU), on the GPU when there is one.  Calls the backend function directly."""

import math

import pytest
import torch

import fastjl
from fastjl.spec import matrix_block

from .helpers import linear_reference, poisoned

pytest.importorskip("triton", reason="triton is not installed")

from fastjl._backends import triton_backend  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SEED = 2**64 - 3

# Error bound, element by element, derived from float32 arithmetic (u = 2^-24):
# * x_r = sum_t g_t a_t is formed in float32: products exact (16-bit inputs) or rounded once
#   (float32), then T - 1 additions: |dx_r| <= gamma(T) A_r with A_r = sum_t |g_t| |a_t| (bias
#   rows: a_t = 1), gamma(n) = n u / (1 - n u).
# * y_k = sum_r x_r P_rk is summed in float32 in some tree (tile dots, accumulator, split
#   reduction); adding the zeros of padded rows is exact, so each of the D terms passes
#   through at most 1 (product) + D - 1 (additions) roundings: gamma(D) sum_r |x_r| |P_rk|.
# * gaussian entries are computed in float32 from exact uniforms: ln u0 within 4 ulps, so the
#   radius r = sqrt(-2 ln u0) <= sqrt(48 ln 2) < 5.8 within 2.5 u relative; the angle 2 pi u1
#   is rounded twice (2 pi, product): <= 2 u * 2 pi < 12.6 u absolute, plus 4 ulps of cos/sin:
#   |dP| <= 16.6 u r + 3.5 u |P| < E_P = 100 u + 4 u |P|.  On a GPU, tl.log/tl.cos/tl.sin may
#   be hardware approximations: E_P = 2^-16 (1 + |P|) there (not yet measured).
# * tl.dot rounds its float32 inputs to tf32 (2^-11 each) on a GPU by default; the
#   interpreter multiplies in exact float32 (numpy matmul).
# Sum: |y_k - ref_k| <= rel (A @ (|P| + E_P))_k + (A @ E_P)_k, rel = (1 + gamma(T))(1 + gamma(D))
# (1 + dot) - 1.  This is a worst case, above typical errors (~sqrt(D) u relative), yet tight
# enough on these shapes that a wrong row or column of P, a dropped step t or a wrong sign
# fail by orders of magnitude, and (checked for rademacher, where P is exact) so does a G
# tile rounded to 16 bits (2^-11 relative or worse per element).
U = 2.0**-24
_DOT_ROUNDING = {"tf32": 2 * 2.0**-11, "tf32x3": 2 * 2.0**-21, "ieee": 0.0}
DOT_ERR = _DOT_ROUNDING.get(triton_backend.FP32_PRECISION, 0.0) if ON_GPU else 0.0


def _gamma(n):
    return n * U / (1 - n * U)


def _entry_error(kind, p_abs):
    """E_P above: bound on |P_float32 - P| for entries of magnitude p_abs."""
    if kind == "rademacher":
        return torch.zeros_like(p_abs)
    return 2.0**-16 * (1 + p_abs) if ON_GPU else 100 * U + 4 * U * p_abs




def _bound(a, g, proj_dim, *, seed, kind, offset, bias):
    """The worst-case elementwise error bound derived above, (B, K) float64."""
    steps = a.shape[1]
    mag = torch.einsum("bto,bti->boi", g.double().abs(), a.double().abs()).reshape(a.shape[0], -1)
    if bias:
        mag = torch.cat([mag, g.double().abs().sum(1)], dim=1)
    dim = mag.shape[1]
    p_abs = matrix_block(seed, kind, range(offset, offset + dim), range(proj_dim)).abs()
    e_p = _entry_error(kind, p_abs)
    rel = (1 + _gamma(steps)) * (1 + _gamma(dim)) * (1 + DOT_ERR) - 1
    return rel * (mag @ (p_abs + e_p)) + mag @ e_p


def _run(a, g, proj_dim, *, seed=SEED, kind="rademacher", offset=0, bias=True, out=None):
    if out is None:
        out = poisoned((a.shape[0], proj_dim), device=DEVICE)
    triton_backend.project_linear(a, g, out, seed=seed, kind=kind, offset=offset, bias=bias)
    return out


def _check(a, g, proj_dim, *, seed=SEED, kind="rademacher", offset=0, bias=True, out=None):
    """Runs the kernel and asserts every element is within the derived bound of the reference."""
    y = _run(a, g, proj_dim, seed=seed, kind=kind, offset=offset, bias=bias, out=out).cpu()
    assert not torch.isnan(y).any(), "some elements of out were not written"
    a, g = a.cpu(), g.cpu()
    ref = linear_reference(a, g, proj_dim, seed=seed, kind=kind, offset=offset, bias=bias)
    bound = _bound(a, g, proj_dim, seed=seed, kind=kind, offset=offset, bias=bias)
    if kind == "rademacher" and not ON_GPU:  # tight enough to catch a 16-bit G tile (2^-11)
        assert bound.norm() < 2.0**-11 * ref.norm() / 4
    err = (y.double() - ref).abs()
    worst = (err / bound.clamp_min(1e-300)).max().item()
    assert (err <= bound).all(), f"error exceeds the derived bound by {worst:.3g}x"
    return y


def _inputs(batch, steps, d_in, d_out, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, steps, d_in, generator=gen).to(dtype).to(DEVICE)
    g = torch.randn(batch, steps, d_out, generator=gen).to(dtype).to(DEVICE)
    return a, g


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_matcheslinear_reference(kind, dtype, steps, bias):
    a, g = _inputs(3, steps, 7, 5, dtype, seed=steps)
    _check(a, g, 130, kind=kind, offset=2**40 + 3, bias=bias)


@pytest.mark.parametrize(
    "batch,steps,d_in,d_out,proj_dim",
    [(1, 1, 1, 1, 1), (1, 5, 3, 1, 1), (1, 2, 1, 4, 7), (17, 3, 3, 2, 129)],  # B > 16, K > 128: two tiles each
)
@pytest.mark.parametrize("offset", ["zero", "end"])
@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_odd_shapes_and_offsets(kind, offset, batch, steps, d_in, d_out, proj_dim):
    a, g = _inputs(batch, steps, d_in, d_out, torch.float16, seed=batch + d_in)
    dim = d_out * d_in + d_out
    _check(a, g, proj_dim, kind=kind, offset=0 if offset == "zero" else 2**48 - dim)


@pytest.mark.parametrize("kind", fastjl.KINDS)
@pytest.mark.parametrize("offset", [2**32 - 3, 2**48 - 8])
def test_one_hot_examples_reproduce_the_matrix(kind, offset):
    """Example b = o * d_in + i has steps (a, g) = (e_i, e_o), (0, -e_o): G = e_o e_i^T has a
    single 1 at row o * d_in + i and the bias sum is 0.  Example d_out * d_in + o has
    (0, e_o), (0, 0): only bias row o is 1.  So y = P[offset : offset + D]: every row checked,
    including rows crossing i = 2^32 and the last rows of P."""
    d_in, d_out, proj_dim = 3, 2, 130
    dim = d_out * d_in + d_out
    a = torch.zeros(dim, 2, d_in)
    g = torch.zeros(dim, 2, d_out)
    for o in range(d_out):
        for i in range(d_in):
            a[o * d_in + i, 0, i] = 1
        g[o * d_in : (o + 1) * d_in, 0, o] = 1
        g[o * d_in : (o + 1) * d_in, 1, o] = -1
        g[d_out * d_in + o, 0, o] = 1
    y = _run(a.to(DEVICE), g.to(DEVICE), proj_dim, kind=kind, offset=offset, seed=99).cpu()
    p = matrix_block(99, kind, range(offset, offset + dim), range(proj_dim))  # float64
    if kind == "rademacher":
        assert torch.equal(y.double(), p)
    else:  # one term per output: only the entry's own error E_P (plus tf32 rounding on a GPU)
        tol = _entry_error(kind, p.abs()) + DOT_ERR * p.abs()
        assert ((y.double() - p).abs() <= tol).all()


def test_split_path_is_exercised_and_deterministic():
    """D = 9 * 8 + 8 = 80 rows: split in two on this machine (the interpreter splits once D > 4
    tiles), summed by the fixed-order reduction: two calls agree bit for bit."""
    batch, steps, d_in, d_out, proj_dim = 5, 5, 9, 8, 130
    _, splits, _ = triton_backend._plan(batch, d_out * d_in + d_out, proj_dim, torch.device(DEVICE))
    if not ON_GPU:
        assert splits == 2
    a, g = _inputs(batch, steps, d_in, d_out, torch.bfloat16, seed=11)
    for kind in fastjl.KINDS:
        first = _check(a, g, proj_dim, kind=kind, offset=2**40 + 3)
        second = _run(a, g, proj_dim, kind=kind, offset=2**40 + 3).cpu()
        assert torch.equal(first, second)


def test_unsplit_shapes_do_not_split_here():
    """The shapes of test_matches_reference take the one-split path (out written directly)."""
    _, splits, _ = triton_backend._plan(3, 40, 130, torch.device(DEVICE))
    assert splits == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_inputs_and_output(dtype):
    batch, steps, d_in, d_out, proj_dim = 3, 4, 7, 5, 131
    gen = torch.Generator().manual_seed(5)
    # a: (B, T, d_in) as a permuted, step-2 view: no unit stride anywhere.
    a = torch.randn(d_in, batch, 2 * steps, generator=gen).to(dtype).to(DEVICE).permute(1, 2, 0)[:, ::2, :]
    # g: (B, T, d_out) as a transposed slice of a wider buffer.
    g = torch.randn(batch, d_out + 3, steps, generator=gen).to(dtype).to(DEVICE).transpose(1, 2)[:, :, 2 : 2 + d_out]
    assert not a.is_contiguous() and not g.is_contiguous() and 1 not in a.stride()
    out_storage = poisoned((proj_dim, batch), device=DEVICE)
    out = out_storage.t()  # (B, K) with strides (1, B)
    for kind in fastjl.KINDS:
        out_storage.fill_(math.nan)
        _check(a, g, proj_dim, kind=kind, offset=2**40 + 3, bias=True, out=out)
        assert not torch.isnan(out_storage).any()
