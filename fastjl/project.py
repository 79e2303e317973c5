"""``fastjl.project``: the one operation, ``x @ P`` with ``P`` generated on the fly."""

from __future__ import annotations

import math

import torch

from . import _backends
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
) -> torch.Tensor:
    """Projects the rows of ``x`` with spec v1's random matrix: ``x @ P[offset:offset+D, :K]``.

    Args:
        x: ``(B, D)`` float32, float16 or bfloat16 tensor on any device, any strides.
            float64 is accepted by ``backend="torch"`` as an exact reference (float64 out).
        proj_dim: K >= 1, any value (columns of ``P`` do not depend on K: smaller K is a prefix).
        seed: 0 <= seed < 2^64.
        kind: ``"rademacher"`` (±1) or ``"gaussian"`` (N(0, 1)).
        offset: first row of ``P`` to use; ``offset + D <= 2^48``.  Projecting column chunks
            of a vector with matching offsets and summing gives the projection of the whole.
        out: optional ``(B, K)`` float32 tensor on x's device; every element is overwritten.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"`` (see
            :func:`fastjl.backends`); ``FASTJL_BACKEND`` overrides ``"auto"``.
        scale: ``None`` (entries as drawn, TRAK's convention) or ``"jl"`` (divide by sqrt(K),
            so that E||xP||^2 = ||x||^2).
        check_finite: raise ValueError if ``x`` contains NaN or inf.
    Returns:
        ``(B, K)`` float32 tensor on x's device (``out`` if given).
    """
    x = check_input(x, allow_float64=backend == "torch", check_finite=check_finite)
    proj_dim = check_proj_dim(proj_dim)
    seed = check_seed(seed)
    kind = check_kind(kind)
    offset = check_offset(offset, x.shape[1])
    scale = check_scale(scale)
    out = check_out(out, x, proj_dim)
    module = _backends.select(backend, x.device)
    if x.dtype == torch.float64 and module.NAME != "torch":
        raise TypeError(f"x of dtype float64 is supported by backend='torch' only, not {module.NAME!r}")
    if x.shape[0] == 0:
        return out
    module.project(x, out, seed=seed, kind=kind, offset=offset)
    if scale == "jl":
        out.mul_(1.0 / math.sqrt(proj_dim))
    return out
