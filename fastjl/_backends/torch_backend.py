"""Pure-PyTorch backend: the reference, the CPU path and the fallback.

``out = x @ P[offset:offset+D, :K]`` computed block by block: a block of ``P`` is generated
from the spec (:func:`fastjl.blocks.generate_block`, exact bits), multiplied into a float32
accumulator, and dropped.  No more than ``block_budget()`` bytes of ``P`` (and of converted
input) exist at once, so D = 10^9 runs in bounded memory.  On CPU the blocks run on worker
threads (:mod:`.cpu_workers`), their products summed in block order.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch

from ..blocks import generate_block
from .cpu_workers import block_bytes, run_in_order, worker_count

NAME = "torch"

_DEFAULT_BUDGET_MB = 64
# Column tiles are multiples of 128 so no rademacher Philox call is split across tiles.
_COLUMN_QUANTUM = 128
BUDGET_ENV_VAR = "FASTJL_TORCH_BLOCK_MB"
# Smallest and largest budget FASTJL_TORCH_BLOCK_MB may ask for, in MiB: below 1 MiB blocks
# shrink to a few rows and generation becomes hundreds of times slower.
MIN_BUDGET_MB = 1
MAX_BUDGET_MB = 1 << 20
_budget_bytes: int | None = None  # read from the environment when first used


def parse_budget_env(value: str | None) -> int:
    """Bytes for a ``FASTJL_TORCH_BLOCK_MB`` value (None: the default, 64 MiB); ValueError naming
    the variable for anything but a finite number of MiB in [1, 2^20]."""
    if value is None:
        return _DEFAULT_BUDGET_MB * 2**20
    try:
        mb = float(value)
    except ValueError:
        mb = math.nan
    if not (math.isfinite(mb) and MIN_BUDGET_MB <= mb <= MAX_BUDGET_MB):
        raise ValueError(
            f"environment variable {BUDGET_ENV_VAR}={value!r} is invalid: it must be a number of MiB between "
            f"{MIN_BUDGET_MB} and {MAX_BUDGET_MB} (default {_DEFAULT_BUDGET_MB}); unset it or fix it"
        )
    return int(mb * 2**20)


def block_budget() -> int:
    """Bytes of ``P`` (and of converted input) the torch backend materializes at once.

    Read from ``FASTJL_TORCH_BLOCK_MB`` (MiB, default 64) on first use unless
    :func:`set_block_budget` was called; an invalid value raises ValueError naming it."""
    global _budget_bytes
    if _budget_bytes is None:
        _budget_bytes = parse_budget_env(os.environ.get(BUDGET_ENV_VAR))
    return _budget_bytes


def set_block_budget(num_bytes: int | None) -> int | None:
    """Sets the torch backend's memory budget in bytes (also ``FASTJL_TORCH_BLOCK_MB``).

    Returns the previous value (None if ``FASTJL_TORCH_BLOCK_MB`` is invalid and was not yet
    read); ``set_block_budget(None)`` goes back to the environment's value.  Smaller budgets
    trade speed for memory; at least one 128-column tile of one row must fit (512 bytes in
    float32).
    """
    global _budget_bytes
    if num_bytes is None:  # back to FASTJL_TORCH_BLOCK_MB (what an invalid one returned as previous)
        previous, _budget_bytes = _budget_bytes, None
        return previous
    if isinstance(num_bytes, bool) or not isinstance(num_bytes, int) or num_bytes < 1024:
        raise ValueError(f"block budget must be an int of at least 1024 bytes, got {num_bytes!r}")
    try:
        previous = block_budget()
    except ValueError:  # an invalid environment value is being overridden
        previous = None
    _budget_bytes = num_bytes
    return previous


def availability(device: torch.device) -> str | None:
    return None  # torch runs wherever the tensor lives


def plan_blocks(batch: int, dim: int, proj_dim: int, itemsize: int, budget: int) -> tuple[int, int]:
    """``(rows, cols)`` of each generated block of ``P`` such that the block, and the input
    slice ``(batch, rows)`` converted to the compute dtype, each fit in ``budget`` bytes."""
    cols = proj_dim
    if cols * itemsize * 256 > budget:  # keep >= 256 rows per block for matmul efficiency
        cols = max(_COLUMN_QUANTUM, budget // (256 * itemsize) // _COLUMN_QUANTUM * _COLUMN_QUANTUM)
        cols = min(cols, proj_dim)
    rows = max(1, budget // (cols * itemsize))
    rows = max(1, min(rows, budget // (max(batch, 1) * itemsize), dim))
    return rows, cols


def project(
    x: torch.Tensor, out: torch.Tensor, *, seed: int, kind: str, offset: int, row_index: torch.Tensor | None = None
) -> None:
    """Writes ``x @ P[offset:offset+D, :K]`` into ``out`` (``(B, K)``, float32 or float64); with
    ``row_index`` (1-D int64, length D, on x's device), ``x @ P[offset + row_index, :K]``."""
    batch, dim = x.shape
    proj_dim = out.shape[1]
    compute = out.dtype
    itemsize = torch.finfo(compute).bits // 8
    per_block = block_bytes(x.device, block_budget())
    rows, cols = plan_blocks(batch, dim, proj_dim, itemsize, per_block)

    def work(job, buffer):
        r0, r1 = job.rows
        block = buffer[: (r1 - r0) * (job.c1 - job.c0)].view(r1 - r0, job.c1 - job.c0)
        if row_index is None:
            generate_block(seed, kind, offset + r0, r1 - r0, job.c0, job.c1 - job.c0, compute, x.device, out=block)
        else:
            which = row_index[r0:r1]
            generate_block(seed, kind, offset, r1 - r0, job.c0, job.c1 - job.c0, compute, x.device, block, which)
        return torch.mm(x[:, r0:r1].to(compute), block)

    def buffer():  # one per worker, reused by each of its blocks
        return torch.empty(min(rows, dim) * cols, dtype=compute, device=x.device)

    row_blocks = [(r0, min(dim, r0 + rows)) for r0 in range(0, dim, rows)]
    sum_blocks_into(out, cols, row_blocks, work, buffer)


class _Job(NamedTuple):
    c0: int  # the output columns this block's product adds to
    c1: int
    first: bool  # first block of its columns: starts the sum
    last: bool  # last block of its columns: the sum is complete
    rows: tuple  # which rows of P (for the caller's ``work``)


def sum_blocks_into(out: torch.Tensor, cols: int, row_blocks: list, work, make_state=lambda: None) -> None:
    """``out[:, c0:c1] = Σ_blocks work(job, state)`` for every column tile of ``cols`` columns
    (``job.rows``: an entry of ``row_blocks``; ``make_state()``: one per worker), the blocks summed
    in the order of ``row_blocks``, so the result does not depend on how many CPU workers ran
    them (see :mod:`.cpu_workers`).  Also the sparse kinds' (``sparse_torch``)."""
    proj_dim = out.shape[1]
    if not row_blocks:  # D = 0: an empty sum
        out.zero_()
        return
    jobs = [
        _Job(c0, min(proj_dim, c0 + cols), k == 0, k == len(row_blocks) - 1, rows)
        for c0 in range(0, proj_dim, cols)
        for k, rows in enumerate(row_blocks)
    ]
    acc = [None]

    def consume(job: _Job, partial: torch.Tensor) -> None:
        acc[0] = partial if job.first else acc[0].add_(partial)
        if job.last:
            out[:, job.c0 : job.c1] = acc[0]

    budget = block_budget()
    workers = worker_count(out.device, len(jobs), budget, block_bytes(out.device, budget))
    run_in_order(jobs, work, consume, workers=workers, make_state=make_state)


def _spans(d_in: int, rows: int) -> tuple[int, int]:
    # A block covers whole outputs o (contiguous rows of P) when d_in rows fit, else a piece
    # of one output's row.
    return (rows // d_in, d_in) if rows >= d_in else (1, rows)


def linear_block_rows(d_in: int, rows: int) -> int:
    """The most weight rows one of :func:`linear_blocks`' blocks holds."""
    span_o, span_i = _spans(d_in, rows)
    return span_o * span_i


def linear_blocks(d_out: int, d_in: int, rows: int):
    """``(o0, o1, i0, i1)``: the blocks of at most ``rows`` weight rows ``o * d_in + i`` that
    ``project_linear`` and its backward pass (``fastjl.autograd``) walk, each contiguous in P."""
    span_o, span_i = _spans(d_in, rows)
    for o0 in range(0, d_out, span_o):
        for i0 in range(0, d_in, span_i):
            yield o0, min(d_out, o0 + span_o), i0, min(d_in, i0 + span_i)


def project_linear(
    a: torch.Tensor, g: torch.Tensor, out: torch.Tensor, *, seed: int, kind: str, offset: int, bias: bool
) -> None:
    """Writes the projection of a Linear layer's per-example gradients into ``out`` ``(B, K)``.

    ``a`` ``(B, T, d_in)``, ``g`` ``(B, T, d_out)``: example b's weight gradient
    ``G_b = Σ_t g_bt a_btᵀ`` is row-major ``o * d_in + i`` at rows ``offset ...`` of ``P``; with
    ``bias`` its bias gradient ``Σ_t g_bt`` follows at ``offset + d_out * d_in``.  ``G`` is formed
    one block of rows at a time (in the compute dtype, so 16-bit inputs lose nothing for T = 1)
    and multiplied by the matching block of ``P``: never more than ``block_budget()`` bytes of
    either exist, whatever ``d_out * d_in``.
    """
    batch, tokens, d_in = a.shape
    d_out = g.shape[2]
    proj_dim = out.shape[1]
    compute = out.dtype
    itemsize = torch.finfo(compute).bits // 8
    rows, cols = plan_blocks(batch, d_out * d_in, proj_dim, itemsize, block_bytes(a.device, block_budget()))
    a, g = a.to(compute), g.to(compute)
    most = linear_block_rows(d_in, rows)

    def buffers():
        p = torch.empty(most * cols, dtype=compute, device=a.device)
        return p, torch.empty(batch * most, dtype=compute, device=a.device)

    def work(job, state):
        p_buffer, g_buffer = state
        o0, o1, i0, i1 = job.rows
        n = (o1 - o0) * (i1 - i0)
        grad_block = g_buffer[: batch * n].view(batch, o1 - o0, i1 - i0)
        if tokens == 1:  # an outer product; bmm with an inner dimension of 1 is slow
            torch.mul(g[:, 0, o0:o1, None], a[:, 0, None, i0:i1], out=grad_block)
        else:
            torch.bmm(g[:, :, o0:o1].transpose(1, 2), a[:, :, i0:i1], out=grad_block)
        block = p_buffer[: n * (job.c1 - job.c0)].view(n, job.c1 - job.c0)
        row0 = offset + o0 * d_in + i0  # rows are contiguous: whole outputs, or one output
        generate_block(seed, kind, row0, n, job.c0, job.c1 - job.c0, compute, a.device, out=block)
        return torch.mm(grad_block.view(batch, n), block)

    sum_blocks_into(out, cols, list(linear_blocks(d_out, d_in, rows)), work, buffers)
    if bias:
        bias_rows = torch.empty_like(out)
        project(g.sum(1), bias_rows, seed=seed, kind=kind, offset=offset + d_out * d_in)
        out.add_(bias_rows)
