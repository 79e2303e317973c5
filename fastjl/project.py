"""``fastjl.project``: the one operation, ``x @ P`` with ``P`` generated on the fly."""

from __future__ import annotations

import torch

from . import _backends
from .autograd import jl_factor, needs_grad, project_function
from .sparse import check_sparse_options, project_sparse
from .sparse_spec import SPARSE_KINDS
from .validation import (
    check_input,
    check_kind,
    check_offset,
    check_out,
    check_proj_dim,
    check_scale,
    check_seed,
)


def project(
    x: torch.Tensor,
    proj_dim: int,
    *,
    seed: int = 0,
    kind: str = "rademacher",
    offset: int = 0,
    out: torch.Tensor | None = None,
    backend: str = "auto",
    scale: str | None = None,
    check_finite: bool = False,
    sparsity: int = 1,
    mask_rate: float | None = None,
) -> torch.Tensor:
    """Projects the rows of ``x`` with spec v1's random matrix: ``x @ P[offset:offset+D, :K]``.

    Args:
        x: ``(B, D)`` float32, float16 or bfloat16 tensor on any device, any strides.
            float64 is accepted by ``backend="torch"`` as an exact reference (float64 out).
        proj_dim: K >= 1, any value (columns of ``P`` do not depend on K: smaller K is a prefix).
        seed: 0 <= seed < 2^64.
        kind: ``"rademacher"`` (±1), ``"gaussian"`` (N(0, 1)), or the sparse kinds (torch
            backend only, see :mod:`fastjl.sparse_spec`): ``"sjlt"`` (``sparsity`` entries ±1
            per row of P, in distinct columns; a smaller K is *not* a prefix) and ``"grass"``
            (rows kept with probability ``mask_rate``, then sjlt).
        offset: first row of ``P`` to use; ``offset + D <= 2^48``.  Projecting column chunks
            of a vector with matching offsets and summing gives the projection of the whole.
        out: optional ``(B, K)`` float32 tensor on x's device; every element is overwritten.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"`` (see
            :func:`fastjl.backends`); ``FASTJL_BACKEND`` overrides ``"auto"``.
        scale: ``None`` (entries as drawn, TRAK's convention) or ``"jl"`` (divide by sqrt(K),
            so that E||xP||^2 = ||x||^2).
        check_finite: raise ValueError if ``x`` contains NaN or inf.
        sparsity: nonzeros per row of P for the sparse kinds, 1, 2, 4 or 8 (``s <= K <= 2^31``);
            ``scale="jl"`` divides their entries by sqrt(s), not sqrt(K).
        mask_rate: GraSS's keep rate in (0, 1], required by ``kind="grass"`` only.
    Returns:
        ``(B, K)`` float32 tensor on x's device (``out`` if given).

    ``out`` must not overlap ``x`` nor be an expanded (stride-0) tensor (ValueError).  Meta and
    sparse tensors are refused.

    Autograd (every backend alike): if ``x.requires_grad`` (and grad mode is on) the result is
    differentiable with respect to ``x``; the backward pass is the transposed projection
    ``dx = dy @ Pᵀ`` (times ``1/sqrt(K)`` with ``scale="jl"``), computed block by block with
    the torch backend's generator on x's device in bounded memory (:func:`fastjl.block_budget`),
    in float32 (float64 for float64 ``x``) and returned in x's dtype.  It does not depend on the
    forward pass's backend (whose float32 rounding, e.g. Triton's tf32, it does not reproduce).
    With ``out`` given, ``out`` is filled by a differentiable copy.  No double backward.
    """
    if kind in SPARSE_KINDS:
        opts = dict(seed=seed, kind=kind, offset=offset, out=out, backend=backend, scale=scale)
        return project_sparse(x, proj_dim, **opts, check_finite=check_finite, sparsity=sparsity, mask_rate=mask_rate)
    check_sparse_options(kind, sparsity, mask_rate)
    x = check_input(x, allow_float64=backend == "torch", check_finite=check_finite)
    proj_dim = check_proj_dim(proj_dim)
    seed = check_seed(seed)
    kind = check_kind(kind)
    offset = check_offset(offset, x.shape[1])
    scale = check_scale(scale)
    given_out = out is not None
    out = check_out(out, x, proj_dim)
    module = _backends.select(backend, x.device, dtype=x.dtype, batch=x.shape[0], kind=kind)
    if x.dtype == torch.float64 and module.NAME != "torch":
        raise TypeError(f"x of dtype float64 is supported by backend='torch' only, not {module.NAME!r}")
    factor = jl_factor(scale, proj_dim)

    def run(x: torch.Tensor, out: torch.Tensor = out) -> torch.Tensor:
        if x.shape[0] == 0:
            return out
        module.project(x, out, seed=seed, kind=kind, offset=offset)
        if factor != 1.0:
            out.mul_(factor)
        return out

    if not needs_grad(x):
        return run(x)
    target = torch.empty_like(out) if given_out else out  # the user's out gets a differentiable copy
    fresh = lambda x: run(x, target)  # noqa: E731
    y = project_function(x, fresh, seed=seed, kind=kind, offset=offset, factor=factor)
    if given_out:
        return out.copy_(y)
    return y
