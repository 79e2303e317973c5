"""The torch backend's fast block generator draws exactly the spec's matrix."""

import pytest
import torch

from fastjl import blocks
from fastjl.spec import KINDS, matrix_block

CASES = [  # (row0, nrows, col0, ncols): odd sizes, unaligned columns, large rows
    (0, 1, 0, 1),
    (0, 7, 0, 129),
    (3, 33, 100, 300),
    (2**32 - 5, 10, 127, 2),
    (2**40 - 3, 19, 4093, 9),
    (2**48 - 11, 11, 0, 513),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("row0,nrows,col0,ncols", CASES)
def test_generate_block_equals_matrix_block(kind, dtype, row0, nrows, col0, ncols):
    seed = 2**64 - 7
    fast = blocks.generate_block(seed, kind, row0, nrows, col0, ncols, dtype)
    ref = matrix_block(seed, kind, range(row0, row0 + nrows), range(col0, col0 + ncols), dtype)
    assert fast.shape == (nrows, ncols) and fast.dtype == dtype and fast.is_contiguous()
    assert torch.equal(fast, ref)


@pytest.mark.parametrize("kind", KINDS)
def test_row_slicing_does_not_change_the_block(kind, monkeypatch):
    whole = blocks.generate_block(1, kind, 50, 40, 0, 260)
    monkeypatch.setattr(blocks, "_PHILOX_CALLS_PER_SLICE", 7)  # many small slices
    assert torch.equal(blocks.generate_block(1, kind, 50, 40, 0, 260), whole)


def test_mulhilo_variants_agree():
    from fastjl.spec import PHILOX_M0, PHILOX_M1, _mulhilo, _mulhilo_wrapping

    a = torch.randint(0, 2**32, (10000,), dtype=torch.int64)
    a[:4] = torch.tensor([0, 1, 2**31, 2**32 - 1])
    for m in (PHILOX_M0, PHILOX_M1):
        safe = torch.stack(_mulhilo(a, m))
        assert torch.equal(torch.stack(_mulhilo_wrapping(a, m)), safe)
        exact = [(int(v) * m) >> 32 for v in a[:50]], [(int(v) * m) & 0xFFFFFFFF for v in a[:50]]
        assert safe[0, :50].tolist() == exact[0] and safe[1, :50].tolist() == exact[1]


@pytest.mark.parametrize("kind", KINDS)
def test_generate_block_into_a_reused_buffer(kind):
    buffer = torch.full((40 * 260,), float("nan"))
    view = buffer[: 33 * 250].view(33, 250)
    result = blocks.generate_block(4, kind, 2**40, 33, 5, 250, out=view)
    assert result.data_ptr() == buffer.data_ptr()
    assert torch.equal(view, blocks.generate_block(4, kind, 2**40, 33, 5, 250))
