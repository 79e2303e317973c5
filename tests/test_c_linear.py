"""The CUDA project_linear kernel's decomposition, checked on the CPU (no GPU needed).

``_C.host_emulate_project_linear`` runs csrc/linear_kernel.cu's pipeline (the one of
csrc/project_kernel.cuh: plan, D-splits, P tiles, fragment maps, with ldmatrix/mma modelled
from the PTX ISA) with its gradient-tile producer (csrc/linear_tiles.cuh: flat row -> (o, i),
bias rows, the loop over t, strides, tile edges) through the kernel's own __host__ __device__
code, lane by lane.  The reference forms the per-example gradients explicitly in float64 and
projects them with the torch backend.  What only a GPU can check is in tests/test_cuda_linear.py.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

import fastjl

from .helpers import (
    extension_or_skip_module,
    linear_reference,
    materialized_linear_gradient,
    needs_cuda_build,
    poisoned,
    relative_error,
)

_C = extension_or_skip_module()

from fastjl._backends import cuda_backend  # noqa: E402
from fastjl._backends.cuda_backend import linear_tensor_args  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SEED = 2**64 - 3
OFFSET = 2**40 + 3
H100_SMS = 132
# Relative (Frobenius) error vs float64.  Whatever the input dtype, G is formed in float32
# (16-bit inputs: exact products, float32 sums over t) and enters the MMAs as bf16 hi + lo
# (~16 bits, ~5e-6 predicted); rademacher P is exact, gaussian P is bf16 hi + lo.
TOLERANCE = {"rademacher": 2e-5, "gaussian": 2e-5}


def emulate(a, g, proj_dim, *, seed=SEED, kind="rademacher", offset=OFFSET, bias=False, num_sms=H100_SMS, out=None):
    """Runs the emulation into ``out`` (poisoned if not given) and returns it."""
    if out is None:
        out = poisoned((a.shape[0], proj_dim))
    args = linear_tensor_args(a, g, out, seed=seed, kind=kind, offset=offset, bias=bias)
    _C.host_emulate_project_linear(*args, num_sms)
    return out


def reference(a, g, proj_dim, *, seed=SEED, kind="rademacher", offset=OFFSET, bias=False):
    return linear_reference(a, g, proj_dim, seed=seed, kind=kind, offset=offset, bias=bias)


def random_inputs(batch, tokens, d_in, d_out, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed + 1000 * batch + 100 * tokens + 10 * d_in + d_out)
    a = torch.randn(batch, tokens, d_in, generator=gen).to(dtype)
    g = torch.randn(batch, tokens, d_out, generator=gen).to(dtype)
    return a, g


def check(a, g, proj_dim, *, kind="rademacher", bias=False, **kwargs):
    y = emulate(a, g, proj_dim, kind=kind, bias=bias, **kwargs)
    assert not torch.isnan(y).any()
    ref = reference(a, g, proj_dim, kind=kind, bias=bias, offset=kwargs.get("offset", OFFSET))
    assert relative_error(y, ref) < TOLERANCE[kind]
    return y


# (B, d_in, d_out, K): every batch-tile configuration (32, 64, 128 rows), K below, at and past
# one 128-column tile; D = d_out * d_in (+ d_out) a partial step or several, rows o that start
# mid-tile (d_in not dividing 32) and span tiles (d_in > 32), bias rows across a tile edge.
SHAPES = [(1, 1, 1, 1), (7, 5, 3, 130), (33, 13, 11, 257), (70, 9, 4, 129), (2, 45, 2, 40)]


@pytest.mark.parametrize("kind", fastjl.KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 5])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch,d_in,d_out,proj_dim", SHAPES)
def test_emulation_matches_reference(kind, dtype, tokens, bias, batch, d_in, d_out, proj_dim):
    a, g = random_inputs(batch, tokens, d_in, d_out, dtype)
    check(a, g, proj_dim, kind=kind, bias=bias)


@pytest.mark.parametrize("offset", [0, 2**32 - 20, 2**48 - 42])
@pytest.mark.parametrize("tokens,bias", [(1, False), (2, True), (4, True)])
def test_one_hot_gradients_reproduce_the_matrix(offset, tokens, bias):
    """Example b's gradient is the b-th unit vector of R^D (D = 7 * 5 (+ 5)), so y must be
    P[offset : offset + D] exactly: every (o, i) of the index map, the bias rows and the
    t-loop are pinned down, across i = 2^32 and up to the last row of P.  Weight row
    b = o * d_in + i: a = e_i, g = e_o at token 0 and, with bias, a = 0, g = -e_o at the last
    token (so that sum_t g = 0); bias row o: a = 0, g = e_o at token 0.  The tokens between
    have g = 0 and noise in a, which must not leak in."""
    d_in, d_out, proj_dim = 7, 5, 300
    dim = d_out * d_in + (d_out if bias else 0)
    a = torch.randn(dim, tokens, d_in)
    g = torch.zeros(dim, tokens, d_out)
    a[:, 0] = 0.0
    a[:, -1] = 0.0
    for b in range(dim):
        if b < d_out * d_in:
            o, i = divmod(b, d_in)
            a[b, 0, i] = 1.0
            if bias:
                g[b, -1, o] = -1.0
        else:
            o = b - d_out * d_in
        g[b, 0, o] = 1.0
    y = emulate(a, g, proj_dim, seed=99, offset=offset, bias=bias)
    p = fastjl.matrix_block(99, "rademacher", range(offset, offset + dim), range(proj_dim), dtype=torch.float32)
    assert torch.equal(y, p)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_same_pipeline_as_project(dtype, kind):
    """T = 1 with 16-bit inputs: every product g_o a_i is exact in float32, so the gradient
    tiles equal the float32 materialized gradient and the result is bit for bit that of
    project's emulation on it (same plan, same P tiles, same MMAs, same reduction)."""
    a, g = random_inputs(5, 1, 60, 9, dtype)
    x = torch.cat([(g[:, 0, :, None].float() * a[:, 0, None, :].float()).reshape(5, -1), g[:, 0].float()], dim=1)
    ours = emulate(a, g, 200, kind=kind, bias=True, num_sms=1000)
    theirs = poisoned((5, 200))
    _C.host_emulate_project(*cuda_backend.tensor_args(x, theirs, seed=SEED, kind=kind, offset=OFFSET), 1000)
    assert _C.project_plan(5, x.shape[1], 200, 1000)["splits"] > 1
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_memory_outside_a_and_g_is_never_read(dtype, kind):
    """a and g are windows (every stride non-unit) of NaN-filled buffers larger in every
    dimension: one element read past B, T, d_in or d_out, or between strided elements,
    poisons the result."""
    batch, tokens, d_in, d_out = 9, 4, 21, 6
    a_values, g_values = random_inputs(batch, tokens, d_in, d_out, dtype)
    a_big = torch.full((batch + 2, tokens + 1, 2 * d_in + 3), float("nan")).to(dtype)
    g_big = torch.full((batch + 1, 2 * tokens + 2, d_out + 2), float("nan")).to(dtype)
    a = a_big[:batch, :tokens, 1 : 2 * d_in + 1 : 2]
    g = g_big[:batch, 1 : 2 * tokens + 1 : 2, :d_out]
    a.copy_(a_values)
    g.copy_(g_values)
    assert a.stride(2) == 2 and g.stride(1) == 2 * (d_out + 2)
    y = emulate(a, g, 130, kind=kind, bias=True)
    assert not torch.isnan(y).any()
    assert relative_error(y, reference(a_values, g_values, 130, kind=kind, bias=True)) < TOLERANCE[kind]


