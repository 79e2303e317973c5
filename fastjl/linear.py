"""``fastjl.project_linear``: per-example gradients of a Linear layer, projected without forming them."""

from __future__ import annotations

import torch

from . import _backends
from .autograd import jl_factor, needs_grad, project_linear_function
from .factgrass import project_factgrass
from .kronecker import kronecker_factors, project_kronecker, split_proj_dim
from .sparse_spec import check_sparse_proj_dim, check_sparsity
from .spec import LINEAR_KINDS
from .validation import check_linear_inputs, check_offset, check_out, check_proj_dim, check_scale, check_seed


def project_linear(
    a: torch.Tensor,
    g: torch.Tensor,
    proj_dim,
    *,
    seed: int = 0,
    kind: str = "rademacher",
    offset: int = 0,
    bias: bool = False,
    out: torch.Tensor | None = None,
    backend: str = "auto",
    scale: str | None = None,
    check_finite: bool = False,
    sparsity: int = 1,
    factor_masks=None,
) -> torch.Tensor:
    """Projects the per-example gradients of an ``nn.Linear`` layer from its inputs and output
    gradients, never forming them.

    Example b's weight gradient is ``G_b = Σ_t g[b, t] a[b, t]ᵀ`` (``d_out × d_in``, in
    ``weight.flatten()`` order); both are what one ordinary batched backward pass of the summed
    outputs gives (examples must not interact, e.g. eval-mode BatchNorm).

    * ``kind="rademacher"`` / ``"gaussian"``: returns exactly (to float32 rounding)
      ``fastjl.project(x, proj_dim, seed=seed, kind=kind, offset=offset)`` with
      ``x = G.flatten(1)``, or ``[G.flatten(1), Σ_t g]`` if ``bias`` (the layout of
      ``torch.cat([weight.grad.flatten(), bias.grad])``).  The kernels form tiles of ``G`` from
      tiles of ``a`` and ``g`` and multiply them by generated tiles of ``P``.
    * ``kind="kronecker"``: ``y_b = Σ_t (F_outᵀ g_bt) ⊗ (F_inᵀ a_bt)`` with spec v1's per-layer
      gaussian factors (see :mod:`fastjl.kronecker`); ``proj_dim`` is ``k_out * k_in``, given
      as an int (split by :func:`fastjl.kronecker.split_proj_dim`) or as the pair.  It costs
      ``O(B T (d_out k_out + d_in k_in) + B K)`` instead of ``O(B d_out d_in K)``; it runs as
      torch matrix products whatever the backend.
    * ``kind="factgrass"`` (GraSS's FactGraSS, :mod:`fastjl.factgrass_spec`): the layer keeps
      ``factor_masks = (k_out, k_in)`` coordinates of ``g`` and of ``a`` (a uniformly random
      subset of each, drawn from the seed and ``offset``; with ``bias`` the input factor has a
      column of ones as coordinate ``d_in``), forms ``G' = g'ᵀ a'`` (``k_out × k_in``) in
      bounded blocks and projects ``vec(G')`` with spec v1's ``sjlt`` (``sparsity`` nonzeros per
      row) at rows ``offset ..``; torch operations on any device (``backend`` is passed to the
      sjlt projection).  Masks are not rescaled: with ``scale="jl"``, ``E||y||^2 =
      k_out k_in / (d_out (d_in + bias)) ||[G, Σ_t g]||^2``.

    Args:
        a: ``(B, d_in)`` or ``(B, T, d_in)`` layer inputs; float32, float16 or bfloat16 (float64
            with ``backend="torch"``), any strides.
        g: ``(B, d_out)`` or ``(B, T, d_out)`` gradients of the layer's outputs; same rank, B, T,
            dtype and device as ``a``.
        proj_dim: K >= 1 (kronecker: K or ``(k_out, k_in)``).
        seed, offset: as in :func:`fastjl.project`; ``offset`` is the layer's first row in the
            model's gradient vector (``offset + D <= 2^48``), so layers projected one by one
            sum to the projection of the whole gradient.
        kind: ``"rademacher"``, ``"gaussian"``, ``"kronecker"`` or ``"factgrass"``.
        bias: also project the bias gradient ``Σ_t g_bt`` (after the weight's ``d_out·d_in`` rows).
        out, backend, scale, check_finite: as in :func:`fastjl.project`.
        sparsity: ``kind="factgrass"`` only: nonzeros per row of the sjlt stage, 1, 2, 4 or 8.
        factor_masks: ``kind="factgrass"`` only (required there): ``(k_out, k_in)``, coordinates
            kept of ``g`` (at most ``d_out``) and of ``a`` (at most ``d_in``, plus 1 with ``bias``).
    Returns:
        ``(B, K)`` float32 tensor on a's device (float64 for float64 inputs; ``out`` if given).

    ``out`` must not overlap ``a`` or ``g`` nor be an expanded (stride-0) tensor (ValueError).

    Autograd (every backend and kind alike): if ``a`` or ``g`` requires grad (and grad mode is
    on) the result is differentiable with respect to both.  Dense kinds: the gradient of ``G``
    is formed one block of rows of ``P`` at a time (``dG = dy @ P_blockᵀ``, torch backend's
    generator, bounded by :func:`fastjl.block_budget`) and reduced at once to
    ``da_bt = Σ_o g_bto dG_bo`` and ``dg_bt = dG_b a_bt`` (plus the bias rows' ``dy @ Pᵀ``),
    computed in float32 (float64 for float64 inputs) and returned in the inputs' dtype; nothing
    of size ``B · d_out · d_in`` is formed.  ``kronecker``: the product of the factors is
    formed with differentiable torch operations.  With ``out`` given, ``out`` is filled by a
    differentiable copy.  No double backward.
    """
    a, g = check_linear_inputs(a, g, allow_float64=backend == "torch", check_finite=check_finite)
    if kind not in LINEAR_KINDS:
        raise ValueError(f"kind must be one of {LINEAR_KINDS}, got {kind!r}")
    d_out, d_in = g.shape[2], a.shape[2]
    seed = check_seed(seed)
    scale = check_scale(scale)
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
    if kind == "factgrass":
        return _project_factgrass(a, g, proj_dim, seed=seed, offset=offset, bias=bias, out=out, backend=backend,
                                  scale=scale, sparsity=sparsity, factor_masks=factor_masks)  # fmt: skip
    if sparsity != 1 or factor_masks is not None:
        raise ValueError(f"sparsity and factor_masks apply to kind='factgrass' only, not kind={kind!r}")
    module = _backends.select(backend, a.device, op="project_linear", dtype=a.dtype)
    if a.dtype == torch.float64 and module.NAME != "torch":
        raise TypeError(f"a and g of dtype float64 are supported by backend='torch' only, not {module.NAME!r}")
    if kind == "kronecker":
        k_out, k_in = split_proj_dim(proj_dim, d_out, d_in)
        proj_dim = k_out * k_in
    else:
        proj_dim = check_proj_dim(proj_dim)
    offset = check_offset(offset, d_out * d_in + (d_out if bias else 0))
    given_out = out is not None
    out = check_out(out, a, proj_dim, inputs={"a": a, "g": g})
    factor = jl_factor(scale, proj_dim)

    def run(a: torch.Tensor, g: torch.Tensor, out: torch.Tensor = out) -> torch.Tensor:
        if a.shape[0] == 0:
            return out
        if kind == "kronecker":
            project_kronecker(a, g, out, seed=seed, offset=offset, k_out=k_out, k_in=k_in, bias=bias)
        else:
            module.project_linear(a, g, out, seed=seed, kind=kind, offset=offset, bias=bias)
        if factor != 1.0:
            out.mul_(factor)
        return out

    if not needs_grad(a, g):
        return run(a, g)
    if kind == "kronecker":
        y = _kronecker_differentiable(a, g, seed=seed, offset=offset, k_out=k_out, k_in=k_in, bias=bias, factor=factor)
    else:
        target = torch.empty_like(out) if given_out else out  # the user's out gets a differentiable copy
        fresh = lambda a, g: run(a, g, target)  # noqa: E731
        y = project_linear_function(a, g, fresh, seed=seed, kind=kind, offset=offset, bias=bias, factor=factor)
    if given_out:
        return out.copy_(y)
    return y


