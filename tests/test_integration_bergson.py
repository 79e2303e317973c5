"""fastjl.integrations.bergson: fastjl as the projector inside EleutherAI's bergson (2.5.1).

End to end with the real package on CPU: a tiny randomly initialized Llama (no download) and
eight short documents go through ``bergson.collect_gradients`` three times: without projection
(bergson's exact per-module gradients, our reference), and inside ``use_fastjl()`` with the global
and with the two-sided per-module projection.  The projected indexes must equal fastjl's
projections of the exact gradients, computed here from fastjl's public functions.  Needs bergson
(CI installs bergson==2.5.1); the ImportError test runs without it.
"""

from __future__ import annotations

import importlib
import math
import sys

import pytest
import torch

import fastjl

try:
    import bergson
except ImportError:
    bergson = None

needs_bergson = pytest.mark.skipif(bergson is None, reason="bergson is not installed (pip install bergson==2.5.1)")

PROJ_DIM, N_DOCS = 16, 8


@pytest.fixture(scope="module")
def tiny_llama():
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, 128, (12,), generator=gen).tolist() for _ in range(N_DOCS)]
    # A second column: bergson 2.5.1 drops input_ids before adding its loss column, and a
    # dataset left with no column has no rows.
    return model, Dataset.from_dict({"input_ids": docs, "doc": list(range(N_DOCS))})


def collect(model, data, path, **settings):
    """bergson's own collection; returns {module: (N_DOCS, width) float64}."""
    from bergson import GradientProcessor, IndexConfig, collect_gradients
    from bergson.data import load_module_gradients

    cfg = IndexConfig(run_path=str(path), token_batch_size=64, **settings)
    processor = GradientProcessor(**settings)
    collect_gradients(model=model, data=data, processor=processor, cfg=cfg)
    grads = load_module_gradients(cfg.partial_run_path)
    return {name: torch.from_numpy(grads[name].astype("float64")) for name in grads.keys()}


@pytest.fixture(scope="module")
def exact_grads(tiny_llama, tmp_path_factory):
    model, data = tiny_llama
    return collect(model, data, tmp_path_factory.mktemp("exact"), projection_dim=0)


def assert_close_relative(got, expected, tol=1e-5):
    err = (got - expected).abs().max() / expected.abs().max()
    assert err < tol, f"max error {err:.2e} relative to the largest entry"


@needs_bergson
@pytest.mark.parametrize("projection_type,kind", [("rademacher", "rademacher"), ("normal", "gaussian")])
def test_global_collection_is_fastjl_project_per_module(tiny_llama, exact_grads, tmp_path, projection_type, kind):
    from fastjl.integrations.bergson import module_seed, use_fastjl

    model, data = tiny_llama
    with use_fastjl():
        index = collect(
            model, data, tmp_path, projection_dim=PROJ_DIM, projection_target="global", projection_type=projection_type
        )
    assert list(index) == ["gradients"] and index["gradients"].shape == (N_DOCS, PROJ_DIM)
    # bergson's convention: module m's gradient times its own (PROJ_DIM, n) matrix / sqrt(PROJ_DIM),
    # summed over modules; the matrix named "<module>/single" is fastjl's for module_seed(name).
    expected = sum(
        fastjl.project(g, PROJ_DIM, seed=module_seed(f"{name}/single"), kind=kind, backend="torch")
        for name, g in exact_grads.items()
    ) / math.sqrt(PROJ_DIM)
    assert_close_relative(index["gradients"], expected)
    # and it is not bergson's own draw of that distribution
    plain = collect(
        model, data, tmp_path / "plain", projection_dim=PROJ_DIM, projection_target="global",
        projection_type=projection_type,
    )  # fmt: skip
    assert not torch.allclose(plain["gradients"], index["gradients"], rtol=1e-2)


@needs_bergson
def test_two_sided_collection_is_fastjls_kronecker_kind(tiny_llama, exact_grads, tmp_path):
    from bergson.collector.collector import HookCollectorBase

    from fastjl.integrations.bergson import module_seed, use_fastjl

    model, data = tiny_llama
    with use_fastjl():
        index = collect(model, data, tmp_path, projection_dim=PROJ_DIM, projection_type="normal")
    assert set(index) == set(exact_grads)
    for name, g in exact_grads.items():
        d_in = model.get_submodule(f"model.{name}").in_features
        grads = g.reshape(N_DOCS, -1, d_in)  # bergson's [O, I] per example, row-major
        seed = module_seed(HookCollectorBase.projection_identifier(name, "kronecker", None))
        f_out = fastjl.kronecker_factor(seed, 0, "out", grads.shape[1], PROJ_DIM)
        f_in = fastjl.kronecker_factor(seed, 0, "in", d_in, PROJ_DIM)
        # F_outᵀ G F_in / PROJ_DIM: fastjl's kronecker kind with scale="jl" (1/sqrt(K), K = p·p)
        expected = (f_out.T @ grads @ f_in).flatten(1) / PROJ_DIM
        assert index[name].shape == (N_DOCS, PROJ_DIM * PROJ_DIM)
        assert_close_relative(index[name], expected, tol=1e-4)


