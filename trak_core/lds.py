"""The linear datamodeling score (LDS): how well summed attributions predict retrained models."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LDSResult:
    """LDS averaged over targets, with a bootstrap confidence interval over targets.

    Attributes:
        mean: the LDS (mean over targets of the per-target Spearman correlation).
        low, high: bounds of the ``confidence`` bootstrap percentile interval.
        confidence: e.g. 0.95.
        per_target: ``(t,)`` float64 Spearman correlation of each target.
    """

    mean: float
    low: float
    high: float
    confidence: float
    per_target: np.ndarray

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..m-1 along axis 0, ties sharing their average rank (as Spearman requires)."""
    values = np.asarray(values, dtype=np.float64)
    ranks = np.empty_like(values)
    for col in range(values.shape[1]):
        v = values[:, col]
        order = np.argsort(v, kind="stable")
        sorted_v = v[order]
        # Each run of equal values gets the mean of the positions it occupies.
        starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
        ends = np.r_[starts[1:], len(v)]
        run_rank = (starts + ends - 1) / 2.0
        ranks[order, col] = np.repeat(run_rank, ends - starts)
    return ranks


def spearman_per_column(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of ``a[:, j]`` and ``b[:, j]`` for every column j: ``(t,)`` float64.

    A constant column has no defined correlation: NaN.
    """
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean(0)
    rb -= rb.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(0) / np.sqrt((ra * ra).sum(0) * (rb * rb).sum(0))


def linear_datamodeling_score(
    scores: np.ndarray,
    subsets: np.ndarray,
    outputs: np.ndarray,
    *,
    confidence: float = 0.95,
    num_bootstrap: int = 2000,
    seed: int = 0,
) -> LDSResult:
    """LDS of attribution ``scores`` against models retrained on ``subsets``.

    For each target j, predicted outputs ``Σ_{i in S_s} scores[i, j]`` of the S subsets are
    compared by Spearman correlation with the true ``outputs[s, j]`` of models trained on them.

    Args:
        scores: ``(n, t)`` attribution scores (TRAK orientation).
        subsets: ``(S, n)`` boolean (or 0/1) membership of each train example in each subset.
        outputs: ``(S, t)`` model output (e.g. margin) on each target of the model(s) trained on
            each subset.
        confidence: level of the bootstrap interval (resampling targets).
        num_bootstrap: bootstrap resamples.
        seed: bootstrap seed.
    Returns:
        :class:`LDSResult`.
    """
    scores = np.asarray(scores, dtype=np.float64)
    subsets = np.asarray(subsets, dtype=np.float64)
    outputs = np.asarray(outputs, dtype=np.float64)
    if subsets.shape[1] != scores.shape[0] or outputs.shape != (subsets.shape[0], scores.shape[1]):
        raise ValueError(
            f"shapes do not match: scores {scores.shape} (n, t), subsets {subsets.shape} (S, n), "
            f"outputs {outputs.shape} (S, t)"
        )
    per_target = spearman_per_column(subsets @ scores, outputs)
    valid = per_target[np.isfinite(per_target)]
    if not len(valid):
        raise ValueError("no target has a defined Spearman correlation (constant predictions or outputs)")
    rng = np.random.default_rng(seed)
    means = valid[rng.integers(0, len(valid), size=(num_bootstrap, len(valid)))].mean(1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return LDSResult(float(valid.mean()), float(low), float(high), confidence, per_target)
