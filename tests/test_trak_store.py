"""The store refuses mismatched settings and checkpoints, and writes its files atomically."""

import json

import numpy as np
import pytest
import torch

import trak_core
from trak_core.atomic_files import open_npy, write_json_atomic

from .test_trak_exact import make_problem

BASE = dict(proj_dim=32, projector_seed=0, proj_kind="rademacher", xtx_dtype="float64", lambda_reg=None)


def make_traker(save_dir, model=None, train_set_size=60, **overrides):
    model = model if model is not None else make_problem()[0]
    kwargs = {**BASE, **overrides}
    return trak_core.TRAKer(model, "classification", train_set_size, save_dir=save_dir, quiet=True, **kwargs)


def featurize_some(traker, checkpoint, train, count=16):
    traker.load_checkpoint(checkpoint, 0)
    traker.featurize((train[0][:count], train[1][:count]), num_samples=count)


class SameSizeOtherShape(torch.nn.Module):
    """As many parameters as the test model (14) but other shapes: a different architecture."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(13, 1)


@pytest.mark.parametrize(
    "change, setting",
    [
        (dict(proj_dim=64), "proj_dim"),
        (dict(projector_seed=1), "seed"),
        (dict(proj_kind="gaussian"), "kind"),
        (dict(xtx_dtype="float32"), "xtx_dtype"),
        (dict(train_set_size=59), "train_set_size"),
        (dict(grad_wrt=["linear.weight"]), "num_params"),
        (dict(model=SameSizeOtherShape()), "model"),
        (dict(lambda_reg=0.0), "lambda_reg"),
    ],
)
def test_store_made_with_other_settings_is_refused(tmp_path, change, setting):
    model, checkpoints, train, _ = make_problem()
    featurize_some(make_traker(tmp_path, model), checkpoints[0], train)
    with pytest.raises(trak_core.StoreMismatchError) as info:
        make_traker(tmp_path, **{"model": model, **change})
    # Exactly the changed setting is named, with both values.
    named = [part.split(":")[0].strip() for part in str(info.value).split("settings: ")[1].split("; ")]
    assert named == [setting] or (setting == "num_params" and named == ["num_params", "model"])
    assert "store has" in str(info.value) and "requested" in str(info.value)


def test_reopening_with_the_same_settings_keeps_progress(tmp_path):
    model, checkpoints, train, _ = make_problem()
    featurize_some(make_traker(tmp_path, model), checkpoints[0], train, count=16)
    reopened = make_traker(tmp_path, model)
    reopened.load_checkpoint(checkpoints[0], 0)
    # The first 16 rows are finished: nothing is computed for them, the next 8 are new.
    assert reopened.featurize((train[0][:16], train[1][:16]), num_samples=16) == 0
    assert reopened.featurize((train[0][16:24], train[1][16:24]), num_samples=8) == 8
    assert reopened.store.train_commits(0).num_done() == 24


def test_other_checkpoint_under_a_registered_model_id_is_refused(tmp_path):
    model, checkpoints, train, targets = make_problem()
    featurize_some(make_traker(tmp_path, model), checkpoints[0], train)
    traker = make_traker(tmp_path, model)
    with pytest.raises(trak_core.StoreMismatchError, match="model_id 0"):
        traker.load_checkpoint(checkpoints[1], 0)
    with pytest.raises(trak_core.StoreMismatchError, match="model_id 0"):
        traker.start_scoring_checkpoint("exp", checkpoints[1], 0, len(targets[0]))


def test_experiment_with_other_num_targets_is_refused(tmp_path):
    model, checkpoints, train, _ = make_problem()
    traker = make_traker(tmp_path, model)
    featurize_some(traker, checkpoints[0], train)
    traker.start_scoring_checkpoint("exp", checkpoints[0], 0, 12)
    with pytest.raises(trak_core.StoreMismatchError, match="num_targets=12"):
        traker.start_scoring_checkpoint("exp", checkpoints[0], 0, 13)


def test_load_from_save_dir_false_starts_over_and_keeps_foreign_files(tmp_path):
    model, checkpoints, train, _ = make_problem()
    featurize_some(make_traker(tmp_path, model), checkpoints[0], train)
    (tmp_path / "notes.txt").write_text("mine")
    fresh = make_traker(tmp_path, model, proj_dim=64, load_from_save_dir=False)
    assert fresh.store.model_ids() == []
    assert fresh.store.settings.proj_dim == 64
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_directory_with_foreign_metadata_is_refused(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(trak_core.StoreMismatchError, match="not a trak_core store"):
        make_traker(tmp_path)


def test_json_is_replaced_atomically(tmp_path):
    path = tmp_path / "meta.json"
    write_json_atomic(path, {"a": 1})
    # A write that fails half-way (object not serializable) leaves the old file and no temp file.
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_npy_arrays_are_created_zeroed_and_checked(tmp_path):
    path = tmp_path / "x.npy"
    array = open_npy(path, (3, 4), np.float32)
    assert array.shape == (3, 4) and not array.any()
    array[1] = 7.0
    array.flush()
    assert open_npy(path, (3, 4), np.float32, mode="r")[1].tolist() == [7.0] * 4
    with pytest.raises(ValueError, match=r"shape \(3, 4\)"):
        open_npy(path, (3, 5), np.float32)
    with pytest.raises(ValueError, match="dtype"):
        open_npy(path, (3, 4), np.float64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]
