"""Per-module features (``TRAKer(per_module=True)``): blocks, column map, both gradient paths,
block-diagonal finalize and per-module scores, store settings and resumable scores."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import fastjl
import trak_core
from trak_core.gradients import FunctionalGradientComputer
from trak_core.hooked_gradients import LinearHooksGradientComputer
from trak_core.model_output import ClassificationMargin
from trak_core.module_blocks import ModuleColumns, PerModuleGradients, module_of

from .helpers import reference_projection, relative_error

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap over CPU attention

K = 16
# Dense kinds: the same projections placed or added, in float32 with other summation orders
# (per layer vs one vector); measured ~2e-7 relative, as in tests/test_trak_lm.py.
TOLERANCE = 2e-6


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.LayerNorm(7),
                               torch.nn.Linear(7, 3)).eval()  # fmt: skip


class TiedHead(torch.nn.Module):
    """An embedding tied to an output layer that has its own bias (BERT's MLM head): the head's
    weight belongs to module ``emb``, its bias to module ``head``."""

    def __init__(self, vocab=9, width=4):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, width)
        self.head = torch.nn.Linear(width, vocab)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.emb(ids)).mean(1))


def mlp_batch(n=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def tied_batch(n=6, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 9, (n, 5), generator=gen), torch.randint(0, 9, (n,), generator=gen)


def rows(computer_cls, model, batch, kind="rademacher", task=None, per_module=True, grad_wrt=None, **kw):
    """Unscaled projected rows of checkpoint 1 (per-module blocks, or the whole-model sum)."""
    computer = computer_cls(model=model, task=task or ClassificationMargin(), grad_wrt=grad_wrt, **kw)
    projector = fastjl.Projector(computer.num_params, K, seed=3, kind=kind)
    if not per_module:
        return computer.projected_per_sample_grad(batch, projector, 1), computer
    blocks = PerModuleGradients(computer, ModuleColumns(computer.param_names, K), projector)
    return blocks.projected_per_sample_grad(batch, projector, 1), computer


def block_sum(features: torch.Tensor) -> torch.Tensor:
    return features.reshape(features.shape[0], -1, K).sum(1)


def test_module_definition_and_column_map():
    model = TiedHead()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["emb.weight", "head.bias"]  # the tied weight is listed once, under emb
    columns = ModuleColumns(names, K)
    assert columns.names == ["emb", "head"] and columns.num_columns == 2 * K
    assert columns.to_settings() == (("emb", 0, K), ("head", K, 2 * K))
    assert module_of("bias") == "" and module_of("a.b.weight") == "a.b"


def test_blocks_are_modules_projected_at_their_row_offsets():
    """Independent oracle: each block is the module's torch.func gradient times the entry-wise
    spec's rows at the module's global offset, and the blocks add up to the whole features."""
    model, batch = mlp(), mlp_batch()
    got, computer = rows(FunctionalGradientComputer, model, batch)
    grads = computer.compute_per_sample_grad(batch)
    offset = 0
    for index, module in enumerate(["0", "2", "3"]):
        g = torch.cat([grads[n].reshape(len(batch[0]), -1) for n in computer.param_names if module_of(n) == module], 1)
        expected = reference_projection(g, K, seed=3 + 10**4, offset=offset)
        assert relative_error(got[:, index * K : (index + 1) * K], expected) < TOLERANCE
        offset += g.shape[1]
    assert offset == computer.num_params
    whole, _ = rows(FunctionalGradientComputer, model, batch, per_module=False)
    assert relative_error(block_sum(got), whole.double()) < TOLERANCE


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("make, batch", [(mlp, mlp_batch), (TiedHead, tied_batch)])
def test_hooks_and_torch_func_blocks_are_equal(make, batch, kind):
    model, data = make(), batch()
    expected, _ = rows(FunctionalGradientComputer, model, data, kind)
    got, computer = rows(LinearHooksGradientComputer, model, data, kind)
    assert not computer.fallback_names  # everything went through the hooks
    assert expected.shape == (len(data[0]), len(ModuleColumns(computer.param_names, K).names) * K)
    assert relative_error(got, expected.double()) < TOLERANCE
    whole, _ = rows(LinearHooksGradientComputer, model, data, kind, per_module=False)
    assert relative_error(block_sum(got), whole.double()) < TOLERANCE


@pytest.mark.parametrize("kind", ["kronecker", "sjlt"])
def test_blocks_add_up_to_whole_features_for_other_kinds(kind):
    model, data = mlp(), mlp_batch()
    extra = {"linear_kind": "kronecker"} if kind == "kronecker" else {}
    proj_kind = "gaussian" if kind == "kronecker" else kind  # kronecker: the other parameters' kind
    got, _ = rows(LinearHooksGradientComputer, model, data, proj_kind, **extra)
    whole, _ = rows(LinearHooksGradientComputer, model, data, proj_kind, per_module=False, **extra)
    assert relative_error(block_sum(got), whole.double()) < TOLERANCE
    assert all(got[:, i * K : (i + 1) * K].norm() > 0 for i in range(3))  # every module has its own block


def test_gpt2_blocks_on_both_paths_with_a_module_pattern():
    from trak_core.lm_task import CausalLMOutput

    from . import hf_models  # skips without transformers

    task = CausalLMOutput()
    model, batch = hf_models.build("gpt2"), task.as_batch(hf_models.token_batch())
    selection = ["*.h.1.attn.*", "*.h.1.mlp.*", "transformer.wte"]
    expected, _ = rows(FunctionalGradientComputer, model, batch, task=task, grad_wrt=selection)
    got, computer = rows(LinearHooksGradientComputer, model, batch, task=task, grad_wrt=selection)
    assert ModuleColumns(computer.param_names, K).names == [
        "transformer.wte", "transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj",
        "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]  # fmt: skip
    assert relative_error(got, expected.double()) < TOLERANCE
    whole, _ = rows(LinearHooksGradientComputer, model, batch, task=task, grad_wrt=selection, per_module=False)
    assert relative_error(block_sum(got), whole.double()) < TOLERANCE


def run(tmp_path, per_module, name="store", lambda_reg=0.05, score_tile=(8192, 4096), **kwargs):
    """A TRAKer featurized on 12 train examples and scored on 5 targets (two checkpoints)."""
    model = mlp()
    second = {k: v + 0.1 for k, v in model.state_dict().items()}
    train, targets = mlp_batch(12, seed=4), mlp_batch(5, seed=5)
    traker = trak_core.TRAKer(model, "classification", 12, save_dir=tmp_path / name, proj_dim=K, quiet=True,
                              lambda_reg=lambda_reg, per_module=per_module, score_tile=score_tile,
                              **kwargs)  # fmt: skip
    checkpoints = [{k: v.clone() for k, v in model.state_dict().items()}, second]
    for model_id, checkpoint in enumerate(checkpoints):
        traker.load_checkpoint(checkpoint, model_id)
        traker.featurize(train, num_samples=12)
    traker.finalize_features()
    for model_id, checkpoint in enumerate(checkpoints):
        traker.start_scoring_checkpoint("exp", checkpoint, model_id, 5)
        traker.score(targets, num_samples=5)
    return traker


def test_traker_stores_blocks_and_per_module_scores_match_an_independent_computation(tmp_path):
    whole = run(tmp_path, per_module=False, name="whole")
    blocks = run(tmp_path, per_module=True)
    columns = {"0": (0, K), "2": (K, 2 * K), "3": (2 * K, 3 * K)}
    assert blocks.module_columns == columns and whole.module_columns is None
    assert trak_core.Store.open(tmp_path / "store").module_columns == columns
    store = blocks.store
    q = np.mean([store.out_to_loss(m, mode="r") for m in (0, 1)], axis=0).astype(np.float64)
    expected = {name: 0.0 for name in columns}
    for model_id in (0, 1):
        x = np.array(store.train_grads(model_id, mode="r"), dtype=np.float64)
        t = np.array(store.target_grads("exp", model_id, mode="r"), dtype=np.float64)
        np.testing.assert_allclose(block_sum(torch.from_numpy(x)).numpy(), whole.store.train_grads(model_id, "r"),
                                   rtol=1e-5, atol=1e-7)  # fmt: skip
        for name, (a, b) in columns.items():
            xm = x[:, a:b]
            feats = np.linalg.solve(xm.T @ xm + 0.05 * np.eye(K), xm.T).T
            np.testing.assert_allclose(store.features(model_id, mode="r")[:, a:b], feats, rtol=1e-4, atol=1e-6)
            expected[name] = expected[name] + feats @ t[:, a:b].T / 2
    per_module = blocks.finalize_scores("exp", per_module=True)
    assert list(per_module) == list(columns)
    for name in columns:
        np.testing.assert_allclose(per_module[name], expected[name] * q[:, None], rtol=1e-4, atol=1e-6)
    total = blocks.finalize_scores("exp")  # block-diagonal TRAK: the modules' scores add up
    np.testing.assert_allclose(total, sum(per_module.values()), rtol=1e-4, atol=1e-6)
    assert store.model(0)["lambda"] == [0.05] * 3 and store.model(0)["solver"] == ["cholesky"] * 3


def test_store_refuses_mixing_granularities(tmp_path):
    model = mlp()
    for first, second, stored in ((False, True, "whole-model"), (True, False, "per-module")):
        save_dir = tmp_path / str(first)
        trak_core.TRAKer(model, "classification", 4, save_dir=save_dir, proj_dim=K, per_module=first).close()
        with pytest.raises(trak_core.StoreMismatchError, match=f"features: store has {stored} features"):
            trak_core.TRAKer(model, "classification", 4, save_dir=save_dir, proj_dim=K, per_module=second)


def test_per_module_scores_resume_after_a_crash(tmp_path, monkeypatch):
    traker = run(tmp_path, per_module=True, score_tile=(5, 2))  # grid (3 modules, 3, 3)
    commit = trak_core.commit_counts.CommitCounts.commit
    calls = []

    def crash_on_the_fifth(self, index):
        calls.append(index)
        if len(calls) == 5:
            raise KeyboardInterrupt("killed")
        commit(self, index)

    monkeypatch.setattr(trak_core.commit_counts.CommitCounts, "commit", crash_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        traker.finalize_scores("exp", per_module=True)
    monkeypatch.setattr(trak_core.commit_counts.CommitCounts, "commit", commit)
    resumed = traker.finalize_scores("exp", per_module=True)
    tiles = traker.store.tile_commits("exp", (3, 3, 3), mode="r", per_module=True)
    assert (tiles.counts() == 1).all()  # nothing computed twice, nothing left out
    fresh = run(tmp_path, per_module=True, name="fresh", score_tile=(5, 2)).finalize_scores("exp", per_module=True)
    for name in fresh:
        np.testing.assert_array_equal(resumed[name], fresh[name])
    assert traker.store.experiment("exp")["module_scores"]["complete"]


def test_attribute_per_module_and_errors(tmp_path):
    model = mlp()
    train = [mlp_batch(6, seed=6), mlp_batch(6, seed=7)]
    scores = trak_core.attribute(model, [model.state_dict()], train, train[:1], proj_dim=K, quiet=True,
                                 per_module=True, lambda_reg=0.05)  # fmt: skip
    whole = trak_core.attribute(model, [model.state_dict()], train, train[:1], proj_dim=K, quiet=True, lambda_reg=0.05)
    assert list(scores) == ["0", "2", "3"] and all(s.shape == (12, 6) for s in scores.values())
    assert not np.allclose(sum(scores.values()), whole)  # block-diagonal, not the full inverse
    with pytest.raises(ValueError, match="needs a store of per-module features"):
        run(tmp_path, per_module=False, name="whole").finalize_scores("exp", per_module=True)
    identity = type("Identity", (), {"proj_dim": 3, "project": lambda self, grads, model_id: None})()
    with pytest.raises(ValueError, match="per_module=True .* pass projector=None"):
        trak_core.TRAKer(model, "classification", 4, save_dir=tmp_path / "p", projector=identity, per_module=True)
    with pytest.raises(TypeError, match="per_module must be True or False"):
        trak_core.TRAKer(model, "classification", 4, save_dir=tmp_path / "q", proj_dim=K, per_module="yes")
    assert math.isfinite(float(sum(s.sum() for s in scores.values())))


def test_readme_per_module_example_runs(capsys):
    pytest.importorskip("transformers", reason="the README example needs transformers")
    text = (Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"### Per-module features\n.*?```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    modules = ["transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_fc",
               "transformer.h.1.mlp.c_proj"]  # fmt: skip
    assert printed == [f"{m} (8, 4)" for m in modules]
