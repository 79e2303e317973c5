"""Fast generation of the sparse kinds' nonzeros for a contiguous block of rows (any device).

Draws exactly the bits of :mod:`fastjl.sparse_spec` but calls Philox once per counter (once per
4 nonzeros, or per 4 mask rows) instead of once per nonzero.  Tested against
``sparse_spec.sjlt_nonzeros`` and ``sparse_spec.grass_keep`` in ``tests/test_sparse_spec.py``.
Arguments are assumed validated.
"""

from __future__ import annotations

import torch

from .sparse_spec import GRASS_MASK_DOMAIN, SJLT_DOMAIN, WORDS_PER_COUNTER, segment_starts
from .spec import MASK32, philox4x32_10, seed_to_key


def _words(seed: int, first: int, count: int, c2: int, domain: int, device) -> torch.Tensor:
    """Words ``first .. first+count-1`` of the stream ``(g mod 2^32, g >> 32, c2, domain)``
    (word n is lane ``n mod 4`` of call ``g = n // 4``), as a 1-D int64 tensor."""
    g0 = first // WORDS_PER_COUNTER
    g1 = (first + count - 1) // WORDS_PER_COUNTER + 1
    g = torch.arange(g0, g1, dtype=torch.int64, device=device)
    words = torch.stack(philox4x32_10((g & MASK32, g >> 32, c2, domain), seed_to_key(seed)), dim=-1)
    skip = first - g0 * WORDS_PER_COUNTER
    return words.reshape(-1)[skip : skip + count]


def sjlt_block(
    seed: int, row0: int, nrows: int, proj_dim: int, sparsity: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(columns, negative)`` of rows ``row0 .. row0+nrows-1``: ``(nrows, s)`` int64 columns and
    ``(nrows, s)`` bool, True where the entry is -1."""
    w = _words(seed, row0 * sparsity, nrows * sparsity, sparsity, SJLT_DOMAIN, device).view(nrows, sparsity)
    lo = segment_starts(proj_dim, sparsity)
    if sparsity == 1:
        columns = ((w >> 1) * proj_dim) >> 31
    else:
        starts = torch.tensor(lo, dtype=torch.int64, device=device)
        columns = starts[:-1] + (((w >> 1) * (starts[1:] - starts[:-1])) >> 31)
    return columns, (w & 1).bool()


def grass_keep_block(seed: int, row0: int, nrows: int, threshold: int, device) -> torch.Tensor:
    """GraSS's mask for rows ``row0 .. row0+nrows-1`` (bool, True = kept); ``threshold`` is
    ``sparse_spec.mask_threshold(mask_rate)``."""
    return _words(seed, row0, nrows, 0, GRASS_MASK_DOMAIN, device) < threshold
