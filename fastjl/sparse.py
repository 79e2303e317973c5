"""The sparse kinds behind :func:`fastjl.project` (``kind="sjlt"`` and ``kind="grass"``) and
:func:`project_transpose`, the map back from K to D for every kind.

The matrix is fixed in :mod:`fastjl.sparse_spec`.  The torch backend implements the sparse kinds
on every device; ``backend="cuda"`` (:mod:`fastjl._backends.cuda_sparse`) and ``backend="triton"``
(:mod:`fastjl._backends.triton_sparse`) run deterministic fused kernels on CUDA tensors, verified
and timed on an H100 (2026-11-27), so ``backend="auto"`` picks cuda → triton → torch there
(:data:`fastjl._backends.AUTO_ORDER_SPARSE_CUDA`) and torch on CPU tensors.
Autograd: the result is differentiable in ``x``; the backward pass is the transposed projection
(:func:`fastjl._backends.sparse_torch.transpose_sparse`), times the same scale factor, in float32
(float64 for float64 ``x``), returned in x's dtype.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from . import _backends
from .autograd import jl_factor, needs_grad
from .autograd import project_transpose as dense_transpose
from .sparse_spec import SPARSE_KINDS, check_sparse_proj_dim, check_sparsity, mask_threshold
from .spec import KINDS, MAX_ROWS
from .validation import check_input, check_int, check_offset, check_out, check_scale, check_seed

ALL_KINDS = KINDS + SPARSE_KINDS


def check_sparse_options(kind, sparsity, mask_rate) -> tuple[int, int | None]:
    """``(sparsity, mask threshold or None)`` for ``kind``; the options of the sparse kinds are
    refused for the dense ones (they would be silently ignored otherwise)."""
    if kind not in ALL_KINDS:
        raise ValueError(f"kind must be one of {ALL_KINDS}, got {kind!r}")
    if kind not in SPARSE_KINDS:
        if sparsity != 1 or mask_rate is not None:
            raise ValueError(f"sparsity and mask_rate apply to kind='sjlt' or 'grass' only, not kind={kind!r}")
        return 1, None
    sparsity = check_sparsity(sparsity)
    if kind == "grass" and mask_rate is None:
        raise ValueError("kind='grass' needs mask_rate, the fraction of input rows kept, in (0, 1]")
    if kind == "sjlt" and mask_rate is not None:
        raise ValueError("mask_rate applies to kind='grass' only; kind='sjlt' keeps every row")
    return sparsity, (mask_threshold(mask_rate) if kind == "grass" else None)


def sparse_factor(scale, sparsity: int) -> float:
    """``scale="jl"`` divides the sparse kinds' ±1 entries by sqrt(s) (E||xP||^2 = ||x||^2 for sjlt)."""
    return 1.0 / math.sqrt(sparsity) if scale == "jl" else 1.0


class _SparseProject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, run, transpose_options, factor):
        ctx.meta = (x.shape[1], x.dtype, transpose_options, factor)
        return run(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        dim, dtype, options, factor = ctx.meta
        dy = dy.to(torch.float64 if dtype == torch.float64 else torch.float32)
        module = _backends.select("torch", dy.device, "transpose_sparse")
        dx = module.transpose_sparse(dy * factor if factor != 1.0 else dy, dim, **options)
        return dx.to(dtype), None, None, None


def project_sparse(x, proj_dim, *, seed, kind, offset, out, backend, scale, check_finite, sparsity, mask_rate):
    """:func:`fastjl.project` for ``kind="sjlt"`` or ``"grass"`` (arguments as there)."""
    x = check_input(x, allow_float64=backend == "torch", check_finite=check_finite)
    sparsity, threshold = check_sparse_options(kind, sparsity, mask_rate)
    proj_dim = check_sparse_proj_dim(proj_dim, sparsity)
    seed = check_seed(seed)
    offset = check_offset(offset, x.shape[1])
    scale = check_scale(scale)
    given_out = out is not None
    out = check_out(out, x, proj_dim)
    module = _backends.select(backend, x.device, "project_sparse", dtype=x.dtype)
    factor = sparse_factor(scale, sparsity)
    options = dict(seed=seed, offset=offset, sparsity=sparsity, threshold=threshold)

    def run(x: torch.Tensor, out: torch.Tensor = out) -> torch.Tensor:
        if x.shape[0] == 0:
            return out
        module.project_sparse(x, out, **options)
        if factor != 1.0:
            out.mul_(factor)
        return out

    if not needs_grad(x):
        return run(x)
    target = torch.empty_like(out) if given_out else out
    y = _SparseProject.apply(x, lambda x: run(x, target), options, factor)
    return out.copy_(y) if given_out else y


def project_transpose(
    y: torch.Tensor,
    dim: int,
    *,
    seed: int = 0,
    kind: str = "rademacher",
    offset: int = 0,
    scale: str | None = None,
    sparsity: int = 1,
    mask_rate: float | None = None,
) -> torch.Tensor:
    """``y @ P[offset:offset+dim, :K]ᵀ``: maps projected rows ``y`` ``(B, K)`` back to ``(B, dim)``.

    The matrix and the options are those of :func:`fastjl.project` (``scale="jl"`` applies the
    same factor), so ``project_transpose(project(x, K, **o), D, **o)`` is ``x P Pᵀ`` (for sjlt
    with ``scale="jl"`` an unbiased estimate of x).  ``y``: float32 (or float64, computed in
    float64) on any device; runs on the torch backend, in bounded memory, deterministically.
    Returns a ``(B, dim)`` tensor of y's dtype (float32 for float16/bfloat16 ``y``).
    """
    if not isinstance(y, torch.Tensor) or y.dim() != 2 or not y.dtype.is_floating_point:
        got = f"{type(y).__name__} {tuple(y.shape)} {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise TypeError(f"y must be a 2-D floating torch.Tensor (B, K), got {got}")
    sparsity, threshold = check_sparse_options(kind, sparsity, mask_rate)
    seed = check_seed(seed)
    dim = check_int(dim, "dim", low=1, high=MAX_ROWS)
    offset = check_offset(offset, dim)
    if kind in SPARSE_KINDS:
        check_sparse_proj_dim(y.shape[1], sparsity)
    scale = check_scale(scale)
    compute = torch.float64 if y.dtype == torch.float64 else torch.float32
    y = y.detach().to(compute)
    if kind in SPARSE_KINDS:
        y = y * sparse_factor(scale, sparsity) if scale else y
        module = _backends.select("torch", y.device, "transpose_sparse")
        return module.transpose_sparse(y, dim, seed=seed, offset=offset, sparsity=sparsity, threshold=threshold)
    factor = jl_factor(scale, y.shape[1])
    return dense_transpose(y * factor if factor != 1.0 else y, dim, seed=seed, kind=kind, offset=offset)
