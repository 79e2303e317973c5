"""fastjl.integrations.dattri: fastjl as the projector inside dattri (0.3.0).

dattri's TRAK attributor runs end to end (cache -> attribute) on a small MLP with two
checkpoints and is compared with dattri's TRAK formulas evaluated independently in float64,
from per-example gradients we compute ourselves and the spec's matrix (``fastjl.matrix_block``).
Needs dattri (CI installs dattri==0.3.0); the ImportError test runs without it.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import sys
from pathlib import Path

import pytest
import torch

import fastjl

try:
    import dattri
except ImportError:
    dattri = None

needs_dattri = pytest.mark.skipif(dattri is None, reason="dattri is not installed (pip install dattri==0.3.0)")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

N_TRAIN, N_TEST, PROJ_DIM, SEED = 40, 5, 12, 3


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def make_loaders(batch_size=16):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N_TRAIN + N_TEST, 5, generator=gen)
    y = torch.randint(0, 3, (N_TRAIN + N_TEST,), generator=gen)
    train = torch.utils.data.TensorDataset(x[:N_TRAIN], y[:N_TRAIN])
    test = torch.utils.data.TensorDataset(x[N_TRAIN:], y[N_TRAIN:])
    return (torch.utils.data.DataLoader(train, batch_size=batch_size), torch.utils.data.DataLoader(test, batch_size=4))


def make_checkpoints(model):
    gen = torch.Generator().manual_seed(2)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    return [first, {k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in first.items()}]


def log_odds(model, params, data):
    """Per-example log(p / (1 - p)) of the correct class (dattri's TRAK examples use this)."""
    image, label = data
    logp = -torch.nn.functional.cross_entropy(torch.func.functional_call(model, params, image[None]), label[None])
    return logp - torch.log1p(-torch.exp(logp))


def correct_probability(model, params, data):
    image, label = data
    return torch.exp(
        -torch.nn.functional.cross_entropy(torch.func.functional_call(model, params, image[None]), label[None])
    )


def make_task(model, checkpoints):
    from dattri.task import AttributionTask

    return AttributionTask(loss_func=lambda p, d: log_odds(model, p, d), model=model, checkpoints=checkpoints)


def grads_and_probability(checkpoint, loader):
    """(n, D) per-example gradients of log_odds and (n,) p(correct), float64, by torch.func."""
    model = make_model().double()
    params = {k: v.double() for k, v in checkpoint.items()}
    x = torch.cat([b[0] for b in loader]).double()
    y = torch.cat([b[1] for b in loader])
    grads = torch.func.vmap(torch.func.grad(lambda p, xi, yi: log_odds(model, p, (xi, yi))), in_dims=(None, 0, 0))(
        params, x, y
    )
    flat = torch.cat([grads[name].reshape(len(x), -1) for name, _ in model.named_parameters()], dim=1)
    return flat, torch.func.vmap(lambda xi, yi: correct_probability(model, params, (xi, yi)))(x, y)


def projected(grads, ensemble_id, kind, seed=SEED):
    """dattri's convention: seed + 10^5 * ensemble_id, entries divided by sqrt(proj_dim)."""
    p = fastjl.matrix_block(seed + 100_000 * ensemble_id, kind, range(grads.shape[1]), range(PROJ_DIM))
    return grads @ p / math.sqrt(PROJ_DIM)


def trak_reference(checkpoints, train, test, kind, regularization=0.0):
    """dattri's TRAK in float64: per checkpoint Φ = proj(∇f / sqrt(D)), scores_m = Φ_test (ΦᵀΦ + λI)⁻¹ Φᵀ;
    result (mean_m scores_m ⊙ mean_m (1 - p_m))ᵀ, shape (n_train, n_test)."""
    scores, q = 0.0, 0.0
    for m, ckpt in enumerate(checkpoints):
        g_train, p_train = grads_and_probability(ckpt, train)
        g_test, _ = grads_and_probability(ckpt, test)
        norm = math.sqrt(g_train.shape[1])
        phi, phi_test = projected(g_train / norm, m, kind), projected(g_test / norm, m, kind)
        kernel = phi.T @ phi + regularization * torch.eye(PROJ_DIM, dtype=torch.float64)
        scores = scores + phi_test @ torch.linalg.solve(kernel, phi.T)
        q = q + (1 - p_train)
    return ((scores / len(checkpoints)) * (q / len(checkpoints))[None, :]).T


def assert_scores_close(got, ref):
    assert got.shape == ref.shape
    err = (got.double() - ref).abs().max() / ref.abs().max()
    assert err < 1e-4, f"max error {err:.2e} relative to the largest score"


@pytest.fixture
def fresh_dattri_defaults(monkeypatch):
    """dattri's attributors update their module-level projector defaults in place; isolate tests."""
    for name in ("dattri.algorithm.trak", "dattri.algorithm.tracin"):
        module = importlib.import_module(name)
        monkeypatch.setattr(module, "DEFAULT_PROJECTOR_KWARGS", dict(module.DEFAULT_PROJECTOR_KWARGS))


@needs_dattri
@pytest.mark.parametrize(
    "proj_type,kind,regularization",
    [("normal", "gaussian", 0.0), ("rademacher", "rademacher", 0.0), (None, "gaussian", 1e-3)],
)
def test_dattri_trak_end_to_end_matches_float64_trak(proj_type, kind, regularization):
    from fastjl.integrations.dattri import TRAKAttributor

    model = make_model()
    ckpts = make_checkpoints(model)
    train, test = make_loaders()
    projector_kwargs = {"proj_dim": PROJ_DIM, "proj_seed": SEED}
    if proj_type is not None:  # None: dattri's default type, "normal"
        projector_kwargs["proj_type"] = proj_type
    attributor = TRAKAttributor(
        task=make_task(model, ckpts),
        correct_probability_func=lambda p, d: correct_probability(model, p, d),
        projector_kwargs=projector_kwargs,
        device="cpu",
        regularization=regularization,
    )
    attributor.cache(train)
    scores = attributor.attribute(test)
    ref = trak_reference(ckpts, train, test, kind, regularization)
    assert_scores_close(scores, ref)
    if regularization:  # the regularizer must matter, or this case would test nothing new
        assert not torch.allclose(ref, trak_reference(ckpts, train, test, kind), rtol=1e-2)
    # without cache(): train loader passed to attribute() directly, a different code path in dattri
    fresh = TRAKAttributor(
        task=make_task(model, ckpts),
        correct_probability_func=lambda p, d: correct_probability(model, p, d),
        projector_kwargs=projector_kwargs,
        regularization=regularization,
    )
    assert_scores_close(fresh.attribute(test, train), ref)


@needs_dattri
def test_use_fastjl_routes_dattris_own_attributors(fresh_dattri_defaults):
    import dattri.algorithm.trak as dattri_trak
    from dattri.algorithm.tracin import TracInAttributor

    from fastjl.integrations.dattri import TRAKAttributor, use_fastjl

    original = dattri_trak.random_project
    model = make_model()
    ckpts = make_checkpoints(model)
    train, test = make_loaders()
    kwargs = dict(correct_probability_func=lambda p, d: correct_probability(model, p, d), device="cpu")
    projector_kwargs = {"proj_dim": PROJ_DIM, "proj_seed": SEED}
    with use_fastjl():
        own = dattri_trak.TRAKAttributor(task=make_task(model, ckpts), projector_kwargs=projector_kwargs, **kwargs)
        own.cache(train)
        scores = own.attribute(test)
        weights = torch.tensor([0.5, 2.0])
        tracin = TracInAttributor(
            make_task(model, ckpts), weights, normalized_grad=False, projector_kwargs=projector_kwargs
        )
        tracin_scores = tracin.attribute(train, test)
    assert dattri_trak.random_project is original
    ours = TRAKAttributor(task=make_task(model, ckpts), projector_kwargs=projector_kwargs, **kwargs)
    ours.cache(train)
    torch.testing.assert_close(scores, ours.attribute(test), rtol=0, atol=0)
    # TracIn: sum_m w_m Φ_train,m Φ_test,mᵀ with the same per-checkpoint projections
    ref = 0.0
    for m, ckpt in enumerate(ckpts):
        g_train, _ = grads_and_probability(ckpt, train)
        g_test, _ = grads_and_probability(ckpt, test)
        ref = ref + weights[m].item() * projected(g_train, m, "gaussian") @ projected(g_test, m, "gaussian").T
    assert_scores_close(tracin_scores, ref)


@needs_dattri
def test_use_fastjl_restores_dattri_after_an_error():
    import dattri.algorithm.tracin as dattri_tracin
    import dattri.algorithm.trak as dattri_trak

    from fastjl.integrations.dattri import use_fastjl

    originals = (dattri_trak.random_project, dattri_tracin.random_project)
    with pytest.raises(RuntimeError, match="boom"), use_fastjl(backend="torch"):
        assert dattri_trak.random_project is not originals[0]
        raise RuntimeError("boom")
    assert (dattri_trak.random_project, dattri_tracin.random_project) == originals


@needs_dattri
def test_attributor_keeps_its_own_projector_defaults():
    import dattri.algorithm.trak as dattri_trak

    from fastjl.integrations.dattri import TRAKAttributor

    before = dict(dattri_trak.DEFAULT_PROJECTOR_KWARGS)
    model = make_model()
    attributor = TRAKAttributor(
        make_task(model, make_checkpoints(model)), lambda p, d: 1.0, {"proj_dim": 7, "backend": "torch"}
    )
    assert attributor.projector_kwargs["proj_dim"] == 7 and attributor.projector_kwargs["backend"] == "torch"
    assert dattri_trak.DEFAULT_PROJECTOR_KWARGS == before


@needs_dattri
def test_projector_matches_fastjl_project_and_dattri_conventions():
    from fastjl.integrations.dattri import FastJLProjector

    gen = torch.Generator().manual_seed(4)
    features = {"w": torch.randn(6, 4, 5, generator=gen), "b": torch.randn(6, 4, generator=gen)}
    flat = torch.cat([f.reshape(6, -1) for f in features.values()], dim=1)
    projector = FastJLProjector(24, 10, seed=11, proj_type="rademacher", device="cpu")
    out = projector.project(flat, ensemble_id=2)
    assert torch.equal(out, fastjl.project(flat, 10, seed=11 + 2 * 100_000, kind="rademacher", scale="jl"))
    torch.testing.assert_close(projector.project(features, 2), out, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(projector.project(flat, 0), out)
    # output in the constructor's dtype (dattri's meaning: default float32, whatever comes in)
    assert projector.project(flat.double(), 2).dtype == torch.float32
    as_double = FastJLProjector(24, 10, seed=11, proj_type="rademacher", dtype=torch.float64)
    assert as_double.project(flat.double(), 2).dtype == torch.float64
    torch.testing.assert_close(as_double.project(flat.double(), 2), out.double())
    assert FastJLProjector(24, 10, dtype=torch.float16).project(flat.half(), 2).dtype == torch.float16
    unscaled = FastJLProjector(24, 10, seed=11, proj_type="rademacher", scale=None).project(flat, 2)
    torch.testing.assert_close(unscaled, out * math.sqrt(10))
    projector.free_memory()  # a no-op, and the projector still works after it
    assert torch.equal(projector.project(flat, 2), out)


@needs_dattri
def test_random_project_is_a_drop_in():
    from dattri.func import projection

    from fastjl.integrations.dattri import random_project

    theirs = inspect.signature(projection.random_project).parameters
    ours = inspect.signature(random_project).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    for name, param in theirs.items():
        assert ours[name].kind == param.kind
        assert param.default is inspect.Parameter.empty or ours[name].default == param.default, name
    features = {"a": torch.randn(3, 4, 2), "b": torch.randn(3, 5)}
    project = random_project(features, 3, 16, 32, proj_seed=1, proj_type="normal", device="cpu")
    flat = torch.cat([f.reshape(3, -1) for f in features.values()], dim=1)
    expected = fastjl.project(flat, 16, seed=1 + 100_000, kind="gaussian", scale="jl")
    torch.testing.assert_close(project(features, ensemble_id=1), expected, rtol=1e-5, atol=1e-6)
    assert project.projector.feature_dim == 13


@needs_dattri
@pytest.mark.parametrize("proj_type", ["foo", "grass_x", "grass_0"])
def test_unknown_projection_types_raise_naming_the_valid_ones(proj_type):
    from fastjl.integrations.dattri import FastJLProjector, random_project

    with pytest.raises(ValueError, match="proj_type="):
        FastJLProjector(10, 4, proj_type=proj_type)
    with pytest.raises(ValueError, match="proj_type="):
        random_project(torch.randn(2, 10), 2, 4, 32, proj_type=proj_type)


@needs_dattri
@needs_gpu
def test_dattri_trak_on_gpu_matches_cpu():
    from fastjl.integrations.dattri import TRAKAttributor

    model = make_model()
    ckpts = make_checkpoints(model)
    train, test = make_loaders()
    results = []
    for device in ("cpu", "cuda"):
        model.to(device)
        device_ckpts = [{k: v.to(device) for k, v in c.items()} for c in ckpts]
        attributor = TRAKAttributor(
            task=make_task(model, device_ckpts),
            correct_probability_func=lambda p, d: correct_probability(model, p, d),
            projector_kwargs={"proj_dim": PROJ_DIM, "proj_seed": SEED, "device": device},
            device=device,
        )
        attributor.cache(train)
        results.append(attributor.attribute(test).cpu())
    assert_scores_close(results[1], results[0].double())


@needs_dattri
def test_readme_snippet_runs():
    """The README's dattri example (five lines) runs as written."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "fastjl.integrations.dattri import" in b]
    assert blocks, "README.md should show fastjl.integrations.dattri in a ```python block"
    assert len(blocks[0].strip().splitlines()) <= 5
    scope = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    scores = scope["scores"]
    assert scores.shape == (32, 32) and torch.isfinite(scores).all() and scores.abs().max() > 0


def test_import_without_dattri_names_the_package(monkeypatch):
    for name in [n for n in sys.modules if n == "dattri" or n.startswith("dattri.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "fastjl.integrations.dattri", raising=False)
    monkeypatch.setitem(sys.modules, "dattri", None)  # makes `import dattri...` raise ImportError
    with pytest.raises(
        ImportError, match=r"fastjl\.integrations\.dattri needs the 'dattri' package.*pip install dattri"
    ):
        importlib.import_module("fastjl.integrations.dattri")


@needs_dattri
@pytest.mark.parametrize("proj_type", ["identity", "random_mask"])
def test_use_fastjl_keeps_dattris_other_types_working(proj_type):
    """Issue 17's failure: these raised ValueError inside use_fastjl(); now dattri serves them."""
    import dattri.algorithm.trak as dattri_trak
    from dattri.func.projection import random_project as dattris

    from fastjl.integrations.dattri import use_fastjl

    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(8))
    with use_fastjl():
        ours = dattri_trak.random_project(x, 4, 6, 32, proj_type=proj_type, device="cpu")
    assert torch.equal(ours(x), dattris(x, 4, 6, 32, proj_type=proj_type, device="cpu")(x))


@needs_dattri
def test_sjlt_runs_on_fastjl_on_every_device():
    """dattri's "sjlt" (c = 1 nonzero per input row, entries ±1, no 1/sqrt(K)) is fastjl's
    kind="sjlt" with sparsity 1 -- on a CPU too, where dattri's own needs the CUDA-only package."""
    import dattri.algorithm.trak as dattri_trak
    from dattri.func.projection import random_project as dattris

    from fastjl.integrations.dattri import FastJLProjector, random_project, use_fastjl

    x = torch.randn(5, 3001, generator=torch.Generator().manual_seed(9))
    expected = {e: fastjl.project(x, 256, kind="sjlt", sparsity=1, seed=7 + 100_000 * e) for e in (0, 2)}
    projector = FastJLProjector(3001, 256, 7, "sjlt", "cpu")
    assert torch.equal(projector.project(x, ensemble_id=0), expected[0])
    assert torch.equal(projector.project(x, ensemble_id=2), expected[2])
    assert torch.equal(random_project(x, 5, 256, 32, proj_seed=7, proj_type="sjlt")(x, 2), expected[2])
    with use_fastjl():
        ours = dattri_trak.random_project(x, 5, 256, 32, proj_seed=7, proj_type="sjlt", device="cpu")
    assert torch.equal(ours(x), expected[0])
    # E||xP||^2 = ||x||^2 without scaling (one ±1 per row): norms kept within JL's 6 sqrt(2/K).
    ratio = expected[0].norm(dim=1) ** 2 / x.norm(dim=1) ** 2
    assert ((ratio - 1).abs() < 6 * (2 / 256) ** 0.5).all()
    with pytest.raises(ValueError, match="Invalid proj_type 'sjlt' for cpu"):  # dattri 0.3.0's own
        dattris(x, 5, 256, 32, proj_seed=7, proj_type="sjlt", device="cpu")
