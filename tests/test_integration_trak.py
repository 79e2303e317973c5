"""fastjl.integrations.trak: fastjl as the projector inside TRAK's ``traker`` (0.3.2).

The end-to-end tests run traker's TRAKer (featurize -> finalize_features -> score ->
finalize_scores) with our projector on a small MLP and compare with TRAK's formulas evaluated
independently in float64 from per-example gradients we compute ourselves and the projection
matrix taken entry by entry from the spec (``fastjl.matrix_block``).  They need traker
(CI installs traker==0.3.2); the ImportError and no-dependency tests run without it.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fastjl

try:
    import trak
except ImportError:
    trak = None

needs_traker = pytest.mark.skipif(trak is None, reason="traker is not installed (pip install traker==0.3.2)")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

N_TRAIN, N_TARGET, PROJ_DIM, SEED = 48, 6, 16, 5


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3))


def make_data():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N_TRAIN + N_TARGET, 6, generator=gen)
    y = torch.randint(0, 3, (N_TRAIN + N_TARGET,), generator=gen)
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def make_checkpoints(model):
    """Two checkpoints that differ, so per-checkpoint seeds and averaging are both exercised."""
    gen = torch.Generator().manual_seed(2)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    second = {k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in first.items()}
    return [first, second]


def run_traker(tmp_path, projector, checkpoints, train, target, **kwargs):
    """TRAKer end to end on CPU, featurizing in batches of 16; returns (traker, scores)."""
    from trak import TRAKer

    model = make_model()
    traker = TRAKer(
        model=model,
        task="image_classification",
        train_set_size=N_TRAIN,
        save_dir=str(tmp_path / "trak"),
        device="cpu",
        projector=projector,
        use_half_precision=False,
        logging_level=logging.ERROR,
        **kwargs,
    )
    for model_id, ckpt in enumerate(checkpoints):
        traker.load_checkpoint(ckpt, model_id=model_id)
        for start in range(0, N_TRAIN, 16):
            batch = tuple(t[start : start + 16] for t in train)
            traker.featurize(batch, num_samples=batch[0].shape[0])
    traker.finalize_features()
    for model_id, ckpt in enumerate(checkpoints):
        traker.start_scoring_checkpoint("targets", ckpt, model_id=model_id, num_targets=N_TARGET)
        traker.score(target, num_samples=N_TARGET)
    return traker, torch.as_tensor(traker.finalize_scores("targets"))


def margin_grads_and_q(checkpoint, data):
    """Per-example gradients (n, D) of the margin and Q = 1 - p(correct), in float64, by torch.func."""
    model = make_model().double()
    params = {k: v.double() for k, v in checkpoint.items()}
    x, y = data[0].double(), data[1]

    def margin(p, xi, yi):
        logits = torch.func.functional_call(model, p, (xi[None],))[0]
        correct = torch.arange(logits.shape[0]) == yi  # a mask: vmap cannot index with yi
        return torch.where(correct, logits, 0.0).sum() - torch.logsumexp(logits.masked_fill(correct, -math.inf), dim=0)

    grads = torch.func.vmap(torch.func.grad(margin), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([grads[name].reshape(len(x), -1) for name, _ in model.named_parameters()], dim=1)
    probs = torch.softmax(torch.func.functional_call(model, params, (x,)), dim=-1)
    return flat, 1 - probs[torch.arange(len(y)), y]


def trak_scores_reference(checkpoints, train, target, kind, lambda_reg=0.0, seed=SEED):
    """TRAK as traker 0.3.2 computes it, in float64.

    Per checkpoint m (seed + 10^4 m): Φ = G P / sqrt(D); A⁻¹ = (ΦᵀΦ + λI)⁻¹ rescaled by traker to
    mean |entry| 1 (``BasicScoreComputer.get_x_xtx_inv``); scores_m = Φ A⁻¹ Φ_targetᵀ.  Final
    scores: mean_m scores_m times mean_m Q_m, one Q per train example.
    """
    scores, q = 0.0, 0.0
    for model_id, ckpt in enumerate(checkpoints):
        g_train, q_m = margin_grads_and_q(ckpt, train)
        g_target, _ = margin_grads_and_q(ckpt, target)
        dim = g_train.shape[1]
        p = fastjl.matrix_block(seed + 10_000 * model_id, kind, range(dim), range(PROJ_DIM))
        phi, phi_target = g_train @ p / math.sqrt(dim), g_target @ p / math.sqrt(dim)
        inv = torch.linalg.inv(phi.T @ phi + lambda_reg * torch.eye(PROJ_DIM, dtype=torch.float64))
        inv = inv / inv.abs().mean()
        scores = scores + phi @ inv @ phi_target.T
        q = q + q_m[:, None]
    return (scores / len(checkpoints)) * (q / len(checkpoints))


def assert_scores_close(got, ref):
    """float32 tolerance, relative to the largest score (the inverse amplifies rounding a little)."""
    assert got.shape == ref.shape
    err = (got.double() - ref).abs().max() / ref.abs().max()
    assert err < 2e-5, f"max error {err:.2e} relative to the largest score"


@needs_traker
@pytest.mark.parametrize(
    "proj_type,kind,lambda_reg",
    [("rademacher", "rademacher", 0.0), ("normal", "gaussian", 0.0), ("rademacher", "rademacher", 0.05)],
)
def test_traker_end_to_end_matches_float64_trak(tmp_path, proj_type, kind, lambda_reg):
    from trak.projectors import ProjectionType

    from fastjl.integrations.trak import FastJLProjector

    model = make_model()
    train, target = make_data()
    ckpts = make_checkpoints(model)
    dim = sum(p.numel() for p in model.parameters())
    projector = FastJLProjector(dim, PROJ_DIM, seed=SEED, proj_type=ProjectionType(proj_type))
    traker, scores = run_traker(tmp_path, projector, ckpts, train, target, lambda_reg=lambda_reg)
    ref = trak_scores_reference(ckpts, train, target, kind, lambda_reg)
    assert_scores_close(scores, ref)
    if lambda_reg:  # the regularizer must matter here, or this case would test nothing new
        assert not torch.allclose(ref, trak_scores_reference(ckpts, train, target, kind), rtol=1e-2)
    # traker records our type in its metadata as one of its own values
    assert json.loads((tmp_path / "trak" / "metadata.json").read_text())["JL matrix type"] == proj_type


def run_trak_core(tmp_path, checkpoints, train, target, **kwargs):
    """trak_core's TRAKer (TRAK's method names) through the same steps; returns the TRAKer."""
    import trak_core

    traker = trak_core.TRAKer(
        make_model(), "image_classification", N_TRAIN, save_dir=str(tmp_path / "core"), quiet=True, **kwargs
    )
    for model_id, ckpt in enumerate(checkpoints):
        traker.load_checkpoint(ckpt, model_id)
        for start in range(0, N_TRAIN, 16):
            traker.featurize(tuple(t[start : start + 16] for t in train), num_samples=len(train[0][start : start + 16]))
    traker.finalize_features()
    for model_id, ckpt in enumerate(checkpoints):
        traker.start_scoring_checkpoint("targets", ckpt, model_id, num_targets=N_TARGET)
        traker.score(target, num_samples=N_TARGET)
    return traker


@needs_traker
@pytest.mark.parametrize("kind,lambda_reg", [("rademacher", 0.0), ("gaussian", 0.05)])
def test_traker_with_fastjl_equals_trak_core(tmp_path, kind, lambda_reg):
    """traker + FastJLProjector and trak_core with the same settings give the same scores.

    The one deliberate difference: traker divides each checkpoint's (ΦᵀΦ + λI)⁻¹ by its mean
    |entry| c_m (trak_core does not), so per checkpoint m, trak_core's scores = c_m x traker's.
    c_m is computed from traker's own stored features.
    """
    from fastjl.integrations.trak import FastJLProjector

    model = make_model()
    train, target = make_data()
    ckpts = make_checkpoints(model)
    dim = sum(p.numel() for p in model.parameters())
    projector = FastJLProjector(dim, PROJ_DIM, seed=SEED, proj_type={"gaussian": "normal"}.get(kind, kind))
    traker, _ = run_traker(tmp_path, projector, ckpts, train, target, lambda_reg=lambda_reg)
    core = run_trak_core(
        tmp_path, ckpts, train, target, proj_dim=PROJ_DIM, projector_seed=SEED, proj_kind=kind, lambda_reg=lambda_reg
    )
    for model_id in range(len(ckpts)):
        traker.saver.load_current_store(model_id)
        phi = torch.as_tensor(traker.saver.current_store["grads"]).double()
        c_m = torch.linalg.inv(phi.T @ phi + lambda_reg * torch.eye(PROJ_DIM, dtype=torch.float64)).abs().mean()
        ours = torch.as_tensor(traker.finalize_scores("targets", model_ids=[model_id])).double() * c_m
        theirs = torch.from_numpy(np.array(core.finalize_scores("targets", model_ids=[model_id]))).double()
        assert_scores_close(ours.float(), theirs)


@needs_traker
@pytest.mark.parametrize("grad_wrt", [None, ["2.weight", "2.bias"]])
def test_traker_features_equal_fastjl_projector(tmp_path, grad_wrt):
    """Stored per-checkpoint features = fastjl.Projector on traker's own per-example grads / sqrt(D)."""
    from fastjl.integrations.trak import FastJLProjector

    model = make_model()
    train, target = make_data()
    ckpts = make_checkpoints(model)
    params = dict(model.named_parameters())
    dim = sum(params[n].numel() for n in grad_wrt or params)
    projector = FastJLProjector(dim, PROJ_DIM, seed=SEED)
    traker, _ = run_traker(tmp_path, projector, ckpts, train, target, grad_wrt=grad_wrt)
    for model_id, ckpt in enumerate(ckpts):
        traker.saver.load_current_store(model_id)
        traker.model.load_state_dict(ckpt)
        traker.gradient_computer.load_model_params(traker.model)
        grads = traker.gradient_computer.compute_per_sample_grad(train)
        assert sum(g[0].numel() for g in grads.values()) == dim
        expected = fastjl.Projector(dim, PROJ_DIM, seed=SEED).project(grads, model_id=model_id) / math.sqrt(dim)
        stored = torch.as_tensor(traker.saver.current_store["grads"])
        torch.testing.assert_close(stored, expected, rtol=1e-5, atol=1e-6)


