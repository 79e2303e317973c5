"""The compiled module fastjl._C against the spec (fastjl.spec).

Skipped as a whole only when fastjl._C is not built (pure-Python install).  If the module
file exists but fails to import, the tests fail: a broken build must not look like a skip.
The host tests need no GPU; tests marked ``gpu`` run only where torch sees a CUDA device
and fastjl._C has its CUDA half (not the host-only build of an install without nvcc).
"""

from __future__ import annotations

import pytest
import torch

import fastjl
import fastjl.spec as spec

from .helpers import HAS_CUDA_BUILD, extension_or_skip_module, needs_cuda_build

_C = extension_or_skip_module()

KIND_CODE = {"rademacher": 0, "gaussian": 1}
DTYPE_CODE = {torch.float32: 0, torch.float64: 3}
# Gaussian entries: host libm vs torch's vectorised math differ by an ulp or so.
TOL = {torch.float32: dict(rtol=1e-6, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}

SEEDS = [0, 2**32 + 5, 2**64 - 1]
ROW_STARTS = [0, 2**40 - 3, 2**48 - 7]  # the last block ends exactly at row 2^48 - 1
# (col0, ncols): starts off a 128 (and 4) boundary, odd widths, a single column.
COLUMN_RANGES = [(100, 300), (0, 129), (3, 1), (2**32 - 133, 133)]

needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and HAS_CUDA_BUILD), reason="needs a CUDA device and fastjl._C built with CUDA"
)


def host_block(seed, kind, row0, nrows, col0, ncols, dtype):
    out = torch.empty(nrows, ncols, dtype=dtype)
    _C.host_matrix_block(seed, KIND_CODE[kind], row0, nrows, col0, ncols, out.data_ptr(), DTYPE_CODE[dtype])
    return out


def reference(seed, kind, row0, nrows, col0, ncols, dtype):
    return fastjl.matrix_block(seed, kind, range(row0, row0 + nrows), range(col0, col0 + ncols), dtype=dtype)


def assert_matches(actual, expected, kind):
    if kind == "rademacher":
        assert torch.equal(actual, expected)  # ±1: bit for bit
    else:
        torch.testing.assert_close(actual, expected, **TOL[expected.dtype])


# ---- Philox known answers (Random123's published vectors) -------------------------------


@pytest.mark.parametrize(
    "counter, key, expected",
    [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ],
)
def test_philox_known_answers(counter, key, expected):
    assert tuple(_C.philox4x32_10(counter, key)) == expected


def test_philox_matches_spec():
    counter, key = (1, 2**32 - 1, 12345, 1), (0xDEADBEEF, 7)
    assert tuple(_C.philox4x32_10(counter, key)) == tuple(int(w) for w in spec.philox4x32_10(counter, key))


# ---- host_matrix_block vs the spec ------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("seed", SEEDS)
def test_host_block_matches_spec(seed, kind, dtype):
    for row0 in ROW_STARTS:
        for col0, ncols in COLUMN_RANGES:
            args = (seed, kind, row0, 7, col0, ncols, dtype)
            assert_matches(host_block(*args), reference(*args), kind)


def test_host_block_stays_in_bounds():
    nrows, ncols = 5, 301
    buf = torch.full((nrows * ncols + 64,), 7.0, dtype=torch.float64)
    _C.host_matrix_block(3, 1, 11, nrows, 100, ncols, buf.data_ptr(), 3)
    assert torch.all(buf[nrows * ncols :] == 7.0)
    assert_matches(
        buf[: nrows * ncols].view(nrows, ncols),
        reference(3, "gaussian", 11, nrows, 100, ncols, torch.float64),
        "gaussian",
    )


def test_host_block_empty_is_noop():
    _C.host_matrix_block(0, 0, 0, 0, 0, 10, 0, 0)  # null pointer is fine when nothing is written
    _C.host_matrix_block(0, 1, 2**48, 0, 0, 0, 0, 3)


