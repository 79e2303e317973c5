"""Sparse kinds (sjlt, grass) of spec v1: golden values, the oracle, the fast generator, invariances."""

import pytest
import torch

from fastjl.sparse_blocks import grass_keep_block, sjlt_block
from fastjl.sparse_spec import (
    check_sparsity,
    grass_keep,
    mask_threshold,
    sjlt_nonzeros,
    sparse_matrix_block,
)

from .sparse_oracle import grass_kept, sjlt_row

ROWS = [0, 2**40 + 1, 2**48 - 1]
# Pinned when the sparse kinds were fixed, computed with tests/sparse_oracle.py (pure Python,
# written from the spec text).  {(seed, K, s): per row of ROWS, sorted (column, sign) pairs}.
GOLDEN = {
    (0, 4096, 1): [[(2966, 1)], [(3749, 1)], [(2507, -1)]],
    (0, 1000, 2): [[(488, 1), (500, 1)], [(312, -1), (875, 1)], [(301, -1), (760, 1)]],
    (12345, 7, 4): [
        [(0, 1), (1, -1), (4, 1), (6, -1)],
        [(0, 1), (1, 1), (3, 1), (5, 1)],
        [(0, -1), (2, 1), (4, -1), (5, 1)],
    ],
    (2**64 - 1, 130, 8): [
        [(1, -1), (22, -1), (43, 1), (51, 1), (72, 1), (87, 1), (106, -1), (123, -1)],
        [(0, 1), (27, -1), (34, 1), (54, -1), (70, -1), (82, -1), (100, 1), (128, 1)],
        [(9, 1), (31, 1), (47, -1), (52, 1), (65, 1), (83, -1), (112, -1), (118, 1)],
    ],
}
# grass_kept(seed, i, 0.25) for i = 2^40 .. 2^40 + 23
GOLDEN_MASK = {
    0: [1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0],
    2**64 - 1: [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0],
}


def _pairs(columns, signs):
    return [sorted(zip(c.tolist(), s.tolist())) for c, s in zip(columns, signs)]


@pytest.mark.parametrize("key", list(GOLDEN))
def test_golden_sjlt_rows(key):
    seed, proj_dim, s = key
    assert [sorted(sjlt_row(seed, i, proj_dim, s).items()) for i in ROWS] == GOLDEN[key]
    assert _pairs(*sjlt_nonzeros(seed, ROWS, proj_dim, s)) == GOLDEN[key]


@pytest.mark.parametrize("seed", list(GOLDEN_MASK))
def test_golden_grass_mask(seed):
    rows = range(2**40, 2**40 + 24)
    assert [int(grass_kept(seed, i, 0.25)) for i in rows] == GOLDEN_MASK[seed]
    assert grass_keep(seed, rows, 0.25).int().tolist() == GOLDEN_MASK[seed]


@pytest.mark.parametrize("s", [1, 2, 4, 8])
def test_nonzeros_match_oracle_and_are_distinct_columns(s):
    rows = list(range(37)) + [2**33 + 5, 2**47 + 3]
    proj_dim = 97
    columns, signs = sjlt_nonzeros(7, rows, proj_dim, s)
    for i, c, g in zip(rows, columns.tolist(), signs.tolist()):
        assert dict(zip(c, g)) == sjlt_row(7, i, proj_dim, s)
        assert len(set(c)) == s and all(0 <= j < proj_dim for j in c)


@pytest.mark.parametrize("s", [1, 2, 4, 8])
@pytest.mark.parametrize("row0,nrows", [(0, 1), (3, 50), (2**45 - 7, 33)])
def test_fast_block_equals_spec(s, row0, nrows):
    columns, negative = sjlt_block(11, row0, nrows, 1001, s, "cpu")
    spec_columns, spec_signs = sjlt_nonzeros(11, range(row0, row0 + nrows), 1001, s)
    assert torch.equal(columns, spec_columns)
    assert torch.equal(negative, spec_signs < 0)
    keep = grass_keep_block(11, row0, nrows, mask_threshold(0.3), "cpu")
    assert torch.equal(keep, grass_keep(11, range(row0, row0 + nrows), 0.3))


def test_dense_block_layout_and_mask():
    dense = sparse_matrix_block(3, "sjlt", range(10, 60), 40, sparsity=4)
    assert ((dense != 0).sum(1) == 4).all() and set(dense.unique().tolist()) == {-1.0, 0.0, 1.0}
    grass = sparse_matrix_block(3, "grass", range(10, 60), 40, sparsity=4, mask_rate=0.5)
    kept = grass_keep(3, range(10, 60), 0.5)
    assert torch.equal(grass[kept], dense[kept]) and not grass[~kept].any()
    assert 0 < int(kept.sum()) < 50


def test_smaller_rate_keeps_a_subset():
    rows = range(5000)
    small, large = grass_keep(9, rows, 0.1), grass_keep(9, rows, 0.4)
    assert (small <= large).all() and small.sum() < large.sum()
    assert grass_keep(9, rows, 1.0).all()
    assert abs(large.float().mean().item() - 0.4) < 0.03  # 5000 Bernoulli(0.4): sd 0.007


def test_smaller_k_is_not_a_prefix():
    a = sparse_matrix_block(0, "sjlt", range(200), 64)
    b = sparse_matrix_block(0, "sjlt", range(200), 128)
    assert not torch.equal(b[:, :64], a)


def test_columns_and_signs_are_balanced():
    columns, signs = sjlt_nonzeros(5, range(40_000), 64, 2)
    counts = torch.bincount(columns.reshape(-1), minlength=64).double()
    expected = 40_000 * 2 / 64  # 1250 per column, sd ~35
    assert (counts - expected).abs().max() < 200
    assert abs(signs.double().mean().item()) < 0.02  # 80000 signs: sd 0.0035


BAD_SPARSITY = [(3, ValueError), (0, ValueError), (16, ValueError), (2.0, TypeError), (True, TypeError)]
BAD_RATE = [(0.0, ValueError), (1.5, ValueError), (float("nan"), ValueError), (1e-12, ValueError), ("0.5", TypeError)]


@pytest.mark.parametrize("bad,error", BAD_SPARSITY)
def test_bad_sparsity(bad, error):
    with pytest.raises(error, match="sparsity"):
        check_sparsity(bad)


@pytest.mark.parametrize("bad,error", BAD_RATE)
def test_bad_mask_rate(bad, error):
    with pytest.raises(error, match="mask_rate"):
        mask_threshold(bad)


def test_k_smaller_than_sparsity_is_refused():
    with pytest.raises(ValueError, match="proj_dim must be at least sparsity"):
        sjlt_nonzeros(0, [0], 3, 4)
