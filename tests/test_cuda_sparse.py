"""The sparse kinds' CUDA kernel (csrc/sparse_kernel.cu) without a GPU: its host emulation
(``_C.host_emulate_project_sparse``: the kernel's plan and per-thread code from
csrc/sparse_chunk.cuh, run thread by thread on the CPU) against the torch backend in float64,
and bitwise against an independent float32 sum in the kernel's order; the binding's argument
checks; GPU tests (marked ``gpu``) that run the real kernel."""

import pytest
import torch

import fastjl
from fastjl._backends import cuda_sparse, sparse_cache

from .helpers import (
    SPARSE_CASES,
    SPARSE_DTYPES,
    extension_or_skip_module,
    needs_cuda_build,
    needs_cuda_kernels,
    poisoned,
    relative_error,
)

_C = extension_or_skip_module()
if not hasattr(_C, "host_emulate_project_sparse"):
    pytest.skip("fastjl._C predates the sparse CUDA kernel (rebuild: pip install -e .)", allow_module_level=True)

H100_SMS = 132
# float32 sums, each column's terms one after the other (K = 1: 5000 terms in one column, error
# ~1e-6 relative); a wrong or missing entry errs by ~1/sqrt(terms per column), far above this.
TOL = 1e-5


def opts(kind, s, rate, seed=5, offset=2**40 + 3):
    return dict(seed=seed, kind=kind, offset=offset, sparsity=s, mask_rate=rate)


def reference(x, proj_dim, **o):
    """The torch backend in float64 (x's values are exact in float64)."""
    return fastjl.project(x.double(), proj_dim, backend="torch", **o)


def emulate(x, out, *, num_sms=H100_SMS, rows_per_cta=None, chunk_nonzeros=4096, **options):
    """The kernel's result for ``x`` through the same host code as ``backend="cuda"``;
    ``options``: those of :func:`opts` (defaults: sjlt, s = 1, offset past 2^40); batch rows
    per CTA: a 16-byte row of the transposed windows unless given."""
    o = opts("sjlt", 1, None) | options
    threshold = fastjl.sparse.check_sparse_options(o["kind"], o["sparsity"], o["mask_rate"])[1]
    return cuda_sparse.emulate_project_sparse(
        x, out, seed=o["seed"], offset=o["offset"], sparsity=o["sparsity"], threshold=threshold,
        num_sms=num_sms, rows_per_cta=rows_per_cta, chunk_nonzeros=chunk_nonzeros,
    )  # fmt: skip


@pytest.mark.parametrize("kind,s,rate", SPARSE_CASES)
@pytest.mark.parametrize("dtype", SPARSE_DTYPES)
def test_emulation_matches_torch_backend(kind, s, rate, dtype):
    gen = torch.Generator().manual_seed(hash((kind, s, str(dtype), "cuda-emu")) % 2**31)
    x = torch.randn(33, 10_008, generator=gen).to(dtype)  # D: no multiple of a chunk; rows 16-byte aligned
    out = poisoned((33, 37))
    vector = emulate(x, out, **opts(kind, s, rate))
    assert vector == [True]
    assert torch.isfinite(out).all()
    assert relative_error(out, reference(x, 37, **opts(kind, s, rate))) < TOL


@pytest.mark.parametrize("batch", [1, 3, 33])
@pytest.mark.parametrize("proj_dim", [1, 5, 4096, 4133])
@pytest.mark.parametrize(
    "dtype,rows_per_cta",
    [(torch.float32, 2), (torch.float32, 4), (torch.bfloat16, 4), (torch.bfloat16, 8), (torch.float16, 8)],
)
def test_odd_sizes(batch, proj_dim, dtype, rows_per_cta):
    """Partial batch tiles, one column, a full tile, a second (partial) column tile, every batch
    row count of every dtype (8- and 16-byte rows of the transposed windows); D = 5001: 2
    chunks, one split, so the result is the sequential float32 sum (bitwise)."""
    gen = torch.Generator().manual_seed(batch * 10_000 + proj_dim + rows_per_cta)
    x = torch.randn(batch, 5_001, generator=gen).to(dtype)
    o = opts("sjlt", 1, None, offset=2**32 + 5)
    out = poisoned((batch, proj_dim))
    emulate(x, out, rows_per_cta=rows_per_cta, **o)
    assert _C.project_sparse_plan(batch, 2, proj_dim, H100_SMS, rows_per_cta)["splits"] == 1
    assert torch.equal(out, sequential_float32(x, proj_dim, **o))
    # Against float64, on the scale of x (K = 1 sums 5001 terms to a small value: cancellation).
    assert ((out.double() - reference(x, proj_dim, **o)).norm() / x.double().norm()).item() < TOL