def _project_factgrass(a, g, proj_dim, *, seed, offset, bias, out, backend, scale, sparsity, factor_masks):
    """``kind="factgrass"`` (:mod:`fastjl.factgrass`): options checked, result into ``out`` if given."""
    if factor_masks is None:
        raise ValueError("kind='factgrass' needs factor_masks=(k_out, k_in), the coordinates kept of g and of a")
    sparsity = check_sparsity(sparsity)
    proj_dim = check_sparse_proj_dim(proj_dim, sparsity)
    d_out, d_in = g.shape[2], a.shape[2]
    offset = check_offset(offset, d_out * d_in + (d_out if bias else 0))
    out = check_out(out, a, proj_dim, inputs={"a": a, "g": g}) if out is not None else None
    y = project_factgrass(a, g, proj_dim, seed=seed, offset=offset, factor_masks=factor_masks, sparsity=sparsity,
                          bias=bias, backend=backend, scale=scale)  # fmt: skip
    return y if out is None else out.copy_(y)


def _kronecker_differentiable(a, g, *, seed, offset, k_out, k_in, bias, factor) -> torch.Tensor:
    """``kronecker``'s projection as differentiable torch operations (what ``project_kronecker``
    computes, without ``out=``): ``B·T·(k_in + k_out) + B·K`` numbers are formed."""
    batch, _, d_in = a.shape
    compute = torch.float64 if a.dtype == torch.float64 else torch.float32
    f_out, f_in = kronecker_factors(seed, offset, g.shape[2], d_in, k_out, k_in, bias, compute, a.device)
    pa = a.to(compute) @ f_in[:d_in]
    if bias:
        pa = pa + f_in[d_in]
    pg = g.to(compute) @ f_out
    y = torch.bmm(pg.transpose(1, 2), pa).reshape(batch, k_out * k_in)
    return y * factor if factor != 1.0 else y
