"""dattri's ``proj_type="grass"`` / ``"grass_N"`` served by fastjl's ``kind="grass"`` under
dattri's conventions: about ``min(N·K, D)`` coordinates kept, one unscaled ±1 per kept
coordinate, ensemble e seeded ``seed + 10^5 e``; on a CPU too, where dattri 0.3.0 refuses it."""

from __future__ import annotations

import math

import pytest
import torch

import fastjl
from fastjl.sparse_spec import sparse_matrix_block

from .test_integration_dattri import (
    assert_scores_close,
    correct_probability,
    grads_and_probability,
    make_checkpoints,
    make_loaders,
    make_model,
    make_task,
    needs_dattri,
)

pytestmark = needs_dattri


@pytest.mark.parametrize("proj_type, multiplier", [("grass", 4), ("grass_8", 8), ("grass_1", 1)])
def test_grass_is_fastjls_grass_with_dattris_keep_count(proj_type, multiplier):
    import dattri.algorithm.trak as dattri_trak
    from dattri.func.projection import random_project as dattris

    from fastjl.integrations.dattri import FastJLProjector, random_project, use_fastjl

    dim, proj_dim = 3001, 64
    x = torch.randn(5, dim, generator=torch.Generator().manual_seed(4))
    rate = multiplier * proj_dim / dim
    expected = {e: fastjl.project(x, proj_dim, kind="grass", mask_rate=rate, seed=7 + 100_000 * e) for e in (0, 3)}
    projector = FastJLProjector(dim, proj_dim, 7, proj_type, "cpu")
    assert projector.proj_type.value == "grass"
    assert torch.equal(projector.project(x, ensemble_id=3), expected[3])
    assert torch.equal(random_project(x, 5, proj_dim, 32, proj_seed=7, proj_type=proj_type)(x, 0), expected[0])
    with use_fastjl():
        ours = dattri_trak.random_project(x, 5, proj_dim, 32, proj_seed=7, proj_type=proj_type, device="cpu")
    assert torch.equal(ours(x, 3), expected[3])
    with pytest.raises(ValueError, match="Invalid proj_type 'grass' for cpu"):  # dattri 0.3.0's own
        dattris(x, 5, proj_dim, 32, proj_seed=7, proj_type=proj_type, device="cpu")

    # dattri's matrix: m = N·K kept rows, each with one ±1 (no scaling), the rest zero.
    matrix = projector.project(torch.eye(dim), ensemble_id=0)
    kept = matrix.abs().sum(1)
    assert set(kept.unique().tolist()) <= {0.0, 1.0} and set(matrix.unique().tolist()) <= {-1.0, 0.0, 1.0}
    m = multiplier * proj_dim
    assert abs(kept.sum().item() - m) < 6 * math.sqrt(m * (1 - m / dim))  # Binomial(D, m/D) around m


def test_grass_keeping_every_coordinate_is_sjlt():
    """dattri caps the kept count at D (N·K > D): fastjl's keep rate is then 1, i.e. plain sjlt."""
    from fastjl.integrations.dattri import FastJLProjector

    x = torch.randn(3, 200, generator=torch.Generator().manual_seed(5))
    got = FastJLProjector(200, 64, 2, "grass_4", "cpu").project(x)
    assert torch.equal(got, fastjl.project(x, 64, kind="sjlt", seed=2))


@pytest.mark.parametrize("multiplier, error", [(0, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_grass_multiplier_is_named(multiplier, error):
    from fastjl.integrations.dattri import FastJLProjector

    with pytest.raises(error, match="grass_multiplier"):
        FastJLProjector(100, 8, proj_type="grass", grass_multiplier=multiplier)


def test_dattri_trak_with_grass_matches_float64_reference(monkeypatch):
    """dattri's TRAK (cache -> attribute) with proj_type="grass" on a CPU, against TRAK's
    formulas in float64 with the spec's grass matrix (keep rate min(4K, D)/D)."""
    import dattri.algorithm.trak as dattri_trak

    from fastjl.integrations.dattri import TRAKAttributor

    monkeypatch.setattr(dattri_trak, "DEFAULT_PROJECTOR_KWARGS", dict(dattri_trak.DEFAULT_PROJECTOR_KWARGS))
    proj_dim, seed = 12, 3
    model = make_model()
    checkpoints = make_checkpoints(model)
    train, test = make_loaders()
    attributor = TRAKAttributor(
        task=make_task(model, checkpoints),
        correct_probability_func=lambda p, d: correct_probability(model, p, d),
        device="cpu",
        projector_kwargs={"proj_dim": proj_dim, "proj_seed": seed, "proj_type": "grass"},
        regularization=1e-3,
    )
    attributor.cache(train)
    got = attributor.attribute(test)

    scores, q = 0.0, 0.0
    for m, checkpoint in enumerate(checkpoints):
        g_train, p_train = grads_and_probability(checkpoint, train)
        g_test, _ = grads_and_probability(checkpoint, test)
        dim = g_train.shape[1]
        rate = min(4 * proj_dim, dim) / dim
        matrix = sparse_matrix_block(seed + 100_000 * m, "grass", range(dim), proj_dim, mask_rate=rate)
        phi, phi_test = g_train @ matrix / math.sqrt(dim), g_test @ matrix / math.sqrt(dim)
        kernel = phi.T @ phi + 1e-3 * torch.eye(proj_dim, dtype=torch.float64)
        scores = scores + phi_test @ torch.linalg.solve(kernel, phi.T)
        q = q + (1 - p_train)
    reference = ((scores / len(checkpoints)) * (q / len(checkpoints))[None, :]).T
    assert_scores_close(got, reference)
