"""``attribute``: TRAK scores in one call, on top of :class:`TRAKer`."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

import numpy as np
import torch

from .featurize import batch_size
from .traker import TRAKer


def attribute(
    model: torch.nn.Module,
    checkpoints: Sequence[dict],
    train_loader,
    target_loader,
    *,
    proj_dim: int = 2048,
    task="classification",
    save_dir=None,
    exp_name: str = "targets",
    **traker_kwargs,
) -> np.ndarray:
    """TRAK scores of every (train example, target) pair, averaged over ``checkpoints``.

    Args:
        model: the ``nn.Module`` (on the device to use).
        checkpoints: state dicts of ``model``; checkpoint i gets model_id i.
        train_loader: iterable of batches ``(inputs, labels, ...)`` in a fixed order (no shuffling),
            with ``len(train_loader.dataset)`` examples (or iterated once to count them).
        target_loader: the same for the targets.
        proj_dim: K.
        task: see :class:`TRAKer`.
        save_dir: store directory; with a directory the run is resumable (call again after a
            crash and finished work is reused).  None: a temporary directory.
        exp_name: experiment name in the store.
        **traker_kwargs: any other :class:`TRAKer` argument (``lambda_reg``, ``grad_wrt``,
            ``projector_seed``, ``quiet``, ``device``, ``per_module``, ...).
    Returns:
        ``(n_train, n_targets)`` float32 array (a copy held in memory); with ``per_module=True``
        ``{module: (n_train, n_targets)}``, each module's scores from its own block
        (:mod:`trak_core.module_blocks`).
    """
    if not checkpoints:
        raise ValueError("checkpoints must contain at least one state dict")
    if save_dir is None:
        with tempfile.TemporaryDirectory(prefix="trak_core_") as tmp:
            scores = attribute(
                model,
                checkpoints,
                train_loader,
                target_loader,
                proj_dim=proj_dim,
                task=task,
                save_dir=tmp,
                exp_name=exp_name,
                **traker_kwargs,
            )
        return scores
    traker = TRAKer(model, task, _num_examples(train_loader), save_dir=save_dir, proj_dim=proj_dim, **traker_kwargs)
    num_targets = _num_examples(target_loader)
    for model_id, checkpoint in enumerate(checkpoints):
        record = traker.store.model(model_id)
        if record is not None and record["featurized"]:
            continue  # finished in an earlier run: no need to even read the data again
        traker.load_checkpoint(checkpoint, model_id)
        for batch in train_loader:
            traker.featurize(batch, num_samples=batch_size(batch))
    traker.finalize_features(model_ids=range(len(checkpoints)))
    for model_id, checkpoint in enumerate(checkpoints):
        traker.start_scoring_checkpoint(exp_name, checkpoint, model_id, num_targets)
        if traker.store.target_commits(exp_name, model_id).all_done():
            continue
        for batch in target_loader:
            traker.score(batch, num_samples=batch_size(batch))
    per_module = traker_kwargs.get("per_module", False)
    scores = traker.finalize_scores(exp_name, model_ids=range(len(checkpoints)), per_module=per_module)
    if per_module:
        return {name: np.array(module_scores) for name, module_scores in scores.items()}
    return np.array(scores)


def _num_examples(loader) -> int:
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    return sum(batch_size(batch) for batch in loader)
