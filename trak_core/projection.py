"""From per-parameter gradients to TRAK's projected, scaled rows."""

from __future__ import annotations

import math

import torch

import fastjl
from fastjl.sparse_spec import SPARSE_KINDS


def build_projector(
    projector,
    num_params: int,
    proj_dim: int | None,
    seed: int,
    kind: str,
    backend: str,
    sparsity: int = 1,
    mask_rate: float | None = None,
):
    """The projector to use: the user's, or a ``fastjl.Projector``.

    A user projector is any object with ``.project(grads_dict, model_id) -> (B, K)`` and a
    ``proj_dim`` attribute (an identity "projection" for exact tests, another sketch, ...).
    ``sparsity`` and ``mask_rate`` configure the sparse kinds of the default projector (checked
    by ``fastjl.Projector``: refused for the dense kinds).
    """
    if projector is not None:
        if sparsity != 1 or mask_rate is not None:
            raise ValueError("sparsity and mask_rate configure the default fastjl.Projector: with projector= given, "
                             "set them on that projector instead")  # fmt: skip
        if not hasattr(projector, "project"):
            raise TypeError(f"projector must have a .project(grads, model_id) method, got {type(projector).__name__}")
        if getattr(projector, "proj_dim", None) is None:
            raise TypeError("projector must have a proj_dim attribute (the number of output columns K)")
        return projector
    if proj_dim is None:
        raise ValueError("proj_dim is required unless a projector is given")
    return fastjl.Projector(
        num_params, proj_dim, seed=seed, kind=kind, backend=backend, sparsity=sparsity, mask_rate=mask_rate
    )


def projector_description(projector) -> dict:
    """The store settings that describe a projector: ``projector`` (its name), ``seed``,
    ``kind``, and for the sparse kinds ``sparsity`` and ``mask_rate`` (None otherwise), so that
    a store is never extended with another sparsity or keep rate."""
    if isinstance(projector, fastjl.Projector):
        name = "fastjl"
    else:
        name = f"{type(projector).__module__}.{type(projector).__qualname__}"
    kind = getattr(projector, "kind", None)
    sparse = kind in SPARSE_KINDS
    return dict(
        projector=name,
        seed=getattr(projector, "seed", None),
        kind=kind,
        sparsity=getattr(projector, "sparsity", None) if sparse else None,
        mask_rate=getattr(projector, "mask_rate", None) if sparse else None,
    )


def projection_options(projector: fastjl.Projector) -> dict:
    """``fastjl.project`` keywords (kind, backend, scale and the sparse kinds' options) that
    project like ``projector``, for gradient paths projecting a part at its own offset."""
    options = dict(kind=projector.kind, backend=projector.backend, scale=projector.scale)
    if projector.kind in SPARSE_KINDS:
        options.update(sparsity=projector.sparsity, mask_rate=projector.mask_rate)
    return options


def scale_rows(rows: torch.Tensor, num_params: int, proj_dim: int) -> torch.Tensor:
    """TRAK's feature rows ``P_mᵀ ∇θ f / sqrt(num_params)`` from projected gradients.

    Args:
        rows: ``(B, K)`` projected gradients.
        num_params: D; the 1/sqrt(D) scale keeps feature norms comparable across model sizes.
        proj_dim: K, checked against ``rows``.
    Returns:
        ``(B, K)`` float32 (a new tensor).
    """
    if rows.dim() != 2 or rows.shape[1] != proj_dim:
        raise ValueError(f"projected gradients have shape {tuple(rows.shape)}, expected (B, {proj_dim})")
    return rows.float() * (1.0 / math.sqrt(num_params))
