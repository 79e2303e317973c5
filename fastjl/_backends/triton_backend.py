"""Triton backend: one fused kernel generating tiles of ``P`` in registers (no ``P`` in memory).

Runs on CUDA tensors, and on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``),
which is how CI tests the kernel logic.

Precision: fp16/bf16 inputs feed ``tl.dot`` in their own dtype (rademacher entries are exact
there; gaussian entries are split into two 16-bit halves, two dots).  fp32 inputs use
``tl.dot(input_precision=FP32_PRECISION)``: "tf32" by default (inputs rounded to 10 mantissa
bits: expected relative error of the projected vector ~3e-4, under the 1e-3 target; still to
be measured on a GPU), "tf32x3" or "ieee" via ``FASTJL_TRITON_FP32_PRECISION``.
Accumulation is always float32.

``project_linear`` (kernel in ``triton_linear_kernels``) projects a Linear layer's per-example
weight (and bias) gradients, forming their tiles in float32 registers from the layer's inputs
and output gradients; those tiles always take the float32 path of ``tl.dot``.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from ..spec import KIND_CODES
from . import linear_chunked

NAME = "triton"

FP32_PRECISIONS = ("tf32", "tf32x3", "ieee")
FP32_PRECISION = os.environ.get("FASTJL_TRITON_FP32_PRECISION", "tf32")
_ALIGN = {"rademacher": 128, "gaussian": 4}  # BLOCK_K must be a multiple of the counter width


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def availability(device: torch.device) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    if FP32_PRECISION not in FP32_PRECISIONS:
        return f"FASTJL_TRITON_FP32_PRECISION must be one of {FP32_PRECISIONS}, got {FP32_PRECISION!r}"
    if device.type == "cuda":
        from ..devices import device_problem  # imported here: only availability() uses it

        problem = device_problem(device)
        if problem is not None:
            return problem
        major, _ = torch.cuda.get_device_capability(device)
        return None if major >= 8 else "needs a GPU of compute capability 8.0 or newer (bf16 tl.dot)"
    if device.type == "cpu":
        return None if _interpreting() else "CPU tensors need Triton's interpreter (set TRITON_INTERPRET=1)"
    return f"runs on CUDA tensors, got a tensor on {device}"


@functools.cache
def _kernels():
    from . import triton_kernels

    return triton_kernels


@functools.cache
def _linear_kernels():
    from . import triton_linear_kernels

    return triton_linear_kernels


# project_linear forms its x tile in float32 registers next to the accumulator: at
# BLOCK_B = 128 that spilled ~1 KB per thread on sm_90, at 64 none.
LINEAR_MAX_BLOCK_B = 64


def _config(
    batch: int, proj_dim: int, device: torch.device, *, wide_d: bool = True, max_block_b: int = 128
) -> dict:
    """Tile sizes.  The interpreter gets the smallest legal tiles (it runs them in numpy);
    GPUs get batch tiles as large as the batch allows (up to ``max_block_b``), so one
    generated tile of P feeds as many rows as possible.  ``wide_d`` (rademacher tiles of a
    16-bit x): 64 rows of P per step; otherwise 32, which keeps the gaussian and float32
    tiles, with their promoted partial sums, in registers (ahead-of-time compiles for sm_80
    and sm_90: 0 spills at 32 where 64 spilled 240-420 bytes per thread)."""
    if device.type != "cuda":
        return dict(BLOCK_B=16, BLOCK_D=16, BLOCK_K=128, num_warps=4)
    block_b = min(max_block_b, 16 if batch <= 16 else 32 if batch <= 32 else 64 if batch <= 64 else 128)
    return dict(
        BLOCK_B=block_b, BLOCK_D=64 if wide_d else 32, BLOCK_K=128, num_warps=8 if block_b >= 64 else 4, num_stages=3
    )


def project_tiles(kind: str) -> dict:
    """``_config`` keywords for ``project``: 64-row steps for rademacher tiles, 32 for
    gaussian ones.  (Rademacher at 32 rows with 8 warps trips an assertion in Triton 3.6's
    gather lowering, seen on an H100 with float32 x; at 64 rows it compiles everywhere.)"""
    return dict(wide_d=kind == "rademacher")


def linear_tiles(kind: str) -> dict:
    """``_config`` keywords for ``project_linear`` (float32 x tiles formed in registers):
    batch tiles up to 64; 64-row steps for rademacher, 32 for gaussian (which spilled up to
    ~360 bytes per thread at 64 rows)."""
    return dict(wide_d=kind == "rademacher", max_block_b=LINEAR_MAX_BLOCK_B)


def one_wave_splits(programs: int, slots: int) -> int:
    """D-splits for ``programs`` output tiles and ``slots`` resident programs: as many as fit
    in one wave (csrc/project_plan.cuh's rule: rounding up put 16 x 17 = 272 programs on an
    H100's 264 slots, a second wave as long as the first)."""
    return 1 if programs <= 0 or programs >= slots else slots // programs


# Warps per SM the D-split plan fills: programs per SM = WARPS_PER_SM // num_warps, so 2 of the
# 8-warp tiles (B >= 64) and 4 of the 4-warp ones (B <= 32).  Planning 2 of the 4-warp tiles
# left an H100 SM at 8 warps (2 per scheduler) where Triton 3.6 fits 4 (bf16 rademacher B32:
# 128 registers, 20 KiB of shared memory; triton_aot.compile_config).  Where the compiler's
# registers or shared memory fit fewer (float32 gaussian B32: 2, 214 registers), the grid runs
# in two full rounds of half-length programs: the time of the 2-per-SM plan, not more
# (every 4-warp tile fits >= 2 per SM: <= 255 registers, <= 50 KiB).  bench/NOTES.md, stop 26.
# FASTJL_TRITON_WARPS_PER_SM overrides it (8: the former plan), so that one GPU run can time
# both plans (bench/gpu_check.sh's bench_triton_plan stage).
WARPS_PER_SM = 16
WARPS_PER_SM_ENV = "FASTJL_TRITON_WARPS_PER_SM"


def warps_per_sm() -> int:
    """``WARPS_PER_SM``, or the positive integer in ``FASTJL_TRITON_WARPS_PER_SM``."""
    raw = os.environ.get(WARPS_PER_SM_ENV)
    if raw is None:
        return WARPS_PER_SM
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{WARPS_PER_SM_ENV} must be a positive integer, got {raw!r}")
    return value


def programs_per_sm(num_warps: int) -> int:
    return max(1, warps_per_sm() // num_warps)


def _num_splits(programs: int, dim: int, block_d: int, num_warps: int, device: torch.device) -> int:
    """Split D so small-B shapes still fill the GPU (``programs_per_sm`` programs per SM, one
    wave), keeping at least 8 tiles of D per split so the fixed-order reduction stays cheap."""
    if device.type != "cuda":
        return 1 if dim <= 4 * block_d else 2  # the interpreter still exercises the split path
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    slots = programs_per_sm(num_warps) * sms
    return max(1, min(one_wave_splits(programs, slots), dim // (8 * block_d)))


def project(
    x: torch.Tensor, out: torch.Tensor, *, seed: int, kind: str, offset: int, row_index: torch.Tensor | None = None
) -> None:
    """Writes ``x @ P[offset:offset+D, :K]`` into ``out`` (``(B, K)`` float32, any strides); with
    ``row_index`` (1-D int64, length D, on x's device), ``x @ P[offset + row_index, :K]``."""
    k = _kernels()
    batch, dim = x.shape
    proj_dim = out.shape[1]
    cfg, splits, d_per_split = _plan(batch, dim, proj_dim, x.device, **project_tiles(kind))
    if row_index is not None:  # padded to whole splits: the kernel's index loads need no mask
        padded = torch.zeros(splits * d_per_split, dtype=torch.int64, device=x.device)
        padded[:dim] = row_index
        row_index = padded
    launch = {n: cfg.pop(n) for n in ("num_warps", "num_stages") if n in cfg}
    grid_b = -(-batch // cfg["BLOCK_B"])
    grid_k = -(-proj_dim // cfg["BLOCK_K"])
    compute = {torch.float32: k.tl.float32, torch.float16: k.tl.float16, torch.bfloat16: k.tl.bfloat16}[x.dtype]
    if splits == 1:
        dest, dest_strides = out, (0, out.stride(0), out.stride(1))
    else:
        dest = torch.empty((splits, batch, proj_dim), dtype=torch.float32, device=x.device)
        dest_strides = dest.stride()
    k._project_kernel[(grid_b, grid_k, splits)](
        x,
        dest,
        batch,
        dim,
        proj_dim,
        x.stride(0),
        x.stride(1),
        *dest_strides,
        seed,
        offset,
        d_per_split,
        row_index if row_index is not None else x,  # unread without ROW_INDEX
        KIND=KIND_CODES[kind],
        ROW_INDEX=row_index is not None,
        COMPUTE=compute,
        GAUSS=kind == "gaussian",
        PRECISION=FP32_PRECISION,
        EMULATE=x.device.type != "cuda",
        **cfg,
        **launch,
    )
    if splits > 1:
        _sum_splits(dest, out)


def _plan(batch: int, dim: int, proj_dim: int, device: torch.device, **config) -> tuple[dict, int, int]:
    """Tiles, D splits and rows per split (a multiple of BLOCK_D) for ``dim`` rows of P; the
    same for ``project`` and ``project_linear``, which differ only in how they form x tiles.
    ``config``: ``_config``'s keywords."""
    cfg = _config(batch, proj_dim, device, **config)
    programs = -(-batch // cfg["BLOCK_B"]) * -(-proj_dim // cfg["BLOCK_K"])
    splits = _num_splits(programs, dim, cfg["BLOCK_D"], cfg.get("num_warps", 4), device)
    d_per_split = -(-dim // splits)
    d_per_split = -(-d_per_split // cfg["BLOCK_D"]) * cfg["BLOCK_D"]  # splits start on a tile
    return cfg, -(-dim // d_per_split), d_per_split


def project_linear(
    a: torch.Tensor, g: torch.Tensor, out: torch.Tensor, *, seed: int, kind: str, offset: int, bias: bool
) -> None:
    """Writes ``x @ P[offset : offset + D, :K]`` into ``out`` (``(B, K)`` float32, any strides),
    where ``x = [G.flatten(1), g.sum(1)]`` (bias) or ``G.flatten(1)``, ``G_b = sum_t g_bt a_bt^T``,
    ``D = d_out * d_in (+ d_out)``, without writing G or anything of its size to memory.

    ``a`` (B, T, d_in) and ``g`` (B, T, d_out): same dtype (float32/float16/bfloat16) and
    device, any strides; arguments arrive validated.  Sequences (T > 1) on a GPU go through bounded
    chunks of ``G`` projected by :func:`project` (:mod:`.linear_chunked`: the fused producer
    measured 40x slower there).
    """
    if linear_chunked.use_chunks(a.shape[1], a.device):  # sequences: see linear_chunked
        linear_chunked.project_linear(project, a, g, out, seed=seed, kind=kind, offset=offset, bias=bias)
        return
    k = _linear_kernels()
    batch, steps, d_in = a.shape
    d_out = g.shape[2]
    proj_dim = out.shape[1]
    weight_rows = d_out * d_in
    dim = weight_rows + (d_out if bias else 0)
    cfg, splits, d_per_split = _plan(batch, dim, proj_dim, a.device, **linear_tiles(kind))
    launch = {n: cfg.pop(n) for n in ("num_warps", "num_stages") if n in cfg}
    if splits == 1:
        dest, dest_strides = out, (0, out.stride(0), out.stride(1))
    else:
        dest = torch.empty((splits, batch, proj_dim), dtype=torch.float32, device=a.device)
        dest_strides = dest.stride()
    grid = (-(-batch // cfg["BLOCK_B"]), -(-proj_dim // cfg["BLOCK_K"]), splits)
    k._project_linear_kernel[grid](
        a,
        g,
        dest,
        batch,
        steps,
        d_in,
        weight_rows,
        dim,
        proj_dim,
        *a.stride(),
        *g.stride(),
        *dest_strides,
        seed,
        offset,
        d_per_split,
        KIND=KIND_CODES[kind],
        PRECISION=FP32_PRECISION,
        EMULATE=a.device.type != "cuda",
        **cfg,
        **launch,
    )
    if splits > 1:
        _sum_splits(dest, out)


def _sum_splits(partials: torch.Tensor, out: torch.Tensor) -> None:
    """``out = partials.sum(0)`` in a fixed order (bitwise reproducible, no atomics)."""
    splits, batch, proj_dim = partials.shape
    n = batch * proj_dim
    block = 1024
    _kernels()._sum_splits_kernel[(-(-n // block),)](
        partials, out, n, proj_dim, splits, out.stride(0), out.stride(1), BLOCK=block
    )


def project_sparse(
    x: torch.Tensor, out: torch.Tensor, *, seed: int, offset: int, sparsity: int, threshold: int | None
) -> None:
    """The sparse kinds (sjlt, grass): see :mod:`.triton_sparse` (imported here lazily: it imports
    this module).  ``backend="auto"`` does not pick it yet (``fastjl/sparse.py``)."""
    from . import triton_sparse

    triton_sparse.project_sparse(x, out, seed=seed, offset=offset, sparsity=sparsity, threshold=threshold)