def test_permuted_inputs_and_strided_output():
    """Layouts as autograd hands them over: a (B, T, d_in) from a (T, B, d_in) buffer (token-major),
    g transposed from (B, d_out, T); out a transposed view."""
    batch, tokens, d_in, d_out = 6, 5, 11, 7
    a = torch.randn(tokens, batch, d_in).transpose(0, 1)
    g = torch.randn(batch, d_out, tokens).transpose(1, 2)
    out_storage = poisoned((140, batch))
    out = out_storage.t()
    y = emulate(a, g, 140, out=out, bias=True)
    assert y is out and not torch.isnan(out_storage).any()
    assert relative_error(out, reference(a, g, 140, bias=True)) < TOLERANCE["rademacher"]


@pytest.mark.parametrize("kind", fastjl.KINDS)
@pytest.mark.parametrize("bias", [False, True])
def test_split_d_reduction(kind, bias):
    """Many SMs and few output tiles: D is split and the partial sums added in split order."""
    batch, tokens, d_in, d_out, proj_dim = 3, 3, 37, 101, 100  # D > 3700: up to 14 splits
    dim = d_out * d_in + (d_out if bias else 0)
    plan = _C.project_plan(batch, dim, proj_dim, 1000)
    assert plan["splits"] > 1
    assert _C.project_linear_workspace_bytes(batch, d_in, d_out, bias, proj_dim, 1000) == plan["workspace_bytes"]
    assert _C.project_plan(batch, dim, proj_dim, 1)["splits"] < plan["splits"]
    a, g = random_inputs(batch, tokens, d_in, d_out, torch.bfloat16)
    many = check(a, g, proj_dim, kind=kind, bias=bias, num_sms=1000)
    fewer = check(a, g, proj_dim, kind=kind, bias=bias, num_sms=1)
    torch.testing.assert_close(many, fewer, rtol=1e-5, atol=1e-4)


