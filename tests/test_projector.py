"""fastjl.Projector: tensors, per-parameter dicts, TRAK's per-checkpoint seeds."""

import pytest
import torch

import fastjl


def make_grads(batch=4):
    torch.manual_seed(0)
    return {
        "layer1.weight": torch.randn(batch, 30, 20),
        "layer1.bias": torch.randn(batch, 30),
        "layer2.weight": torch.randn(batch, 5, 30).transpose(1, 2),  # strided parameter
        "layer2.bias": torch.randn(batch, 5).to(torch.bfloat16),
    }


@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_dict_equals_concatenated_tensor(kind):
    grads = make_grads()
    flat = torch.cat([g.reshape(4, -1).float() for g in grads.values()], dim=1)
    proj = fastjl.Projector(flat.shape[1], 100, seed=3, kind=kind)
    torch.testing.assert_close(proj.project(grads), proj.project(flat), rtol=1e-5, atol=1e-4)


def test_dict_is_projected_chunk_by_chunk_without_concatenation(monkeypatch):
    import fastjl.projector as projector_module

    calls = []
    real = projector_module.project

    def recording(x, proj_dim, **kw):
        calls.append((x.shape[1], kw["offset"]))
        return real(x, proj_dim, **kw)

    monkeypatch.setattr(projector_module, "project", recording)
    grads = make_grads()
    fastjl.Projector(600 + 30 + 150 + 5, 16).project(grads)
    assert calls == [(600, 0), (30, 600), (150, 630), (5, 780)]


def test_model_id_seed_convention():
    x = torch.randn(2, 50)
    proj = fastjl.Projector(50, 32, seed=7)
    assert proj.seed_for(3) == 7 + 3 * 10_000
    torch.testing.assert_close(proj.project(x, model_id=3), fastjl.project(x, 32, seed=30_007))
    assert not torch.allclose(proj.project(x, model_id=0), proj.project(x, model_id=1))


@pytest.mark.parametrize(
    "grads,error,words",
    [
        (torch.randn(2, 49), ValueError, "grad_dim=50"),
        (torch.randn(50), ValueError, "shape"),
        ({"a": torch.randn(2, 20), "b": torch.randn(2, 20)}, ValueError, "expected grad_dim=50"),
        ({"a": torch.randn(2, 25), "b": torch.randn(3, 25)}, ValueError, "batch size"),
        ({"a": torch.randn(2, 50).numpy()}, TypeError, "must be a torch.Tensor"),
        ({"a": torch.tensor(1.0)}, ValueError, "batch dimension"),
        ({}, TypeError, "non-empty dict"),
        ([torch.randn(2, 50)], TypeError, "dict"),
    ],
)
def test_bad_gradients(grads, error, words):
    with pytest.raises(error, match=words):
        fastjl.Projector(50, 8).project(grads)


@pytest.mark.parametrize(
    "kwargs,error",
    [
        (dict(grad_dim=0), ValueError),
        (dict(proj_dim=0), ValueError),
        (dict(seed=-2), ValueError),
        (dict(kind="normal"), ValueError),
        (dict(scale="l2"), ValueError),
    ],
)
def test_bad_constructor_arguments(kwargs, error):
    args = dict(grad_dim=10, proj_dim=4)
    args.update(kwargs)
    with pytest.raises(error):
        fastjl.Projector(**args)


def test_bad_model_id():
    proj = fastjl.Projector(10, 4, seed=2**64 - 1)
    with pytest.raises(ValueError, match="model_id"):
        proj.project(torch.randn(1, 10), model_id=-1)
    with pytest.raises(ValueError, match="exceeds"):
        proj.project(torch.randn(1, 10), model_id=1)


def test_projector_takes_the_sparse_kinds_and_their_options():
    grads = {"w": torch.randn(3, 40, 50), "b": torch.randn(3, 50)}
    flat = torch.cat([grads["w"].reshape(3, -1), grads["b"]], 1)
    for kind, opts in (("sjlt", dict(sparsity=2)), ("grass", dict(sparsity=4, mask_rate=0.3))):
        p = fastjl.Projector(2050, 64, seed=5, kind=kind, **opts)
        expected = fastjl.project(flat, 64, seed=p.seed_for(1), kind=kind, **opts)
        torch.testing.assert_close(p.project(grads, model_id=1), expected, rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="sparsity and mask_rate apply"):
        fastjl.Projector(10, 4, kind="rademacher", sparsity=2)
    with pytest.raises(ValueError, match="needs mask_rate"):
        fastjl.Projector(10, 4, kind="grass")
    with pytest.raises(ValueError, match="proj_dim must be at least sparsity"):
        fastjl.Projector(10, 4, kind="sjlt", sparsity=8)
