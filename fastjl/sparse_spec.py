"""Projection contract, spec v1, sparse kinds: ``sjlt`` and ``grass`` as pure functions.

Written for clarity (one nonzero at a time, broadcast over tensors); the torch backend's fast
generator (:mod:`fastjl.sparse_blocks`) and every other backend are tested against it.
Random bits are spec v1's Philox4x32-10 and key (:mod:`fastjl.spec`).

``sjlt`` with ``s`` nonzeros per row (``sparsity``, s in {1, 2, 4, 8}) and ``K`` output columns
(``s <= K <= 2^31``):

* Nonzero ``t`` (``0 <= t < s``) of row ``i`` takes the 32-bit word ``w = r[n mod 4]`` of the
  Philox call with counter ``(g mod 2^32, g >> 32, s, 2)``, where ``n = i s + t`` and
  ``g = n // 4`` (``c3 = 2`` is the sjlt counter domain; ``c2 = s`` gives every sparsity its own
  stream).  One call serves 4 nonzeros: 4 rows at s = 1, one row at s = 4, half a row at s = 8.
* Its sign is ``1 - 2 (w & 1)`` and its column lies in segment ``t`` of the ``K`` columns,
  ``[lo_t, lo_{t+1})`` with ``lo_t = floor(t K / s)``: column ``lo_t + (((w >> 1) m_t) >> 31)``,
  ``m_t = lo_{t+1} - lo_t`` (a 31-bit multiply-shift: no division, exact in int64, bias below
  ``m_t / 2^31``).  Segments are disjoint, so the ``s`` columns of a row are distinct
  (Kane and Nelson's block construction).
* ``P[i, j]`` is that sign where ``j`` is one of row i's columns, else 0: entries are ±1,
  unscaled like the dense kinds; ``scale="jl"`` divides by ``sqrt(s)`` (entries ``±1/sqrt(s)``,
  the convention of the ``sjlt`` package and dattri), so that ``E||xP||^2 = ||x||^2``.

``grass`` (GraSS: a random coordinate mask, then SJLT) with keep rate ``mask_rate`` in (0, 1]:

* Row ``i`` is kept iff ``r[i mod 4] < T`` for the Philox call with counter
  ``(g mod 2^32, g >> 32, 0, 4)``, ``g = i // 4``, and ``T = floor(mask_rate 2^32)``
  (``T >= 1``).  ``c3 = 4`` is the mask's counter domain: not 0, 1, 2 (rademacher, gaussian,
  sjlt) and not 3 mod 4 (kronecker factors), so it shares no stream with them.
* ``P_grass[i, :] = keep(i) P_sjlt[i, :]``: kept rows are the sjlt rows of the same seed,
  ``s`` and ``K``; masked rows are zero.  The mask is a selection, not rescaled (GraSS and
  dattri do not rescale either), so ``E||xP||^2 = mask_rate ||x||^2`` with ``scale="jl"``.

What holds: each entry is a pure function of ``(seed, i, K, s)`` (and ``mask_rate`` for
grass), independent of device, backend, batch, dtype and chunking; offsets work as for the
dense kinds (rows ``offset .. offset+D-1``).  A smaller mask_rate keeps a subset of the rows a
larger one keeps (the same word is compared with a smaller threshold).
What does not hold: a smaller K is **not** a prefix of a larger K's columns (the segments, and
with them every column, move with K), and matrices of different ``s`` are unrelated.

Changing anything here is a breaking change; ``tests/test_sparse_spec.py`` pins golden values.
"""

from __future__ import annotations

import math

import torch

from .spec import COUNTER_DOMAIN, MASK32, MAX_ROWS, _as_index, check_int, check_seed, philox4x32_10, seed_to_key

SPARSE_KINDS = ("sjlt", "grass")
SPARSITIES = (1, 2, 4, 8)
SJLT_DOMAIN = COUNTER_DOMAIN["sjlt"]  # 2
GRASS_MASK_DOMAIN = COUNTER_DOMAIN["grass_mask"]  # 4
WORDS_PER_COUNTER = 4
# The column rule multiplies a 31-bit word by a segment length <= K: K <= 2^31 keeps the
# product below 2^62 (exact in int64) and every column reachable.
MAX_SPARSE_PROJ_DIM = 1 << 31
MASK_THRESHOLD_BITS = 32


def check_sparsity(sparsity) -> int:
    value = check_int(sparsity, "sparsity", low=1, high=max(SPARSITIES))
    if value not in SPARSITIES:
        raise ValueError(f"sparsity must be one of {SPARSITIES} (nonzeros per input row), got {value}")
    return value


