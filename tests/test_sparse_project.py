"""fastjl.project / project_transpose for the sparse kinds (sjlt, grass) on the torch backend,
against the dense float64 matrix of the spec (fastjl.sparse_matrix_block)."""

import math
import subprocess
import sys

import pytest
import torch

import fastjl
from fastjl._backends import sparse_cpu, sparse_torch

from .helpers import SPARSE_CASES, SPARSE_DTYPES, SPARSE_OFFSET, poisoned, relative_error

DTYPES, CASES, OFFSET = SPARSE_DTYPES, SPARSE_CASES, SPARSE_OFFSET  # kind, sparsity, mask_rate


def dense_p(kind, s, rate, dim, proj_dim, seed=5, offset=OFFSET):
    rows = range(offset, offset + dim)
    return fastjl.sparse_matrix_block(seed, kind, rows, proj_dim, sparsity=s, mask_rate=rate)


def opts(kind, s, rate, seed=5, offset=OFFSET):
    return dict(seed=seed, kind=kind, offset=offset, sparsity=s, mask_rate=rate)


@pytest.fixture(params=["packed", "csr", "segments"])
def path(request, monkeypatch):
    """Every product of the torch backend: the C++ loop (CPU, fastjl._C built), the CSR gather
    (CPU without it) and the segmented sums (other devices)."""
    if request.param == "packed" and not sparse_cpu.serves(torch.empty(1, 1), torch.empty(1, 1)):
        pytest.skip("fastjl._C is not built (FASTJL_SKIP_EXTENSION=1 or a failed build): no C++ CPU product")
    if request.param != "packed":
        monkeypatch.setattr(sparse_cpu, "ENABLED", False)
    if request.param == "segments":
        monkeypatch.setattr(sparse_torch, "CSR_DEVICE_TYPES", ())
    return request.param


