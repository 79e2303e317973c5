"""Triton kernel of the sparse kinds (sjlt, grass) vs the torch backend in float64: on CPU under
TRITON_INTERPRET=1 (set by conftest.py when there is no GPU), on the GPU when there is one.

The interpreter runs the kernel's scans one element at a time, so shapes here are small; the
plan's interpreter tiles (64 nonzeros per chunk, 32 columns per tile) still give several
chunks, column tiles and splits.  fastjl/_backends/triton_sparse.py describes the kernel."""

import pytest
import torch

import fastjl
from fastjl import _backends, sparse_spec
from fastjl._backends import sparse_cache, triton_backend, triton_sparse

from .helpers import SPARSE_CASES, SPARSE_DTYPES, SPARSE_OFFSET, poisoned, relative_error

pytest.importorskip("triton", reason="triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
DTYPES, CASES, OFFSET = SPARSE_DTYPES, SPARSE_CASES, SPARSE_OFFSET  # kind, sparsity, mask_rate
# float32 sums of at most a few hundred float32 products (16-bit inputs are exact in float32).
TOLERANCE = 1e-6


def opts(kind="sjlt", s=1, rate=None, seed=5, offset=OFFSET):
    return dict(seed=seed, kind=kind, offset=offset, sparsity=s, mask_rate=rate)


def triton_and_reference(x, proj_dim, **options):
    """(Triton's result in a NaN-poisoned buffer, the torch backend's in float64 of the same x)."""
    out = poisoned((x.shape[0], proj_dim), device=DEVICE)
    y = fastjl.project(x.to(DEVICE), proj_dim, out=out, backend="triton", **options)
    assert y is out and not torch.isnan(y).any(), "unwritten (NaN) outputs"
    ref = fastjl.project(x.double(), proj_dim, backend="torch", **options)
    return y.cpu(), ref


@pytest.mark.parametrize("kind,s,rate", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch_backend(kind, s, rate, dtype):
    gen = torch.Generator().manual_seed(hash((kind, s, str(dtype))) % 2**31)
    x = torch.randn(3, 77, generator=gen).to(dtype)
    y, ref = triton_and_reference(x, 19, **opts(kind, s, rate))
    assert relative_error(y, ref) < TOLERANCE


@pytest.mark.parametrize(
    "batch,dim,proj_dim,s",
    [
        (1, 1, 1, 1),  # one row, one column
        (1, 130, 70, 1),  # K over three column tiles, the last partly empty
        (33, 40, 5, 1),  # B = 33, K below a tile
        (3, 200, 8, 8),  # K = s: one column per segment
        (2, 65, 300, 2),  # K >> nonzeros: most columns empty
    ],
)
def test_odd_shapes(batch, dim, proj_dim, s):
    gen = torch.Generator().manual_seed(batch * dim + proj_dim)
    x = torch.randn(batch, dim, generator=gen)
    y, ref = triton_and_reference(x, proj_dim, **opts(s=s, offset=2**32 - 50))
    assert relative_error(y, ref) < TOLERANCE


def test_pieces_column_ranges_and_splits(monkeypatch):
    """Structures built a few chunks at a time, K cut into column ranges (each a pass over x,
    its own launches and splits) and B into grid-sized slices give the same projection."""
    monkeypatch.setattr(triton_sparse, "PIECE_NONZEROS", 128)  # 2 chunks per piece
    monkeypatch.setattr(triton_sparse, "COLUMN_RANGE", 48)  # K = 100: ranges of 48, 48, 4
    monkeypatch.setattr(triton_sparse, "MAX_GRID_ROWS", 2)  # B = 3: slices of 2 and 1 rows
    x = torch.randn(3, 333, generator=torch.Generator().manual_seed(1))
    y, ref = triton_and_reference(x, 100, **opts("grass", 2, 0.6))
    assert relative_error(y, ref) < TOLERANCE


def test_bitwise_repeatable_cached_or_not(monkeypatch):
    x = torch.randn(3, 150, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    first = fastjl.project(x, 40, backend="triton", **opts(s=2))
    again = fastjl.project(x, 40, backend="triton", **opts(s=2))  # structures from the cache
    monkeypatch.setenv(sparse_cache.CACHE_ENV_VAR, "0")
    rebuilt = fastjl.project(x, 40, backend="triton", **opts(s=2))
    assert torch.equal(first, again) and torch.equal(first, rebuilt)


def test_strided_input_and_output():
    x = torch.randn(90, 4, generator=torch.Generator().manual_seed(3)).t()  # (4, 90), column-major
    buffer = poisoned((40, 4), device=DEVICE)
    out = buffer.t()  # (4, 40) with strides (1, 4)
    fastjl.project(x.to(DEVICE), 40, out=out, backend="triton", **opts(s=4))
    ref = fastjl.project(x.double(), 40, backend="torch", **opts(s=4))
    assert relative_error(out.cpu(), ref) < TOLERANCE


def test_scale_and_autograd():
    """scale="jl" divides by sqrt(s); the backward pass is the torch backend's transpose."""
    x = torch.randn(2, 60, generator=torch.Generator().manual_seed(4)).to(DEVICE).requires_grad_()
    y = fastjl.project(x, 16, backend="triton", scale="jl", **opts(s=4))
    ref = fastjl.project(x.detach().double().cpu(), 16, backend="torch", scale="jl", **opts(s=4))
    assert relative_error(y.detach().cpu(), ref) < TOLERANCE
    (dy,) = torch.autograd.grad(y.sum(), x)
    expected = fastjl.project_transpose(torch.ones(2, 16), 60, scale="jl", **opts(s=4))
    assert torch.allclose(dy.cpu(), expected, atol=1e-6)


@pytest.mark.parametrize("kind,s,rate", [("sjlt", 2, None), ("grass", 1, 0.5)])
def test_chunk_structure_is_the_spec_sorted_by_column(kind, s, rate):
    """Decoding the kernel's structure gives back exactly the spec's nonzeros, sorted by column
    (rows ascending within one), with aligned rows of column pointers and zero padding."""
    row0, nrows, proj_dim, chunk = 2**33 - 7, 50, 9, 16
    threshold = sparse_spec.mask_threshold(rate) if rate else None
    entries, col_ptr = triton_sparse.chunk_structure(5, row0, nrows, proj_dim, s, threshold, chunk, 0, proj_dim, "cpu")
    dense = sparse_spec.sparse_matrix_block(5, kind, range(row0, row0 + nrows), proj_dim, sparsity=s, mask_rate=rate)
    assert entries.dtype == col_ptr.dtype == torch.int16 and entries.shape == (4, chunk * s)
    assert col_ptr.shape == (4, proj_dim + 1) and col_ptr.stride(0) % triton_sparse.POINTER_ALIGN == 0
    for c in range(4):
        assert (entries[c, col_ptr[c, -1] :] == 0).all() and col_ptr[c, 0] == 0
        rebuilt = torch.zeros(chunk, proj_dim, dtype=torch.float64)
        for k in range(proj_dim):
            codes = entries[c, col_ptr[c, k] : col_ptr[c, k + 1]].long()
            rows = codes >> 1
            assert torch.equal(rows, rows.sort().values) and len(set(rows.tolist())) == len(rows)
            rebuilt[rows, k] = (1 - 2 * (codes & 1)).double()
        assert torch.equal(rebuilt[: min(chunk, nrows - c * chunk)], dense[c * chunk : (c + 1) * chunk])


def test_auto_and_environment_pick_the_sparse_kernel(monkeypatch):
    """On CUDA tensors "auto" runs the fastest verified sparse kernel (CUDA, then Triton, measured
    on an H100); on CPU tensors torch.  FASTJL_BACKEND=triton and backend="triton" run Triton."""
    ran = []
    monkeypatch.setattr(triton_backend, "project_sparse", lambda *a, **k: ran.append("triton"))
    x = torch.randn(2, 30, device=DEVICE)
    picked = _backends.select("auto", x.device, "project_sparse", dtype=x.dtype).NAME
    status = fastjl.backends(x.device)
    expected = next(n for n in ("cuda", "triton", "torch") if status[n].available) if ON_GPU else "torch"
    assert picked == expected
    fastjl.project(x, 8, kind="sjlt")
    assert ran == ([] if picked != "triton" else ["triton"])
    monkeypatch.setenv("FASTJL_BACKEND", "triton")
    fastjl.project(x, 8, kind="sjlt")
    fastjl.project(x, 8, kind="sjlt", backend="triton")
    assert ran[-2:] == ["triton", "triton"]


def test_bad_inputs():
    x = torch.randn(2, 10, device=DEVICE)
    with pytest.raises(TypeError, match="dtype"):
        fastjl.project(x.double(), 8, kind="sjlt", backend="triton")
    with pytest.raises(ValueError, match="sparsity must be one of"):
        fastjl.project(x, 8, kind="sjlt", sparsity=3, backend="triton")
    with pytest.raises(ValueError, match="proj_dim must be at least sparsity"):
        fastjl.project(x, 4, kind="sjlt", sparsity=8, backend="triton")
    with pytest.raises(ValueError, match="needs mask_rate"):
        fastjl.project(x, 8, kind="grass", backend="triton")


@pytest.mark.skipif(ON_GPU, reason="CPU tensors reach the kernel only through the interpreter")
def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        fastjl.project(torch.randn(2, 10), 8, kind="sjlt", backend="triton")


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (the shapes are too large for the interpreter)")
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_large(dtype):
    x = torch.randn(33, 10**6 + 3, device=DEVICE).to(dtype)
    for kind, s, rate in [("sjlt", 1, None), ("grass", 4, 0.5)]:
        y = fastjl.project(x, 4096, backend="triton", **opts(kind, s, rate))
        ref = fastjl.project(x.double(), 4096, backend="torch", **opts(kind, s, rate))
        assert relative_error(y, ref) < 1e-6
        assert torch.equal(y, fastjl.project(x, 4096, backend="triton", **opts(kind, s, rate)))


def test_benchmark_contender():
    """``python -m fastjl.bench --kind sjlt`` times backend="triton" on a GPU; elsewhere it steps
    aside with the reason (the interpreter is no timing)."""
    from fastjl.bench.contenders import CONTENDERS, Shape, Unavailable

    shape = Shape(2, 300, 40, "sjlt", torch.float32, sparsity=2)
    if not ON_GPU:
        with pytest.raises(Unavailable, match="CUDA tensors only"):
            CONTENDERS["fastjl-triton"](shape, "cpu")
        return
    x = torch.randn(2, 300, device=DEVICE)
    y = CONTENDERS["fastjl-triton"](shape, DEVICE)(x)
    reference = fastjl.project(x.double().cpu(), 40, kind="sjlt", sparsity=2, backend="torch")
    assert relative_error(y.cpu(), reference) < TOLERANCE


def test_non_finite_input_is_never_hidden():
    """A NaN in x reaches at least the columns its row maps to (the kernel's prefix sums may
    spread it to later columns of the same chunk; check_finite=True refuses such input)."""
    x = torch.randn(2, 100, generator=torch.Generator().manual_seed(6))
    x[1, 37] = float("nan")
    y = fastjl.project(x.to(DEVICE), 20, backend="triton", **opts(s=2)).cpu()
    columns, _ = sparse_spec.sjlt_nonzeros(5, [OFFSET + 37], 20, 2)
    assert torch.isnan(y[1, columns[0]]).all() and not torch.isnan(y[0]).any()
    with pytest.raises(ValueError, match="finite"):
        fastjl.project(x.to(DEVICE), 20, backend="triton", check_finite=True, **opts(s=2))
