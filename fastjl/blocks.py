"""Fast generation of contiguous blocks of ``P`` with torch tensor ops (any device).

This is the torch backend's generator.  It draws exactly the spec's bits
(:mod:`fastjl.spec`) but, unlike :func:`fastjl.spec.matrix_block`, calls Philox once per
counter (once per 128 rademacher columns or 4 gaussian columns) instead of once per entry,
and expands rademacher words into signs with a byte lookup table.
Tested against ``matrix_block`` in ``tests/test_blocks.py``.
"""

from __future__ import annotations

import torch

from .spec import (
    COLUMNS_PER_COUNTER,
    COUNTER_DOMAIN,
    MASK32,
    gaussian_lanes,
    philox4x32_10,
    seed_to_key,
)

_SIGN_TABLES: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _sign_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``table[v, k] = 1 - 2 * bit k of v``: the 8 signs encoded by one byte, LSB first."""
    key = (device, dtype)
    if key not in _SIGN_TABLES:
        v = torch.arange(256, dtype=torch.int64)[:, None]
        bits = (v >> torch.arange(8, dtype=torch.int64)[None, :]) & 1
        _SIGN_TABLES[key] = (1 - 2 * bits).to(device=device, dtype=dtype)
    return _SIGN_TABLES[key]


def _philox_words(seed, kind, rows: torch.Tensor, group0, ngroups, device) -> torch.Tensor:
    """Philox outputs for the rows ``rows`` (1-D int64) and counter groups ``group0..``:
    (len(rows), ngroups, 4)."""
    rows = rows[:, None]
    groups = torch.arange(group0, group0 + ngroups, dtype=torch.int64, device=device)[None, :]
    counter = (rows & MASK32, rows >> 32, groups, COUNTER_DOMAIN[kind])
    return torch.stack(philox4x32_10(counter, seed_to_key(seed)), dim=-1)


# Rows of a block are generated in slices of about this many Philox calls, so that the
# int64 temporaries of the ~130 tensor ops per call stay in cache (measured ~2x faster on
# CPU than one pass over a 16 MiB block).  On a GPU each op is a kernel launch, so slices
# there are as large as the block allows.
_PHILOX_CALLS_PER_SLICE = 1 << 15
_PHILOX_CALLS_PER_SLICE_GPU = 1 << 22


def generate_block(
    seed: int,
    kind: str,
    row0: int,
    nrows: int,
    col0: int,
    ncols: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    out: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """``P[row0:row0+nrows, col0:col0+ncols]`` as a contiguous ``(nrows, ncols)`` tensor, or with
    ``rows`` (a 1-D int64 tensor of ``nrows`` global row indices, any order, on ``device``) the
    rows ``P[row0 + rows, col0:col0+ncols]``.

    Arguments are assumed validated (see :mod:`fastjl.validation`).  ``dtype`` is float32 or
    float64; gaussian entries are computed in that precision.  ``out``: an optional
    ``(nrows, ncols)`` tensor of ``dtype`` to write into, so callers generating block after
    block reuse one buffer (fresh large CPU allocations are mmap'd and page-faulted anew each
    time, which cost as much as the generation itself).
    """
    device = torch.device(device)
    per = COLUMNS_PER_COUNTER[kind]
    group0 = col0 // per
    ngroups = (col0 + ncols - 1) // per - group0 + 1
    first = col0 - group0 * per
    if out is None:
        out = torch.empty((nrows, ncols), dtype=dtype, device=device)
    per_slice = _PHILOX_CALLS_PER_SLICE if device.type == "cpu" else _PHILOX_CALLS_PER_SLICE_GPU
    step = max(1, per_slice // ngroups)
    for r in range(0, nrows, step):
        h = min(step, nrows - r)
        if rows is None:
            which = torch.arange(row0 + r, row0 + r + h, dtype=torch.int64, device=device)
        else:
            which = rows[r : r + h] + row0
        words = _philox_words(seed, kind, which, group0, ngroups, device)
        if first == 0 and ncols == ngroups * per:  # aligned: expand straight into out
            _expand(words, kind, dtype, device, into=out[r : r + h])
        else:
            wide = _expand(words, kind, dtype, device).reshape(h, ngroups * per)
            out[r : r + h] = wide[:, first : first + ncols]
    return out


def _expand(words: torch.Tensor, kind: str, dtype: torch.dtype, device, into=None) -> torch.Tensor:
    """Philox words ``(h, G, 4)`` to matrix entries ``(h, G, columns per counter)``, written
    into the contiguous ``into`` (any shape with that many elements) when given."""
    if kind == "rademacher":
        # Two's-complement int32 whose little-endian bytes are, in order, the bits of
        # columns 0-7, 8-15, ... of the 128-column group (word t holds columns 32t..32t+31).
        as_int32 = (words - ((words >> 31) << 32)).to(torch.int32)
        byte_values = as_int32.view(torch.uint8).reshape(-1).to(torch.int32)
        table = _sign_table(device, dtype)
        if into is None:
            return table.index_select(0, byte_values)
        return torch.index_select(table, 0, byte_values, out=into.view(-1, 8))
    lanes = gaussian_lanes(words, dtype)
    if into is None:
        return torch.stack(lanes, dim=-1)
    return torch.stack(lanes, dim=-1, out=into.view(*words.shape[:2], 4))
