"""Turning a batch into stored rows: gradients -> projection -> scale, skipping finished rows."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch

from fastjl.validation import check_indices, check_int

from .commit_counts import CommitCounts
from .gradients import GradientComputer
from .projection import scale_rows

# What to do with an example whose projected gradient (or Q) is NaN or infinite: "error"
# (the default: nothing of the batch is stored) or "zero" (store zeros for it, with a warning
# naming it: the example then scores 0 against every target).
NONFINITE_POLICIES = ("error", "zero")


class NonFiniteGradientError(FloatingPointError):
    """A projected gradient or Q of some example is NaN or infinite (the message names them)."""


def finite_rows(values: np.ndarray, rows: np.ndarray, model_id: int, what: str, policy: str) -> np.ndarray:
    """``values`` (one row per example in ``rows``) checked for NaN/inf before anything is stored.

    One non-finite input (an ``inf`` pixel) or weight (a NaN in one checkpoint) would otherwise
    spread through XᵀX to every score.  ``policy``: see NONFINITE_POLICIES."""
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if not bad.any():
        return values
    named = rows[bad]
    shown = ", ".join(str(r) for r in named[:10]) + (f" and {len(named) - 10} more" if len(named) > 10 else "")
    msg = (
        f"{what} of {int(bad.sum())} of {len(rows)} examples of the batch are not finite (NaN or inf) "
        f"at model_id {model_id}: store rows {shown}"
    )
    if policy == "error":
        raise NonFiniteGradientError(
            f"{msg}. Nothing of this batch was stored. Check those examples' inputs and the checkpoint's "
            "weights, or pass nonfinite='zero' to store zeros for such examples (they then score 0)."
        )
    warnings.warn(f"{msg}; stored as zeros (nonfinite='zero')", RuntimeWarning, stacklevel=3)
    values = values.copy()
    values[bad] = 0
    return values


def batch_size(batch) -> int:
    """Number of examples in a batch (a tuple/list, or a dict, of tensors sharing the first dimension)."""
    tensors = [t for t in batch.values() if isinstance(t, torch.Tensor)] if isinstance(batch, Mapping) else batch
    sizes = {int(t.shape[0]) for t in tensors}
    if len(sizes) != 1:
        raise ValueError(f"the tensors of a batch must share their first dimension, got sizes {sorted(sizes)}")
    return sizes.pop()


def take_rows(batch, keep: np.ndarray):
    """The examples of ``batch`` where the boolean mask ``keep`` is True."""
    if keep.all():
        return batch
    index = torch.from_numpy(np.flatnonzero(keep))
    return tuple(t[index.to(t.device)] for t in batch)


def indices_for(batch, inds, num_samples, next_index: int, limit: int, what: str) -> np.ndarray:
    """The store rows of a batch, from TRAK's ``inds=`` / ``num_samples=`` arguments.

    Args:
        inds: explicit row indices (any integer sequence), or None.
        num_samples: number of examples, written at ``next_index ...``; or None.
        next_index: where sequential writing (``num_samples``) continues.
        limit: number of rows in the store (n or t).
        what: name of the rows for error messages.
    Returns:
        ``(B,)`` int64 row indices.
    """
    if (inds is None) == (num_samples is None):
        raise ValueError("exactly one of inds and num_samples must be given")
    if num_samples is not None:
        count = check_int(num_samples, "num_samples", low=0, high=limit)
        rows = np.arange(next_index, next_index + count, dtype=np.int64)
    else:
        rows = check_indices(inds, "inds")  # floats and bools refused, not truncated
    if len(rows) != batch_size(batch):
        raise ValueError(f"the batch has {batch_size(batch)} examples but {len(rows)} {what} indices were given")
    if len(rows) and (rows.min() < 0 or rows.max() >= limit):
        raise ValueError(f"{what} indices must lie in [0, {limit}), got [{rows.min()}, {rows.max()}]")
    if len(np.unique(rows)) != len(rows):
        raise ValueError(f"{what} indices within one batch must be distinct")
    return rows


class RowWriter:
    """Computes TRAK rows for the unfinished examples of a batch and commits them.

    Args:
        gradient_computer: the gradient path (see :class:`GradientComputer`).
        projector: ``.project(grads_dict, model_id) -> (B, K)``.
        micro_batch: at most this many per-example gradients (each D floats) exist at once;
            None for the whole batch.
        num_columns: columns of a row: the projector's ``proj_dim`` (default), or M·K for
            per-module features (``gradient_computer`` then a :class:`~trak_core.module_blocks.PerModuleGradients`).
    """

    def __init__(
        self,
        gradient_computer: GradientComputer,
        projector,
        micro_batch: int | None,
        nonfinite: str = "error",
        num_columns: int | None = None,
    ):
        if micro_batch is not None and micro_batch < 1:
            raise ValueError(f"proj_max_batch_size must be >= 1, got {micro_batch}")
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        self.gradients = gradient_computer
        self.projector = projector
        self.micro_batch = micro_batch
        self.nonfinite = nonfinite
        self.num_columns = projector.proj_dim if num_columns is None else int(num_columns)

    def projected_rows(self, batch, model_id: int) -> np.ndarray:
        """``(B, num_columns)`` float32: ``P_mᵀ ∇θ f / sqrt(D)`` for every example of ``batch``."""
        pieces = []
        n = batch_size(batch)
        step = self.micro_batch or n
        for start in range(0, n, step):
            part = tuple(t[start : start + step] for t in batch)
            projected = self.gradients.projected_per_sample_grad(part, self.projector, model_id)
            rows = scale_rows(projected, self.gradients.num_params, self.num_columns)
            pieces.append(rows.detach().cpu())
        return torch.cat(pieces).numpy()

    def write(
        self,
        batch,
        rows: np.ndarray,
        model_id: int,
        grads_out: np.ndarray,
        commits: CommitCounts,
        q_out: np.ndarray | None = None,
    ) -> int:
        """Computes and stores the rows of ``batch`` not yet committed.

        Args:
            batch: tuple of tensors on the model's device, first dimension B.
            rows: ``(B,)`` store row of each example.
            model_id: checkpoint index.
            grads_out: ``(N, K)`` float32 memmap receiving the projected rows.
            commits: the commit counts of those rows.
            q_out: ``(N,)`` float32 memmap receiving Q, or None (targets need no Q).
        Returns:
            The number of rows computed (0 if all were finished already).
        """
        todo = ~commits.done(rows)
        if not todo.any():
            return 0
        batch, rows = take_rows(batch, todo), rows[todo]
        # Everything is computed and checked before anything is stored.
        projected = finite_rows(
            self.projected_rows(batch, model_id), rows, model_id, "projected gradients", self.nonfinite
        )
        if q_out is not None:
            q = self.gradients.compute_loss_grad(batch).detach().float().cpu().numpy()
            q = finite_rows(q, rows, model_id, "out-to-loss terms (Q)", self.nonfinite)
        grads_out[rows] = projected
        grads_out.flush()
        if q_out is not None:
            q_out[rows] = q
            q_out.flush()
        # Data first, then the commit: a kill in between only costs recomputing this batch.
        commits.commit(rows)
        return len(rows)