@needs_traker
def test_project_tensor_dict_dtypes_and_seed_convention():
    from fastjl.integrations.trak import FastJLProjector

    gen = torch.Generator().manual_seed(3)
    grads = {"w": torch.randn(5, 7, 3, generator=gen), "b": torch.randn(5, generator=gen)}  # 1-D: one entry each
    flat = torch.cat([grads["w"].reshape(5, -1), grads["b"][:, None]], dim=1)
    projector = FastJLProjector(22, 33, seed=9, proj_type="rademacher")
    out = projector.project(flat, model_id=2)
    assert out.dtype == torch.float32 and out.shape == (5, 33)
    assert torch.equal(out, fastjl.project(flat, 33, seed=9 + 2 * 10_000))
    torch.testing.assert_close(projector.project(grads, model_id=2), out, rtol=1e-5, atol=1e-5)
    # traker hands over whatever dtype the model has; all come back float32
    torch.testing.assert_close(projector.project(flat.double(), model_id=2), out)
    half = flat.half()
    torch.testing.assert_close(projector.project(half, 2), fastjl.project(half.float(), 33, seed=20_009))
    # traker divides the result in place: it must not alias anything the projector keeps
    assert projector.project(flat, 2).data_ptr() != projector.project(flat, 2).data_ptr()
    assert not torch.allclose(projector.project(flat, 0), out)