def test_batch_zero_writes_nothing():
    a, g = torch.zeros(0, 2, 3), torch.zeros(0, 2, 4)
    out = torch.zeros(0, 5)
    emulate(a, g, 5, out=out)


def test_emulation_is_deterministic():
    a, g = random_inputs(9, 5, 40, 30, torch.float32)
    first = emulate(a, g, 200, kind="gaussian", bias=True, num_sms=500)
    second = emulate(a, g, 200, kind="gaussian", bias=True, num_sms=500)
    assert torch.equal(first, second)


@needs_cuda_build
def test_backend_reports_the_op():
    assert cuda_backend.op_availability("project_linear") is None


# ---- argument checks (before anything touches memory or the GPU) ---------------------------


def good_args(buf):
    return dict(
        a_ptr=buf.data_ptr(),
        g_ptr=buf.data_ptr(),
        dtype=0,
        B=2,
        T=3,
        d_in=4,
        d_out=5,
        stride_ab=12,
        stride_at=4,
        stride_ai=1,
        stride_gb=15,
        stride_gt=5,
        stride_go=1,
        out_ptr=buf.data_ptr(),
        K=4,
        stride_ob=4,
        stride_ok=1,
        seed=1,
        kind=0,
        offset=0,
        bias=True,
        workspace_ptr=0,
        workspace_bytes=0,
        num_sms=132,
        stream=0,
    )


BAD_ARGS = [
    (dict(dtype=3), "dtype must be"),
    (dict(kind=2), "kind must be"),
    (dict(B=-1), "B must be >= 0"),
    (dict(T=0), "T must be >= 1"),
    (dict(d_in=0), "d_in must be >= 1"),
    (dict(d_out=-1), "d_out must be >= 1"),
    (dict(d_in=2**30, d_out=2**19), "d_out \\* d_in must be <= 2\\^48"),
    (dict(K=0), "K must be in"),
    (dict(K=2**32), "K must be in"),
    (dict(offset=-1), "offset \\+ D must be <= 2\\^48"),
    (dict(offset=2**48 - 24), "offset \\+ D must be <= 2\\^48"),  # D = 5 * 4 + 5 = 25
    (dict(stride_gt=-1), "strides must be >= 0"),
    (dict(stride_ok=-1), "strides must be >= 0"),
    (dict(a_ptr=0), "a_ptr, g_ptr and out_ptr must not be null"),
    (dict(g_ptr=0), "a_ptr, g_ptr and out_ptr must not be null"),
    (dict(out_ptr=0), "a_ptr, g_ptr and out_ptr must not be null"),
    (dict(num_sms=0), "num_sms must be >= 1"),
]


@pytest.mark.parametrize("bad,message", BAD_ARGS, ids=lambda v: str(v))
@pytest.mark.parametrize("fn", [pytest.param("project_linear", marks=needs_cuda_build), "host_emulate_project_linear"])
def test_bad_arguments_raise_value_error(fn, bad, message):
    buf = torch.zeros(64)
    args = good_args(buf)
    args.update(bad)
    if fn == "host_emulate_project_linear":  # allocates its own workspace, runs on no stream
        for name in ("workspace_ptr", "workspace_bytes", "stream"):
            args.pop(name)
    with pytest.raises(ValueError, match=f"fastjl._C.{fn}: {message}"):
        getattr(_C, fn)(**args)