@needs_bergson
@pytest.mark.parametrize("bias", [False, True])
def test_module_factors_are_project_linear_kronecker(bias):
    """bergson's two-sided formula with fastjl's factors is ``project_linear(kind="kronecker")``."""
    from fastjl.integrations.bergson import module_projection_matrix, module_seed

    gen = torch.Generator().manual_seed(5)
    a, g = torch.randn(3, 7, 10, generator=gen), torch.randn(3, 7, 6, generator=gen)
    args = (torch.float32, torch.device("cpu"), "normal", "jl", 4)
    left = module_projection_matrix("blk.fc", "left", 5, 6, *args)
    right = module_projection_matrix("blk.fc", "right", 5, 10 + bias, *args)
    a_ext = torch.cat([a, torch.ones(3, 7, 1)], dim=2) if bias else a
    bergsons = ((g @ left.T).mT @ (a_ext @ right.T)).flatten(1)  # Σ_t (L g_t)(R a_t)ᵀ
    seed = module_seed("blk.fc/kronecker/seed4")
    ours = fastjl.project_linear(a, g, (5, 5), kind="kronecker", seed=seed, bias=bias, scale="jl")
    torch.testing.assert_close(bergsons, ours, rtol=1e-5, atol=1e-5)


@needs_bergson
@pytest.mark.parametrize("projection_type", ["rademacher", "normal"])
def test_project_global_outer_products_match_the_formed_gradients(projection_type):
    """bergson hands global projection either formed gradients or g ⊗ a (+ bias ⊗ bias_col,
    ⊘ Adam divisor); every form gives the projection of the formed gradient."""
    from bergson.gradients import OuterProductGradients

    from fastjl.integrations.bergson import project_global

    gen = torch.Generator().manual_seed(6)
    g, a = torch.randn(4, 5, 6, generator=gen), torch.randn(4, 5, 9, generator=gen)
    a[..., -1] = 0  # bergson's bias column
    bias, bias_col = torch.randn(4, 6, generator=gen), torch.zeros(9)
    bias_col[-1] = 1
    divisor = torch.rand(6, 9, generator=gen) + 0.5
    for outer in (
        OuterProductGradients(g=g, a=a),
        OuterProductGradients(g=g, a=a, bias=bias, bias_col=bias_col),
        OuterProductGradients(g=g, a=a, divisor=divisor),
        OuterProductGradients(g=g[0], a=a[0], bias=bias[:1].expand(5, -1), bias_col=bias_col),  # per token
    ):
        formed = outer.materialize().flatten(1)
        ours = project_global("blk/single", outer, 12, projection_type, "jl")
        torch.testing.assert_close(ours, project_global("blk/single", formed, 12, projection_type, "jl"))
        assert ours.shape == (formed.shape[0], 12) and ours.dtype == torch.float32
    assert project_global("blk/single", formed.half(), 12, projection_type).dtype == torch.float16


@needs_bergson
def test_row_norm_scaling_as_bergsons():
    import bergson.collector.collector as bergson_collector

    from fastjl.integrations.bergson import module_projection_matrix, module_seed, project_global

    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(7))
    plain = fastjl.project(x, 8, seed=module_seed("m/single"), kind="rademacher")
    # ±1 rows have norm sqrt(n): row_norm divides by sqrt(50) exactly
    torch.testing.assert_close(project_global("m/single", x, 8, "rademacher", "row_norm"), plain / math.sqrt(50))
    # normal + row_norm needs the formed matrix: handed back to bergson's own code
    theirs = bergson_collector.project_global("m/single", x, 8, "normal", "row_norm")
    torch.testing.assert_close(project_global("m/single", x, 8, "normal", "row_norm"), theirs)
    factor = module_projection_matrix("m", "left", 4, 30, torch.float32, "cpu", "normal", "row_norm", None)
    torch.testing.assert_close(factor.norm(dim=1), torch.ones(4))
    with pytest.raises(ValueError, match="projection_type"):
        project_global("m/single", x, 8, "sjlt")
    with pytest.raises(ValueError, match="projection_scale"):
        project_global("m/single", x, 8, "normal", "unit")


@needs_bergson
def test_use_fastjl_restores_bergson_after_an_error():
    import bergson.collector.collector as bergson_collector
    import bergson.hessians.apply_hessian as bergson_hessian

    from fastjl.integrations.bergson import use_fastjl

    def current():
        return (
            bergson_collector.project_global,
            bergson_hessian.project_global,
            bergson_collector.create_module_projection_matrix,
            bergson_hessian.create_module_projection_matrix,
            bergson_collector.HookCollectorBase.projection,
        )

    before = current()
    with pytest.raises(RuntimeError, match="boom"), use_fastjl():
        assert all(x is not y for x, y in zip(current(), before))
        raise RuntimeError("boom")
    assert current() == before


def test_import_without_bergson_names_the_package(monkeypatch):
    for name in [n for n in sys.modules if n == "bergson" or n.startswith("bergson.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "fastjl.integrations.bergson", raising=False)
    monkeypatch.setitem(sys.modules, "bergson", None)  # makes `import bergson...` raise ImportError
    with pytest.raises(ImportError, match=r"fastjl\.integrations\.bergson needs the 'bergson' package"):
        importlib.import_module("fastjl.integrations.bergson")


@needs_bergson
def test_readme_snippet_runs(tmp_path, monkeypatch):
    """The README's bergson example runs as written (in a scratch directory)."""
    import re
    from pathlib import Path

    from bergson.data import load_module_gradients

    text = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "fastjl.integrations.bergson" in b]
    assert blocks, "README.md should show fastjl.integrations.bergson in a ```python block"
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    grads = load_module_gradients(scope["cfg"].partial_run_path)["gradients"]
    assert grads.shape == (8, 16) and abs(grads).max() > 0
