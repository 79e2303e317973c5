"""The hooks gradient path: same features as torch.func for the dense kinds, and the
kronecker kind's features as the explicit per-layer formula."""

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import fastjl
import trak_core
from trak_core.bench.models import GPT
from trak_core.embedding_hooks import EmbeddingLayer
from trak_core.gradients import FunctionalGradientComputer
from trak_core.hooked_gradients import LinearHooksGradientComputer
from trak_core.layer_hooks import LinearLayer
from trak_core.model_output import ClassificationMargin

from .helpers import relative_error

CLASSES = 5
# vmap over PyTorch's CPU attention kernel warns that it falls back to a loop.
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")


def tiny_gpt():
    return GPT(vocab=11, width=16, heads=2, layers=2, max_tokens=4, classes=CLASSES)


class PatchNorm(torch.nn.Module):
    """A LayerNorm over two dimensions (normalized_shape (2, 4)) between Linear layers."""

    def __init__(self):
        super().__init__()
        self.up, self.norm, self.out = torch.nn.Linear(8, 8), torch.nn.LayerNorm((2, 4)), torch.nn.Linear(8, CLASSES)

    def forward(self, x):
        return self.out(torch.relu(self.norm(self.up(x).reshape(-1, 2, 4)).reshape(-1, 8)))


class WeightUsedTwice(torch.nn.Module):
    """fc's weight is also used outside fc's call: hooks alone would miss that term."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 6)
        self.out = torch.nn.Linear(6, CLASSES)

    def forward(self, x):
        return self.out(torch.tanh(self.fc(x)) + F.linear(x, self.fc.weight))


class LayerCalledTwice(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 6)
        self.out = torch.nn.Linear(6, CLASSES)

    def forward(self, x):
        return self.out(self.fc(torch.tanh(self.fc(x))))


class SmallCNN(torch.nn.Module):
    """Conv2d layers with stride, padding, dilation and no bias, then a Linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 3, (3, 2), stride=2, dilation=(1, 2), bias=False)
        self.grouped = torch.nn.Conv2d(3, 3, 1, groups=3)  # torch.func
        self.head = torch.nn.Linear(3 * 2 * 3, CLASSES)

    def forward(self, x):  # x: (B, 2, 6, 7)
        h = self.grouped(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        return self.head(h.flatten(1))


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.ReLU(), torch.nn.Linear(12, 9), torch.nn.Tanh(),
                               torch.nn.Linear(9, CLASSES))  # fmt: skip


def encoder_layer():
    # nn.MultiheadAttention uses out_proj's weight without calling it: must not be hooked.
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(3, 8)
            self.layer = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
            self.head = torch.nn.Linear(8, CLASSES)

        def forward(self, x):
            return self.head(self.layer(self.embed(x)).mean(1))

    return Model()


def batch_for(model, batch=6, tokens=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (batch,), generator=gen)
    if isinstance(model, GPT):
        return torch.randint(0, 11, (batch, tokens), generator=gen), labels
    if hasattr(model, "layer"):
        return torch.randn(batch, tokens, 3, generator=gen), labels
    if isinstance(model, SmallCNN):
        return torch.randn(batch, 2, 6, 7, generator=gen), labels
    return torch.randn(batch, 6 if hasattr(model, "fc") else 8, generator=gen), labels


def features(computer_cls, model, batch, kind="rademacher", grad_wrt=None, proj_dim=96, model_id=2):
    model.eval()
    computer = computer_cls(model=model, task=ClassificationMargin(), grad_wrt=grad_wrt)
    projector = fastjl.Projector(computer.num_params, proj_dim, seed=5, kind=kind)
    return computer.projected_per_sample_grad(batch, projector, model_id), computer


@pytest.mark.parametrize("kind", fastjl.KINDS)
@pytest.mark.parametrize("make_model", [mlp, tiny_gpt, encoder_layer, LayerCalledTwice, PatchNorm, SmallCNN])
def test_hooks_features_equal_torch_func_features(make_model, kind):
    torch.manual_seed(0)
    model = make_model()
    batch = batch_for(model)
    expected, _ = features(FunctionalGradientComputer, model, batch, kind)
    got, computer = features(LinearHooksGradientComputer, model, batch, kind)
    assert computer.layers, "no layer was hooked"
    assert relative_error(got, expected.double()) < 2e-6
    again, _ = features(LinearHooksGradientComputer, model, batch_for(model, seed=1), kind)
    assert relative_error(again, features(FunctionalGradientComputer, model, batch_for(model, seed=1), kind)[0]) < 2e-6


