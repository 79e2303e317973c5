"""trak_core: TRAK features, regularized inverses and scores on top of fastjl, on disk and resumable.

Two front ends::

    # TRAK's interface (switch with one import)
    from trak_core import TRAKer
    traker = TRAKer(model, "image_classification", train_set_size=n, save_dir="store", proj_dim=2048)
    for model_id, ckpt in enumerate(checkpoints):
        traker.load_checkpoint(ckpt, model_id)
        for x, y in train_loader:
            traker.featurize((x, y), num_samples=len(x))
    traker.finalize_features()
    for model_id, ckpt in enumerate(checkpoints):
        traker.start_scoring_checkpoint("targets", ckpt, model_id, num_targets=t)
        for x, y in target_loader:
            traker.score((x, y), num_samples=len(x))
    scores = traker.finalize_scores("targets")          # (n, t)

    # one call
    scores = trak_core.attribute(model, checkpoints, train_loader, target_loader, proj_dim=2048)

Depends only on fastjl's public API (``fastjl.Projector``).  Demo: ``python -m trak_core.demo``.
"""

from .attribute import attribute
from .featurize import NonFiniteGradientError
from .gradients import FunctionalGradientComputer, GradientComputer
from .hooked_gradients import LinearHooksGradientComputer
from .lds import LDSResult, linear_datamodeling_score
from .lm_task import CausalLMOutput
from .model_output import ClassificationMargin, ModelOutput
from .regularization import DEFAULT_LAMBDA_SCALE, resolve_lambda
from .settings import StoreMismatchError, StoreSettings
from .store import Store
from .store_errors import (
    StoreDamagedError,
    StoreDiskFullError,
    StoreError,
    StoreLockedError,
    StoreMissingFileError,
)
from .traker import TRAKer

__all__ = [
    "DEFAULT_LAMBDA_SCALE",
    "CausalLMOutput",
    "ClassificationMargin",
    "FunctionalGradientComputer",
    "GradientComputer",
    "LinearHooksGradientComputer",
    "LDSResult",
    "NonFiniteGradientError",
    "ModelOutput",
    "Store",
    "StoreDamagedError",
    "StoreDiskFullError",
    "StoreError",
    "StoreLockedError",
    "StoreMissingFileError",
    "StoreMismatchError",
    "StoreSettings",
    "TRAKer",
    "attribute",
    "linear_datamodeling_score",
    "resolve_lambda",
]
