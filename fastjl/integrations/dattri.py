"""fastjl as the projector of dattri (dattri 0.3).

dattri's attributors do not take a projector object: TRAK and TracIn build one per batch with
``dattri.func.projection.random_project(feature, batch_size, **projector_kwargs)``.  This
module offers three ways in, from the most to the least explicit:

- ``TRAKAttributor``: dattri's TRAK attributor, same arguments, always projecting with fastjl::

      from fastjl.integrations.dattri import TRAKAttributor
      attributor = TRAKAttributor(task=task, correct_probability_func=p, device="cuda",
                                  projector_kwargs={"proj_dim": 2048, "device": "cuda"})
      attributor.cache(train_loader); scores = attributor.attribute(test_loader)

- ``use_fastjl()``: a context manager under which dattri's own TRAK, TracIn, DVEmb and
  block-projected influence code project with fastjl (it swaps the ``random_project`` their modules call, so it is not
  thread-safe against dattri being used elsewhere at the same time).
- ``FastJLProjector`` / ``random_project``: dattri's ``AbstractProjector`` interface and a
  drop-in for its ``random_project``, for code that builds projectors itself.

dattri's conventions are kept: entries are divided by sqrt(proj_dim) (``scale="jl"``), ensemble
``e`` uses seed ``proj_seed + 10^5 * e``, the default type is ``"normal"``, ``dtype`` is the
dtype of the output (``random_project``: the features'), and ``device`` is where the projection
runs.  ``proj_max_batch_size`` / ``block_size`` are accepted and have no effect: fastjl has no
batch-size limit and bounds its own memory.

Every projection type dattri 0.3 accepts works.  The dense ones (``"normal"``, ``"rademacher"``)
are projected by fastjl's kernels (spec v1's matrix: same distribution as dattri's, different
draws, identical on every device), and so is ``"sjlt"`` (fastjl's ``kind="sjlt"`` with one
nonzero ±1 per input row, dattri's ``c = 1``, unscaled as dattri's: on every device, where
dattri's needs the CUDA-only ``sjlt`` package).

``"grass"`` and ``"grass_N"`` are fastjl's ``kind="grass"`` too.  dattri 0.3.0's GraSS
(``CudaProjector._gen_randomness_grass``) keeps ``m = min(N·K, D)`` of the D coordinates, a
uniformly random subset (``randperm``), then applies its sjlt with ``c = 1`` (one ±1 per kept
coordinate in a uniformly random column, no 1/sqrt scaling) from m to K; ``N`` (default 4) is
the intermediate dimension's multiple of K.  fastjl's grass keeps each coordinate with
probability ``mask_rate = m / D`` and gives every kept coordinate one ±1 in a uniformly random
column, unscaled (sparsity 1, ``scale="jl"`` divides by sqrt(1)).  Given the number of kept
coordinates the two matrices have the same distribution (a uniform subset of that size, i.i.d.
signs and columns); they differ only in that count, exactly m in dattri and Binomial(D, m/D)
in fastjl (relative spread ``sqrt((1 - m/D)/m)``, e.g. 1.6% at m = 4096), so E||xP||² =
(m/D)||x||² for both.  It is the same projection family, not the same draws, and it runs on
every device (dattri's own refuses ``"grass"`` on a CPU).

``"identity"`` and ``"random_mask"`` are handed back to dattri's own implementation with the
same arguments, so they behave exactly as in dattri.  Which types fastjl serves is the one
table ``KINDS``.

FactGraSS (``dattri.algorithm.factgrass.FactGraSSAttributor``) is left to dattri.  Its
projection is the same family as fastjl's ``project_linear(kind="factgrass")`` when dattri runs
it on CUDA (``proj_type="sjlt"`` for the second stage): both keep a uniformly random subset of
``k`` coordinates of each factor (dattri ``randperm(d)[:k]``, ``k = sqrt(K · blowup_factor)``
for both factors, clipped to the factor), append the bias as a column of ones to the input
factor, order the Kronecker product output-major, and apply an unscaled one-nonzero SJLT; on a
CPU dattri uses a dense gaussian second stage instead, another family.  It is not routed
because dattri does not build it through ``random_project`` as one projection: its
``Compressor.forward`` (``torch.compile``-d) chains two ``random_mask`` projectors, an einsum
(with dattri's ``batch_size`` factor for mean-reduced losses) and a stage-2 projector, so
serving it would mean replacing that method, not a projector; that is not done.  Under
``use_fastjl()`` its stages already run as dattri's own ``random_mask`` and fastjl's ``sjlt``
(or ``gaussian`` on a CPU) on the masked ``k × k`` product, the same family with other draws.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch

from ..projector import Projector
from ..spec import MAX_ROWS
from ..validation import check_int
from ._common import project_grads, require, route, seed_for

_projection = require("dattri.func.projection", "dattri", "fastjl.integrations.dattri")
_trak = require("dattri.algorithm.trak", "dattri", "fastjl.integrations.dattri")
_tracin = require("dattri.algorithm.tracin", "dattri", "fastjl.integrations.dattri")
_dvemb = require("dattri.algorithm.dvemb", "dattri", "fastjl.integrations.dattri")
_compressor = require("dattri.algorithm.block_projected_if.core.compressor", "dattri", "fastjl.integrations.dattri")
ProjectionType = _projection.ProjectionType

# dattri's CudaProjector seeds ensemble e with seed + 10^5 * e.
ENSEMBLE_SEED_STRIDE = 100_000

# dattri projection types that fastjl's kernels serve -> fastjl kind.  Every other dattri type
# is handed back to dattri; fastjl taking over one (issue 13: "sjlt") is one entry here.
KINDS = {"normal": "gaussian", "gaussian": "gaussian", "rademacher": "rademacher", "sjlt": "sjlt", "grass": "grass"}
# dattri's own types (its ProjectionType); its "grass_N" spelling is parsed by parse_grass().
HOST_TYPES = tuple(t.value for t in ProjectionType)

# The dattri modules that call random_project by their own global name (TRAK, TracIn, DVEmb,
# and the block-projected influence compressors).
_CALLERS = (_trak, _tracin, _dvemb, _compressor)
# dattri's own random_project, captured before use_fastjl() can swap the callers' references.
_dattri_random_project = _projection.random_project
# dattri's TRAK defaults, copied before any dattri attributor can update them in place.
_TRAK_DEFAULTS = dict(_trak.DEFAULT_PROJECTOR_KWARGS)


def grass_mask_rate(proj_dim: int, feature_dim: int, multiplier: int) -> float:
    """fastjl's keep rate for dattri's ``"grass_N"``: dattri keeps ``min(N·K, D)`` of the D
    coordinates, fastjl each one with probability ``min(N·K, D) / D`` (see the module docstring)."""
    return min(multiplier * proj_dim, feature_dim) / feature_dim


def parse_grass(proj_type, default: int = 4) -> tuple[object, int]:
    """dattri's ``"grass_N"`` spelling -> ``("grass", N)``; any other type -> ``(type, default)``."""
    name = getattr(proj_type, "value", proj_type)
    if isinstance(name, str) and name.startswith("grass_"):
        suffix = name[len("grass_") :]
        if not suffix.isdigit() or int(suffix) < 1:
            raise ValueError(f"proj_type={name!r}: dattri's grass_N needs a positive integer N")
        return "grass", int(suffix)
    return proj_type, default