# ---- argument validation (host and device validate before touching memory) --------------

BAD_ARGS = [
    dict(kind=7),
    dict(dtype_code=9),
    dict(dtype_code=1),  # float16: not supported by the block functions
    dict(row0=2**48 - 2, nrows=3),
    dict(row0=2**48, nrows=1),
    dict(nrows=-1),
    dict(col0=-5),
    dict(col0=2**32 - 1, ncols=2),
    dict(out_ptr=0),
]


@pytest.mark.parametrize("fn", ["host_matrix_block", pytest.param("device_matrix_block", marks=needs_cuda_build)])
@pytest.mark.parametrize("bad", BAD_ARGS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_bad_arguments_raise_value_error(fn, bad):
    buf = torch.empty(64, dtype=torch.float64)
    args = dict(seed=1, kind=0, row0=0, nrows=2, col0=0, ncols=3, out_ptr=buf.data_ptr(), dtype_code=3)
    args.update(bad)
    if fn == "device_matrix_block":
        args["stream"] = 0
    with pytest.raises(ValueError, match=f"fastjl._C.{fn}"):
        getattr(_C, fn)(**args)


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_seed_outside_uint64_is_rejected(seed):
    buf = torch.empty(4, dtype=torch.float64)
    with pytest.raises(TypeError):
        _C.host_matrix_block(seed, 0, 0, 1, 0, 4, buf.data_ptr(), 3)


# ---- device_matrix_block ----------------------------------------------------------------


@needs_cuda_build
def test_device_block_refuses_host_memory():
    """Without a GPU: RuntimeError naming the op (no device / no driver).  With one:
    ValueError, since a host pointer is refused before any kernel could fault on it."""
    buf = torch.empty(2, 3, dtype=torch.float32)
    with pytest.raises((RuntimeError, ValueError), match="fastjl._C.device_matrix_block"):
        _C.device_matrix_block(1, 0, 0, 2, 0, 3, buf.data_ptr(), 0, 0)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_device_block_matches_host(kind, dtype):
    stream = torch.cuda.Stream()
    for seed in SEEDS:
        for row0 in ROW_STARTS:
            for col0, ncols in COLUMN_RANGES:
                nrows = 7
                out = torch.empty(nrows, ncols, dtype=dtype, device="cuda")
                with torch.cuda.stream(stream):
                    _C.device_matrix_block(
                        seed,
                        KIND_CODE[kind],
                        row0,
                        nrows,
                        col0,
                        ncols,
                        out.data_ptr(),
                        DTYPE_CODE[dtype],
                        torch.cuda.current_stream().cuda_stream,
                    )
                stream.synchronize()
                assert_matches(out.cpu(), host_block(seed, kind, row0, nrows, col0, ncols, dtype), kind)


@pytest.mark.gpu
@needs_gpu
def test_device_block_large_grid():
    """More elements than one grid pass covers, to exercise the grid-stride loop."""
    nrows, ncols = 40, 30_000
    out = torch.empty(nrows, ncols, dtype=torch.float32, device="cuda")
    _C.device_matrix_block(9, 0, 2**40, nrows, 77, ncols, out.data_ptr(), 0, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert torch.equal(out.cpu(), host_block(9, "rademacher", 2**40, nrows, 77, ncols, torch.float32))


def test_build_info():
    """The CUDA build reports its runtime and architectures; the host-only build (no nvcc at
    install) says it has no CUDA, and its module indeed lacks the kernels' entry points."""
    info = _C.build_info()
    assert info["spec_version"] == spec.SPEC_VERSION
    assert isinstance(info["version"], str)
    assert info["cuda"] is HAS_CUDA_BUILD
    assert hasattr(_C, "project") is info["cuda"] and hasattr(_C, "device_matrix_block") is info["cuda"]
    if info["cuda"]:
        assert info["cuda_version"] >= 12000
        assert "90" in info["archs"]
    else:
        assert info["archs"] == "" and info["cuda_version"] is None and info["cudart"] is None
