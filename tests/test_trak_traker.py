"""TRAKer / attribute behaviour: TRAK's calling conventions, resumption within a process, errors, λ."""

import logging

import numpy as np
import pytest
import torch

import trak_core

from .test_trak_exact import N_TARGETS, N_TRAIN, make_problem, run_traker


def loaders(train, targets, batch=16):
    split = lambda data: [(data[0][i : i + batch], data[1][i : i + batch]) for i in range(0, len(data[0]), batch)]  # noqa: E731
    return split(train), split(targets)


def test_attribute_equals_the_traker_front_end(tmp_path):
    model, checkpoints, train, targets = make_problem()
    expected, _ = run_traker(tmp_path / "a", model, checkpoints, train, targets, proj_dim=48)
    train_loader, target_loader = loaders(train, targets)
    scores = trak_core.attribute(model, checkpoints, train_loader, target_loader, proj_dim=48, quiet=True)
    assert scores.shape == (N_TRAIN, N_TARGETS)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-7 * np.abs(expected).max())


def test_featurize_by_indices_in_any_order_equals_sequential(tmp_path):
    model, checkpoints, train, targets = make_problem()
    expected, _ = run_traker(tmp_path / "seq", model, checkpoints, train, targets, proj_dim=48)
    traker = trak_core.TRAKer(model, "classification", N_TRAIN, save_dir=tmp_path / "inds", proj_dim=48, quiet=True)
    order = np.random.default_rng(0).permutation(N_TRAIN)
    for model_id, ckpt in enumerate(checkpoints):
        traker.load_checkpoint(ckpt, model_id)
        for chunk in np.array_split(order, 5):
            index = torch.from_numpy(chunk)
            traker.featurize((train[0][index], train[1][index]), inds=chunk)
    traker.finalize_features()
    for model_id, ckpt in enumerate(checkpoints):
        traker.start_scoring_checkpoint("exact", ckpt, model_id, N_TARGETS)
        for chunk in np.array_split(np.arange(N_TARGETS)[::-1], 3):
            traker.score((targets[0][chunk.copy()], targets[1][chunk.copy()]), inds=chunk)
    scores = traker.finalize_scores("exact")
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_finished_rows_are_not_recomputed(tmp_path):
    model, checkpoints, train, _ = make_problem()
    traker = trak_core.TRAKer(model, "classification", N_TRAIN, save_dir=tmp_path, proj_dim=16, quiet=True)
    traker.load_checkpoint(checkpoints[0], 0)
    assert traker.featurize((train[0][:10], train[1][:10]), inds=np.arange(10)) == 10
    # Rows 5..14: only the five new ones are computed.
    assert traker.featurize((train[0][5:15], train[1][5:15]), inds=np.arange(5, 15)) == 5
    counts = traker.store.train_commits(0).counts()
    assert counts[:15].tolist() == [1] * 15 and not counts[15:].any()


def test_score_tiling_does_not_change_scores(tmp_path):
    model, checkpoints, train, targets = make_problem()
    one_tile, _ = run_traker(tmp_path / "one", model, checkpoints, train, targets, proj_dim=32)
    many, traker = run_traker(tmp_path / "many", model, checkpoints, train, targets, proj_dim=32, score_tile=(7, 5))
    np.testing.assert_allclose(many, one_tile, rtol=1e-5, atol=1e-6 * np.abs(one_tile).max())
    assert traker.store.tile_commits("exact", (9, 3)).counts().tolist() == [[1] * 3] * 9


def test_small_blocks_in_finalize_do_not_change_scores(tmp_path):
    model, checkpoints, train, targets = make_problem()
    default, _ = run_traker(tmp_path / "a", model, checkpoints, train, targets, proj_dim=32)
    blocked, _ = run_traker(tmp_path / "b", model, checkpoints, train, targets, proj_dim=32, block_rows=7)
    np.testing.assert_allclose(blocked, default, rtol=1e-5, atol=1e-6 * np.abs(default).max())


def test_grad_wrt_restricts_the_gradient(tmp_path):
    model, checkpoints, train, targets = make_problem()
    _, traker = run_traker(tmp_path, model, checkpoints, train, targets, proj_dim=16, grad_wrt=["linear.bias"])
    assert traker.num_params == 2  # CLASSES - 1 biases
    assert traker.store.settings.num_params == 2
    with pytest.raises(ValueError, match="does not have"):
        trak_core.TRAKer(model, "classification", N_TRAIN, save_dir=tmp_path / "x", grad_wrt=["nope"])


