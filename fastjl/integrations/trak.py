"""fastjl as the projector of TRAK's ``traker`` package (traker 0.3)::

    from trak import TRAKer
    from fastjl.integrations.trak import FastJLProjector

    projector = FastJLProjector(grad_dim=n_params, proj_dim=2048)
    traker = TRAKer(model=model, task="image_classification", train_set_size=n,
                    projector=projector, device="cuda")

Everything else in traker is unchanged (featurize, finalize_features, score, finalize_scores).
Checkpoint ``model_id`` is projected with seed ``seed + 10^4 * model_id``, traker's own
convention, and entries are unscaled (±1 or N(0, 1)) because traker divides the projected
gradients by sqrt(grad_dim) itself.  Unlike traker's projectors, the matrix is the same on every
device and backend, so features made on a CPU, an A100 and an H100 can be mixed.
"""

from __future__ import annotations

import torch

from ..projector import Projector
from ._common import kind_for, project_grads, require, seed_for

_projectors = require("trak.projectors", "traker", "fastjl.integrations.trak")
ProjectionType = _projectors.ProjectionType

# traker's model_id stride: BasicSingleBlockProjector and CudaProjector seed checkpoint
# model_id with seed + 10^4 * model_id; fastjl.Projector does the same.
MODEL_SEED_STRIDE = 10_000

# traker's ProjectionType values (and fastjl's own name for the normal one) -> fastjl kinds.
KINDS = {"rademacher": "rademacher", "normal": "gaussian", "gaussian": "gaussian"}


class FastJLProjector(_projectors.AbstractProjector):
    """A traker ``AbstractProjector`` that projects with fastjl, on any device and backend.

    Args:
        grad_dim: D, the number of parameters whose gradients are projected (traker's
            ``num_params_for_grad``: all parameters, or those named in ``grad_wrt``).
        proj_dim: K >= 1, the dimension of traker's features.
        seed: base seed; checkpoint ``model_id`` uses ``seed + 10^4 * model_id``.
        proj_type: ``ProjectionType.rademacher`` / ``"rademacher"`` (±1 entries) or
            ``ProjectionType.normal`` / ``"normal"`` / ``"gaussian"`` (N(0, 1) entries).
        device: where to project (grads are moved there chunk by chunk); None (default): on
            the device the grads are on.
        backend: fastjl backend, ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``.
        scale: None (traker's convention, unscaled) or ``"jl"`` (divide by sqrt(K)).
    """

    def __init__(
        self,
        grad_dim: int,
        proj_dim: int,
        seed: int = 0,
        proj_type=ProjectionType.rademacher,
        device: str | torch.device | None = None,
        *,
        backend: str = "auto",
        scale: str | None = None,
    ) -> None:
        self.kind = kind_for(proj_type, KINDS, "traker")
        # traker writes proj_type into its metadata.json and compares it on reload, so it must
        # be one of traker's own values (a str Enum that serializes as "normal"/"rademacher").
        proj_type = ProjectionType.rademacher if self.kind == "rademacher" else ProjectionType.normal
        super().__init__(grad_dim, proj_dim, seed, proj_type, device)
        # Checks every argument now, with fastjl's messages, rather than at the first batch.
        checked = Projector(grad_dim, proj_dim, seed=seed, kind=self.kind, backend=backend, scale=scale)
        self.grad_dim, self.proj_dim, self.seed = checked.grad_dim, checked.proj_dim, checked.seed
        self.backend, self.scale = backend, scale

    def __repr__(self) -> str:
        return (
            f"FastJLProjector(grad_dim={self.grad_dim}, proj_dim={self.proj_dim}, seed={self.seed}, "
            f"proj_type={self.proj_type.value!r}, device={self.device!r}, backend={self.backend!r})"
        )

    def project(self, grads, model_id: int) -> torch.Tensor:
        """Projects one batch of per-example gradients for checkpoint ``model_id``.

        Args:
            grads: ``(B, grad_dim)`` tensor, or traker's dict ``{name: (B, *param_shape)}`` (as
                its gradient computers return), projected parameter by parameter.  fp32, fp16,
                bf16 or fp64 (rounded to fp32).
            model_id: traker's checkpoint id (a non-negative int).
        Returns:
            ``(B, proj_dim)`` float32 on ``device`` (or the grads' device), a fresh tensor
            (traker divides it in place).
        """
        seed = seed_for(self.seed, model_id, MODEL_SEED_STRIDE, "model_id")
        opts = dict(seed=seed, kind=self.kind, backend=self.backend, scale=self.scale)
        return project_grads(grads, self.proj_dim, grad_dim=self.grad_dim, device=self.device, **opts)

    def free_memory(self) -> None:
        """Nothing to free: fastjl never stores the projection matrix."""
