"""The linear datamodeling score: Spearman per target, averaged, with a bootstrap interval."""

import numpy as np
import pytest

from trak_core import linear_datamodeling_score
from trak_core.lds import average_ranks, spearman_per_column

N, T, S = 40, 30, 200


def problem(seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(N, T))
    subsets = rng.random((S, N)) < 0.5
    return rng, scores, subsets


def test_a_perfect_datamodel_scores_one_and_its_negation_minus_one():
    _, scores, subsets = problem()
    # Any increasing function of the linear prediction has Spearman correlation exactly 1.
    outputs = np.exp((subsets @ scores) / 10)
    result = linear_datamodeling_score(scores, subsets, outputs)
    assert result.mean == pytest.approx(1.0) and result.low == pytest.approx(1.0)
    assert linear_datamodeling_score(-scores, subsets, outputs).mean == pytest.approx(-1.0)


def test_unrelated_outputs_score_near_zero_with_an_interval_around_it():
    rng, scores, subsets = problem()
    result = linear_datamodeling_score(scores, subsets, rng.normal(size=(S, T)))
    # Each per-target correlation has standard deviation ~1/sqrt(S - 1) = 0.071; their mean over
    # T = 30 targets ~0.013: 0.06 is more than four standard deviations.
    assert abs(result.mean) < 0.06
    assert result.low < result.mean < result.high
    assert result.low < 0.0 < result.high


def test_noisy_datamodel_interval_brackets_the_mean_and_is_reported():
    rng, scores, subsets = problem()
    outputs = subsets @ scores + rng.normal(scale=3.0, size=(S, T))
    result = linear_datamodeling_score(scores, subsets, outputs, confidence=0.9)
    assert 0.2 < result.low < result.mean < result.high < 1.0
    assert result.per_target.shape == (T,)
    assert str(result) == f"{result.mean:.3f} [{result.low:.3f}, {result.high:.3f}]"


def test_ranks_average_ties():
    ranks = average_ranks(np.array([[3.0, 1.0], [1.0, 1.0], [3.0, 1.0], [2.0, 0.0]]))
    assert ranks[:, 0].tolist() == [2.5, 0.0, 2.5, 1.0]
    assert ranks[:, 1].tolist() == [2.0, 2.0, 2.0, 0.0]


def test_spearman_equals_the_rank_difference_formula_without_ties():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(25, 4)), rng.normal(size=(25, 4))
    d = average_ranks(a) - average_ranks(b)
    m = len(a)
    expected = 1 - 6 * (d**2).sum(0) / (m * (m**2 - 1))
    np.testing.assert_allclose(spearman_per_column(a, b), expected, rtol=1e-12)


def test_constant_targets_are_left_out_and_bad_shapes_refused():
    rng, scores, subsets = problem()
    outputs = subsets @ scores
    outputs[:, 0] = 1.0
    result = linear_datamodeling_score(scores, subsets, outputs)
    assert np.isnan(result.per_target[0]) and result.mean == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes do not match"):
        linear_datamodeling_score(scores, subsets[:, :-1], outputs)
