"""fastjl as the projector of EleutherAI's bergson (bergson 2.5)::

    from fastjl.integrations.bergson import use_fastjl

    with use_fastjl():
        bergson.collect_gradients(model=model, data=data, processor=processor, cfg=cfg)

Within the block bergson's random projections are fastjl's, in both of bergson's modes:

- ``projection_target="global"`` (single-sided, one vector per example): each module's
  flattened gradient is projected by :func:`fastjl.project` (or, when bergson holds it as the
  outer product ``g ⊗ a`` of output gradients and inputs, by :func:`fastjl.project_linear`, which
  never forms it) and the modules are summed.  No block of the ``(proj_dim, n)`` matrix is formed:
  bergson generates it in blocks of up to 2^27 entries (512 MiB in float32) per module and batch.
- ``projection_target="per_module"`` (two-sided, ``p × p`` per module): the left and right
  factors ``(p, d_out)`` and ``(p, d_in)`` are fastjl's Kronecker factors (``normal``; the
  result is exactly ``fastjl.project_linear(a, g, (p, p), kind="kronecker", seed=module_seed(
  ...))``) or spec v1's Rademacher rows (``rademacher``).  They are small and bergson still caches
  them per module, as it caches its own.

bergson's conventions are kept: its ``projection_type`` (``normal``/``rademacher``) and
``projection_scale`` (``jl``: divide by sqrt(proj_dim); ``row_norm``: divide by each row's norm)
mean what they mean in bergson, each module (and role, and ``projection_seed``) has its own
matrix that depends on nothing else (fastjl's seed for it is a 64-bit hash of bergson's
identifier ``"<module>/<role>[/seed<s>]"``, see :func:`module_seed`), and outputs have bergson's
dtype.  What differs is the draw: fastjl's matrices have the same distribution as bergson's (iid
N(0, 1) or ±1 entries before scaling) but other values, so an index built inside ``use_fastjl()``
must be queried and scored inside it too (bergson records no marker that tells them apart).

One combination is handed back to bergson's own code: the global projection with
``projection_type="normal"`` and ``projection_scale="row_norm"`` (its divisor is the norm of each
row of the materialized matrix, which fastjl never forms).  ``row_norm`` with Rademacher entries
divides by sqrt(n) exactly, as bergson's does.
"""

from __future__ import annotations

import contextlib
import hashlib
import math

import torch

from ..kronecker import kronecker_factors
from ..linear import project_linear
from ..project import project
from ..spec import matrix_block
from ._common import require

_collector = require("bergson.collector.collector", "bergson", "fastjl.integrations.bergson")
_apply_hessian = require("bergson.hessians.apply_hessian", "bergson", "fastjl.integrations.bergson")
_gradients = require("bergson.gradients", "bergson", "fastjl.integrations.bergson")

# bergson projection_type -> fastjl kind.
KINDS = {"normal": "gaussian", "rademacher": "rademacher"}
SCALES = ("jl", "row_norm")
# Rademacher two-sided factors: the right factor's rows start here in the module's own matrix,
# the left factor's at 0, so the two never share a row (fastjl rows go up to 2^48).
RIGHT_FACTOR_OFFSET = 1 << 47

# bergson's own functions, captured before use_fastjl() swaps them.
_bergson_project_global = _collector.project_global
_bergson_module_matrix = _collector.create_module_projection_matrix
_bergson_projection = _collector.HookCollectorBase.projection


def module_seed(identifier: str) -> int:
    """fastjl's 64-bit seed for one of bergson's named matrices (``"<module>/<role>[/seed<s>]"``).

    A hash of the name only, as bergson's own key is, so a module's matrix does not depend on
    which other modules are collected or in what order.
    """
    return int.from_bytes(hashlib.blake2b(identifier.encode(), digest_size=8).digest(), "little")


def _kind(projection_type) -> str:
    if projection_type not in KINDS:
        raise ValueError(f"projection_type must be one of {tuple(KINDS)}, got {projection_type!r}")
    return KINDS[projection_type]


def _check_scale(projection_scale) -> None:
    if projection_scale not in SCALES:
        raise ValueError(f"projection_scale must be one of {SCALES}, got {projection_scale!r}")


