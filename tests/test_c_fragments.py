"""The CUDA projection kernel's decomposition, checked on the CPU (no GPU needed).

``_C.host_emulate_project`` runs csrc/project_kernel.cu's plan, thread/lane index maps,
x-tile fetch (both the cp.async path and the element path), P-tile generation and 16-bit
splits with the kernel's own __host__ __device__ code, lane by lane, with ldmatrix and
mma.sync modelled from the PTX ISA.  Agreement with the torch backend here means the
fragment mappings are right; what only a GPU can check (the PTX itself, races, the launch)
is in tests/test_cuda_backend.py.
"""

from __future__ import annotations

import pytest
import torch

import fastjl

from .helpers import extension_or_skip_module, needs_cuda_build, poisoned, relative_error

_C = extension_or_skip_module()

from fastjl._backends.cuda_backend import tensor_args  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SEED = 2**64 - 3
H100_SMS = 132
# Relative (Frobenius) error vs float64 of the same (rounded) input.  fp32 x is carried as
# bf16 hi + lo (~16 bits: ~5e-6 predicted); 16-bit x is exact; rademacher P is exact;
# gaussian P is hi + lo: ~22 bits (fp16 operands) or ~16 bits (bf16 operands).
TOLERANCE = {
    ("rademacher", torch.float32): 2e-5,
    ("rademacher", torch.float16): 1e-6,
    ("rademacher", torch.bfloat16): 1e-6,
    ("gaussian", torch.float32): 2e-5,
    ("gaussian", torch.float16): 1e-6,
    ("gaussian", torch.bfloat16): 3e-5,
}


def emulate(x, proj_dim, *, seed=SEED, kind="rademacher", offset=0, num_sms=H100_SMS, out=None):
    """Runs the emulation into ``out`` (poisoned if not given); returns (out, vector path?)."""
    batch, dim = x.shape
    if out is None:
        out = poisoned((batch, proj_dim))
    vector = _C.host_emulate_project(*tensor_args(x, out, seed=seed, kind=kind, offset=offset), num_sms)
    return out, vector


def torch_reference(x, proj_dim, *, seed=SEED, kind="rademacher", offset=0):
    return fastjl.project(x.double(), proj_dim, seed=seed, kind=kind, offset=offset, backend="torch")


def random_input(batch, dim, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed + 7 * batch + dim)
    return torch.randn(batch, dim, generator=gen).to(dtype)


# (B, D, K): every batch-tile configuration (32, 64, 128 and two 128-row tiles), K below,
# at and past one 128-column tile, D a partial step, several steps, not a multiple of 8.
SHAPES = [(1, 1, 1), (7, 101, 130), (33, 300, 257), (70, 65, 129), (129, 40, 5)]


