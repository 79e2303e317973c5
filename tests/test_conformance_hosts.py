"""Conformance: fastjl's projectors built exactly as each host builds its own (every keyword the
host's code passes), checked for shape, dtype, determinism and JL statistics.

Tolerances come from K, not from tuning.  For unit x and y = x P / sqrt(K) (entries iid N(0, 1)
or ±1), ||y||² = (1/K) Σ_j z_j² with z_j = <x, P_j>: mean 1 and variance 2/K (Gaussian; at most
2/K for ±1, whose fourth moment is smaller).  Likewise <x P, y P>/K - <x, y> has mean 0 and
variance (|x|²|y|² + <x, y>²)/K <= 2/K for unit vectors.  Each test checks N = 32 vectors and
their N(N-1)/2 = 496 pairs at 6 standard deviations, sqrt(2/K) each: a Gaussian tail of 2e-9 per
check, so < 1e-6 for the whole file by a union bound; a projector with a wrong scale (e.g.
missing 1/sqrt(K)) or correlated columns misses by far more.
"""

from __future__ import annotations

import math

import pytest
import torch

try:
    import dattri
except ImportError:
    dattri = None
try:
    import trak
except ImportError:
    trak = None
try:
    import bergson
except ImportError:
    bergson = None

N, D, K = 32, 3000, 1024
SIGMAS = 6.0


def unit_rows(seed: int = 0) -> torch.Tensor:
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (x / x.norm(dim=1, keepdim=True)).float()


def assert_jl(x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> None:
    """y (N, K) = x P / sqrt(K) * scale: norms and inner products preserved within 6 sd."""
    y = y.double() / scale
    sd = math.sqrt(2 / K)
    norms = y.pow(2).sum(dim=1)
    assert (norms - 1).abs().max() < SIGMAS * sd, f"squared norms off by {(norms - 1).abs().max():.3f}"
    gram, exact = y @ y.T, x.double() @ x.double().T
    off = ~torch.eye(N, dtype=torch.bool)
    assert (gram - exact)[off].abs().max() < SIGMAS * sd


@pytest.mark.skipif(dattri is None, reason="dattri is not installed (pip install dattri==0.3.0)")
@pytest.mark.parametrize("proj_type", ["normal", "rademacher"])
def test_dattri_as_make_random_projector_builds_it(proj_type):
    from dattri.func.projection import ProjectionType

    from fastjl.integrations.dattri import FastJLProjector

    x = unit_rows()
    kind = ProjectionType(proj_type)
    # dattri 0.3.0 make_random_projector: BasicProjector(feature_dim=, proj_dim=, seed=,
    # proj_type=, dtype=, device=) on a CPU; CudaProjector(..., dtype=, grass_multiplier=) on a GPU.
    basic = FastJLProjector(
        feature_dim=D, proj_dim=K, seed=7, proj_type=kind, dtype=torch.float32, device=torch.device("cpu")
    )
    cuda_style = FastJLProjector(
        feature_dim=D, proj_dim=K, seed=7, proj_type=kind, device=torch.device("cpu"), dtype=torch.float32,
        grass_multiplier=4,
    )  # fmt: skip
    # BasicProjector's full positional form: block_size, dtype, ensemble_id
    positional = FastJLProjector(D, K, 7, kind, torch.device("cpu"), 100, torch.float64, 0)
    y = basic.project(x, ensemble_id=0)
    assert y.shape == (N, K) and y.dtype == torch.float32
    assert torch.equal(y, cuda_style.project(x, 0)) and torch.equal(y, basic.project(x, 0))
    assert positional.project(x, 0).dtype == torch.float64
    torch.testing.assert_close(positional.project(x, 0).float(), y)
    assert not torch.allclose(basic.project(x, 1), y, atol=1e-3)  # ensembles differ
    assert_jl(x, y)  # dattri's scale: entries / sqrt(K)


@pytest.mark.skipif(dattri is None, reason="dattri is not installed (pip install dattri==0.3.0)")
@pytest.mark.parametrize("proj_type", ["identity", "random_mask"])
def test_dattri_handed_back_types_are_dattris_own(proj_type):
    from dattri.func.projection import random_project as dattris

    from fastjl.integrations.dattri import FastJLProjector, random_project

    x = unit_rows()
    # as dattri's TRAK/TracIn call it: random_project(feature, batch, proj_dim, max_batch, seed, type, device=)
    ours = random_project(x, N, 64, 32, 3, proj_type, device="cpu")
    theirs = dattris(x, N, 64, 32, 3, proj_type, device="cpu")
    assert torch.equal(ours(x, ensemble_id=1), theirs(x, ensemble_id=1))
    projector = FastJLProjector(D, 64, 3, proj_type, "cpu", dtype=torch.float32)
    assert torch.equal(projector.project(x, 1), theirs(x, ensemble_id=1))


@pytest.mark.skipif(trak is None, reason="traker is not installed (pip install traker==0.3.2)")
@pytest.mark.parametrize("proj_type", ["normal", "rademacher"])
def test_traker_as_trakers_init_projector_builds_it(proj_type):
    from trak.projectors import ProjectionType

    from fastjl.integrations.trak import FastJLProjector

    x = unit_rows(1)
    kind = ProjectionType(proj_type)
    # traker 0.3.2 TRAKer.init_projector: projector(grad_dim=, proj_dim=, seed=, proj_type=,
    # max_batch_size=, dtype=, device=)
    as_traker = FastJLProjector(
        grad_dim=D, proj_dim=K, seed=5, proj_type=kind, max_batch_size=32, dtype=torch.float16, device="cpu"
    )
    # BasicProjector's positional form (block_size, dtype, model_id); CudaProjector's (max_batch_size)
    basic = FastJLProjector(D, K, 5, kind, "cpu", None, block_size=100, dtype=torch.float32, model_id=0)
    cuda = FastJLProjector(D, K, 5, kind, "cpu", 16)
    y = basic.project(x, 0)
    assert y.shape == (N, K) and y.dtype == torch.float32 and torch.equal(y, cuda.project(x, 0))
    half = as_traker.project(x, 0)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), y, rtol=2e-3, atol=2e-3 * y.abs().max().item())
    assert not torch.allclose(basic.project(x, 1), y)
    assert_jl(x, y, scale=math.sqrt(K))  # traker's entries are unscaled
    with pytest.warns(UserWarning, match="ignores"):
        FastJLProjector(D, K, 5, kind, "cpu", 32, "extra", unknown=1)


@pytest.mark.skipif(bergson is None, reason="bergson is not installed (pip install bergson==2.5.1)")
@pytest.mark.parametrize("projection_type", ["normal", "rademacher"])
def test_bergson_global_projection_as_bergson_calls_it(projection_type):
    from bergson.collector.collector import HookCollectorBase

    from fastjl.integrations.bergson import project_global

    x = unit_rows(2)
    # bergson 2.5.1 accumulate_global_projection: project_global(projection_identifier(name,
    # "single", seed), P, projection_dim, projection_type, projection_scale)
    identifier = HookCollectorBase.projection_identifier("layers.0.mlp", "single", None)
    y = project_global(identifier, x, K, projection_type, "jl")
    assert y.shape == (N, K) and y.dtype == torch.float32
    assert torch.equal(y, project_global(identifier, x, K, projection_type, "jl"))
    other = HookCollectorBase.projection_identifier("layers.1.mlp", "single", None)
    assert not torch.allclose(project_global(other, x, K, projection_type, "jl"), y, atol=1e-3)
    assert project_global(identifier, x.bfloat16(), K, projection_type, "jl").dtype == torch.bfloat16
    assert_jl(x, y)