@needs_traker
def test_proj_types_map_to_fastjl_kinds():
    from trak.projectors import ProjectionType

    from fastjl.integrations.trak import FastJLProjector

    x = torch.randn(3, 40)
    for proj_type, kind, stored in [
        (ProjectionType.rademacher, "rademacher", ProjectionType.rademacher),
        ("rademacher", "rademacher", ProjectionType.rademacher),
        (ProjectionType.normal, "gaussian", ProjectionType.normal),
        ("normal", "gaussian", ProjectionType.normal),
        ("gaussian", "gaussian", ProjectionType.normal),
    ]:
        projector = FastJLProjector(40, 8, seed=1, proj_type=proj_type)
        assert projector.kind == kind and projector.proj_type is stored
        assert torch.equal(projector.project(x, 0), fastjl.project(x, 8, seed=1, kind=kind))
    with pytest.raises(ValueError, match="proj_type='sjlt'.*'rademacher'"):
        FastJLProjector(40, 8, proj_type="sjlt")


@needs_traker
@pytest.mark.parametrize(
    "kwargs,call,error,words",
    [
        (dict(grad_dim=0, proj_dim=8), None, ValueError, "grad_dim"),
        (dict(grad_dim=10, proj_dim=0), None, ValueError, "proj_dim"),
        (dict(grad_dim=10, proj_dim=8, seed=-1), None, ValueError, "seed"),
        (dict(grad_dim=10, proj_dim=8, scale="unit"), None, ValueError, "scale"),
        (dict(grad_dim=10, proj_dim=8), ({"a": torch.randn(2, 9)}, 0), ValueError, "expected grad_dim=10"),
        (dict(grad_dim=10, proj_dim=8), ({"a": torch.randn(2, 5), "b": torch.randn(3, 5)}, 0), ValueError, "batch"),
        (dict(grad_dim=10, proj_dim=8), (torch.randn(2, 9), 0), ValueError, "grad_dim=10"),
        (dict(grad_dim=10, proj_dim=8), (torch.randn(2, 10), -1), ValueError, "model_id"),
        (dict(grad_dim=10, proj_dim=8), (torch.randn(2, 10), 1.0), ValueError, "model_id"),
        (dict(grad_dim=10, proj_dim=8), ([1, 2], 0), TypeError, "dict"),
        (dict(grad_dim=10, proj_dim=8, backend="nope"), (torch.randn(2, 10), 0), ValueError, "nope"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, call, error, words):
    from fastjl.integrations.trak import FastJLProjector

    with pytest.raises(error, match=words):
        projector = FastJLProjector(**kwargs)
        projector.project(*call)


@needs_traker
def test_interpreted_triton_backend_matches_torch_backend():
    """Any backend can sit inside traker: same features (Triton runs in its interpreter on CPU)."""
    pytest.importorskip("triton", reason="triton is not installed")
    from fastjl.integrations.trak import FastJLProjector

    grads = {"w": torch.randn(4, 10, 6), "b": torch.randn(4, 10)}
    by_torch = FastJLProjector(70, 24, seed=3, backend="torch").project(grads, 1)
    by_triton = FastJLProjector(70, 24, seed=3, backend="triton").project(grads, 1)
    torch.testing.assert_close(by_triton, by_torch, rtol=1e-5, atol=1e-5)


@needs_traker
@needs_gpu
@pytest.mark.parametrize("backend", ["auto", "torch", "triton", "cuda"])
def test_traker_on_gpu_matches_cpu_features(tmp_path, backend):
    """The matrix does not depend on the device: GPU features = CPU features to float32 tolerance."""
    status = fastjl.backends("cuda")[backend] if backend != "auto" else None
    if status is not None and not status.available:
        pytest.skip(f"backend {backend!r} unavailable on this GPU: {status.reason}")
    from trak import TRAKer

    from fastjl.integrations.trak import FastJLProjector

    model = make_model()
    train, _ = make_data()
    dim = sum(p.numel() for p in model.parameters())
    features = []
    for device in ("cpu", "cuda"):
        traker = TRAKer(
            model=model.to(device),
            task="image_classification",
            train_set_size=N_TRAIN,
            save_dir=str(tmp_path / device),
            device=device,
            projector=FastJLProjector(dim, PROJ_DIM, seed=SEED, backend="torch" if device == "cpu" else backend),
            use_half_precision=False,
            logging_level=logging.ERROR,
        )
        traker.load_checkpoint(model.state_dict(), model_id=1)
        traker.featurize(tuple(t.to(device) for t in train), num_samples=N_TRAIN)
        features.append(torch.as_tensor(traker.saver.current_store["grads"]).clone())
    torch.testing.assert_close(features[1], features[0], rtol=1e-4, atol=1e-5)


@needs_traker
def test_readme_snippet_runs(tmp_path, monkeypatch):
    """The README's traker example (five lines) runs as written."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "fastjl.integrations.trak import" in b]
    assert blocks, "README.md should show fastjl.integrations.trak in a ```python block"
    assert len(blocks[0].strip().splitlines()) <= 5
    monkeypatch.chdir(tmp_path)  # traker writes ./trak_results
    scope = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    scores = torch.as_tensor(scope["scores"]).float()
    assert scores.dim() == 2 and scores.shape[0] == 32 and torch.isfinite(scores).all() and scores.abs().max() > 0


def test_import_without_traker_names_the_package(monkeypatch):
    for name in ("trak", "trak.projectors", "fastjl.integrations.trak"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "trak", None)  # makes `import trak` raise ImportError
    with pytest.raises(ImportError, match=r"fastjl\.integrations\.trak needs the 'traker' package.*pip install traker"):
        importlib.import_module("fastjl.integrations.trak")


@needs_traker
def test_broken_traker_install_is_not_reported_as_missing(monkeypatch):
    for name in ("trak.projectors", "fastjl.integrations.trak"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "trak.utils", None)  # one of traker's own imports fails
    with pytest.raises(ImportError, match="'traker' is installed but importing trak.projectors failed"):
        importlib.import_module("fastjl.integrations.trak")


def test_fastjl_does_not_import_host_packages():
    """Neither traker nor dattri is a dependency: importing fastjl (and the namespace) loads neither."""
    code = "import sys, fastjl, fastjl.integrations; print(sorted({'trak', 'dattri'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
