"""trak_core with ``proj_kind="factgrass"``: each Linear/Conv1D/Conv2d layer and each embedding (as
the (V, d) Linear weight it is when tied to an output head) is FactGraSS's matrix applied to its
per-example gradient, every other parameter plain sjlt at its offset (checked against torch.func
gradients and the spec matrix), and stores record the options."""

import json

import pytest
import torch

import fastjl
import trak_core
from fastjl.factgrass_spec import factgrass_matrix
from trak_core.gradients import FunctionalGradientComputer
from trak_core.hooked_gradients import LinearHooksGradientComputer
from trak_core.model_output import ClassificationMargin

from .helpers import relative_error
from .test_trak_exact import make_problem
from .test_trak_hooks import SmallCNN, batch_for, mlp

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap over CPU attention

TOLERANCE = 2e-6  # float32 sums in other orders


def reference(model, task, batch, proj_dim, *, seed, masks, sparsity, grad_wrt=None, transposed=()):
    """torch.func's per-example gradients; a Linear/Conv1D/ungrouped Conv2d weight (with its bias
    when that follows it) times the dense FactGraSS matrix of the layer, every other parameter
    projected by plain sjlt at its offset.  ``transposed``: modules whose weight is (d_in, d_out)."""
    grads = FunctionalGradientComputer(model=model, task=task, grad_wrt=grad_wrt).compute_per_sample_grad(batch)
    names = list(grads)
    offsets = dict(zip(names, torch.tensor([0] + [grads[n][0].numel() for n in names]).cumsum(0).tolist()))
    sketched = {}
    for module_name, module in model.named_modules():
        weight = f"{module_name}.weight"
        is_conv = isinstance(module, torch.nn.Conv2d) and module.groups == 1
        matrix_like = isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) or is_conv
        if weight in grads and (matrix_like or module_name in transposed):
            sketched[weight] = module_name
    result = torch.zeros(next(iter(grads.values())).shape[0], proj_dim, dtype=torch.float64)
    done = set()
    for name in names:
        if name in done:
            continue
        flat = grads[name].double().flatten(1)
        if name not in sketched:
            result += fastjl.project(flat, proj_dim, seed=seed, kind="sjlt", sparsity=sparsity, offset=offsets[name],
                                     backend="torch")  # fmt: skip
            continue
        grad = grads[name].double()
        grad = grad.transpose(1, 2) if sketched[name] in transposed else grad.flatten(2)  # (B, d_out, d_in)
        d_out, d_in = grad.shape[1], grad.shape[2]
        bias = f"{sketched[name]}.bias"
        follows = bias in grads and offsets[bias] == offsets[name] + d_out * d_in
        x = torch.cat([grad.flatten(1), grads[bias].double()], 1) if follows else grad.flatten(1)
        clipped = (min(masks[0], d_out), min(masks[1], d_in + follows))
        matrix = factgrass_matrix(seed, offsets[name], d_out, d_in, proj_dim, factor_masks=clipped,
                                  sparsity=sparsity, bias=follows)  # fmt: skip
        result += x @ matrix
        done.update([name, bias] if follows else [name])
    return result


@pytest.mark.parametrize(
    "make_model, masks, sparsity, grad_wrt",
    [(mlp, (5, 7), 1, None), (mlp, (20, 3), 4, ["0.bias", "2", "4.weight"]), (SmallCNN, (3, 10), 2, None)],
)
def test_features_are_the_factgrass_matrix_on_torch_func_gradients(make_model, masks, sparsity, grad_wrt):
    torch.manual_seed(0)
    model = make_model().eval()
    batch = batch_for(model)
    task = ClassificationMargin()
    computer = LinearHooksGradientComputer(model, task, grad_wrt, linear_kind="factgrass", factor_masks=masks)
    projector = fastjl.Projector(computer.num_params, 40, seed=5, kind="sjlt", sparsity=sparsity)
    got = computer.projected_per_sample_grad(batch, projector, 2)
    seed = projector.seed_for(2)
    expected = reference(model, task, batch, 40, seed=seed, masks=masks, sparsity=sparsity, grad_wrt=grad_wrt)
    assert relative_error(got, expected) < TOLERANCE
    # Not plain sjlt by accident: the masks change the features completely.
    sjlt = LinearHooksGradientComputer(model, task, grad_wrt).projected_per_sample_grad(batch, projector, 2)
    assert relative_error(got, sjlt) > 0.3