def test_which_layers_are_hooked():
    _, computer = features(LinearHooksGradientComputer, encoder_layer(), batch_for(encoder_layer()))
    hooked = [layer.module_name for layer in computer.layers]
    assert hooked == ["embed", "layer.linear1", "layer.linear2", "layer.norm1", "layer.norm2", "head"]
    assert computer.fallback_names == [
        "layer.self_attn.in_proj_weight",
        "layer.self_attn.in_proj_bias",
        "layer.self_attn.out_proj.weight",
        "layer.self_attn.out_proj.bias",
    ]
    _, computer = features(LinearHooksGradientComputer, tiny_gpt(), batch_for(tiny_gpt()))
    # token embedding: hooked (trak_core.embedding_hooks); the position embedding is looked up
    # once for the whole batch (no per-example output): torch.func
    assert computer.fallback_names == ["wpe.weight"]


def test_convolutions_are_hooked_through_their_unfolded_inputs():
    _, computer = features(LinearHooksGradientComputer, SmallCNN(), batch_for(SmallCNN()))
    assert [layer.module_name for layer in computer.layers] == ["conv1", "conv2", "head"]
    assert computer.fallback_names == ["grouped.weight", "grouped.bias"]


@pytest.mark.parametrize(
    "grad_wrt",
    [["0.weight", "4.weight"], ["2.bias", "4.weight", "0.bias"], ["0.weight", "2.bias", "4.bias"]],
)
def test_subsets_of_parameters(grad_wrt):
    # Weight without its bias, bias without its weight (torch.func), non-adjacent offsets.
    torch.manual_seed(1)
    model = mlp()
    batch = batch_for(model)
    expected, _ = features(FunctionalGradientComputer, model, batch, grad_wrt=grad_wrt)
    got, _ = features(LinearHooksGradientComputer, model, batch, grad_wrt=grad_wrt)
    assert relative_error(got, expected.double()) < 2e-6


def test_a_weight_used_outside_its_layer_is_moved_to_torch_func(caplog):
    torch.manual_seed(2)
    model = WeightUsedTwice()
    batch = batch_for(model)
    expected, _ = features(FunctionalGradientComputer, model, batch)
    with caplog.at_level(logging.WARNING, logger="trak_core"):
        got, computer = features(LinearHooksGradientComputer, model, batch)
    assert [layer.module_name for layer in computer.layers] == ["out"]
    assert "fc.weight" in computer.fallback_names and "hooks miss part of its gradient" in caplog.text
    assert relative_error(got, expected.double()) < 2e-6


@pytest.mark.parametrize("also_functional", [False, True])
def test_tied_weights_are_hooked_in_all_their_uses(also_functional, caplog):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head, self.twin = mlp(), torch.nn.Linear(8, CLASSES), torch.nn.Linear(8, CLASSES)
            self.twin.weight = self.head.weight  # one parameter owned by two modules

        def forward(self, x):
            out = self.body(x) + self.head(x) * self.twin(x)
            return out + F.linear(x, self.head.weight) if also_functional else out

    torch.manual_seed(4)
    model = Tied()
    batch = batch_for(mlp())
    expected, _ = features(FunctionalGradientComputer, model, batch)
    with caplog.at_level(logging.WARNING, logger="trak_core"):
        got, computer = features(LinearHooksGradientComputer, model, batch)
    hooked = [layer.module_name for layer in computer.layers]
    if also_functional:  # a use outside the modules: the shared weight (and both its layers) -> torch.func
        assert hooked == ["body.0", "body.2", "body.4"] and "'twin'" in caplog.text
        assert computer.fallback_names == ["head.weight", "head.bias", "twin.bias"]
    else:  # each use's part is projected at the weight's offset; the parts add up
        assert hooked == ["body.0", "body.2", "body.4", "head", "twin"] and not computer.fallback_names
    assert relative_error(got, expected.double()) < 2e-6