def check_sparse_proj_dim(proj_dim, sparsity: int) -> int:
    """K for the sparse kinds: at least one column per nonzero, at most 2^31."""
    proj_dim = check_int(proj_dim, "proj_dim", low=1, high=MAX_SPARSE_PROJ_DIM)
    if proj_dim < sparsity:
        raise ValueError(
            f"proj_dim must be at least sparsity for kind='sjlt'/'grass' (each nonzero has its own "
            f"segment of columns), got proj_dim={proj_dim}, sparsity={sparsity}"
        )
    return proj_dim


def mask_threshold(mask_rate) -> int:
    """``T = floor(mask_rate 2^32)`` for a keep rate in (0, 1] (exact: a float times 2^32)."""
    if isinstance(mask_rate, bool) or not isinstance(mask_rate, (int, float)):
        raise TypeError(f"mask_rate must be a number in (0, 1], got {type(mask_rate).__name__} ({mask_rate!r})")
    rate = float(mask_rate)
    if not (math.isfinite(rate) and 0.0 < rate <= 1.0):
        raise ValueError(f"mask_rate must lie in (0, 1] (the fraction of rows kept), got {mask_rate!r}")
    threshold = math.floor(rate * 2**MASK_THRESHOLD_BITS)
    if threshold < 1:
        raise ValueError(f"mask_rate must be at least 2^-32 (no row would be kept), got {mask_rate!r}")
    return threshold


def segment_starts(proj_dim: int, sparsity: int) -> list[int]:
    """``lo_t = floor(t K / s)`` for t = 0..s: nonzero t's columns are ``[lo_t, lo_{t+1})``."""
    return [t * proj_dim // sparsity for t in range(sparsity + 1)]


def _word(seed: int, index: torch.Tensor, c2: int, domain: int) -> torch.Tensor:
    """Word ``index mod 4`` of the Philox call ``(g mod 2^32, g >> 32, c2, domain)``, ``g = index // 4``."""
    g = index // WORDS_PER_COUNTER
    words = torch.stack(philox4x32_10((g & MASK32, g >> 32, c2, domain), seed_to_key(seed)), dim=-1)
    return torch.gather(words, -1, (index % WORDS_PER_COUNTER)[..., None])[..., 0]


def sjlt_nonzeros(seed: int, rows, proj_dim: int, sparsity: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The nonzeros of sjlt rows ``rows``: ``(columns, signs)``, each ``(len(rows), s)`` int64,
    nonzero t of each row in column t (columns increase along a row)."""
    seed = check_seed(seed)
    sparsity = check_sparsity(sparsity)
    proj_dim = check_sparse_proj_dim(proj_dim, sparsity)
    i = _as_index(rows, "rows", MAX_ROWS).to(device)[:, None]
    t = torch.arange(sparsity, dtype=torch.int64, device=i.device)[None, :]
    w = _word(seed, i * sparsity + t, sparsity, SJLT_DOMAIN)
    lo = torch.tensor(segment_starts(proj_dim, sparsity), dtype=torch.int64, device=i.device)
    length = (lo[1:] - lo[:-1])[None, :]
    columns = lo[:-1][None, :] + (((w >> 1) * length) >> 31)
    return columns, 1 - 2 * (w & 1)


def grass_keep(seed: int, rows, mask_rate, device=None) -> torch.Tensor:
    """Whether each row of ``rows`` survives GraSS's mask of keep rate ``mask_rate`` (bool)."""
    seed = check_seed(seed)
    threshold = mask_threshold(mask_rate)
    i = _as_index(rows, "rows", MAX_ROWS).to(device)
    return _word(seed, i, 0, GRASS_MASK_DOMAIN) < threshold


def sparse_matrix_block(
    seed: int,
    kind: str,
    rows,
    proj_dim: int,
    *,
    sparsity: int = 1,
    mask_rate=None,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> torch.Tensor:
    """Rows ``rows`` of the sparse kind's ``(D, K)`` matrix, dense and unscaled (entries 0, ±1):
    the reference the backends are tested against (small shapes only)."""
    if kind not in SPARSE_KINDS:
        raise ValueError(f"kind must be one of {SPARSE_KINDS}, got {kind!r}")
    if (kind == "grass") != (mask_rate is not None):
        raise ValueError("mask_rate is required for kind='grass' and only allowed there")
    columns, signs = sjlt_nonzeros(seed, rows, proj_dim, sparsity, device)
    if kind == "grass":
        signs = signs * grass_keep(seed, rows, mask_rate, device)[:, None]
    block = torch.zeros((columns.shape[0], proj_dim), dtype=dtype, device=columns.device)
    return block.scatter_(1, columns, signs.to(dtype))  # distinct columns: each set once