def sequential_float32(x, proj_dim, **o):
    """Each column's nonzeros summed in float32 one row at a time, rows ascending: the kernel's
    order when one split and one piece cover D.  Independent of the kernel's code: the nonzeros
    come from the spec's per-entry functions."""
    rows = range(o["offset"], o["offset"] + x.shape[1])
    columns, signs = fastjl.sparse_spec.sjlt_nonzeros(o["seed"], rows, proj_dim, o["sparsity"])
    if o["kind"] == "grass":
        signs = signs * fastjl.sparse_spec.grass_keep(o["seed"], rows, o["mask_rate"])[:, None]
    row = torch.arange(x.shape[1])[:, None].expand_as(columns)
    kept = signs != 0
    row, col, sign = row[kept], columns[kept], signs[kept].float()  # row-major: rows ascending
    order = torch.argsort(col, stable=True)
    row, col, sign = row[order], col[order], sign[order]
    first = torch.searchsorted(col, col)  # each entry's place in its column's run
    rank = torch.arange(col.numel()) - first
    by_rank = torch.argsort(rank, stable=True)
    terms = (x.float()[:, row[by_rank]] * sign[by_rank]).T.contiguous()  # (nnz, B), rank-major
    col = col[by_rank].tolist()
    acc = torch.zeros(proj_dim, x.shape[0], dtype=torch.float32)
    start = 0
    for count in torch.bincount(rank).tolist():  # round r adds the r-th term of every column
        acc[col[start : start + count]] += terms[start : start + count]
        start += count
    return acc.T


