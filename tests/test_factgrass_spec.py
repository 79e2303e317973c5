"""FactGraSS of spec v1 (``fastjl.factgrass_spec``): golden values, the oracle, the masks' properties."""

import pytest
import torch

from fastjl.factgrass_spec import factgrass_masks, factgrass_matrix, factor_mask, factor_mask_keys
from fastjl.sparse_spec import sparse_matrix_block
from fastjl.spec import COUNTER_DOMAIN

from .factgrass_oracle import factgrass_entries, kept

# Pinned when FactGraSS was fixed, computed with tests/factgrass_oracle.py (pure Python, from
# the spec text).  {(seed, offset, factor, dim, keep): kept coordinates}.
GOLDEN_MASKS = {
    (0, 0, "in", 20, 5): [0, 2, 3, 9, 10],
    (0, 0, "out", 20, 5): [2, 7, 12, 14, 18],
    (7, 2**40 + 3, "in", 33, 6): [16, 17, 20, 21, 25, 27],
    (2**64 - 1, 12345, "out", 9, 4): [0, 1, 3, 7],
}
# factgrass_entries(5, 2^33 + 7, d_out=4, d_in=3, K=10, k_out=2, k_in=2, s=2, bias=True):
# {(gradient row, column): sign}; rows 12.. are the bias's.
GOLDEN_MATRIX = {(0, 3): 1, (0, 7): 1, (6, 2): 1, (6, 8): -1, (12, 4): 1, (12, 6): -1, (14, 4): -1, (14, 7): 1}


@pytest.mark.parametrize("key", list(GOLDEN_MASKS))
def test_golden_masks(key):
    assert kept(*key) == GOLDEN_MASKS[key]
    assert factor_mask(*key).tolist() == GOLDEN_MASKS[key]


def _nonzeros(matrix):
    rows, cols = torch.nonzero(matrix, as_tuple=True)
    return {(int(r), int(c)): int(matrix[r, c]) for r, c in zip(rows, cols)}


def test_golden_matrix():
    args = (5, 2**33 + 7, 4, 3, 10)
    assert factgrass_entries(*args, 2, 2, 2, True) == GOLDEN_MATRIX
    assert _nonzeros(factgrass_matrix(*args, factor_masks=(2, 2), sparsity=2, bias=True)) == GOLDEN_MATRIX


@pytest.mark.parametrize(
    "seed, offset, d_out, d_in, K, masks, s, bias",
    [(0, 0, 5, 7, 16, (3, 4), 1, False), (9, 1000, 6, 5, 9, (6, 6), 4, True), (2**63, 2**47, 3, 8, 8, (1, 9), 8, True)],
)
def test_matrix_matches_oracle(seed, offset, d_out, d_in, K, masks, s, bias):
    matrix = factgrass_matrix(seed, offset, d_out, d_in, K, factor_masks=masks, sparsity=s, bias=bias)
    assert matrix.shape == (d_out * d_in + (d_out if bias else 0), K)
    assert _nonzeros(matrix) == factgrass_entries(seed, offset, d_out, d_in, K, *masks, s, bias)


def test_kept_rows_are_the_sjlt_rows_at_compact_indices():
    seed, offset, K = 3, 40, 12
    matrix = factgrass_matrix(seed, offset, 5, 6, K, factor_masks=(2, 3), sparsity=2)
    kept_out, kept_in = factgrass_masks(seed, offset, 5, 6, (2, 3))
    sjlt = sparse_matrix_block(seed, "sjlt", range(offset, offset + 6), K, sparsity=2)
    for p, o in enumerate(kept_out.tolist()):
        for q, i in enumerate(kept_in.tolist()):
            assert torch.equal(matrix[o * 6 + i], sjlt[p * 3 + q])
    assert int((matrix != 0).any(1).sum()) == 6  # every other row is zero


def test_mask_is_a_uniform_subset():
    """Over many layers (offsets) each coordinate is kept with probability k/d, and the
    number of coordinates kept by two masks of the same layer follows the hypergeometric mean."""
    dim, keep, layers = 10, 3, 3000
    counts = torch.zeros(dim)
    for offset in range(layers):
        counts[factor_mask(1, offset * 1000, "in", dim, keep)] += 1
    p = keep / dim
    sigma = (layers * p * (1 - p)) ** 0.5
    assert ((counts - layers * p).abs() < 5 * sigma).all(), counts


def test_smaller_mask_is_a_subset_and_factors_differ():
    small = set(factor_mask(4, 77, "in", 50, 10).tolist())
    large = set(factor_mask(4, 77, "in", 50, 30).tolist())
    assert small < large
    assert factor_mask(4, 77, "in", 50, 10).tolist() != factor_mask(4, 77, "out", 50, 10).tolist()
    assert factor_mask(4, 77, "in", 50, 10).tolist() != factor_mask(4, 78, "in", 50, 10).tolist()
    assert factor_mask(4, 77, "in", 50, 10).tolist() != factor_mask(5, 77, "in", 50, 10).tolist()


def test_keys_are_their_own_stream_and_ignore_the_factor_size():
    assert COUNTER_DOMAIN["factgrass_mask"] not in {v for k, v in COUNTER_DOMAIN.items() if k != "factgrass_mask"}
    assert COUNTER_DOMAIN["factgrass_mask"] % 4 != 3  # kronecker factors use c3 = 3 + 4m
    keys = factor_mask_keys(2, 2**45 + 1, "out", 64)
    assert int(keys.min()) >= 0 and int(keys.max()) > 2**62  # non-negative, the top bit used
    assert torch.equal(keys, factor_mask_keys(2, 2**45 + 1, "out", 128)[:64])  # a key ignores the size


def test_bad_masks_are_refused():
    with pytest.raises(ValueError, match="k_out"):
        factgrass_masks(0, 0, 4, 4, (5, 2))
    with pytest.raises(ValueError, match="k_in"):
        factgrass_masks(0, 0, 4, 4, (2, 5))
    factgrass_masks(0, 0, 4, 4, (2, 5), bias=True)  # the bias column is a fifth coordinate
    with pytest.raises(ValueError, match="k_in"):
        factgrass_masks(0, 0, 4, 4, (2, 0))
    with pytest.raises(TypeError, match="pair"):
        factgrass_masks(0, 0, 4, 4, 3)
    with pytest.raises(TypeError, match="k_out"):
        factgrass_masks(0, 0, 4, 4, (2.0, 2))
    with pytest.raises(ValueError, match="factor"):
        factor_mask_keys(0, 0, "bias", 4)
