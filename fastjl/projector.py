"""``fastjl.Projector``: a fixed projection for a model's gradients, TRAK-style."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .project import project
from .sparse import check_sparse_options
from .sparse_spec import SPARSE_KINDS, check_sparse_proj_dim
from .spec import MAX_ROWS, MAX_SEED
from .validation import check_int, check_proj_dim, check_scale, check_seed

# TRAK derives each checkpoint's seed as seed + 10^4 * model_id; we keep that convention so
# features match across tools.
MODEL_SEED_STRIDE = 10_000


class Projector:
    """Projects ``grad_dim``-dimensional gradients to ``proj_dim`` dimensions.

    Args:
        grad_dim: D, the number of parameters (length of a flattened gradient).
        proj_dim: K >= 1.
        seed: base seed; checkpoint ``model_id`` uses ``seed + 10^4 * model_id``.
        kind, backend, scale: as in :func:`fastjl.project`.
        sparsity, mask_rate: the sparse kinds' options, as in :func:`fastjl.project`.
    """

    def __init__(
        self,
        grad_dim: int,
        proj_dim: int,
        seed: int = 0,
        kind: str = "rademacher",
        backend: str = "auto",
        scale: str | None = None,
        sparsity: int = 1,
        mask_rate: float | None = None,
    ):
        self.grad_dim = check_int(grad_dim, "grad_dim", low=1, high=MAX_ROWS)
        self.proj_dim = check_proj_dim(proj_dim)
        self.seed = check_seed(seed)
        self.sparsity, _ = check_sparse_options(kind, sparsity, mask_rate)  # also checks kind
        if kind in SPARSE_KINDS:
            check_sparse_proj_dim(self.proj_dim, self.sparsity)
        self.kind, self.mask_rate = kind, mask_rate
        self.backend = backend
        self.scale = check_scale(scale)

    def __repr__(self) -> str:
        return (
            f"Projector(grad_dim={self.grad_dim}, proj_dim={self.proj_dim}, seed={self.seed}, "
            f"kind={self.kind!r}, backend={self.backend!r}, scale={self.scale!r})"
        )

    def seed_for(self, model_id: int) -> int:
        """The seed used for checkpoint ``model_id``: ``seed + 10^4 * model_id``."""
        model_id = check_int(model_id, "model_id", low=0, high=MAX_SEED)
        seed = self.seed + MODEL_SEED_STRIDE * model_id
        if seed > MAX_SEED:
            raise ValueError(f"seed + 10^4 * model_id = {seed} exceeds 2^64 - 1")
        return seed

    def project(self, grads, model_id: int = 0) -> torch.Tensor:
        """Projects a batch of gradients.

        Args:
            grads: ``(B, grad_dim)`` tensor, or a dict ``{name: (B, *param_shape)}`` of
                per-parameter gradients whose sizes sum to ``grad_dim``.  A dict is projected
                chunk by chunk (parameter ``n`` uses rows starting at the sum of the sizes
                before it, in dict order), never concatenated.
            model_id: checkpoint index, selects the seed.
        Returns:
            ``(B, proj_dim)`` float32.
        """
        opts = dict(seed=self.seed_for(model_id), kind=self.kind, backend=self.backend, scale=self.scale)
        if self.kind in SPARSE_KINDS:
            opts.update(sparsity=self.sparsity, mask_rate=self.mask_rate)
        return project_gradients(grads, self.proj_dim, grad_dim=self.grad_dim, **opts)


def project_gradients(grads, proj_dim: int, *, grad_dim: int, prepare=None, **opts) -> torch.Tensor:
    """Projects a batch of gradients given whole or per parameter, never concatenating them.

    Args:
        grads: ``(B, grad_dim)`` tensor, or a dict ``{name: (B, *param_shape)}`` whose sizes sum
            to ``grad_dim``; parameter ``n`` uses the rows of ``P`` after those of the ones before
            it in dict order, so the result equals projecting the concatenation.
        prepare: optional ``chunk -> chunk`` applied to each ``(B, size)`` chunk before it is
            projected (the integrations move chunks to a device or round float64 there).
        opts: ``seed``, ``kind``, ``backend``, ``scale`` for :func:`fastjl.project`.
    Returns:
        ``(B, proj_dim)`` float32.
    """
    prepare = prepare or (lambda chunk: chunk)
    if isinstance(grads, torch.Tensor):
        if grads.dim() != 2 or grads.shape[1] != grad_dim:
            raise ValueError(f"grads must have shape (B, grad_dim={grad_dim}), got {tuple(grads.shape)}")
        return project(prepare(grads), proj_dim, **opts)
    if not isinstance(grads, Mapping) or not grads:
        raise TypeError(f"grads must be a (B, grad_dim) tensor or a non-empty dict of tensors, got {type(grads)}")
    chunks = [(name, _flatten_per_example(name, g)) for name, g in grads.items()]
    batch = chunks[0][1].shape[0]
    total = sum(c.shape[1] for _, c in chunks)
    if total != grad_dim:
        raise ValueError(f"the gradients in grads have {total} entries per example, expected grad_dim={grad_dim}")
    result, offset = None, 0
    for name, chunk in chunks:
        if chunk.shape[0] != batch:
            raise ValueError(f"grads[{name!r}] has batch size {chunk.shape[0]}, expected {batch}")
        part = project(prepare(chunk), proj_dim, offset=offset, **opts)
        result = part if result is None else result.add_(part)
        offset += chunk.shape[1]
    return result


def _flatten_per_example(name: str, g) -> torch.Tensor:
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"grads[{name!r}] must be a torch.Tensor, got {type(g).__name__}")
    if g.dim() < 1:
        raise ValueError(f"grads[{name!r}] must have a batch dimension, got a scalar")
    return g.reshape(g.shape[0], math.prod(g.shape[1:]))  # not -1: B = 0 must work too