def test_custom_model_output_plugs_in(tmp_path):
    """A user ModelOutput: f = logit of the label, constant Q.  Scores must follow its gradients."""

    class LabelLogit(trak_core.ModelOutput):
        def get_output(self, model, weights, buffers, x, y):
            logits = torch.func.functional_call(model, (weights, buffers), (x.unsqueeze(0),))[0]
            return (logits * (torch.arange(logits.shape[-1]) == y)).sum()

        def get_out_to_loss_grad(self, model, weights, buffers, batch):
            return torch.full((len(batch[0]),), 0.5)

    model, checkpoints, train, targets = make_problem()
    traker = trak_core.TRAKer(model, LabelLogit(), N_TRAIN, save_dir=tmp_path, proj_dim=16, quiet=True)
    traker.load_checkpoint(checkpoints[0], 0)
    traker.featurize(train, num_samples=N_TRAIN)
    np.testing.assert_array_equal(traker.store.out_to_loss(0, mode="r"), np.full(N_TRAIN, 0.5, dtype=np.float32))
    # The label logit of a linear layer has gradient x (weight row of the label) and 1 (bias): a
    # class-2 example (the fixed logit) has zero gradient, so its feature row is exactly zero.
    grads = np.asarray(traker.store.train_grads(0, mode="r"))
    fixed = (train[1] == 2).numpy()
    assert fixed.any() and not grads[fixed].any() and np.abs(grads[~fixed]).sum(1).min() > 0


def test_calling_errors_are_clear(tmp_path):
    model, checkpoints, train, targets = make_problem()
    traker = trak_core.TRAKer(model, "classification", N_TRAIN, save_dir=tmp_path, proj_dim=16, quiet=True)
    batch = (train[0][:4], train[1][:4])
    with pytest.raises(RuntimeError, match="load_checkpoint"):
        traker.featurize(batch, num_samples=4)
    traker.load_checkpoint(checkpoints[0], 0)
    with pytest.raises(ValueError, match="exactly one"):
        traker.featurize(batch)
    with pytest.raises(ValueError, match="exactly one"):
        traker.featurize(batch, inds=[0, 1, 2, 3], num_samples=4)
    with pytest.raises(ValueError, match=r"\[0, 60\)"):
        traker.featurize(batch, inds=[57, 58, 59, 60])
    with pytest.raises(ValueError, match="distinct"):
        traker.featurize(batch, inds=[1, 1, 2, 3])
    with pytest.raises(ValueError, match="4 examples but 3"):
        traker.featurize(batch, inds=[1, 2, 3])
    with pytest.raises(ValueError, match="not featurized"):
        traker.finalize_features()
    with pytest.raises(ValueError, match="does not exist"):
        traker.finalize_scores("nothing")
    with pytest.raises(ValueError, match="unknown task"):
        trak_core.TRAKer(model, "regression", N_TRAIN, save_dir=tmp_path / "t")
    with pytest.raises(ValueError, match="lambda_reg"):
        trak_core.TRAKer(model, "classification", N_TRAIN, save_dir=tmp_path / "l", lambda_reg=-1.0)


def test_finalize_scores_skips_unready_checkpoints_only_when_allowed(tmp_path, caplog):
    model, checkpoints, train, targets = make_problem()
    traker = trak_core.TRAKer(model, "classification", N_TRAIN, save_dir=tmp_path, proj_dim=16, quiet=True)
    for model_id, ckpt in enumerate(checkpoints):
        traker.load_checkpoint(ckpt, model_id)
        traker.featurize(train, num_samples=N_TRAIN)
    traker.finalize_features()
    traker.start_scoring_checkpoint("exp", checkpoints[0], 0, N_TARGETS)
    traker.score(targets, num_samples=N_TARGETS)
    traker.start_scoring_checkpoint("exp", checkpoints[1], 1, N_TARGETS)
    traker.score((targets[0][:5], targets[1][:5]), num_samples=5)
    with pytest.raises(ValueError, match="model_id 1: 7 of 12 targets not scored"):
        traker.finalize_scores("exp")
    with caplog.at_level(logging.WARNING, logger="trak_core"):
        only_first = np.array(traker.finalize_scores("exp", allow_skip=True))
    assert "skipping model_id 1" in caplog.text
    assert traker.store.experiment("exp")["scores"]["model_ids"] == [0]
    # Finishing the second checkpoint's targets and finalizing again uses both.
    traker.score((targets[0][5:], targets[1][5:]), inds=np.arange(5, N_TARGETS))
    both = np.array(traker.finalize_scores("exp"))
    assert traker.store.experiment("exp")["scores"]["model_ids"] == [0, 1]
    assert not np.allclose(both, only_first)


