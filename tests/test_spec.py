"""Spec v1: Philox known answers, golden entries, and the contract's invariances."""

import pytest
import torch

import fastjl
from fastjl.spec import matrix_block, philox4x32_10

from .philox_oracle import entry, philox

# Random123 kat_vectors, philox4x32-10: (counter, key) -> output.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, expected):
    assert tuple(int(w) for w in philox4x32_10(counter, key)) == expected
    assert tuple(philox(counter, key)) == expected  # the oracle is right too


def test_philox_broadcasts_like_scalar_calls():
    c0 = torch.tensor([0, 1, 0xFFFFFFFF, 12345])[:, None]
    c2 = torch.tensor([0, 7, 0x80000000])[None, :]
    words = philox4x32_10((c0, 3, c2, 1), (99, 0xFFFFFFFF))
    for a in range(4):
        for b in range(3):
            expected = philox((int(c0[a, 0]), 3, int(c2[0, b]), 1), (99, 0xFFFFFFFF))
            assert [int(w[a, b]) for w in words] == expected


ROWS = [2**40, 2**40 + 1, 2**48 - 1]
COLS = [0, 1, 127, 128, 1000]
# Pinned when spec v1 was fixed. A change here is a breaking change of the contract.
GOLDEN = {
    (0, "rademacher"): [[1, 1, 1, -1, -1], [-1, 1, 1, -1, -1], [1, -1, -1, -1, -1]],
    (12345, "rademacher"): [[1, 1, -1, -1, -1], [1, -1, 1, -1, 1], [1, 1, 1, 1, 1]],
    (2**64 - 1, "rademacher"): [[-1, 1, 1, -1, 1], [1, -1, 1, -1, -1], [-1, 1, 1, -1, -1]],
    (0, "gaussian"): [
        [1.1066610289130665, -0.0548873442501864, 0.8015461708698772, -0.16663150870585974, -0.9143922096992457],
        [0.21230379183792242, 0.4246513633736129, 0.8567344560688687, -0.2857958692483384, 0.6419372781210406],
        [-1.5054334448863562, -0.18571814426181565, 1.044044809812989, -0.9844045772252081, -0.48716475824725824],
    ],
    (12345, "gaussian"): [
        [-1.7385943365427667, -0.8641430906895966, 0.5749545725685201, -0.785888261799214, -0.033829545903124945],
        [-1.3095579862513347, -0.4208366022448151, -1.3804227022241153, 0.9068184192212322, 0.6636016201661029],
        [-0.7979743208433454, 0.7972854770852954, -0.28044505138486525, -0.38361555755552545, 0.6918184656448146],
    ],
    (2**64 - 1, "gaussian"): [
        [-0.9218893375623526, -0.7691219348148994, 0.9282755702548495, 1.2020124219400539, -0.6370362443731844],
        [1.270211383136631, -0.1603841502659806, -0.6318430342709435, 0.21160423070525025, -1.265794979429432],
        [-0.7178368170417218, -0.5336673703855944, -1.0484208011010216, 0.7150131444533538, 0.16462214164211145],
    ],
}


@pytest.mark.parametrize("seed,kind", list(GOLDEN))
def test_golden_entries(seed, kind):
    block = matrix_block(seed, kind, ROWS, COLS)
    torch.testing.assert_close(block, torch.tensor(GOLDEN[seed, kind], dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_matrix_block_matches_scalar_oracle(kind):
    seed = 2**33 + 17
    rows = [0, 5, 2**32 - 1, 2**32, 2**40 + 3, 2**48 - 2]
    cols = [0, 3, 4, 31, 32, 127, 128, 129, 511, 4097]
    block = matrix_block(seed, kind, rows, cols)
    expected = torch.tensor([[entry(seed, kind, i, j) for j in cols] for i in rows], dtype=torch.float64)
    torch.testing.assert_close(block, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("kind", fastjl.KINDS)
def test_prefix_and_subblock_consistency(kind):
    big = matrix_block(5, kind, range(100, 140), range(300))
    assert torch.equal(matrix_block(5, kind, range(100, 140), range(17)), big[:, :17])
    assert torch.equal(matrix_block(5, kind, range(120, 125), range(130, 260)), big[20:25, 130:260])
    # Arbitrary index order is a gather of the same entries.
    rows, cols = torch.tensor([139, 100, 117]), torch.tensor([299, 0, 128, 5])
    assert torch.equal(matrix_block(5, kind, rows, cols), big[rows - 100][:, cols])


def test_float32_block_is_float64_rounded():
    for kind in fastjl.KINDS:
        b64 = matrix_block(9, kind, range(50), range(64))
        b32 = matrix_block(9, kind, range(50), range(64), dtype=torch.float32)
        assert b32.dtype == torch.float32
        torch.testing.assert_close(b32.double(), b64, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1, 2**32, 2**63, 2**64 - 1])
def test_seed_range_accepted_and_distinct(seed):
    block = matrix_block(seed, "rademacher", range(4), range(256))
    other = matrix_block(seed ^ 1, "rademacher", range(4), range(256))
    assert not torch.equal(block, other)


def test_entry_statistics():
    rad = matrix_block(3, "rademacher", range(4000), range(256))
    gauss = matrix_block(3, "gaussian", range(4000), range(256))
    n = rad.numel()  # ~1M entries: the means' standard error is 1e-3
    assert set(rad.unique().tolist()) == {-1.0, 1.0}
    assert abs(rad.mean().item()) < 5e-3
    assert abs(gauss.mean().item()) < 5e-3
    assert abs(gauss.var().item() - 1) < 5 * (2 / n) ** 0.5
    assert abs((gauss**4).mean().item() - 3) < 0.05  # kurtosis of a normal
    # Neighbouring columns (which share a Philox call) are uncorrelated.
    for b in (rad, gauss):
        corr = (b[:, 0::2] * b[:, 1::2]).mean().item()
        assert abs(corr) < 5e-3


@pytest.mark.parametrize(
    "kwargs,error",
    [
        (dict(seed=-1), ValueError),
        (dict(seed=2**64), ValueError),
        (dict(seed=1.5), TypeError),
        (dict(kind="sparse"), ValueError),
        (dict(rows=[2**48]), ValueError),
        (dict(rows=[-1]), ValueError),
        (dict(cols=[-3]), ValueError),
        (dict(dtype=torch.float16), TypeError),
    ],
)
def test_matrix_block_bad_arguments(kwargs, error):
    args = dict(seed=0, kind="rademacher", rows=range(2), cols=range(2))
    args.update(kwargs)
    with pytest.raises(error):
        matrix_block(**args)