@pytest.mark.parametrize("kind,s,rate", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_project_matches_dense_reference(kind, s, rate, dtype, path):
    gen = torch.Generator().manual_seed(hash((kind, s, str(dtype), path)) % 2**31)
    x = torch.randn(7, 301, generator=gen).to(dtype)
    out = poisoned((7, 37))
    y = fastjl.project(x, 37, out=out, **opts(kind, s, rate))
    assert y is out and torch.isfinite(y).all()
    ref = x.double() @ dense_p(kind, s, rate, 301, 37)
    assert relative_error(y, ref) < 1e-6


@pytest.mark.parametrize("kind,s,rate", CASES[:4:3] + CASES[4:5])
def test_float64_reference_and_layouts(kind, s, rate):
    x = torch.randn(130, 50, dtype=torch.float64)
    ref = x @ dense_p(kind, s, rate, 50, 9)
    y = fastjl.project(x, 9, backend="torch", **opts(kind, s, rate))
    assert y.dtype == torch.float64 and relative_error(y, ref) < 1e-13
    x32 = x.float()
    wide = torch.full((130, 100), 1e3)
    wide[:, ::2] = x32  # strided input: every other column
    transposed = x32.t().contiguous().t()
    for layout in (wide[:, ::2], transposed):
        out = poisoned((9, 130)).t()  # a transposed out
        y = fastjl.project(layout, 9, out=out, **opts(kind, s, rate))
        assert relative_error(y, x32.double() @ dense_p(kind, s, rate, 50, 9)) < 1e-6


def test_blocks_workers_and_runs_agree(monkeypatch):
    x = torch.randn(5, 3000)
    o = opts("sjlt", 2, None)
    whole = fastjl.project(x, 64, **o)
    assert torch.equal(whole, fastjl.project(x, 64, **o))  # run to run: bitwise
    previous = fastjl.set_block_budget(4096)  # blocks of a few rows: many partial sums
    try:
        threads = torch.get_num_threads()
        small = fastjl.project(x, 64, **o)
        torch.set_num_threads(1)  # one worker instead of several: same block order, same bits
        assert torch.equal(small, fastjl.project(x, 64, **o))
        torch.set_num_threads(threads)
    finally:
        fastjl.set_block_budget(previous)
    assert relative_error(small, whole.double()) < 1e-6


@pytest.mark.parametrize("kind,s,rate", [CASES[1], CASES[5]])
def test_offsets_chunk_like_dense_kinds(kind, s, rate):
    x = torch.randn(3, 500, dtype=torch.float64)
    whole = fastjl.project(x, 40, backend="torch", **opts(kind, s, rate, offset=1000))
    left = fastjl.project(x[:, :123], 40, backend="torch", **opts(kind, s, rate, offset=1000))
    right = fastjl.project(x[:, 123:], 40, backend="torch", **opts(kind, s, rate, offset=1123))
    assert relative_error(left + right, whole) < 1e-13
    # the batch does not matter either: each row of x is projected on its own
    one = fastjl.project(x[1:2], 40, backend="torch", **opts(kind, s, rate, offset=1000))
    assert relative_error(one, whole[1:2]) < 1e-13


@pytest.mark.parametrize("kind,s,rate", CASES)
@pytest.mark.parametrize("scale", [None, "jl"])
def test_transpose_and_autograd(kind, s, rate, scale):
    factor = 1 / math.sqrt(s) if scale == "jl" else 1.0
    p = dense_p(kind, s, rate, 211, 19) * factor
    dy = torch.randn(4, 19)
    dx = fastjl.project_transpose(dy, 211, scale=scale, **opts(kind, s, rate))
    assert dx.shape == (4, 211) and relative_error(dx, dy.double() @ p.T) < 1e-6
    for dtype in DTYPES:
        x = torch.randn(4, 211).to(dtype).requires_grad_()
        y = fastjl.project(x, 19, scale=scale, **opts(kind, s, rate))
        assert relative_error(y.detach(), x.detach().double() @ p) < 1e-6
        y.backward(dy)
        assert x.grad.dtype == dtype
        bound = 1e-6 if dtype == torch.float32 else 1e-2  # the gradient is rounded to x's dtype
        assert relative_error(x.grad.float(), dy.double() @ p.T) < bound


def test_project_transpose_dense_kinds_too():
    dy = torch.randn(3, 20, dtype=torch.float64)
    p = fastjl.matrix_block(1, "gaussian", range(7, 57), range(20)) / math.sqrt(20)
    dx = fastjl.project_transpose(dy, 50, seed=1, kind="gaussian", offset=7, scale="jl")
    assert relative_error(dx, dy @ p.T) < 1e-12


def test_scale_jl_divides_by_sqrt_s():
    x = torch.randn(2, 100)
    raw = fastjl.project(x, 16, kind="sjlt", sparsity=4)
    torch.testing.assert_close(fastjl.project(x, 16, kind="sjlt", sparsity=4, scale="jl"), raw / 2)


def test_jl_statistics():
    """Norms and inner products survive sjlt within bounds from K and s: for unit x, the squared
    norm of xP/sqrt(s) has mean 1 and variance at most 2/K (Kane-Nelson), so a mean over n
    independent x (fresh seeds) lies within 5 sqrt(2 / (K n)) of 1."""
    proj_dim, n, dim = 256, 64, 2000
    x = torch.nn.functional.normalize(torch.randn(n, 2, dim, dtype=torch.float64), dim=-1)
    norms, products = [], []
    for k in range(n):
        y = fastjl.project(x[k], proj_dim, seed=k, kind="sjlt", sparsity=4, scale="jl", backend="torch")
        norms.append(y[0].square().sum().item())
        products.append((y[0] @ y[1] - x[k, 0] @ x[k, 1]).item())
    bound = 5 * math.sqrt(2 / (proj_dim * n))
    assert abs(sum(norms) / n - 1) < bound
    assert abs(sum(products) / n) < bound  # unbiased inner products
    assert max(abs(v - 1) for v in norms) < 0.6  # every single norm within JL distortion


def test_grass_keeps_the_rate():
    x = torch.randn(1, 20000, dtype=torch.float64)
    y = fastjl.project(x, 512, kind="grass", mask_rate=0.25, backend="torch")
    ratio = y.square().sum().item() / x.square().sum().item()
    assert 0.15 < ratio < 0.35  # E = mask_rate (the mask is a selection, not rescaled)


def test_empty_batch_and_grad_off():
    out = poisoned((0, 8))
    assert fastjl.project(torch.randn(0, 30), 8, kind="sjlt", out=out) is out
    with torch.no_grad():
        assert not fastjl.project(torch.randn(2, 30, requires_grad=True), 8, kind="sjlt").requires_grad


BAD = [
    (dict(sparsity=3), ValueError, "sparsity must be one of"),
    (dict(sparsity=2.0), TypeError, "sparsity"),
    (dict(kind="grass"), ValueError, "needs mask_rate"),
    (dict(mask_rate=0.5), ValueError, "mask_rate applies to kind='grass' only"),
    (dict(kind="grass", mask_rate=0.0), ValueError, "mask_rate must lie in"),
    (dict(kind="grass", mask_rate=2), ValueError, "mask_rate must lie in"),
    (dict(kind="rademacher", sparsity=4), ValueError, "apply to kind='sjlt' or 'grass' only"),
    (dict(kind="gaussian", mask_rate=0.5), ValueError, "apply to kind='sjlt' or 'grass' only"),
    (dict(sparsity=8, proj_dim=4), ValueError, "proj_dim must be at least sparsity"),
    (dict(proj_dim=2**31 + 1), ValueError, "proj_dim"),
    (dict(backend="cuda"), RuntimeError, "cannot run project_sparse on cpu"),  # CUDA tensors only
    (dict(seed=-1), ValueError, "seed"),
    (dict(offset=2**48 - 3), ValueError, "offset"),
    (dict(x=torch.randn(2, 10, dtype=torch.float64)), TypeError, "dtype"),
]


@pytest.mark.parametrize("overrides,error,words", BAD)
def test_bad_input(overrides, error, words):
    args = dict(x=torch.randn(2, 10), proj_dim=16, kind="sjlt") | overrides
    with pytest.raises(error, match=words):
        fastjl.project(args.pop("x"), args.pop("proj_dim"), **args)


def test_bad_transpose_input():
    with pytest.raises(TypeError, match="y must be a 2-D floating"):
        fastjl.project_transpose(torch.ones(3, 4, dtype=torch.int64), 10, kind="sjlt")
    with pytest.raises(ValueError, match="dim"):
        fastjl.project_transpose(torch.ones(3, 4), 0, kind="sjlt")
    with pytest.raises(ValueError, match="proj_dim must be at least sparsity"):
        fastjl.project_transpose(torch.ones(3, 4), 10, kind="sjlt", sparsity=8)


def test_no_warnings_leak_from_sparse_csr():
    """torch warns once per process when the first CSR tensor is built: a fresh process shows whether users see it."""
    code = "import torch, fastjl; fastjl.project(torch.randn(2, 10), 4, kind='sjlt')"
    run = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "Warning" not in run.stderr, run.stderr


def test_readme_sparse_example_runs():
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"### Sparse projections: SJLT and GraSS\n.*?```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kind,s,rate", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_tensors_match_the_dense_reference_and_repeat_bitwise(kind, s, rate, dtype):
    """On a GPU the torch backend takes its dense-block path (no CSR there): the same matrix as on
    the CPU, no atomics, so two runs give the same bits; the transpose too."""
    gen = torch.Generator().manual_seed(hash((kind, s, str(dtype), "cuda")) % 2**31)
    x = torch.randn(33, 10_007, generator=gen).to(dtype)
    ref = x.double() @ dense_p(kind, s, rate, 10_007, 129)
    runs = []
    for _ in range(2):
        out = poisoned((33, 129), device="cuda")
        runs.append(fastjl.project(x.cuda(), 129, out=out, **opts(kind, s, rate)))
        assert runs[-1] is out
    assert torch.equal(runs[0], runs[1])
    assert relative_error(runs[0].cpu(), ref) < 1e-6
    dy = torch.randn(5, 129, generator=gen)
    dx = fastjl.project_transpose(dy.cuda(), 10_007, **opts(kind, s, rate))
    assert dx.is_cuda and relative_error(dx.cpu(), dy.double() @ dense_p(kind, s, rate, 10_007, 129).T) < 1e-6