class FastJLProjector(_projection.AbstractProjector):
    """A dattri ``AbstractProjector`` that projects with fastjl, on any device and backend.

    Takes every argument of dattri's ``BasicProjector`` and ``CudaProjector`` with dattri's
    meaning, so code that builds one of those can build this instead.

    Args:
        feature_dim: D, the length of a flattened feature (gradient).
        proj_dim: K >= 1.
        seed: base seed; ensemble ``e`` uses ``seed + 10^5 * e``.
        proj_type: any dattri type (str or ``ProjectionType``): ``"normal"`` (alias
            ``"gaussian"``), ``"rademacher"``, ``"sjlt"``, ``"grass"`` and ``"grass_N"`` run on
            fastjl; ``"identity"`` and ``"random_mask"`` on dattri's own projector
            (``BasicProjector`` on a CPU, ``CudaProjector`` on a GPU, as dattri chooses).
        device: where to project (features are moved there chunk by chunk); None: where the
            features are.
        block_size: dattri's ``BasicProjector`` block width; no effect on fastjl's kinds (fastjl
            bounds its memory itself), passed to dattri's projector for the handed-back types.
        dtype: dtype of the projected output (dattri: of the projection and its result);
            fastjl accumulates in float32 whatever it is.  Default float32, as dattri.
        ensemble_id: the ensemble member ``project`` uses when called without one.
        grass_multiplier: dattri's GraSS intermediate-dimension factor N (``"grass"`` only;
            ``"grass_N"`` sets it): about ``min(N·K, D)`` coordinates are kept.
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
        block_size: int = 100,
        dtype: torch.dtype = torch.float32,
        ensemble_id: int = 0,
        *,
        grass_multiplier: int = 4,
        backend: str = "auto",
        scale: str | None = "jl",
    ) -> None:
        proj_type, grass_multiplier = parse_grass(proj_type, grass_multiplier)
        self.kind = route(proj_type, KINDS, HOST_TYPES, "dattri")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        seed_for(0, ensemble_id, 0, "ensemble_id")  # validates it
        device = torch.device(device) if isinstance(device, str) else device
        if self.kind in (None, "sjlt", "grass"):
            proj_type = ProjectionType(getattr(proj_type, "value", proj_type))
        else:
            proj_type = ProjectionType.rademacher if self.kind == "rademacher" else ProjectionType.normal
        super().__init__(feature_dim, proj_dim, seed, proj_type, device)
        self.block_size, self.dtype, self.ensemble_id = block_size, dtype, ensemble_id
        self.grass_multiplier, self.backend, self.scale = grass_multiplier, backend, scale
        self._host = {}  # device -> dattri's projector, for the handed-back types
        self._sparse = {}  # fastjl's options for grass (dattri's c = 1 is fastjl's default sparsity 1)
        if self.kind is not None:
            placeholder = {"mask_rate": 1.0} if self.kind == "grass" else {}  # checks D and K first
            checked = Projector(feature_dim, proj_dim, seed=seed, kind=self.kind, backend=backend, scale=scale,
                                **placeholder)  # fmt: skip
            self.feature_dim, self.proj_dim, self.seed = checked.grad_dim, checked.proj_dim, checked.seed
            if self.kind == "grass":
                multiplier = check_int(grass_multiplier, "grass_multiplier", low=1, high=MAX_ROWS)
                self._sparse = {"mask_rate": grass_mask_rate(self.proj_dim, self.feature_dim, multiplier)}

    def __repr__(self) -> str:
        return (
            f"FastJLProjector(feature_dim={self.feature_dim}, proj_dim={self.proj_dim}, seed={self.seed}, "
            f"proj_type={self.proj_type.value!r}, device={self.device!r}, dtype={self.dtype}, "
            f"backend={self.backend if self.kind else 'dattri'!r})"
        )

    def project(self, features, ensemble_id: int | None = None) -> torch.Tensor:
        """Projects a batch of features for ensemble member ``ensemble_id``.

        Args:
            features: ``(B, feature_dim)`` tensor or a dict ``{name: (B, *shape)}`` (projected
                entry by entry, in dict order); fp32, fp16, bf16 or fp64.
            ensemble_id: dattri's checkpoint index (a non-negative int); None: the one given
                to the constructor.
        Returns:
            ``(B, proj_dim)`` of ``dtype`` (fastjl's kinds: computed in float32), on ``device``.
        """
        ensemble_id = self.ensemble_id if ensemble_id is None else ensemble_id
        if self.kind is None:
            return self._host_projector(features).project(features, ensemble_id)
        seed = seed_for(self.seed, ensemble_id, ENSEMBLE_SEED_STRIDE, "ensemble_id")
        opts = dict(seed=seed, kind=self.kind, backend=self.backend, scale=self.scale, **self._sparse)
        out = project_grads(features, self.proj_dim, grad_dim=self.feature_dim, device=self.device, **opts)
        return out.to(self.dtype)

    def _host_projector(self, features):
        """dattri's own projector for this type, built once per device the way dattri builds it."""
        first = features if isinstance(features, torch.Tensor) else next(iter(features.values()))
        device = self.device if self.device is not None else first.device
        if device not in self._host:
            common = dict(feature_dim=self.feature_dim, proj_dim=self.proj_dim, seed=self.seed)
            common.update(proj_type=self.proj_type, device=device, dtype=self.dtype)
            if device.type == "cpu":
                host = _projection.BasicProjector(**common, block_size=self.block_size, ensemble_id=self.ensemble_id)
            else:
                host = _projection.CudaProjector(**common, grass_multiplier=self.grass_multiplier)
            self._host[device] = host
        return self._host[device]

    def free_memory(self) -> None:
        """fastjl never stores the projection matrix; dattri's handed-back projectors free theirs."""
        for host in self._host.values():
            host.free_memory()


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
            ``(feature_batch_size, *shape)`` tensors; its per-example size D and dtype are used
            (the projection's output has the features' dtype, as in dattri).
        feature_batch_size, proj_dim, proj_seed, proj_type, device: as in dattri.
        proj_max_batch_size: no effect on fastjl's kinds (kept for dattri's signature; passed
            on for the handed-back types).
        backend, scale: as in :class:`FastJLProjector` (fastjl's kinds only).
    Returns:
        ``f(feature, ensemble_id=0) -> (B, proj_dim)``, as dattri's.  Types fastjl does not
        serve (see :data:`KINDS`) return dattri's own function, built by dattri.
    """
    name, _ = parse_grass(proj_type)
    if route(name, KINDS, HOST_TYPES, "dattri") is None:
        return _dattri_random_project(
            feature, feature_batch_size, proj_dim, proj_max_batch_size, proj_seed, proj_type, device=device
        )
    parts = list(feature.values()) if isinstance(feature, dict) else [feature]
    feature_dim = sum(p.numel() // feature_batch_size for p in parts)
    projector = FastJLProjector(
        feature_dim, proj_dim, proj_seed, proj_type, device, dtype=parts[0].dtype, backend=backend, scale=scale
    )

    def _project(feature, ensemble_id: int = 0) -> torch.Tensor:
        return projector.project(feature, ensemble_id)

    _project.projector = projector
    return _project


@contextlib.contextmanager
def use_fastjl(*, backend: str = "auto", scale: str | None = "jl"):
    """Within the block, dattri's TRAK, TracIn, DVEmb and block-projected-IF code project with
    fastjl (the types in :data:`KINDS`; the others still run on dattri's own projectors).

    ``projector_kwargs`` keep their meaning (``proj_dim``, ``proj_seed``, ``proj_type``,
    ``device``, ``proj_max_batch_size``); ``backend`` and ``scale`` apply unless
    ``projector_kwargs`` names them.
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
