"""From per-parameter gradients to TRAK's projected, scaled rows."""

from __future__ import annotations

import math

import torch

import fastjl


def build_projector(projector, num_params: int, proj_dim: int | None, seed: int, kind: str, backend: str):
    """The projector to use: the user's, or a ``fastjl.Projector``.

    A user projector is any object with ``.project(grads_dict, model_id) -> (B, K)`` and a
    ``proj_dim`` attribute (an identity "projection" for exact tests, another sketch, ...).
    """
    if projector is not None:
        if not hasattr(projector, "project"):
            raise TypeError(f"projector must have a .project(grads, model_id) method, got {type(projector).__name__}")
        if getattr(projector, "proj_dim", None) is None:
            raise TypeError("projector must have a proj_dim attribute (the number of output columns K)")
        return projector
    if proj_dim is None:
        raise ValueError("proj_dim is required unless a projector is given")
    return fastjl.Projector(num_params, proj_dim, seed=seed, kind=kind, backend=backend)


def projector_description(projector) -> tuple[str, int | None, str | None]:
    """``(name, seed, kind)`` of a projector, for the store settings."""
    if isinstance(projector, fastjl.Projector):
        return "fastjl", projector.seed, projector.kind
    name = f"{type(projector).__module__}.{type(projector).__qualname__}"
    return name, getattr(projector, "seed", None), getattr(projector, "kind", None)


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
