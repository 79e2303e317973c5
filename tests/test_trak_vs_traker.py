"""Switching with one import: the same TRAK script gives TRAK's scores with trak.TRAKer and trak_core.TRAKer.

traker (CI installs traker==0.3.2) is given fastjl's projector so both use the same matrix.
traker divides (XᵀX)⁻¹ by the mean absolute value of its entries, a constant per checkpoint, so
with one checkpoint its scores are ours times one positive number.
"""

import logging

import numpy as np
import pytest

pytest.importorskip("trak", reason="traker is not installed (pip install traker==0.3.2)")

from trak import TRAKer as TraksTRAKer  # noqa: E402

import trak_core
from fastjl.integrations.trak import FastJLProjector

from .test_trak_exact import N_TARGETS, N_TRAIN, NUM_PARAMS, make_problem

PROJ_DIM = 8  # < rank of the gradients (14), so λ = 0 is well defined for both


def traker_script(traker_class, save_dir, **extra):
    """A user's TRAK script, unchanged except for the class it is given."""
    model, checkpoints, train, targets = make_problem()
    traker = traker_class(
        model=model,
        task="image_classification",
        train_set_size=N_TRAIN,
        save_dir=str(save_dir),
        device="cpu",
        proj_dim=PROJ_DIM,
        use_half_precision=False,
        logging_level=logging.ERROR,
        lambda_reg=0.0,
        **extra,
    )
    traker.load_checkpoint(checkpoints[0], model_id=0)
    for start in range(0, N_TRAIN, 16):
        batch = (train[0][start : start + 16], train[1][start : start + 16])
        traker.featurize(batch=batch, num_samples=batch[0].shape[0])
    traker.finalize_features()
    traker.start_scoring_checkpoint(exp_name="test", checkpoint=checkpoints[0], model_id=0, num_targets=N_TARGETS)
    traker.score(batch=targets, num_samples=N_TARGETS)
    return np.array(traker.finalize_scores(exp_name="test"))


def test_same_script_same_scores_as_traker(tmp_path):
    theirs = traker_script(TraksTRAKer, tmp_path / "trak", projector=FastJLProjector(NUM_PARAMS, PROJ_DIM, seed=0))
    ours = traker_script(trak_core.TRAKer, tmp_path / "trak_core", quiet=True)
    assert ours.shape == theirs.shape == (N_TRAIN, N_TARGETS)
    factor = (ours * theirs).sum() / (ours * ours).sum()
    assert factor > 0
    np.testing.assert_allclose(theirs, factor * ours, rtol=1e-3, atol=1e-4 * np.abs(theirs).max())