@pytest.mark.parametrize("proj_dim", [16, 256])
def test_default_lambda_uses_cholesky_for_any_k_and_lambda_zero_falls_back(tmp_path, caplog, proj_dim):
    """K = 256 > n = 60: XᵀX is singular, the default λ still factorizes; λ = 0 warns and uses LU,
    or the pseudo-inverse where LU meets an exactly zero pivot (which one depends on the
    platform's rounding); the scores stay finite."""
    model, checkpoints, train, targets = make_problem()
    _, default = run_traker(tmp_path / "d", model, checkpoints, train, targets, proj_dim=proj_dim)
    assert [default.store.model(m)["solver"] for m in (0, 1)] == ["cholesky"] * 2
    xtx_trace = default.store.model(0)["xtx_trace"]
    assert default.store.model(0)["lambda"] == pytest.approx(trak_core.DEFAULT_LAMBDA_SCALE * xtx_trace / N_TRAIN)
    with caplog.at_level(logging.WARNING, logger="trak_core"):
        scores, zero = run_traker(tmp_path / "z", model, checkpoints, train, targets, proj_dim=proj_dim, lambda_reg=0.0)
    singular = proj_dim > N_TRAIN
    assert ("falling back to an LU solve" in caplog.text) == singular
    assert zero.store.model(0)["solver"] in (("lu", "pinv") if singular else ("cholesky",))
    assert np.isfinite(scores).all()


def test_del_grads_frees_the_projected_gradients_and_scoring_still_works(tmp_path):
    model, checkpoints, train, targets = make_problem()
    expected, _ = run_traker(tmp_path / "keep", model, checkpoints, train, targets, proj_dim=16)
    traker = trak_core.TRAKer(model, "classification", N_TRAIN, save_dir=tmp_path / "del", proj_dim=16, quiet=True)
    for model_id, ckpt in enumerate(checkpoints):
        traker.load_checkpoint(ckpt, model_id)
        traker.featurize(train, num_samples=N_TRAIN)
    traker.finalize_features(del_grads=True)
    grads_files = sorted((tmp_path / "del" / "models").glob("*/grads.npy"))
    assert grads_files == []
    for model_id, ckpt in enumerate(checkpoints):
        traker.load_checkpoint(ckpt, model_id)  # reloading a finalized checkpoint recreates nothing
        traker.start_scoring_checkpoint("exact", ckpt, model_id, N_TARGETS)
        traker.score(targets, num_samples=N_TARGETS)
    assert sorted((tmp_path / "del" / "models").glob("*/grads.npy")) == []
    np.testing.assert_allclose(traker.finalize_scores("exact"), expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_a_second_gradient_path_plugs_in(tmp_path):
    """A gradient computer that projects by itself (as a hooks + project_linear path would)."""

    class ProjectsItself(trak_core.FunctionalGradientComputer):
        calls = 0

        def projected_per_sample_grad(self, batch, projector, model_id):
            ProjectsItself.calls += 1
            flat = torch.cat([g.reshape(len(batch[0]), -1) for g in self.compute_per_sample_grad(batch).values()], 1)
            return projector.project(flat, model_id=model_id)  # concatenated instead of chunked: same numbers

    model, checkpoints, train, targets = make_problem()
    expected, _ = run_traker(tmp_path / "a", model, checkpoints, train, targets, proj_dim=24)
    scores, _ = run_traker(
        tmp_path / "b", model, checkpoints, train, targets, proj_dim=24, gradient_computer=ProjectsItself
    )
    assert ProjectsItself.calls > 0
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
