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

import warnings

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

    Takes every argument of traker's ``BasicProjector``, ``CudaProjector`` and
    ``BasicSingleBlockProjector`` (same names, traker's meaning), so code that builds one of
    those can build this instead.

    Args:
        grad_dim: D, the number of parameters whose gradients are projected (traker's
            ``num_params_for_grad``: all parameters, or those named in ``grad_wrt``).
        proj_dim: K >= 1, the dimension of traker's features.
        seed: base seed; checkpoint ``model_id`` uses ``seed + 10^4 * model_id``.
        proj_type: ``ProjectionType.rademacher`` / ``"rademacher"`` (±1 entries) or
            ``ProjectionType.normal`` / ``"normal"`` / ``"gaussian"`` (N(0, 1) entries).
        device: where to project (grads are moved there chunk by chunk); None (default): on
            the device the grads are on.
        max_batch_size: traker's ``CudaProjector`` kernel batch limit (8, 16 or 32); accepted
            and without effect: fastjl takes any batch size.
        *args: accepted and ignored, as traker's projectors do (a warning names them).
        block_size: traker's ``BasicProjector`` block width; no effect (fastjl bounds its
            memory itself).
        dtype: dtype of the projected output (traker: of the matrix and its result); fastjl
            accumulates in float32 whatever it is.  Default float32, as traker.
        model_id: the checkpoint ``project`` uses when called without one (traker's
            ``BasicProjector`` argument of that name).
        backend: fastjl backend, ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``.
        scale: None (traker's convention, unscaled) or ``"jl"`` (divide by sqrt(K)).
        **kwargs: accepted and ignored, as traker's projectors do (a warning names them).
    """

    def __init__(
        self,
        grad_dim: int,
        proj_dim: int,
        seed: int = 0,
        proj_type=ProjectionType.rademacher,
        device: str | torch.device | None = None,
        max_batch_size: int | None = None,
        *args,
        block_size: int = 100,
        dtype: torch.dtype = torch.float32,
        model_id: int = 0,
        backend: str = "auto",
        scale: str | None = None,
        **kwargs,
    ) -> None:
        self.kind = kind_for(proj_type, KINDS, "traker")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        seed_for(0, model_id, 0, "model_id")  # validates it
        if args or kwargs:
            ignored = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
            warnings.warn(
                f"FastJLProjector ignores {', '.join(ignored)} (traker's projectors accept and ignore extra arguments)",
                stacklevel=2,
            )
        # traker writes proj_type into its metadata.json and compares it on reload, so it must
        # be one of traker's own values (a str Enum that serializes as "normal"/"rademacher").
        proj_type = ProjectionType.rademacher if self.kind == "rademacher" else ProjectionType.normal
        super().__init__(grad_dim, proj_dim, seed, proj_type, device)
        # Checks every argument now, with fastjl's messages, rather than at the first batch.
        checked = Projector(grad_dim, proj_dim, seed=seed, kind=self.kind, backend=backend, scale=scale)
        self.grad_dim, self.proj_dim, self.seed = checked.grad_dim, checked.proj_dim, checked.seed
        self.max_batch_size, self.block_size, self.dtype, self.model_id = max_batch_size, block_size, dtype, model_id
        self.backend, self.scale = backend, scale

    def __repr__(self) -> str:
        return (
            f"FastJLProjector(grad_dim={self.grad_dim}, proj_dim={self.proj_dim}, seed={self.seed}, "
            f"proj_type={self.proj_type.value!r}, device={self.device!r}, dtype={self.dtype}, "
            f"backend={self.backend!r})"
        )

    def project(self, grads, model_id: int | None = None) -> torch.Tensor:
        """Projects one batch of per-example gradients for checkpoint ``model_id``.

        Args:
            grads: ``(B, grad_dim)`` tensor, or traker's dict ``{name: (B, *param_shape)}`` (as
                its gradient computers return), projected parameter by parameter.  fp32, fp16,
                bf16 or fp64 (rounded to fp32).
            model_id: traker's checkpoint id (a non-negative int); None: the constructor's.
        Returns:
            ``(B, proj_dim)`` of ``dtype`` on ``device`` (or the grads' device), a fresh tensor
            (traker divides it in place).
        """
        model_id = self.model_id if model_id is None else model_id
        seed = seed_for(self.seed, model_id, MODEL_SEED_STRIDE, "model_id")
        opts = dict(seed=seed, kind=self.kind, backend=self.backend, scale=self.scale)
        return project_grads(grads, self.proj_dim, grad_dim=self.grad_dim, device=self.device, **opts).to(self.dtype)

    def free_memory(self) -> None:
        """Nothing to free: fastjl never stores the projection matrix."""