def project_global(identifier: str, P, m: int, projection_type="normal", projection_scale="jl", *, backend="auto"):
    """Drop-in for bergson's ``project_global``: ``P @ R.T`` for module ``identifier``'s ``(m, n)``
    matrix ``R``, here fastjl's ``P[:n, :m]`` for seed :func:`module_seed(identifier)`, never formed.

    Args:
        identifier: bergson's name of the module's single-sided matrix.
        P: ``(N, n)`` flattened module gradients, or bergson's ``OuterProductGradients``
            (``g ⊗ a [⊘ divisor] + bias ⊗ bias_col``, flattened ``[O, W]`` row-major, as bergson's).
        m: projection dimension.
        projection_type, projection_scale: bergson's.
        backend: fastjl backend (float64 gradients always use ``"torch"``).
    Returns:
        ``(N, m)`` in P's dtype (bergson's), on P's device.
    """
    kind = _kind(projection_type)
    _check_scale(projection_scale)
    if projection_scale == "row_norm" and kind == "gaussian":
        return _bergson_project_global(identifier, P, m, projection_type, projection_scale)
    seed = module_seed(identifier)
    outer = isinstance(P, _gradients.OuterProductGradients)
    ref = P.g if outer else P
    opts = dict(seed=seed, kind=kind, backend="torch" if ref.dtype == torch.float64 else backend)
    if not outer:
        n = P.shape[1]
        out = project(P, m, **opts)
    elif P.divisor is not None:
        # Adam-normalized entries (g ⊗ a) ⊘ D are not an outer product: form them (bergson does too).
        flat = P.materialize().flatten(1)
        n = flat.shape[1]
        out = project(flat.to(ref.dtype), m, **opts)
    else:
        n = P.g.shape[-1] * P.a.shape[-1]
        out = project_linear(P.a, P.g, m, **opts)
        if P.bias is not None:  # bias ⊗ bias_col: one more outer product, same [O, W] layout
            bias_col = P.bias_col.to(P.bias.dtype).expand(P.bias.shape[0], -1)
            out += project_linear(bias_col, P.bias, m, **opts)
    # jl: 1/sqrt(m).  row_norm with ±1 entries: every row of R has norm sqrt(n) exactly.
    out *= 1 / math.sqrt(m if projection_scale == "jl" else n)
    return out.to(ref.dtype)


def module_projection_matrix(name, role, m, n, dtype, device, projection_type, projection_scale, seed):
    """Drop-in for bergson's ``create_module_projection_matrix``: module ``name``'s ``role``
    (``"left"``/``"right"``) factor ``(m, n)`` of its two-sided projection, from fastjl.

    ``normal``: the transposed Kronecker factors ``F_out`` (left) and ``F_in`` (right) of fastjl's
    ``kronecker`` kind for seed ``module_seed("<name>/kronecker[/seed<s>]")``; ``rademacher``: rows
    ``0..n-1`` (left) or ``2^47..2^47+n-1`` (right) of spec v1's ±1 matrix for that seed.  Scaled
    as bergson scales its own (``jl``: 1/sqrt(m); ``row_norm``: unit rows).  Role ``"single"``
    (a materialized single-sided matrix, which bergson itself never asks for here) goes to
    bergson's own function.
    """
    kind = _kind(projection_type)
    _check_scale(projection_scale)
    if role not in ("left", "right"):
        return _bergson_module_matrix(name, role, m, n, dtype, device, projection_type, projection_scale, seed)
    layer_seed = module_seed(_collector.HookCollectorBase.projection_identifier(name, "kronecker", seed))
    if kind == "gaussian":
        d_out, d_in = (n, 1) if role == "left" else (1, n)
        f_out, f_in = kronecker_factors(layer_seed, 0, d_out, d_in, m, m, False, torch.float32, device)
        matrix = (f_out if role == "left" else f_in).T.clone()  # the cached factors are read-only
    else:
        first = 0 if role == "left" else RIGHT_FACTOR_OFFSET
        matrix = matrix_block(layer_seed, "rademacher", range(first, first + n), range(m), torch.float32, device).T
    if projection_scale == "row_norm":
        matrix /= matrix.norm(dim=1, keepdim=True)
    else:
        matrix /= math.sqrt(m)
    return matrix.to(dtype).contiguous()


def _projection(self, name, m, n, role, device, dtype):
    # bergson caches each module's factors in its processor; fastjl's are kept under their own
    # keys so a processor used both inside and outside use_fastjl() never mixes the two.
    key = ("fastjl", name, role, device)
    cache = self.processor._projection_matrices
    if key not in cache:
        proc = self.processor
        cache[key] = module_projection_matrix(
            name, role, m, n, dtype, device, proc.projection_type, proc.projection_scale, proc.projection_seed
        )
    return cache[key]


@contextlib.contextmanager
def use_fastjl(*, backend: str = "auto"):
    """Within the block, bergson's gradient collection (and its Hessian application) projects
    with fastjl; bergson's own functions are restored on exit, also after an error.

    It swaps module attributes of bergson, so it is not thread-safe against bergson being used
    elsewhere in the process at the same time.

    Args:
        backend: fastjl backend for the global projection (``"auto"``, ``"torch"``, ``"triton"``,
            ``"cuda"``).
    """

    def routed_global(identifier, P, m, projection_type="normal", projection_scale="jl"):
        return project_global(identifier, P, m, projection_type, projection_scale, backend=backend)

    patches = [
        (_collector, "project_global", routed_global),
        (_apply_hessian, "project_global", routed_global),
        (_collector, "create_module_projection_matrix", module_projection_matrix),
        (_apply_hessian, "create_module_projection_matrix", module_projection_matrix),
        (_collector.HookCollectorBase, "projection", _projection),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