@pytest.mark.parametrize(
    "kind,s,rate,nonzeros",
    [
        ("sjlt", 1, None, 4096),
        ("sjlt", 8, None, 4096),
        ("grass", 2, 0.5, 4096),
        ("sjlt", 8, None, 16384),  # 2048-row chunks
        ("grass", 2, 0.5, 8192),  # 4096-row chunks
        ("sjlt", 4, None, 16384),
    ],
)
def test_bitwise_the_sequential_float32_sum(kind, s, rate, nonzeros):
    """With one split the kernel adds each column's terms in row order whatever the chunk
    size: the same bits as the sequential float32 sum."""
    x = torch.randn(6, 9_001, generator=torch.Generator().manual_seed(s))
    out = poisoned((6, 21))
    emulate(x, out, num_sms=1, chunk_nonzeros=nonzeros, **opts(kind, s, rate))  # one SM: one split
    assert _C.project_sparse_plan(6, -(-9_001 // (nonzeros // s)), 21, 1, 4)["splits"] == 1
    assert torch.equal(out, sequential_float32(x, 21, **opts(kind, s, rate)))


@pytest.mark.parametrize("s,nonzeros", [(2, 8192), (4, 16384), (8, 8192), (8, 16384)])
@pytest.mark.parametrize("dtype", SPARSE_DTYPES)
def test_larger_chunks_match_torch_with_splits_and_a_short_last_chunk(s, nonzeros, dtype):
    """Chunks of 8192 / 16384 nonzeros (the H100's shape for s >= 2): D = 20_008 is no multiple
    of a chunk, K = 4133 spans two column tiles, and H100's plan splits the chunks."""
    gen = torch.Generator().manual_seed(s * nonzeros)
    x = torch.randn(9, 20_008, generator=gen).to(dtype)  # rows 16-byte aligned: vector path
    chunks = -(-20_008 // (nonzeros // s))
    assert _C.project_sparse_plan(9, chunks, 4133, H100_SMS, 4)["splits"] > 1
    out = poisoned((9, 4133))
    assert emulate(x, out, chunk_nonzeros=nonzeros, sparsity=s) == [True]
    assert relative_error(out, reference(x, 4133, **opts("sjlt", s, None))) < TOL


def test_splits():
    """s = 8: 20 chunks of 512 rows, 10 splits of 2 chunks (a CTA per batch tile and split)."""
    x = torch.randn(5, 10_007, generator=torch.Generator().manual_seed(3))
    assert _C.project_sparse_plan(5, 20, 100, H100_SMS, 4)["splits"] == 10
    out = poisoned((5, 100))
    emulate(x, out, sparsity=8)
    assert relative_error(out, reference(x, 100, **opts("sjlt", 8, None))) < TOL


def test_pieces_and_column_ranges(monkeypatch):
    """Pieces of 8 chunks (8, 8, 4: each split again), added in order, and column ranges."""
    monkeypatch.setattr(cuda_sparse, "PIECE_NONZEROS", 8 * 4096)
    monkeypatch.setattr(cuda_sparse, "COLUMN_RANGE", 48)  # K = 100: ranges of 48, 48, 4
    sparse_cache.clear()
    x = torch.randn(5, 10_008, generator=torch.Generator().manual_seed(4))
    out = poisoned((5, 100))
    vector = emulate(x, out, kind="grass", sparsity=8, mask_rate=0.6)
    assert vector == [True] * 9  # 3 column ranges x 3 pieces
    assert relative_error(out, reference(x, 100, **opts("grass", 8, 0.6))) < TOL


@pytest.mark.parametrize("dtype", SPARSE_DTYPES)
def test_strided_and_misaligned_inputs_take_the_element_path(dtype):
    gen = torch.Generator().manual_seed(11)
    base = torch.randn(3, 2 * 3_001 + 1, generator=gen).to(dtype)
    big_out = poisoned((3, 2 * 19))
    for x in (base[:, 1::2], base[:, 1:3_002]):  # stride 2; unit stride but misaligned start
        out = big_out[:, ::2]
        assert emulate(x, out, offset=7) == [False]
        assert relative_error(out, reference(x, 19, **opts("sjlt", 1, None, offset=7))) < TOL
        assert big_out[:, 1::2].isnan().all()  # the other columns untouched


def test_nonfinite_inputs_propagate():
    x = torch.randn(2, 300)
    x[1, 17] = float("inf")
    out = poisoned((2, 8))
    emulate(x, out)
    assert torch.isfinite(out[0]).all() and torch.isinf(out[1]).sum() == 1


# --------------------------------------------------------------------------- the binding


def _valid_args():
    x = torch.randn(2, 100)
    entries = torch.zeros(1, 4096, dtype=torch.int16)
    col_ptr = torch.zeros(1, 16, dtype=torch.int16)
    out = torch.empty(2, 9)
    keep = (x, entries, col_ptr, out)
    args = dict(x_ptr=x.data_ptr(), x_dtype=0, B=2, rows=100, stride_xb=100, stride_xd=1,
                entries_ptr=entries.data_ptr(), col_ptr_ptr=col_ptr.data_ptr(), ptr_stride=16,
                chunks=1, sparsity=1, chunk_nonzeros=4096, out_ptr=out.data_ptr(), width=9,
                stride_ob=9, stride_ok=1, batch_rows=4)  # fmt: skip
    return keep, args


BAD_ARGS = [
    (dict(x_dtype=3), "x_dtype must be 0"),
    (dict(sparsity=3), "sparsity must be 1, 2, 4 or 8"),
    (dict(batch_rows=3), "batch_rows must be 2 or 4 for float32 x"),
    (dict(batch_rows=8), "batch_rows must be 2 or 4 for float32 x"),  # 32 bytes: no one load
    (dict(batch_rows=2, x_dtype=2), "4 or 8 for float16 / bfloat16 x"),  # 4 bytes
    (dict(chunks=2), "chunks must be ceil"),
    (dict(chunk_nonzeros=2048), "chunk_nonzeros must be 4096, 8192 or 16384"),
    (dict(chunk_nonzeros=8192), "rows per chunk"),  # s = 1: 8192 rows
    (dict(chunk_nonzeros=16384, sparsity=2), "rows per chunk"),
    (dict(ptr_stride=12), "ptr_stride must be a multiple of 8"),
    (dict(width=20), "ptr_stride must be a multiple of 8 and >= width"),
    (dict(width=0), "width must be in"),
    (dict(rows=0), "rows must be >= 1"),
    (dict(B=-1), "B must be >= 0"),
    (dict(stride_xb=-1), "strides must be >= 0"),
    (dict(out_ptr=0), "must not be null"),
    ("entries+2", "16-byte aligned"),
]


@pytest.mark.parametrize(
    "entry", ["host_emulate_project_sparse", pytest.param("project_sparse", marks=needs_cuda_build)]
)
@pytest.mark.parametrize("change,words", BAD_ARGS)
def test_binding_rejects_bad_arguments(change, words, entry):
    keep, args = _valid_args()
    if change == "entries+2":
        args["entries_ptr"] += 2
    else:
        args.update(change)
    with pytest.raises(ValueError, match=words):
        if entry == "host_emulate_project_sparse":
            _C.host_emulate_project_sparse(**args, num_sms=4)
        else:  # the device entry checks before touching memory
            _C.project_sparse(**args, workspace_ptr=0, workspace_bytes=1 << 30, num_sms=4, stream=0)
    del keep


def test_binding_plan_errors_and_workspace():
    with pytest.raises(ValueError, match="num_sms must be >= 1"):
        _C.project_sparse_workspace_bytes(4, 10, 16, 0, 4)
    assert _C.project_sparse_workspace_bytes(4, 1, 16, 132, 4) == 0  # one chunk: no split
    plan = _C.project_sparse_plan(32, 1024, 4096, 132, 4)
    assert plan == dict(tiles_k=1, tiles_b=8, splits=16, chunks_per_split=64, workspace_bytes=16 * 32 * 4096 * 4)


@needs_cuda_build
def test_device_entry_refuses_missing_workspace_and_host_memory():
    keep, args = _valid_args()
    args.update(chunks=1, rows=100)
    with pytest.raises(ValueError, match="needs a workspace"):
        _C.project_sparse(**(args | dict(rows=4096 * 4, chunks=4)), workspace_ptr=0, workspace_bytes=0,
                          num_sms=132, stream=0)  # fmt: skip
    # Host memory given to the device entry: refused (or, without a driver, a CUDA error), never a crash.
    with pytest.raises((ValueError, RuntimeError)):
        _C.project_sparse(**args, workspace_ptr=0, workspace_bytes=0, num_sms=132, stream=0)
    del keep


def test_shared_memory_fits_the_gpus():
    """The raw windows, their transpose and two structure buffers: with 4096-nonzero chunks
    16-byte rows of T (4 float32 / 8 16-bit batch rows) fit an A100's 163 KiB opt-in, 8-byte rows
    sm_86/sm_89's 99 KiB; the largest shape (16-byte rows, 16384 nonzeros) an H100's 227 KiB.
    Only the bytes of a row of T and of the structure matter."""
    for code, full in ((0, 4), (1, 8), (2, 8)):
        assert _C.project_sparse_smem_bytes(code, full, 4096) <= 166_912
        assert _C.project_sparse_smem_bytes(code, full // 2, 4096) <= 101_376
        assert _C.project_sparse_smem_bytes(code, full, 16384) <= 232_448
        assert _C.project_sparse_smem_bytes(code, full, 4096) < _C.project_sparse_smem_bytes(code, full, 8192)
    assert _C.project_sparse_smem_bytes(0, 4, 4096) == _C.project_sparse_smem_bytes(2, 8, 4096)
    with pytest.raises(ValueError, match="chunk_nonzeros must be"):
        _C.project_sparse_smem_bytes(0, 4, 5000)
    with pytest.raises(ValueError, match="batch_rows must be 2 or 4 for float32"):
        _C.project_sparse_smem_bytes(0, 8, 4096)


H100, A100, SM89 = 232_448, 166_912, 101_376


@pytest.mark.parametrize(
    "limit,dtype,s,shape",
    [
        (H100, torch.float32, 1, (4, 4096)),  # 4096 rows at most
        (H100, torch.float32, 2, (4, 8192)),
        (H100, torch.float32, 4, (4, 16384)),
        (H100, torch.bfloat16, 8, (8, 16384)),
        (H100, torch.float16, 1, (8, 4096)),
        (A100, torch.float32, 1, (4, 4096)),
        (A100, torch.float32, 4, (2, 16384)),  # the larger chunk first, then the rows that fit
        (A100, torch.bfloat16, 4, (4, 16384)),
        (A100, torch.bfloat16, 2, (4, 8192)),
        (SM89, torch.float32, 4, (2, 4096)),
        (SM89, torch.bfloat16, 2, (4, 4096)),
        (0, torch.float16, 8, (4, 4096)),  # limit unknown: the shape every sm_80+ GPU holds
        (0, torch.float32, 1, (2, 4096)),
    ],
)
def test_launch_shape_follows_the_gpus_shared_memory(monkeypatch, limit, dtype, s, shape):
    """The largest chunk of at most 4096 rows, then the most batch rows that fit beside it."""
    props = type("Props", (), {"shared_memory_per_block_optin": limit})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    assert cuda_sparse.launch_shape(dtype, s, torch.device("cuda")) == shape
    if limit:
        assert _C.project_sparse_smem_bytes(cuda_sparse.DTYPE_CODES[dtype], *shape) <= limit


def test_backend_cuda_refuses_cpu_tensors():
    with pytest.raises(RuntimeError, match="cannot run project_sparse on cpu"):
        fastjl.project(torch.randn(2, 10), 8, kind="sjlt", backend="cuda")


# --------------------------------------------------------------------------- on a GPU

needs_gpu = needs_cuda_kernels


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("kind,s,rate", SPARSE_CASES)
@pytest.mark.parametrize("dtype", SPARSE_DTYPES)
def test_gpu_kernel_matches_torch_repeats_bitwise_and_equals_emulation(kind, s, rate, dtype):
    gen = torch.Generator().manual_seed(hash((kind, s, str(dtype), "cuda-gpu")) % 2**31)
    x = torch.randn(33, 200_003, generator=gen).to(dtype)
    runs = []
    for _ in range(2):
        out = poisoned((33, 4133), device="cuda")
        runs.append(fastjl.project(x.cuda(), 4133, out=out, backend="cuda", **opts(kind, s, rate)))
        assert runs[-1] is out
    assert torch.equal(runs[0], runs[1])
    ref = fastjl.project(x.cuda().double(), 4133, backend="torch", **opts(kind, s, rate)).cpu()
    assert relative_error(runs[0].cpu(), ref) < TOL
    # The emulation runs the same float32 additions in the same order: the same bits.
    emulated = poisoned((33, 4133))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows, nonzeros = cuda_sparse.launch_shape(dtype, s, torch.device("cuda"))
    emulate(x, emulated, num_sms=sms, rows_per_cta=rows, chunk_nonzeros=nonzeros, **opts(kind, s, rate))
    assert torch.equal(runs[0].cpu(), emulated)


@pytest.mark.gpu
@needs_gpu
def test_gpu_strided_input_and_output():
    x = torch.randn(5, 2 * 30_001, device="cuda")[:, ::2]
    big = poisoned((5, 2 * 300), device="cuda")
    fastjl.project(x, 300, out=big[:, ::2], backend="cuda", kind="sjlt", sparsity=4, offset=2**40)
    ref = fastjl.project(x.double(), 300, backend="torch", kind="sjlt", sparsity=4, offset=2**40)
    assert relative_error(big[:, ::2], ref) < 1e-6 and big[:, 1::2].isnan().all()


def test_bench_contender_reports_why_it_cannot_run_on_cpu():
    from fastjl.bench.contenders import CONTENDERS, Shape, Unavailable

    with pytest.raises(Unavailable, match="needs a CUDA tensor"):
        CONTENDERS["fastjl-cuda"](Shape(32, 1000, 64, "sjlt", torch.float32), "cpu")


# --------------------------------------------------------------------------- bench/gpu_smoke.py


def test_gpu_smoke_sparse_cases_pass_under_emulation(tmp_path):
    """bench/gpu_smoke.py's sparse cases (every chunk size, both staging paths; the GPU check's
    first contact and what compute-sanitizer runs): built with torch, then run torch-free
    through the emulation; a planted wrong reference fails the script."""
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    root = Path(__file__).resolve().parents[1]
    cases = tmp_path / "sparse_cases.npz"
    script = [sys.executable, str(root / "bench" / "gpu_smoke.py")]
    subprocess.run([*script, "--write-sparse-cases", str(cases)], cwd=root, check=True, capture_output=True)
    run = [*script, "--emulate", "--sparse-only", "--sparse-cases"]
    done = subprocess.run([*run, str(cases)], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" PASS") == 5 and "0 failed" in done.stdout
    data = dict(np.load(cases))
    data["1_ref"] = data["1_ref"] * 1.001
    np.savez(tmp_path / "wrong.npz", **data)
    done = subprocess.run([*run, str(tmp_path / "wrong.npz")], cwd=root, capture_output=True, text=True)
    assert done.returncode == 1 and "1 failed" in done.stdout
