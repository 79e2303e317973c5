"""trak_core with the sparse kinds (``proj_kind="sjlt"`` / ``"grass"``): the features are the
projection of the per-example gradients on both gradient paths, the hooks path's bounded
blocks add up to the whole, and a store is never mixed across sparsities or keep rates."""

import json

import numpy as np
import pytest
import torch

import fastjl
import trak_core
import trak_core.sparse_hooks
from trak_core.gradients import FunctionalGradientComputer
from trak_core.hooked_gradients import LinearHooksGradientComputer
from trak_core.model_output import ClassificationMargin
from trak_core.sparse_hooks import project_linear_formed, project_token_rows

from .helpers import relative_error
from .test_trak_exact import make_problem
from .test_trak_hooks import SmallCNN, batch_for, mlp, tiny_gpt

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap over CPU attention

SPARSE = [("sjlt", dict(sparsity=1)), ("sjlt", dict(sparsity=4)), ("grass", dict(sparsity=2, mask_rate=0.3))]
# float32, summed in other orders (per block / per layer vs one vector): measured ~1e-7 relative.
TOLERANCE = 2e-6


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of G of at most 2 KiB: the hooks path forms every layer's gradient in many blocks
    (of examples and of rows); fastjl's own budget is left as it is."""
    monkeypatch.setattr(trak_core.sparse_hooks, "formed_block_bytes", lambda: 2048)


def reference_features(model, batch, proj_dim, kind, options, seed=5, model_id=2):
    """The whole per-example gradient, concatenated in parameter order, projected in one call."""
    computer = FunctionalGradientComputer(model=model, task=ClassificationMargin())
    grads = computer.compute_per_sample_grad(batch)
    flat = torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)
    seed = seed + fastjl.projector.MODEL_SEED_STRIDE * model_id
    return fastjl.project(flat.double(), proj_dim, seed=seed, kind=kind, backend="torch", **options)


@pytest.mark.parametrize(
    "make_model, kind, options", [(mlp, *SPARSE[0]), (mlp, *SPARSE[2]), (SmallCNN, *SPARSE[1]), (tiny_gpt, *SPARSE[2])]
)
@pytest.mark.parametrize("computer_cls", [FunctionalGradientComputer, LinearHooksGradientComputer])
def test_both_paths_project_the_per_example_gradient(small_blocks, computer_cls, make_model, kind, options):
    torch.manual_seed(0)
    model = make_model().eval()
    batch = batch_for(model)
    computer = computer_cls(model=model, task=ClassificationMargin())
    projector = fastjl.Projector(computer.num_params, 48, seed=5, kind=kind, **options)
    got = computer.projected_per_sample_grad(batch, projector, 2)
    expected = reference_features(model, batch, 48, kind, options)
    assert relative_error(got, expected) < TOLERANCE
    # Not a dense kind by accident: the same gradients with rademacher differ completely.
    dense = reference_features(model, batch, 48, "rademacher", {})
    assert relative_error(got, dense) > 0.5


def test_hooks_path_handles_transposed_weights_and_embeddings(small_blocks):
    from . import hf_models  # skips this test without transformers

    task = trak_core.CausalLMOutput()
    model = hf_models.build("gpt2")  # Conv1D layers and a tied embedding
    batch = task.as_batch(hf_models.token_batch())
    got_expected = []
    for cls in (LinearHooksGradientComputer, FunctionalGradientComputer):
        computer = cls(model=model, task=task)
        projector = fastjl.Projector(computer.num_params, 64, seed=3, kind="grass", sparsity=2, mask_rate=0.5)
        got_expected.append(computer.projected_per_sample_grad(batch, projector, 1))
    assert computer.num_params > 5_000
    assert relative_error(*got_expected) < TOLERANCE


def test_formed_blocks_add_up_to_the_whole_gradient(small_blocks):
    gen = torch.Generator().manual_seed(1)
    a, g = torch.randn(5, 3, 40, generator=gen), torch.randn(5, 3, 7, generator=gen)
    options = dict(seed=9, kind="sjlt", sparsity=2, backend="torch", scale=None)
    got = project_linear_formed(a, g, 32, offset=1000, **options)
    whole = torch.einsum("bto,bti->boi", g.double(), a.double()).reshape(5, -1)
    assert relative_error(got, fastjl.project(whole, 32, offset=1000, **options)) < TOLERANCE

    # Token rows 2, 3, 4 and 9 of a (12, 6) weight: runs [2..4] and [9].
    distinct = torch.tensor([2, 3, 4, 9])
    rows = torch.randn(5, 4, 6, generator=gen)
    dense = torch.zeros(5, 12, 6, dtype=torch.float64)
    dense[:, distinct] = rows.double()
    expected = fastjl.project(dense.reshape(5, -1), 32, offset=50, **options)
    assert relative_error(project_token_rows(distinct, rows, 32, offset=50, width=6, **options), expected) < TOLERANCE
    empty = project_token_rows(torch.tensor([], dtype=torch.int64), rows[:, :0], 32, offset=50, width=6, **options)
    assert empty.shape == (5, 32) and not empty.any()


def sparse_traker(save_dir, model, **overrides):
    kwargs = {"proj_dim": 32, "proj_kind": "sjlt", "sparsity": 2, "quiet": True, **overrides}
    return trak_core.TRAKer(model, "classification", 60, save_dir=save_dir, **kwargs)


