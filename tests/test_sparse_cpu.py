"""The sparse kinds' C++ CPU product (csrc/sparse_cpu.cpp via fastjl._backends.sparse_cpu) against
the spec's dense float64 matrix and against the CSR product it replaces; its SSE2 and scalar
loops, tile tails, strided inputs, GraSS blocks with no kept row, and argument checks."""

import pytest
import torch

import fastjl
from fastjl._backends import sparse_cpu

from .helpers import poisoned, relative_error

pytestmark = pytest.mark.skipif(
    not sparse_cpu.serves(torch.empty(1, 1), torch.empty(1, 1)),
    reason="fastjl._C is not built (FASTJL_SKIP_EXTENSION=1 or a failed build): no C++ CPU product",
)
OFFSET = 2**37 + 1


def reference(x, kind, s, rate, proj_dim, seed=11, offset=OFFSET):
    rows = range(offset, offset + x.shape[1])
    return x.double() @ fastjl.sparse_matrix_block(seed, kind, rows, proj_dim, sparsity=s, mask_rate=rate)


def run(x, proj_dim, kind, s, rate, out=None):
    o = dict(seed=11, kind=kind, offset=OFFSET, sparsity=s, mask_rate=rate, out=out)
    return fastjl.project(x, proj_dim, backend="torch", **o)  # torch: float64 allowed


@pytest.mark.parametrize("batch", [1, 3, 8, 9, 17])
@pytest.mark.parametrize("dim", [1, 5, 258])  # 258: four-row groups plus a tail of 2
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_tiles_tails_and_dtypes(batch, dim, dtype):
    x = torch.randn(batch, dim).to(dtype)
    for kind, s, rate in (("sjlt", 1, None), ("sjlt", 8, None), ("grass", 2, 0.4)):
        proj_dim = 8 if s == 8 else 13
        y = run(
            x,
            proj_dim,
            kind,
            s,
            rate,
            out=poisoned((batch, proj_dim), dtype=torch.float64 if dtype == torch.float64 else torch.float32),
        )
        tol = 1e-13 if dtype == torch.float64 else 1e-6
        assert torch.isfinite(y).all() and relative_error(y, reference(x, kind, s, rate, proj_dim)) < tol


@pytest.mark.parametrize("kind,s,rate", [("sjlt", 1, None), ("sjlt", 4, None), ("grass", 1, 0.5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_same_sums_as_the_csr_product(kind, s, rate, dtype, monkeypatch):
    """Both CPU paths add each output's terms in ascending row order from zero, block by block."""
    x = torch.randn(11, 4099).to(dtype)
    fast = run(x, 64, kind, s, rate)
    monkeypatch.setattr(sparse_cpu, "ENABLED", False)
    csr = run(x, 64, kind, s, rate)
    assert torch.equal(fast, csr)


def test_strided_and_transposed_inputs():
    x = torch.randn(6, 301)
    wide = torch.full((6, 602), float("nan"))
    wide[:, ::2] = x
    ref = reference(x, "sjlt", 2, None, 40)
    for layout in (wide[:, ::2], x.t().contiguous().t(), x[:, :].clone()):
        assert relative_error(run(layout, 40, "sjlt", 2, None), ref) < 1e-6


def test_grass_block_with_no_kept_row(monkeypatch):
    """Blocks of a few rows at a tiny keep rate: most blocks keep no row and contribute zero."""
    previous = fastjl.set_block_budget(1024)  # 128 rows a block at B = 2
    try:
        x = torch.randn(2, 900)
        y = run(x, 16, "grass", 1, 0.01)
        assert relative_error(y, reference(x, "grass", 1, 0.01, 16)) < 1e-6
    finally:
        fastjl.set_block_budget(previous)


def test_repeats_bitwise_with_any_worker_count():
    x = torch.randn(9, 20011)
    first = run(x, 128, "sjlt", 4, None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.equal(first, run(x, 128, "sjlt", 4, None))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "change,words",
    [
        (dict(sparsity=3), "sparsity must be 1, 2, 4 or 8"),
        (dict(x_dtype=7), "x_dtype"),
        (dict(out_dtype=3), "out_dtype"),
        (dict(proj_dim=0), "proj_dim"),
        (dict(stride_xb=2), "stride_xb"),
    ],
)
def test_compiled_function_rejects_bad_arguments(change, words):
    from fastjl._extension import _C

    x, packed, out = torch.randn(2, 4), torch.zeros(4, dtype=torch.int32), torch.empty(2, 3)
    args = dict(
        x_ptr=x.data_ptr(),
        x_dtype=0,
        batch=2,
        rows=4,
        stride_xb=4,
        packed_ptr=packed.data_ptr(),
        kept_ptr=0,
        n_kept=0,
        sparsity=1,
        out_ptr=out.data_ptr(),
        out_dtype=0,
        proj_dim=3,
        stride_ob=3,
    )
    args.update(change)
    with pytest.raises(ValueError, match=words):
        _C.host_sparse_block(**args)