def test_conv1d_layers_are_sketched_as_the_linear_they_compute():
    from . import hf_models  # skips this test without transformers

    task = trak_core.CausalLMOutput()
    model = hf_models.build("gpt2")
    batch = task.as_batch(hf_models.token_batch())
    grad_wrt = ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj", "transformer.ln_f"]
    computer = LinearHooksGradientComputer(model, task, grad_wrt, linear_kind="factgrass", factor_masks=(6, 5))
    projector = fastjl.Projector(computer.num_params, 32, seed=1, kind="sjlt", sparsity=2)
    got = computer.projected_per_sample_grad(batch, projector, 0)
    transposed = ("transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj")
    expected = reference(model, task, batch, 32, seed=1, masks=(6, 5), sparsity=2, grad_wrt=grad_wrt,
                         transposed=transposed)  # fmt: skip
    assert got.abs().max() > 0 and relative_error(got, expected) < TOLERANCE


def test_a_tied_embedding_and_head_are_one_factgrass_sketch_of_their_summed_gradient():
    """GPT-2 ties wte to lm_head: the hooks sketch both uses with the (V, d) weight's masks at one
    offset, and they add up to FactGraSS of torch.func's summed gradient (every parameter)."""
    from . import hf_models  # skips this test without transformers

    task = trak_core.CausalLMOutput()
    model = hf_models.build("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    batch = task.as_batch(hf_models.token_batch())
    computer = LinearHooksGradientComputer(model, task, None, linear_kind="factgrass", factor_masks=(7, 5))
    projector = fastjl.Projector(computer.num_params, 48, seed=3, kind="sjlt", sparsity=2)
    got = computer.projected_per_sample_grad(batch, projector, 0)
    transposed = tuple(n for n, m in model.named_modules() if type(m).__name__ == "Conv1D")
    expected = reference(model, task, batch, 48, seed=3, masks=(7, 5), sparsity=2, transposed=transposed)
    assert got.abs().max() > 0 and relative_error(got, expected) < TOLERANCE


def factgrass_traker(save_dir, model, **overrides):
    defaults = {"proj_dim": 32, "proj_kind": "factgrass", "sparsity": 2, "factor_masks": (4, 6), "quiet": True}
    kwargs = {**defaults, **overrides}
    return trak_core.TRAKer(model, "classification", 60, save_dir=save_dir, **kwargs)


def test_store_records_factgrass_and_is_never_mixed(tmp_path):
    model, checkpoints, train, _ = make_problem()
    traker = factgrass_traker(tmp_path, model)
    traker.load_checkpoint(checkpoints[0], 0)
    traker.featurize((train[0][:8], train[1][:8]), num_samples=8)
    traker.close()
    settings = json.loads((tmp_path / "metadata.json").read_text())["settings"]
    assert (settings["kind"], settings["sparsity"], settings["factor_masks"]) == ("factgrass", 2, [4, 6])
    factgrass_traker(tmp_path, model).close()  # the same options reopen it
    for change, setting in [
        (dict(factor_masks=(4, 5)), "factor_masks"),
        (dict(sparsity=4), "sparsity"),
        (dict(proj_kind="sjlt", factor_masks=None), "kind"),
    ]:
        with pytest.raises(trak_core.StoreMismatchError, match=f"{setting}: store has"):
            factgrass_traker(tmp_path, model, **change)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(factor_masks=None), "factor_masks=.* is required"),
        (dict(proj_kind="sjlt"), "factor_masks applies to proj_kind='factgrass' only"),
        (dict(factor_masks=(0, 3)), "k_out"),
        (dict(mask_rate=0.5), "mask_rate applies to kind='grass' only"),
    ],
)
def test_bad_options_are_named(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        factgrass_traker(tmp_path, make_problem()[0], **options)


def test_factgrass_needs_the_hooks_path_and_no_custom_projector(tmp_path):
    model = make_problem()[0]
    with pytest.raises(ValueError, match="proj_kind='factgrass' needs LinearHooksGradientComputer"):
        factgrass_traker(tmp_path, model, gradient_computer=FunctionalGradientComputer)
    with pytest.raises(ValueError, match="builds its own projections"):
        factgrass_traker(tmp_path, model, projector=fastjl.Projector(14, 32, kind="sjlt"))
