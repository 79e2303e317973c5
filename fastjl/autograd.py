"""Autograd for :func:`fastjl.project` and :func:`fastjl.project_linear`: one behaviour for every backend.

The projection ``y = x @ P`` is linear in ``x``, so its backward is the transposed projection
``dx = dy @ Pᵀ``.  Whatever backend ran the forward pass (torch, Triton, CUDA), the backward
runs here, with the torch backend's block generator (:func:`fastjl.blocks.generate_block`):
blocks of rows of ``P`` are generated on x's device and multiplied as ``dy @ blockᵀ`` into
the matching columns of ``dx``, so no more than :func:`fastjl.block_budget` bytes of ``P``
exist at once.  It computes in float32 (float64 for float64 inputs) and returns gradients in
the input's dtype.  Backward passes are not themselves differentiable (no double backward).

For ``project_linear`` (``y_b = vec(G_b) @ P`` with ``G_b = Σ_t g_bt a_btᵀ``) the gradient of
``G`` is formed one block of rows at a time, ``dG = dy @ P_blockᵀ``, and turned into
``da = g dG`` and ``dg = a dGᵀ`` at once: nothing of size ``B · d_out · d_in`` is formed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

from ._backends.cpu_workers import block_bytes, run_in_order, worker_count
from ._backends.torch_backend import block_budget, linear_block_rows, linear_blocks, plan_blocks
from .blocks import generate_block


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _col_blocks(proj_dim: int, cols: int):
    for c0 in range(0, proj_dim, cols):
        yield c0, min(proj_dim, c0 + cols)


def project_transpose(dy: torch.Tensor, dim: int, *, seed: int, kind: str, offset: int) -> torch.Tensor:
    """``dy @ P[offset:offset+dim, :K]ᵀ`` for ``dy`` ``(B, K)`` (float32 or float64), in dy's
    dtype and device, block by block within :func:`fastjl.block_budget`."""
    batch, proj_dim = dy.shape
    compute = dy.dtype
    itemsize = torch.finfo(compute).bits // 8
    rows, cols = plan_blocks(batch, dim, proj_dim, itemsize, block_bytes(dy.device, block_budget()))
    dx = torch.empty((batch, dim), dtype=compute, device=dy.device)

    def work(r0r1, buffer):  # dx[:, r0:r1] = dy @ P[r0:r1]ᵀ, column tile by column tile
        r0, r1 = r0r1
        acc = torch.zeros((batch, r1 - r0), dtype=compute, device=dy.device)
        for c0, c1 in _col_blocks(proj_dim, cols):
            block = buffer[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
            generate_block(seed, kind, offset + r0, r1 - r0, c0, c1 - c0, compute, dy.device, out=block)
            acc.addmm_(dy[:, c0:c1], block.T)
        return acc

    def store(r0r1, acc):
        dx[:, r0r1[0] : r0r1[1]] = acc

    def buffer():
        return torch.empty(min(rows, dim) * cols, dtype=compute, device=dy.device)

    jobs = [(r0, min(dim, r0 + rows)) for r0 in range(0, dim, rows)]
    workers = worker_count(dy.device, len(jobs), block_budget(), block_bytes(dy.device, block_budget()))
    run_in_order(jobs, work, store, workers=workers, make_state=buffer)
    return dx


class _Project(torch.autograd.Function):
    """``y = forward(x)`` (any backend) with ``dx = factor · dy @ Pᵀ``."""

    @staticmethod
    def forward(ctx, x, run: Callable[[torch.Tensor], torch.Tensor], seed, kind, offset, factor):
        ctx.meta = (x.shape[1], x.dtype, seed, kind, offset, factor)
        return run(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        dim, dtype, seed, kind, offset, factor = ctx.meta
        dy = dy.to(_compute_dtype(dtype))
        if factor != 1.0:
            dy = dy * factor
        dx = project_transpose(dy, dim, seed=seed, kind=kind, offset=offset)
        return dx.to(dtype), None, None, None, None, None


def project_function(x, run, *, seed: int, kind: str, offset: int, factor: float) -> torch.Tensor:
    """``run(x)`` (which computes ``factor · x @ P[offset:, :K]`` without autograd) with a
    backward pass for ``x``."""
    return _Project.apply(x, run, seed, kind, offset, factor)


class _ProjectLinear(torch.autograd.Function):
    """``y = forward(a, g)`` (any backend) for the dense kinds, with blockwise grads of a and g."""

    @staticmethod
    def forward(ctx, a, g, run, seed, kind, offset, bias, factor):
        ctx.save_for_backward(a, g)
        ctx.meta = (seed, kind, offset, bias, factor)
        return run(a, g)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        a, g = ctx.saved_tensors
        seed, kind, offset, bias, factor = ctx.meta
        need_a, need_g = ctx.needs_input_grad[:2]
        compute = _compute_dtype(a.dtype)
        dy = dy.to(compute)
        if factor != 1.0:
            dy = dy * factor
        batch, tokens, d_in = a.shape
        d_out = g.shape[2]
        proj_dim = dy.shape[1]
        itemsize = torch.finfo(compute).bits // 8
        ac, gc = a.to(compute), g.to(compute)
        da = torch.zeros((batch, tokens, d_in), dtype=compute, device=a.device) if need_a else None
        dg = torch.zeros((batch, tokens, d_out), dtype=compute, device=a.device) if need_g else None
        rows, cols = plan_blocks(batch, d_out * d_in, proj_dim, itemsize, block_budget())
        buffer = torch.empty(linear_block_rows(d_in, rows) * cols, dtype=compute, device=a.device)
        for o0, o1, i0, i1 in linear_blocks(d_out, d_in, rows):  # the forward pass's blocks
            n = (o1 - o0) * (i1 - i0)
            grad_g = torch.zeros((batch, n), dtype=compute, device=a.device)  # dL/dG for this block
            for c0, c1 in _col_blocks(proj_dim, cols):
                block = buffer[: n * (c1 - c0)].view(n, c1 - c0)
                row0 = offset + o0 * d_in + i0
                generate_block(seed, kind, row0, n, c0, c1 - c0, compute, a.device, out=block)
                grad_g.addmm_(dy[:, c0:c1], block.T)
            grad_g = grad_g.view(batch, o1 - o0, i1 - i0)
            if need_a:  # dL/da_bt = Σ_o g_bto dG_bo
                da[:, :, i0:i1] += torch.bmm(gc[:, :, o0:o1], grad_g)
            if need_g:  # dL/dg_bt = dG_b a_bt
                dg[:, :, o0:o1] += torch.bmm(ac[:, :, i0:i1], grad_g.transpose(1, 2))
        if bias and need_g:  # the bias gradient Σ_t g_bt sits at rows offset + d_out * d_in
            dbias = project_transpose(dy, d_out, seed=seed, kind=kind, offset=offset + d_out * d_in)
            dg += dbias[:, None, :]
        da = da.to(a.dtype) if need_a else None
        dg = dg.to(g.dtype) if need_g else None
        return da, dg, None, None, None, None, None, None


def project_linear_function(a, g, run, *, seed: int, kind: str, offset: int, bias: bool, factor: float):
    """``run(a, g)`` (dense kinds, computed without autograd) with a backward pass for a and g."""
    return _ProjectLinear.apply(a, g, run, seed, kind, offset, bias, factor)


def needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def jl_factor(scale, proj_dim: int) -> float:
    return 1.0 / math.sqrt(proj_dim) if scale == "jl" else 1.0
