"""Bad inputs to featurizing are caught where they appear, named, and never stored.

A NaN or infinite gradient: before, one `inf` input or NaN weight made every score NaN, exit 0,
with a misleading warning about λ at finalize time.  Indices that are not integers: before,
`inds=[0.5, 1.5]` was truncated to rows 0, 1 and `[True, False]` read as rows 1, 0.
"""

import numpy as np
import pytest

import trak_core

from .test_trak_exact import N_TRAIN, make_problem

K = 8


def make_traker(save_dir, model, **kwargs):
    return trak_core.TRAKer(model, "classification", N_TRAIN, save_dir=save_dir, proj_dim=K, quiet=True, **kwargs)


def featurize_all(traker, checkpoint, train):
    traker.load_checkpoint(checkpoint, 0)
    for start in range(0, N_TRAIN, 16):
        batch = (train[0][start : start + 16], train[1][start : start + 16])
        traker.featurize(batch, num_samples=len(batch[0]))


def with_inf_input(train, row):
    x = train[0].clone()
    x[row, 3] = float("inf")
    return x, train[1]


def test_an_infinite_input_is_named_and_nothing_of_its_batch_is_stored(tmp_path):
    model, checkpoints, train, _ = make_problem()
    traker = make_traker(tmp_path, model)
    traker.load_checkpoint(checkpoints[0], 0)
    traker.featurize((train[0][:16], train[1][:16]), num_samples=16)  # a clean batch: stored
    bad = with_inf_input(train, 21)
    with pytest.raises(trak_core.NonFiniteGradientError, match=r"model_id 0: store rows 21\b"):
        traker.featurize((bad[0][16:32], bad[1][16:32]), num_samples=16)
    grads = np.load(tmp_path / "models" / "0" / "grads.npy", mmap_mode="r")
    assert np.isfinite(grads).all()
    assert not grads[16:32].any()  # the failed batch left its rows untouched (uncommitted)
    assert grads[:16].any()


def test_a_nan_weight_in_a_checkpoint_is_named(tmp_path):
    model, checkpoints, train, _ = make_problem()
    broken = {name: value.clone() for name, value in checkpoints[0].items()}
    broken["linear.weight"][0, 0] = float("nan")
    traker = make_traker(tmp_path, model)
    traker.load_checkpoint(broken, 0)
    named = r"of 16 examples .* at model_id 0: store rows 0, 1, 2, .* and \d+ more"
    with pytest.raises(trak_core.NonFiniteGradientError, match=named):
        traker.featurize((train[0][:16], train[1][:16]), num_samples=16)


def test_zero_policy_stores_zeros_for_the_named_examples_and_the_scores_stay_finite(tmp_path):
    model, checkpoints, train, targets = make_problem()
    bad = with_inf_input(train, 5)
    traker = make_traker(tmp_path, model, nonfinite="zero")
    with pytest.warns(RuntimeWarning, match=r"store rows 5; stored as zeros"):
        featurize_all(traker, checkpoints[0], bad)
    traker.finalize_features()
    traker.start_scoring_checkpoint("t", checkpoints[0], 0, num_targets=len(targets[0]))
    traker.score(targets, num_samples=len(targets[0]))
    scores = np.asarray(traker.finalize_scores("t"))
    assert np.isfinite(scores).all()
    assert not scores[5].any() and scores[4].any()


def test_targets_are_checked_too(tmp_path):
    model, checkpoints, train, targets = make_problem()
    traker = make_traker(tmp_path, model)
    featurize_all(traker, checkpoints[0], train)
    traker.finalize_features()
    traker.start_scoring_checkpoint("t", checkpoints[0], 0, num_targets=len(targets[0]))
    xt = targets[0].clone()
    xt[2] = float("nan")
    with pytest.raises(trak_core.NonFiniteGradientError, match=r"store rows 2\b"):
        traker.score((xt, targets[1]), num_samples=len(xt))


def test_unknown_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        make_traker(tmp_path, make_problem()[0], nonfinite="skip")


def test_finite_batches_are_unaffected(tmp_path):
    model, checkpoints, train, _ = make_problem()
    a, b = make_traker(tmp_path / "a", model), make_traker(tmp_path / "b", model, nonfinite="zero")
    featurize_all(a, checkpoints[0], train)
    featurize_all(b, checkpoints[0], train)
    ga = np.load(tmp_path / "a" / "models" / "0" / "grads.npy")
    gb = np.load(tmp_path / "b" / "models" / "0" / "grads.npy")
    assert np.array_equal(ga, gb) and np.isfinite(ga).all()


@pytest.mark.parametrize("inds", [[0.5, 1.5], [True, False], np.array([0.0, 1.0])])
def test_featurize_refuses_indices_that_are_not_integers(tmp_path, inds):
    model, checkpoints, train, _ = make_problem()
    traker = make_traker(tmp_path, model)
    traker.load_checkpoint(checkpoints[0], 0)
    with pytest.raises(TypeError, match="inds must hold integer indices"):
        traker.featurize((train[0][:2], train[1][:2]), inds=inds)


def test_featurize_refuses_a_fractional_num_samples(tmp_path):
    model, checkpoints, train, _ = make_problem()
    traker = make_traker(tmp_path, model)
    traker.load_checkpoint(checkpoints[0], 0)
    with pytest.raises(TypeError, match="num_samples must be an integer"):
        traker.featurize((train[0][:2], train[1][:2]), num_samples=2.0)
