"""``fastjl.project_rows``: ``x @ P[rows, :K]`` for an arbitrary set of rows of ``P``.

Where a gradient is nonzero only on scattered rows -- an embedding's per-example gradient is
nonzero only in the rows of the tokens the example looked up -- projecting it needs only those
rows of ``P``.  One call generates exactly them (in bounded blocks, like the torch backend's
``project``), instead of one ``fastjl.project`` call per run of consecutive rows.
"""

from __future__ import annotations

import torch

from . import _backends
from .autograd import jl_factor
from .spec import MAX_ROWS, check_kind, check_seed
from .validation import check_input, check_proj_dim, check_scale


def project_rows(
    x: torch.Tensor,
    rows: torch.Tensor,
    proj_dim: int,
    *,
    seed: int = 0,
    kind: str = "rademacher",
    scale: str | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``x @ P[rows, :proj_dim]`` with spec v1's matrix (the dense kinds), on x's device.

    Args:
        x: ``(B, D)`` float32, float16, bfloat16 or float64 tensor.
        rows: 1-D integer tensor of D global row indices of ``P`` (any order, repeats allowed),
            each in ``[0, 2^48)``: column d of ``x`` multiplies row ``rows[d]``.
        proj_dim, seed, kind, scale: as in :func:`fastjl.project` (kind: ``"rademacher"`` or
            ``"gaussian"``).
        backend: ``"auto"`` (Triton's kernel, reading each row's index, for CUDA tensors where
            Triton runs, else torch; ``FASTJL_BACKEND=torch`` forces torch), ``"triton"`` or
            ``"torch"``.  The CUDA kernel has no row index: ``"cuda"`` raises ValueError.
    Returns:
        ``(B, proj_dim)`` float32 (float64 for float64 ``x``; torch backend only), the same P
        on every backend (Triton's float32 ``x`` goes through its tf32 dot as in
        :func:`fastjl.project`).  Not differentiable: ``x`` must not require grad while grad
        mode is on.
    """
    x = check_input(x, allow_float64=True)
    proj_dim = check_proj_dim(proj_dim)
    seed, kind, scale = check_seed(seed), check_kind(kind), check_scale(scale)
    if not isinstance(rows, torch.Tensor) or rows.dim() != 1:
        raise TypeError(f"rows must be a 1-D integer tensor of length D = {x.shape[1]}, got {_describe(rows)}")
    if rows.dtype.is_floating_point or rows.dtype.is_complex or rows.dtype == torch.bool:
        raise TypeError(f"rows must have an integer dtype, got {rows.dtype}")
    if rows.numel() != x.shape[1]:
        raise ValueError(f"rows has {rows.numel()} entries but x has D = {x.shape[1]} columns")
    rows = rows.to(device=x.device, dtype=torch.int64)
    if bool((rows < 0).any()) or bool((rows >= MAX_ROWS).any()):
        raise ValueError(f"rows must lie in [0, 2^48), got values in [{int(rows.min())}, {int(rows.max())}]")
    if torch.is_grad_enabled() and x.requires_grad:
        raise RuntimeError("project_rows is not differentiable: call it on x.detach() or under torch.no_grad()")
    out = torch.empty(x.shape[0], proj_dim, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                      device=x.device)  # fmt: skip
    module = _row_backend(backend, x)
    if x.shape[0] and x.shape[1]:
        module.project(x, out, seed=seed, kind=kind, offset=0, row_index=rows)
    else:
        out.zero_()
    factor = jl_factor(scale, proj_dim)
    return out.mul_(factor) if factor != 1.0 else out


def _describe(rows) -> str:
    if isinstance(rows, torch.Tensor):
        return f"a {rows.dim()}-D tensor of shape {tuple(rows.shape)}"
    return type(rows).__name__


def _row_backend(backend: str, x: torch.Tensor):
    """The module computing ``project_rows`` for ``backend`` on ``x``'s device and dtype."""
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton' for project_rows, got {backend!r}")
    if backend == "auto":  # Triton where "auto" would not pick torch (FASTJL_BACKEND honoured) and it runs
        compiled = _backends.select("auto", x.device, dtype=x.dtype).NAME != "torch" and x.dtype != torch.float64
        triton_runs = _backends._unavailable(_backends._module("triton", "project"), x.device, "project") is None
        backend = "triton" if compiled and triton_runs else "torch"
    if backend == "triton" and x.dtype == torch.float64:
        raise TypeError("x of dtype float64 is supported by backend='torch' only, not 'triton'")
    return _backends.select(backend, x.device)