@pytest.mark.parametrize("kind", fastjl.KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,dim,proj_dim", SHAPES)
def test_emulation_matches_torch_backend(kind, dtype, batch, dim, proj_dim):
    x = random_input(batch, dim, dtype)
    offset = 2**40 + 3
    y, _ = emulate(x, proj_dim, kind=kind, offset=offset)
    assert not torch.isnan(y).any()
    ref = torch_reference(x, proj_dim, kind=kind, offset=offset)
    assert relative_error(y, ref) < TOLERANCE[kind, dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_both_fetch_paths_skip_memory_outside_x(dtype, kind):
    """x is a window of a larger NaN-filled buffer: reading one element outside x (past D,
    past B) poisons the result.  Aligned rows take the cp.async path (partial last chunk:
    zero-filled copy), a one-element shift takes the element path."""
    batch, dim = 5, 101
    big = torch.full((batch + 2, 112), float("nan")).to(dtype)  # 112-element rows: 16-byte aligned
    values = random_input(batch, dim, dtype)
    big[:batch, :dim] = values
    aligned = big[:batch, :dim]
    y, vector = emulate(aligned, 130, kind=kind)
    assert vector
    ref = torch_reference(values, 130, kind=kind)
    assert relative_error(y, ref) < TOLERANCE[kind, dtype]

    big[:batch, 1 : dim + 1] = values
    big[:batch, 0] = float("nan")
    shifted = big[:batch, 1 : dim + 1]
    y, vector = emulate(shifted, 130, kind=kind)
    assert not vector
    assert relative_error(y, ref) < TOLERANCE[kind, dtype]


def test_strided_input_and_output():
    base = torch.randn(60, 9)
    x = base.t()[:, ::2]  # (9, 30), both strides non-unit
    out_storage = poisoned((140, 9))
    out = out_storage.t()  # (9, 140) with strides (1, 9)
    _, vector = emulate(x, 140, out=out, seed=1)
    assert not vector and not torch.isnan(out_storage).any()
    assert relative_error(out, torch_reference(x, 140, seed=1)) < TOLERANCE["rademacher", torch.float32]


def test_plan_keeps_a_splits_steps_within_32_bits():
    """The kernels count a split's steps in 32 bits (csrc/cta_steps.cuh): past D = 2^35 the
    plan splits D even where the tiles alone fill the GPU (6 column tiles of B = 32 on one SM
    would otherwise run D = 2^36, 2^31 steps, in one split)."""
    plan = _C.project_plan(32, 2**36, 6 * 128, 1)
    assert plan["splits"] == 2 and plan["d_per_split"] == 2**35
    assert _C.project_plan(32, 2**35, 6 * 128, 1)["splits"] == 1  # 2^30 steps: one split
    with pytest.raises(ValueError, match="D is too large"):  # past 65535 splits (grid.y)
        _C.project_plan(32, 65536 * 2**35, 6 * 128, 1)


@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_split_d_reduction(kind):
    """Many SMs and few output tiles: D is split and the splits are summed in order."""
    x = random_input(3, 4001, torch.bfloat16)  # 126 steps: up to 15 splits of >= 8 steps
    plan = _C.project_plan(3, 4001, 100, 1000)
    assert plan["splits"] > 1 and plan["workspace_bytes"] == plan["splits"] * 3 * 100 * 4
    assert _C.project_plan(3, 4001, 100, 1)["splits"] < plan["splits"]
    many, _ = emulate(x, 100, kind=kind, num_sms=1000)
    fewer, _ = emulate(x, 100, kind=kind, num_sms=1)
    ref = torch_reference(x, 100, kind=kind)
    assert relative_error(many, ref) < TOLERANCE[kind, torch.bfloat16]
    torch.testing.assert_close(many, fewer, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("offset", [0, 2**32 - 10, 2**48 - 37])
def test_one_hot_rows_reproduce_the_matrix(offset):
    """x = I gives y = P[offset : offset + 37, :K]: every generated entry is checked, across
    i = 2^32 and up to the last row of P.  Rademacher: exactly.  Gaussian through fp16
    operands (hi + lo, ~22 bits): to ~1e-6."""
    dim, proj_dim = 37, 300
    y, _ = emulate(torch.eye(dim), proj_dim, seed=99, offset=offset)
    p = fastjl.matrix_block(99, "rademacher", range(offset, offset + dim), range(proj_dim), dtype=torch.float32)
    assert torch.equal(y, p)
    y, _ = emulate(torch.eye(dim, dtype=torch.float16), proj_dim, seed=99, kind="gaussian", offset=offset)
    p = fastjl.matrix_block(99, "gaussian", range(offset, offset + dim), range(proj_dim), dtype=torch.float64)
    torch.testing.assert_close(y.double(), p, rtol=2e-6, atol=2e-6)


def test_small_and_large_magnitudes():
    """fp32 inputs keep float32's range (bf16 split, not fp16): 1e-30 and 1e30 survive; fp16
    subnormal inputs are exact."""
    x = random_input(4, 200, torch.float32) * torch.tensor([[1e-30], [1e30], [1.0], [3e-5]])
    y, _ = emulate(x, 64)
    ref = torch_reference(x, 64)
    for row in range(4):
        assert relative_error(y[row], ref[row]) < TOLERANCE["rademacher", torch.float32]
    tiny = (random_input(2, 50, torch.float32) * 1e-6).to(torch.float16)  # mostly subnormal
    y, _ = emulate(tiny, 16, kind="gaussian")
    assert relative_error(y, torch_reference(tiny, 16, kind="gaussian")) < TOLERANCE["gaussian", torch.float16]


def test_emulation_is_deterministic():
    x = random_input(9, 1001, torch.float32)
    first, _ = emulate(x, 200, kind="gaussian", num_sms=500)
    second, _ = emulate(x, 200, kind="gaussian", num_sms=500)
    assert torch.equal(first, second)


# ---- the launch plan ---------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 7, 32, 33, 64, 65, 1000])
@pytest.mark.parametrize("dim", [1, 1001, 10**8, 2**48])
@pytest.mark.parametrize("proj_dim", [1, 100, 4097])
def test_plan_covers_the_problem(batch, dim, proj_dim):
    plan = _C.project_plan(batch, dim, proj_dim, H100_SMS)
    assert plan["block_b"] == (32 if batch <= 32 else 64 if batch <= 64 else 128)
    assert plan["tiles_b"] * plan["block_b"] >= batch > (plan["tiles_b"] - 1) * plan["block_b"]
    assert plan["tiles_n"] == -(-proj_dim // 128)
    assert plan["d_per_split"] % plan["block_d"] == 0
    splits, per = plan["splits"], plan["d_per_split"]
    assert 1 <= splits <= 65535 and (splits - 1) * per < dim <= splits * per  # no empty split
    expected_ws = splits * batch * proj_dim * 4 if splits > 1 else 0
    assert plan["workspace_bytes"] == expected_ws == _C.project_workspace_bytes(batch, dim, proj_dim, H100_SMS)
    assert per // plan["block_d"] <= 2**30  # a split's steps fit the kernels' 32-bit counters
    bound_splits = -(-dim // (2**30 * plan["block_d"]))  # the splits that bound alone asks for
    if bound_splits > 1:  # D past 2^35: split for the counters, not for parallelism
        assert splits <= bound_splits
    elif splits > 1:
        slots = planned_ctas_per_sm(plan["block_b"]) * H100_SMS
        assert per >= 8 * plan["block_d"]
        assert plan["tiles_b"] * plan["tiles_n"] < slots  # only split when the GPU is not full
        assert plan["tiles_b"] * plan["tiles_n"] * splits <= slots  # the planned CTAs, no more


def planned_ctas_per_sm(block_b: int) -> int:
    """csrc/project_plan.cuh's planned_ctas_per_sm: the 32-row tile (3 resident per SM, 2 where
    shared memory caps its gaussian kind) plans 6 = whole rounds of either; the others 2."""
    return 6 if block_b == 32 else 2


def test_planned_ctas_are_whole_rounds_of_the_resident_ones():
    """A plan of n CTAs per SM runs in ceil(n / r) rounds of 1/n of the work where r fit:
    the 32-row tile's 6 is never slower than the former 2 per SM (r = 2: 3 rounds of a sixth),
    and faster where its launch bounds' 3 fit."""
    for resident, time_in_sixths in ((2, 3), (3, 2)):
        rounds = -(-planned_ctas_per_sm(32) // resident)
        assert rounds == time_in_sixths and rounds / 6 <= 1 / 2
    plan = _C.project_plan(32, 10**8, 128, H100_SMS)  # one tile: the plan launches 6 per SM
    assert plan["splits"] == 6 * H100_SMS


@pytest.mark.parametrize("sms", [1, 46, 108, 132])
def test_plan_fills_one_wave_as_fully_as_whole_splits_allow(sms):
    """Wave efficiency (CTAs / resident slots): a second, short wave doubles the run time, so
    the plan never launches one; within one wave it uses the most splits that fit."""
    for batch in (1, 33, 65, 200, 513):
        for proj_dim in (128, 1000, 2048, 8192):
            plan = _C.project_plan(batch, 10**8, proj_dim, sms)
            slots = planned_ctas_per_sm(plan["block_b"]) * sms
            ctas = plan["tiles_b"] * plan["tiles_n"]
            total = ctas * plan["splits"]
            if ctas < slots:
                assert total <= slots < total + ctas  # one more split would not fit
            else:
                assert plan["splits"] == 1


def test_plan_splits_small_batches_over_long_d():
    plan = _C.project_plan(1, 10**8, 100, H100_SMS)
    assert plan["splits"] == 6 * H100_SMS
    assert _C.project_plan(1000, 10**8, 4097, H100_SMS)["splits"] == 1


# ---- argument checks (before anything touches memory or the GPU) ---------------------------


def good_args(buf):
    return dict(
        x_ptr=buf.data_ptr(),
        x_dtype=0,
        B=2,
        D=3,
        stride_xb=3,
        stride_xd=1,
        out_ptr=buf.data_ptr(),
        K=4,
        stride_ob=4,
        stride_ok=1,
        seed=1,
        kind=0,
        offset=0,
        workspace_ptr=0,
        workspace_bytes=0,
        num_sms=132,
        stream=0,
    )


BAD_ARGS = [
    dict(x_dtype=3),
    dict(kind=2),
    dict(B=-1),
    dict(D=0),
    dict(K=0),
    dict(K=2**32),
    dict(offset=-1),
    dict(offset=2**48 - 2),
    dict(stride_xd=-1),
    dict(x_ptr=0),
    dict(out_ptr=0),
    dict(num_sms=0),
]


@pytest.mark.parametrize("bad", BAD_ARGS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
@pytest.mark.parametrize("fn", [pytest.param("project", marks=needs_cuda_build), "host_emulate_project"])
def test_bad_arguments_raise_value_error(fn, bad):
    buf = torch.zeros(64)
    args = good_args(buf)
    args.update(bad)
    if fn == "host_emulate_project":  # allocates its own workspace, runs on no stream
        for name in ("workspace_ptr", "workspace_bytes", "stream"):
            args.pop(name)
    with pytest.raises(ValueError, match=f"fastjl._C.{fn}"):
        getattr(_C, fn)(**args)


@needs_cuda_build
@pytest.mark.parametrize("workspace", [dict(workspace_ptr=0), dict(workspace_bytes=8)])
def test_missing_or_small_workspace_is_refused(workspace):
    buf = torch.zeros(64)
    needed = _C.project_workspace_bytes(2, 10**6, 4, 1000)
    assert needed > 8
    args = good_args(buf)
    args.update(D=10**6, num_sms=1000, workspace_ptr=buf.data_ptr(), workspace_bytes=needed)
    args.update(workspace)
    with pytest.raises(ValueError, match=f"workspace of {needed} bytes"):
        _C.project(**args)


def test_workspace_helpers_check_sizes():
    with pytest.raises(ValueError, match="project_workspace_bytes"):
        _C.project_workspace_bytes(-1, 10, 10, 132)
    with pytest.raises(ValueError, match="project_plan"):
        _C.project_plan(1, 10, 0, 132)
    with pytest.raises(ValueError, match="num_sms"):
        _C.project_workspace_bytes(1, 10, 10, 0)


@needs_cuda_build
def test_project_refuses_host_memory():
    """Without a GPU: RuntimeError naming the op (no device / driver); with one: ValueError,
    since host pointers are refused before a kernel could fault on them."""
    buf = torch.zeros(64)
    with pytest.raises((RuntimeError, ValueError), match="fastjl._C.project"):
        _C.project(**good_args(buf))