def test_offset_up_to_the_last_row_is_accepted():
    a, g = random_inputs(2, 3, 4, 5, torch.float32)
    check(a, g, 4, bias=True, offset=2**48 - 25)  # D = 25: rows up to 2^48 - 1


@needs_cuda_build
@pytest.mark.parametrize("workspace", [dict(workspace_ptr=0), dict(workspace_bytes=8)])
def test_missing_or_small_workspace_is_refused(workspace):
    buf = torch.zeros(64)
    needed = _C.project_linear_workspace_bytes(2, 1000, 1000, True, 4, 1000)
    assert needed > 8
    args = good_args(buf)
    args.update(d_in=1000, d_out=1000, num_sms=1000, workspace_ptr=buf.data_ptr(), workspace_bytes=needed)
    args.update(workspace)
    with pytest.raises(ValueError, match=f"fastjl._C.project_linear: this call needs a workspace of {needed} bytes"):
        _C.project_linear(**args)


def test_workspace_helper_checks_sizes():
    with pytest.raises(ValueError, match="project_linear_workspace_bytes: d_in must be >= 1"):
        _C.project_linear_workspace_bytes(1, 0, 10, False, 10, 132)
    with pytest.raises(ValueError, match="project_linear_workspace_bytes: K must be"):
        _C.project_linear_workspace_bytes(1, 10, 10, False, 0, 132)
    with pytest.raises(ValueError, match="num_sms"):
        _C.project_linear_workspace_bytes(1, 10, 10, True, 10, 0)


@needs_cuda_build
def test_project_linear_refuses_host_memory():
    """Without a GPU: RuntimeError naming the op (no device / driver); with one: ValueError,
    since host pointers are refused before a kernel could fault on them."""
    buf = torch.zeros(64)
    with pytest.raises((RuntimeError, ValueError), match="fastjl._C.project_linear"):
        _C.project_linear(**good_args(buf))


# ---- the Python launch glue (cuda_backend._launch), run on the CPU ---------------------------


@needs_cuda_build
@pytest.mark.parametrize("op", ["project", "project_linear"])
def test_launch_glue_passes_the_bindings_arguments(monkeypatch, op):
    """cuda_backend.project / project_linear with the CUDA runtime calls stubbed out: the real
    binding must accept the arguments (it then refuses host memory, which proves arity and
    types), and the same arguments run through the host emulation give the right numbers."""
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(multi_processor_count=7))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: SimpleNamespace(cuda_stream=0))
    requests = []

    def kernel(*args):
        *leading, workspace_ptr, workspace_bytes, num_sms, stream = args
        with pytest.raises((RuntimeError, ValueError), match=f"fastjl._C.{op}"):
            getattr(_C, op)(*args)
        requests.append((workspace_bytes, num_sms, stream))
        getattr(_C, f"host_emulate_{op}")(*leading, num_sms)

    monkeypatch.setattr(cuda_backend, "_C", SimpleNamespace(**{**vars(_C), op: kernel}))
    a, g = random_inputs(3, 2, 200, 150, torch.float32)  # D long enough for a split with 7 SMs
    out = poisoned((3, 33))
    if op == "project":
        x = materialized_linear_gradient(a, g).float()
        cuda_backend.project(x, out, seed=SEED, kind="gaussian", offset=OFFSET)
        expected_bytes = _C.project_workspace_bytes(3, x.shape[1], 33, 7)
        ref = fastjl.project(x.double(), 33, seed=SEED, kind="gaussian", offset=OFFSET, backend="torch")
    else:
        cuda_backend.project_linear(a, g, out, seed=SEED, kind="gaussian", offset=OFFSET, bias=True)
        expected_bytes = _C.project_linear_workspace_bytes(3, 200, 150, True, 33, 7)
        ref = reference(a, g, 33, kind="gaussian", bias=True)
    assert requests == [(expected_bytes, 7, 0)] and expected_bytes > 0
    assert relative_error(out, ref) < TOLERANCE["gaussian"]