@pytest.mark.parametrize("make_model", [mlp, tiny_gpt, SmallCNN])
def test_kronecker_features_follow_the_per_layer_formula(make_model):
    # y = Σ_layers (F_out ⊗ F_in)ᵀ vec([G_w | g_bias]) + dense gaussian projection of the rest.
    torch.manual_seed(3)
    model = make_model().eval()
    batch = batch_for(model)
    computer = LinearHooksGradientComputer(model=model, task=ClassificationMargin(), linear_kind="kronecker")
    projector = fastjl.Projector(computer.num_params, 24, seed=5, kind="gaussian")
    got = computer.projected_per_sample_grad(batch, projector, model_id=1)
    grads = FunctionalGradientComputer(model=model, task=ClassificationMargin()).compute_per_sample_grad(batch)
    seed = projector.seed_for(1)
    expected = torch.zeros(len(batch[0]), 24, dtype=torch.float64)
    linear = [layer for layer in computer.layers if isinstance(layer, LinearLayer)]
    hooked = {layer.weight: (layer.d_out, layer.d_in, layer.bias) for layer in linear}
    # an embedding's (V, d) weight is sketched as a Linear weight with V outputs (no bias)
    hooked.update({layer.weight: (*layer.module.weight.shape, None) for layer in computer.layers
                   if isinstance(layer, EmbeddingLayer)})  # fmt: skip
    linear_biases = {layer.bias for layer in linear}
    for name, grad in grads.items():
        if name in hooked:
            d_out, d_in, bias = hooked[name]
            layer = SimpleNamespace(d_out=d_out, d_in=d_in, bias=bias)
            grad = grad.double().reshape(len(grad), layer.d_out, layer.d_in)
            if layer.bias is not None:
                grad = torch.cat([grad, grads[layer.bias].double()[:, :, None]], dim=2)
            k_out, k_in = fastjl.kronecker.split_proj_dim(24, layer.d_out, layer.d_in)
            f_out, f_in = fastjl.kronecker_factors(seed, computer.offsets[name], layer.d_out, layer.d_in, k_out,
                                                   k_in, layer.bias is not None, torch.float64)  # fmt: skip
            expected += grad.reshape(len(grad), -1) @ torch.kron(f_out, f_in)
        elif name not in linear_biases:  # LayerNorm (hooked), position embedding (torch.func): dense gaussian
            flat = grad.reshape(len(grad), -1).double()
            offset = computer.offsets[name]
            expected += fastjl.project(flat, 24, seed=seed, kind="gaussian", offset=offset, backend="torch")
    assert relative_error(got, expected) < 1e-5


def test_traker_picks_the_hooks_path_when_it_can(tmp_path):
    traker = trak_core.TRAKer(mlp(), "classification", 10, save_dir=tmp_path / "a", proj_dim=16, quiet=True)
    assert isinstance(traker.gradient_computer, LinearHooksGradientComputer)

    class NoBatchedOutput(ClassificationMargin):
        get_outputs = trak_core.ModelOutput.get_outputs

    traker = trak_core.TRAKer(mlp(), NoBatchedOutput(), 10, save_dir=tmp_path / "b", proj_dim=16, quiet=True)
    assert type(traker.gradient_computer) is FunctionalGradientComputer
    with pytest.raises(ValueError, match="kronecker.*needs the hooks gradient path"):
        trak_core.TRAKer(mlp(), NoBatchedOutput(), 10, save_dir=tmp_path / "c", proj_dim=16, proj_kind="kronecker")
    with pytest.raises(ValueError, match="proj_kind must be one of"):
        trak_core.TRAKer(mlp(), "classification", 10, save_dir=tmp_path / "d", proj_dim=16, proj_kind="dense")
    traker = trak_core.TRAKer(mlp(), "classification", 10, save_dir=tmp_path / "e", proj_dim=16, proj_kind="kronecker")
    assert traker.store.settings.kind == "kronecker"


def test_layers_called_without_a_leading_batch_dimension_go_through_torch_func(caplog):
    class Flattening(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, CLASSES)

        def forward(self, x):  # (B, T, 3) -> tokens folded into the batch
            return self.fc(x.reshape(-1, 3)).reshape(x.shape[0], -1, CLASSES).mean(1)

    model = Flattening().eval()
    computer = LinearHooksGradientComputer(model=model, task=ClassificationMargin())
    projector = fastjl.Projector(computer.num_params, 8)
    batch = batch_for(encoder_layer())
    with caplog.at_level(logging.WARNING, logger="trak_core"):
        got = computer.projected_per_sample_grad(batch, projector, 0)
    assert "'fc'" in caplog.text and computer.layers == [] and computer.fallback_names == ["fc.weight", "fc.bias"]
    reference = FunctionalGradientComputer(model=model, task=ClassificationMargin())
    assert relative_error(got, reference.projected_per_sample_grad(batch, projector, 0)) < 2e-6
    # after the first batch the choice is fixed: an unbatched call of a hooked layer is an error
    computer = LinearHooksGradientComputer(model=model, task=ClassificationMargin())
    computer._checked = True  # as if an earlier batch had been featurized with fc hooked
    with pytest.raises(ValueError, match="not the batch"):
        computer._capture(batch)


def test_featurizing_under_no_grad_works():
    torch.manual_seed(5)
    model = mlp()
    batch = batch_for(model)
    expected, _ = features(LinearHooksGradientComputer, model, batch)
    with torch.no_grad():
        got, _ = features(LinearHooksGradientComputer, model, batch)
    torch.testing.assert_close(got, expected)
