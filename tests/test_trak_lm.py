"""Language models: the causal-LM task and the hooks path on tiny Hugging Face models
(GPT-2, Llama, GPT-NeoX built from configs, random weights, no downloads)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import fastjl
import trak_core
from trak_core.embedding_hooks import EmbeddingLayer
from trak_core.gradients import FunctionalGradientComputer
from trak_core.hooked_gradients import LinearHooksGradientComputer
from trak_core.layer_hooks import Conv1DLayer, RMSNormLayer
from trak_core.lm_task import CausalLMOutput, supervised_positions
from trak_core.model_output import ClassificationMargin

from . import hf_models
from .helpers import relative_error

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap over CPU attention

TASK = CausalLMOutput()
# Dense kinds: the hooks path and torch.func project the same gradient with the same P, in
# float32 with different summation orders (per layer / per run of token ids vs one vector):
# measured ~2e-7 relative; 2e-6 leaves room for other CPUs' reduction orders.
DENSE_TOLERANCE = 2e-6


def features(computer_cls, model, batch, kind="rademacher", proj_dim=64, **kwargs):
    computer = computer_cls(model=model, task=TASK, **kwargs)
    projector = fastjl.Projector(computer.num_params, proj_dim, seed=3, kind=kind)
    return computer.projected_per_sample_grad(TASK.as_batch(batch), projector, 1), computer


@pytest.mark.parametrize(
    "name, kind", [("gpt2", "rademacher"), ("gpt2", "gaussian"), ("llama", "rademacher"), ("gpt_neox", "gaussian")]
)
def test_hooks_features_equal_torch_func_features(name, kind):
    model = hf_models.build(name)
    batch = hf_models.token_batch()
    expected, _ = features(FunctionalGradientComputer, model, batch, kind)
    got, computer = features(LinearHooksGradientComputer, model, batch, kind)
    assert computer.fallback_names == []  # every parameter hooked: no torch.func pass at all
    kinds = {type(layer) for layer in computer.layers}
    assert EmbeddingLayer in kinds
    assert (Conv1DLayer in kinds) == (name == "gpt2") and (RMSNormLayer in kinds) == (name == "llama")
    assert relative_error(got, expected.double()) < DENSE_TOLERANCE


def test_tied_embedding_is_hooked_as_embedding_and_output_layer():
    model = hf_models.build("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    _, computer = features(LinearHooksGradientComputer, model, hf_models.token_batch())
    users = [layer.module_name for layer in computer.layers if layer.weight == "transformer.wte.weight"]
    assert users == ["transformer.wte", "lm_head"]


def test_kronecker_kind_sketches_tied_weights_consistently():
    # y = Σ over Linear-like weights of vec(G) @ (F_out ⊗ F_in) (+ the bias column) + dense
    # gaussian for the rest.  The tied (V, d) weight is one Linear weight: its total gradient
    # (embedding + output layer) goes through one pair of factors.
    model = hf_models.build("gpt2")
    batch = TASK.as_batch(hf_models.token_batch(batch=3, tokens=5))
    computer = LinearHooksGradientComputer(model=model, task=TASK, linear_kind="kronecker")
    projector = fastjl.Projector(computer.num_params, 12, seed=5, kind="gaussian")
    got = computer.projected_per_sample_grad(batch, projector, model_id=0)
    grads = FunctionalGradientComputer(model=model, task=TASK).compute_per_sample_grad(batch)
    seed = projector.seed_for(0)
    linear_like = {}  # weight name -> (gradient as (B, d_out, d_in), bias name)
    for layer in computer.layers:
        if isinstance(layer, Conv1DLayer):  # sketched as the nn.Linear it computes: weight Wᵀ
            linear_like[layer.weight] = (grads[layer.weight].transpose(1, 2), layer.bias)
        elif isinstance(layer, (EmbeddingLayer, trak_core.layer_hooks.LinearLayer)):
            linear_like[layer.weight] = (grads[layer.weight], layer.bias)
    biases = {bias for _, bias in linear_like.values() if bias}
    expected = torch.zeros(3, 12, dtype=torch.float64)
    for name, grad in grads.items():
        if name in linear_like:
            weight_grad, bias = linear_like[name]
            weight_grad = weight_grad.double()
            if bias:
                weight_grad = torch.cat([weight_grad, grads[bias].double()[:, :, None]], dim=2)
            d_out, d_in = weight_grad.shape[1], weight_grad.shape[2] - bool(bias)
            k_out, k_in = fastjl.kronecker.split_proj_dim(12, d_out, d_in)
            f_out, f_in = fastjl.kronecker_factors(seed, computer.offsets[name], d_out, d_in, k_out, k_in,
                                                   bool(bias), torch.float64)  # fmt: skip
            expected += weight_grad.reshape(3, -1) @ torch.kron(f_out, f_in)
        elif name not in biases:
            flat = grad.reshape(3, -1).double()
            expected += fastjl.project(flat, 12, seed=seed, kind="gaussian", offset=computer.offsets[name],
                                       backend="torch")  # fmt: skip
    assert relative_error(got, expected) < 1e-5


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_padding_does_not_change_a_sequences_features(name):
    model = hf_models.build(name)
    seq = hf_models.token_batch(batch=1, tokens=5, seed=1)["input_ids"][0]
    alone, _ = features(LinearHooksGradientComputer, model, {"input_ids": seq[None], "labels": seq[None]})
    other = hf_models.token_batch(batch=1, tokens=8, seed=2)["input_ids"][0]
    pad = torch.full((3,), 7)  # any token id: masked out
    ids = torch.stack([torch.cat([seq, pad]), torch.cat([pad, seq]), other])  # right-, left-padded, full
    mask = torch.stack([torch.cat([torch.ones(5), torch.zeros(3)]), torch.cat([torch.zeros(3), torch.ones(5)]),
                        torch.ones(8)]).long()  # fmt: skip
    padded_batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.clone()}  # labels on padding: ignored
    padded, _ = features(LinearHooksGradientComputer, model, padded_batch)
    assert relative_error(padded[0:1], alone.double()) < 1e-5
    assert relative_error(padded[1:2], alone.double()) < 1e-5
    assert relative_error(padded[2:3], alone.double()) > 0.1  # a different sequence differs
    reference, _ = features(FunctionalGradientComputer, model, padded_batch)
    assert relative_error(padded, reference.double()) < DENSE_TOLERANCE


# bf16 keeps 8 significant bits: activations and gradients carry ~0.4% relative error each
# (2^-8); through two blocks the features measured 0.43-0.49% from float32's (3 families).
BF16_TOLERANCE = 2e-2


@pytest.mark.parametrize("name", ["gpt2", "llama", "gpt_neox"])
def test_bf16_model_features_are_close_to_float32(name):
    batch = hf_models.token_batch()
    full, _ = features(LinearHooksGradientComputer, hf_models.build(name), batch)
    half, computer = features(LinearHooksGradientComputer, hf_models.build(name).to(torch.bfloat16), batch)
    assert half.dtype == torch.float32 and computer.fallback_names == []
    assert relative_error(half, full.double()) < BF16_TOLERANCE
    q_full = LinearHooksGradientComputer(hf_models.build(name), TASK).compute_loss_grad(TASK.as_batch(batch))
    q_half = computer.compute_loss_grad(TASK.as_batch(batch))
    assert q_half.dtype == torch.float32 and relative_error(q_half, q_full.double()) < BF16_TOLERANCE


def test_output_and_out_to_loss_term_follow_their_definition():
    model = hf_models.build("llama")
    batch = hf_models.token_batch(batch=3, tokens=6, seed=4)
    batch["labels"][0, 2:4] = -100  # unsupervised positions
    batch["attention_mask"][1, 5] = 0  # a padded last position is not supervised either
    ids, mask, labels = TASK.as_batch(batch)
    weights = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        f = TASK.get_outputs(model, weights, buffers, (ids, mask, labels))
        q = TASK.get_out_to_loss_grad(model, weights, buffers, (ids, mask, labels))
        loss = TASK.sequence_loss(model, batch)
        # independent: log-probabilities from log_softmax, one sequence at a time, no padding
        for b in range(3):
            n = int(mask[b].sum())
            logp = model(input_ids=ids[b : b + 1, :n]).logits[0, :-1].log_softmax(-1)
            target = labels[b, 1:n]
            keep = target != -100
            p_label = logp[keep].gather(-1, target[keep][:, None])[:, 0].exp()
            assert torch.allclose(f[b], torch.log(p_label / (1 - p_label)).sum(), rtol=1e-4, atol=1e-4)
            assert torch.allclose(q[b], (1 - p_label).mean(), rtol=1e-5)
            assert torch.allclose(loss[b], -p_label.log().sum(), rtol=1e-4)
    # 15 predicted labels, two of them -100, one on padding
    assert int(supervised_positions(labels, mask).sum()) == 12


def test_a_single_supervised_token_gives_the_classification_terms():
    model = hf_models.build("gpt_neox")
    batch = hf_models.token_batch(batch=2, tokens=5, seed=6)
    batch["labels"][:, :-1] = -100  # only the last token is supervised
    weights, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    with torch.no_grad():
        f = TASK.get_outputs(model, weights, buffers, batch)
        q = TASK.get_out_to_loss_grad(model, weights, buffers, batch)
        logits = model(input_ids=batch["input_ids"]).logits[:, -2]  # predicts the last token
        as_classification = (logits, batch["labels"][:, -1])
        identity = torch.nn.Identity()
        f_cls = ClassificationMargin().get_outputs(identity, {}, {}, as_classification)
        q_cls = ClassificationMargin().get_out_to_loss_grad(identity, {}, {}, as_classification)
    assert torch.allclose(f, f_cls, rtol=1e-5, atol=1e-5) and torch.allclose(q, q_cls, rtol=1e-5)


def test_bad_inputs_are_named():
    ids = torch.randint(0, hf_models.VOCAB, (2, 5))
    with pytest.raises(ValueError, match="needs 'labels'"):
        TASK.as_batch({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    with pytest.raises(ValueError, match="needs 'input_ids'"):
        TASK.as_batch({"labels": ids})
    with pytest.raises(ValueError, match=r"labels has shape \(2, 4\) but input_ids has \(2, 5\)"):
        TASK.as_batch({"input_ids": ids, "labels": ids[:, :4]})
    with pytest.raises(ValueError, match=r"attention_mask has shape"):
        TASK.as_batch((ids, torch.ones(2, 6, dtype=torch.long), ids))
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, tokens\)"):
        TASK.as_batch({"input_ids": ids[0], "labels": ids[0]})
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        TASK.as_batch({"input_ids": ids.float(), "labels": ids})
    with pytest.raises(ValueError, match="only 0 and 1"):
        TASK.as_batch((ids, torch.full_like(ids, 2), ids))
    with pytest.raises(ValueError, match=r"sequences \[1\] .* no supervised token"):
        TASK.as_batch({"input_ids": ids, "labels": torch.cat([ids[:1], torch.full_like(ids[:1], -100)])})
    with pytest.raises(TypeError, match="a causal LM batch is a dict"):
        TASK.as_batch([ids])
    model = hf_models.build("gpt2")
    with pytest.raises(ValueError, match=rf"labels must be -100 or lie in \[0, {hf_models.VOCAB}\)"):
        TASK.get_outputs(model, dict(model.named_parameters()), {}, {"input_ids": ids, "labels": ids + 100})


def test_traker_and_attribute_take_dict_batches(tmp_path):
    model = hf_models.build("gpt2")
    train = [hf_models.token_batch(batch=4, tokens=6, seed=s) for s in range(3)]
    targets = [{k: v[:2] for k, v in train[1].items()}]  # two train documents as targets
    traker = trak_core.TRAKer(model, "causal_lm", 12, save_dir=tmp_path / "a", proj_dim=32, quiet=True)
    assert isinstance(traker.gradient_computer, LinearHooksGradientComputer)
    traker.load_checkpoint(model.state_dict(), 0)
    for batch in train:
        traker.featurize(batch, num_samples=4)
    with pytest.raises(TypeError, match="takes batches as tuples"):
        trak_core.model_output.task_batch(ClassificationMargin(), train[0])
    traker.close()
    scores = trak_core.attribute(model, [model.state_dict()], train, targets, proj_dim=32, task="causal_lm",
                                 save_dir=tmp_path / "b", quiet=True)  # fmt: skip
    assert scores.shape == (12, 2) and np.isfinite(scores).all()
    # a document's score against itself tops every other train document's
    assert scores[:, 0].argmax() == 4 and scores[:, 1].argmax() == 5


def test_embedding_projection_touches_only_its_rows_and_skips_padding_idx():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(40, 3, padding_idx=7)
    layer = EmbeddingLayer("emb", emb, "weight", None)
    ids = torch.tensor([[1, 2, 2, 7, 30], [39, 7, 0, 1, 12]])  # runs 0-2, 12, 30, 39; 7 = padding
    g = torch.randn(2, 5, 3)
    dense = torch.zeros(2, 40, 3, dtype=torch.float64)
    for b in range(2):
        for t in range(5):
            if ids[b, t] != 7:
                dense[b, ids[b, t]] += g[b, t].double()
    for kind in fastjl.KINDS:
        got = layer.project(ids, g, 16, seed=2, kind=kind, offset=11, backend="torch", scale=None)
        expected = fastjl.project(dense.reshape(2, -1), 16, seed=2, kind=kind, offset=11, backend="torch")
        assert relative_error(got, expected) < 1e-6
    # kronecker: the (V, d) gradient as a Linear layer's, one-hot tokens as its outputs
    one_hot = torch.nn.functional.one_hot(ids, 40).float() * (ids != 7)[..., None]
    expected = fastjl.project_linear(g, one_hot, 16, kind="kronecker", seed=2, offset=11)
    got = layer.project_kronecker(ids, g, 16, seed=2, offset=11, scale=None)
    assert relative_error(got, expected.double()) < 1e-6


def test_parameters_are_selected_by_module_name_patterns():
    model = hf_models.build("gpt2")
    last_block = ["*.h.1.attn.*", "transformer.h.1.mlp.c_fc"]  # a pattern and a module name
    selected = trak_core.gradients.select_parameters(model, last_block)
    assert selected == ["transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.c_attn.bias",
                        "transformer.h.1.attn.c_proj.weight", "transformer.h.1.attn.c_proj.bias",
                        "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_fc.bias"]  # fmt: skip
    # a tied weight through the module that reuses it
    assert trak_core.gradients.select_parameters(model, ["lm_head"]) == ["transformer.wte.weight"]
    with pytest.raises(ValueError, match=r"does not have \(no parameter matches\): \['\*\.h\.9\.\*'\]"):
        trak_core.gradients.select_parameters(model, ["*.h.1.*", "*.h.9.*"])
    with pytest.raises(TypeError, match="a list of names or patterns"):
        trak_core.gradients.select_parameters(model, "*.attn.*")
    batch = hf_models.token_batch()
    got, computer = features(LinearHooksGradientComputer, model, batch, grad_wrt=last_block)
    expected, _ = features(FunctionalGradientComputer, model, batch, grad_wrt=last_block)
    assert [layer.module_name for layer in computer.layers] == ["transformer.h.1.attn.c_attn",
                                                                 "transformer.h.1.attn.c_proj",
                                                                 "transformer.h.1.mlp.c_fc"]  # fmt: skip
    assert computer.num_params == sum(p.numel() for n, p in model.named_parameters() if n in selected)
    assert relative_error(got, expected.double()) < DENSE_TOLERANCE


def test_readme_language_model_snippet_runs(capsys):
    text = (Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"## trak_core on language models\n.*?```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "(8, 4) [0 1 2 3]"