def test_traker_scores_with_sparse_kinds_and_records_them(tmp_path):
    model, checkpoints, train, targets = make_problem()
    kwargs = dict(proj_kind="grass", sparsity=2, mask_rate=0.75)
    scores = trak_core.attribute(
        model, checkpoints, [train], [targets], proj_dim=32, save_dir=tmp_path, quiet=True, **kwargs
    )
    assert scores.shape == (60, len(targets[0])) and np.isfinite(scores).all() and np.abs(scores).max() > 0
    settings = json.loads((tmp_path / "metadata.json").read_text())["settings"]
    assert (settings["kind"], settings["sparsity"], settings["mask_rate"]) == ("grass", 2, 0.75)
    # The features are those of fastjl.Projector with the same options (scaled by 1/sqrt(D)).
    store = trak_core.Store.open(tmp_path)
    projector = fastjl.Projector(14, 32, kind="grass", sparsity=2, mask_rate=0.75)
    computer = FunctionalGradientComputer(model=model, task=ClassificationMargin())
    model.load_state_dict(checkpoints[1])
    computer.load_model_params(model)
    expected = projector.project(computer.compute_per_sample_grad(train), model_id=1) / 14**0.5
    assert relative_error(torch.from_numpy(np.array(store.train_grads(1, mode="r"))), expected) < TOLERANCE


@pytest.mark.parametrize(
    "change, setting",
    [
        (dict(sparsity=4), "sparsity"),
        (dict(proj_kind="grass", mask_rate=0.5), "kind"),
        (dict(proj_kind="rademacher", sparsity=1), "kind"),
    ],
)
def test_store_is_never_mixed_across_sparse_options(tmp_path, change, setting):
    model, checkpoints, train, _ = make_problem()
    traker = sparse_traker(tmp_path, model)
    traker.load_checkpoint(checkpoints[0], 0)
    traker.featurize((train[0][:8], train[1][:8]), num_samples=8)
    traker.close()
    with pytest.raises(trak_core.StoreMismatchError, match=f"{setting}: store has"):
        sparse_traker(tmp_path, model, **change)


def test_store_is_never_mixed_across_keep_rates(tmp_path):
    model, checkpoints, train, _ = make_problem()
    sparse_traker(tmp_path, model, proj_kind="grass", mask_rate=0.5).close()
    with pytest.raises(trak_core.StoreMismatchError, match="mask_rate: store has 0.5, requested 0.25"):
        sparse_traker(tmp_path, model, proj_kind="grass", mask_rate=0.25)


def test_settings_written_before_the_sparse_kinds_still_open():
    old = dict(train_set_size=4, proj_dim=8, projector="fastjl", seed=0, kind="rademacher", dtype="float32",
               xtx_dtype="float64", num_params=3, model="m", task="t", lambda_reg="0.0")  # fmt: skip
    settings = trak_core.StoreSettings.from_json(old)
    assert settings.sparsity is None and settings.mask_rate is None
    assert settings.mismatches(trak_core.StoreSettings(**old)) == []


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(proj_kind="grass"), "kind='grass' needs mask_rate"),
        (dict(proj_kind="sjlt", sparsity=3), "sparsity must be one of"),
        (dict(proj_kind="sjlt", mask_rate=0.5), "mask_rate applies to kind='grass' only"),
        (dict(proj_kind="rademacher", sparsity=2), "sparsity and mask_rate apply to kind='sjlt' or 'grass' only"),
        (dict(proj_kind="kronecker", mask_rate=0.5), "apply to proj_kind='sjlt' or 'grass' only, not 'kronecker'"),
        (dict(proj_kind="sjlt", sparsity=4, proj_dim=2), "proj_dim must be at least sparsity"),
    ],
)
def test_bad_sparse_options_are_named(tmp_path, options, message):
    model = make_problem()[0]
    with pytest.raises(ValueError, match=message):
        trak_core.TRAKer(model, "classification", 60, save_dir=tmp_path, quiet=True, **{"proj_dim": 32, **options})


def test_sparse_options_with_a_custom_projector_are_refused(tmp_path):
    model = make_problem()[0]
    projector = fastjl.Projector(14, 32, kind="sjlt", sparsity=2)
    with pytest.raises(ValueError, match="set them on that projector"):
        trak_core.TRAKer(model, "classification", 60, save_dir=tmp_path, projector=projector, sparsity=2)
    # A fastjl.Projector given as projector= records its own sparse options.
    traker = trak_core.TRAKer(model, "classification", 60, save_dir=tmp_path, projector=projector, quiet=True)
    assert (traker.store.settings.kind, traker.store.settings.sparsity) == ("sjlt", 2)


@pytest.mark.parametrize("grad_wrt", [["0.weight", "4.bias"], ["2"], ["0.bias", "2.weight"]])
def test_parameter_subsets_project_alike_on_both_paths(small_blocks, grad_wrt):
    """A bias without its weight (or the reverse) is projected at its own offset."""
    torch.manual_seed(0)
    model = mlp().eval()
    batch = batch_for(model, tokens=1)
    got = []
    for cls in (FunctionalGradientComputer, LinearHooksGradientComputer):
        computer = cls(model=model, task=ClassificationMargin(), grad_wrt=grad_wrt)
        projector = fastjl.Projector(computer.num_params, 40, kind="grass", sparsity=2, mask_rate=0.6)
        got.append(computer.projected_per_sample_grad(batch, projector, 0))
    assert got[0].abs().max() > 0 and relative_error(*got) < TOLERANCE
