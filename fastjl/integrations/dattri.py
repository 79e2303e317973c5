"""fastjl as the projector of dattri (dattri 0.3).

dattri's attributors do not take a projector object: TRAK and TracIn build one per batch with
``dattri.func.projection.random_project(feature, batch_size, **projector_kwargs)``.  This
module offers three ways in, from the most to the least explicit:

- ``TRAKAttributor``: dattri's TRAK attributor, same arguments, always projecting with fastjl::

      from fastjl.integrations.dattri import TRAKAttributor
      attributor = TRAKAttributor(task=task, correct_probability_func=p, device="cuda",
                                  projector_kwargs={"proj_dim": 2048, "device": "cuda"})
      attributor.cache(train_loader); scores = attributor.attribute(test_loader)

- ``use_fastjl()``: a context manager under which dattri's own TRAK and TracIn attributors
  project with fastjl (it swaps the ``random_project`` their modules call, so it is not
  thread-safe against dattri being used elsewhere at the same time).
- ``FastJLProjector`` / ``random_project``: dattri's ``AbstractProjector`` interface and a
  drop-in for its ``random_project``, for code that builds projectors itself.

dattri's conventions are kept: entries are divided by sqrt(proj_dim) (``scale="jl"``), ensemble
``e`` uses seed ``proj_seed + 10^5 * e``, the output has the features' dtype, the default type
is ``"normal"``, and ``device`` is where the projection runs.  ``proj_max_batch_size`` is accepted
and ignored: fastjl has no batch-size limit.  Supported types: ``"normal"`` (``"gaussian"``) and
``"rademacher"``; dattri's ``"sjlt"``, ``"random_mask"``, ``"grass"`` and ``"identity"`` raise.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch

from ..projector import Projector
from ._common import kind_for, project_grads, require, seed_for

_projection = require("dattri.func.projection", "dattri", "fastjl.integrations.dattri")
_trak = require("dattri.algorithm.trak", "dattri", "fastjl.integrations.dattri")
_tracin = require("dattri.algorithm.tracin", "dattri", "fastjl.integrations.dattri")
ProjectionType = _projection.ProjectionType

# dattri's CudaProjector seeds ensemble e with seed + 10^5 * e.
ENSEMBLE_SEED_STRIDE = 100_000

KINDS = {"normal": "gaussian", "gaussian": "gaussian", "rademacher": "rademacher"}

# The attributor modules that call random_project by their own global name.
_CALLERS = (_trak, _tracin)
# dattri's TRAK defaults, copied before any dattri attributor can update them in place.
_TRAK_DEFAULTS = dict(_trak.DEFAULT_PROJECTOR_KWARGS)


class FastJLProjector(_projection.AbstractProjector):
    """A dattri ``AbstractProjector`` that projects with fastjl, on any device and backend.

    Args:
        feature_dim: D, the length of a flattened feature (gradient).
        proj_dim: K >= 1.
        seed: base seed; ensemble ``e`` uses ``seed + 10^5 * e``.
        proj_type: ``"normal"`` / ``"gaussian"`` / ``ProjectionType.normal`` (N(0, 1) entries) or
            ``"rademacher"`` / ``ProjectionType.rademacher`` (±1 entries).
        device: where to project (features are moved there chunk by chunk); None: where the
            features are.
        backend: fastjl backend, ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``.
        scale: ``"jl"`` (dattri's convention: divide by sqrt(K)) or None (entries as drawn).
    """

    def __init__(
        self,
        feature_dim: int,
        proj_dim: int,
        seed: int = 0,
        proj_type=ProjectionType.normal,
        device: str | torch.device | None = None,
        *,
        backend: str = "auto",
        scale: str | None = "jl",
    ) -> None:
        self.kind = kind_for(proj_type, KINDS, "dattri")
        proj_type = ProjectionType.rademacher if self.kind == "rademacher" else ProjectionType.normal
        device = torch.device(device) if isinstance(device, str) else device
        super().__init__(feature_dim, proj_dim, seed, proj_type, device)
        checked = Projector(feature_dim, proj_dim, seed=seed, kind=self.kind, backend=backend, scale=scale)
        self.feature_dim, self.proj_dim, self.seed = checked.grad_dim, checked.proj_dim, checked.seed
        self.backend, self.scale = backend, scale

    def __repr__(self) -> str:
        return (
            f"FastJLProjector(feature_dim={self.feature_dim}, proj_dim={self.proj_dim}, seed={self.seed}, "
            f"proj_type={self.proj_type.value!r}, device={self.device!r}, backend={self.backend!r})"
        )

    def project(self, features, ensemble_id: int = 0) -> torch.Tensor:
        """Projects a batch of features for ensemble member ``ensemble_id``.

        Args:
            features: ``(B, feature_dim)`` tensor or a dict ``{name: (B, *shape)}`` (projected
                entry by entry, in dict order); fp32, fp16, bf16 or fp64.
            ensemble_id: dattri's checkpoint index (a non-negative int).
        Returns:
            ``(B, proj_dim)`` in the features' dtype (computed in float32), on ``device``.
        """
        seed = seed_for(self.seed, ensemble_id, ENSEMBLE_SEED_STRIDE, "ensemble_id")
        opts = dict(seed=seed, kind=self.kind, backend=self.backend, scale=self.scale)
        out = project_grads(features, self.proj_dim, grad_dim=self.feature_dim, device=self.device, **opts)
        first = features if isinstance(features, torch.Tensor) else next(iter(features.values()))
        return out.to(first.dtype) if first.dtype.is_floating_point else out

    def free_memory(self) -> None:
        """Nothing to free: fastjl never stores the projection matrix."""


def random_project(
    feature,
    feature_batch_size: int,
    proj_dim: int,
    proj_max_batch_size: int | None = None,
    proj_seed: int = 0,
    proj_type: str = "normal",
    *,
    device: str | torch.device = "cpu",
    backend: str = "auto",
    scale: str | None = "jl",
):
    """Drop-in for ``dattri.func.projection.random_project`` that projects with fastjl.

    Args:
        feature: a sample batch, ``(feature_batch_size, D)`` tensor or dict of
            ``(feature_batch_size, *shape)`` tensors; only its per-example size D is used.
        feature_batch_size, proj_dim, proj_seed, proj_type, device: as in dattri.
        proj_max_batch_size: ignored (kept for dattri's signature).
        backend, scale: as in :class:`FastJLProjector`.
    Returns:
        ``f(feature, ensemble_id=0) -> (B, proj_dim)``, as dattri's.
    """
    del proj_max_batch_size
    parts = feature.values() if isinstance(feature, dict) else [feature]
    feature_dim = sum(p.numel() // feature_batch_size for p in parts)
    projector = FastJLProjector(feature_dim, proj_dim, proj_seed, proj_type, device, backend=backend, scale=scale)

    def _project(feature, ensemble_id: int = 0) -> torch.Tensor:
        return projector.project(feature, ensemble_id)

    _project.projector = projector
    return _project


@contextlib.contextmanager
def use_fastjl(*, backend: str = "auto", scale: str | None = "jl"):
    """Within the block, dattri's TRAK and TracIn attributors project with fastjl.

    ``projector_kwargs`` keep their meaning (``proj_dim``, ``proj_seed``, ``proj_type``,
    ``device``); ``backend`` and ``scale`` apply unless ``projector_kwargs`` names them.
    """
    saved = [(module, module.random_project) for module in _CALLERS]
    routed = functools.partial(random_project, backend=backend, scale=scale)
    try:
        for module, _ in saved:
            module.random_project = routed
        yield
    finally:
        for module, original in saved:
            module.random_project = original


class TRAKAttributor(_trak.TRAKAttributor):
    """dattri's ``TRAKAttributor`` with fastjl as its projector; same arguments.

    ``projector_kwargs`` may also name ``backend`` and ``scale``.  Unlike dattri's class it
    keeps its own copy of the projector defaults (dattri's updates a module-level dict in
    place, so one attributor's settings leak into the next).
    """

    def __init__(self, *args, **kwargs) -> None:
        bound = inspect.signature(_trak.TRAKAttributor.__init__).bind(self, *args, **kwargs)
        user_kwargs = bound.arguments.pop("projector_kwargs", None) or {}
        bound.arguments.pop("self")
        super().__init__(**bound.arguments)
        self.projector_kwargs = {**_TRAK_DEFAULTS, **user_kwargs}

    def cache(self, *args, **kwargs):
        with use_fastjl():
            return super().cache(*args, **kwargs)

    def attribute(self, *args, **kwargs):
        with use_fastjl():
            return super().attribute(*args, **kwargs)

    def self_attribute(self, *args, **kwargs):
        with use_fastjl():
            return super().self_attribute(*args, **kwargs)
