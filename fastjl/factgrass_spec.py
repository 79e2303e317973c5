"""Projection contract, spec v1, FactGraSS: masked Kronecker factors, then sjlt, as pure functions.

FactGraSS (Hu et al., GraSS, NeurIPS 2025) compresses a Linear layer's per-example gradient
``G_b = Σ_t g_bt a_btᵀ`` (``d_out × d_in``) in two stages: a random mask keeps ``k_out`` of the
``d_out`` output coordinates and ``k_in`` of the input coordinates (the paper's "random mask
RM_k'": a fixed number of coordinates, drawn without replacement), so only ``G' = g'ᵀ a'``
(``k_out × k_in``) is ever formed; then SJLT maps ``vec(G')`` to K.  dattri 0.3's
``FactGraSSAttributor`` draws its masks the same way (``randperm(d)[:k]``, sorted), appends a
column of ones to ``a`` for the bias and does not rescale.  Here:

* **Factor masks.**  Factor ``f`` (0: the input factor ``a``, 1: the output factor ``g``, as
  :data:`fastjl.spec.KRONECKER_FACTORS`) of the layer whose weight starts at row ``offset`` of
  the gradient vector gives coordinate ``j`` the 63-bit key ``(r0 << 31) | (r1 >> 1)`` of the
  Philox call with counter ``(j, offset mod 2^32, (offset >> 32) | (f << 16), 5)`` (``c3 = 5``:
  FactGraSS's own counter domain, see :data:`fastjl.spec.COUNTER_DOMAIN`).  The mask keeps the
  ``k`` coordinates of smallest key (ties, which need equal 63-bit keys, go to the smaller
  ``j``), listed in increasing ``j``: a uniformly random ``k``-subset, as dattri's.  With
  ``bias`` the input factor has ``d_in + 1`` coordinates, the last one (``j = d_in``) being the
  bias's column of ones (dattri's and :mod:`fastjl.kronecker`'s convention), so the bias
  gradient is masked together with the weight's columns.
* **Masked gradient.**  ``G'[p, q] = G_aug[out_p, in_q]`` where ``out``/``in`` are the kept
  coordinates and ``G_aug = [G, Σ_t g]`` (the bias as input column ``d_in``).  No rescaling:
  ``E ||vec(G')||^2 = k_out k_in / (d_out d_in') ||G_aug||^2`` (``d_in' = d_in + bias``).
* **SJLT.**  ``G'[p, q]`` is row ``offset + p k_in + q`` of spec v1's ``sjlt`` matrix (same
  seed, ``K``, sparsity ``s``; :mod:`fastjl.sparse_spec`), entries ±1, ``scale="jl"`` dividing
  by ``sqrt(s)``.  These ``k_out k_in`` rows lie inside the layer's own rows ``offset ..
  offset + d_out d_in' - 1`` (the masks are no larger than the factors), so layers at disjoint
  parameter ranges, and parameters projected by plain sjlt at their own offsets, share no
  row of P.

As a matrix on the layer's gradient in ``project_linear``'s layout (``[G.flatten(), Σ_t g]``
with ``bias``), :func:`factgrass_matrix` gives it: row ``o d_in + i`` (and ``d_out d_in + o``
for the bias) is the sjlt row above when ``o`` and ``i`` (``d_in``) are kept, else zero.

What holds: the matrix is a pure function of ``(seed, offset, d_out, d_in, bias, k_out, k_in,
K, s)``, independent of batch, device, dtype, backend and chunking.  A smaller ``k`` keeps a
subset of what a larger ``k`` keeps (the k smallest keys are among the k + 1 smallest).
What does not hold: the masks depend on the factor sizes (a coordinate's key does not, its
rank does), ``bias`` changes the input mask (``d_in + 1`` coordinates), other ``k_out``/``k_in``
renumber the sjlt rows (the SJLT parts are then unrelated), a smaller ``K`` is not a prefix
(as for sjlt), and it is not a row subset of the sjlt matrix at the same offset (the kept
entries take the first ``k_out k_in`` rows of the layer's range, not their own).

Changing anything here is a breaking change; ``tests/test_factgrass_spec.py`` pins golden values.
"""

from __future__ import annotations

import torch

from .sparse_spec import sjlt_nonzeros
from .spec import (
    COUNTER_DOMAIN,
    KRONECKER_FACTORS,
    MASK32,
    MAX_ROWS,
    check_int,
    check_seed,
    philox4x32_10,
    seed_to_key,
)

FACTGRASS_MASK_DOMAIN = COUNTER_DOMAIN["factgrass_mask"]  # 5
MAX_FACTOR_DIM = 1 << 32  # the coordinate j is counter word c0


def check_factor_masks(factor_masks, d_out: int, d_in: int) -> tuple[int, int]:
    """``(k_out, k_in)``: each at least 1 and at most its factor's size (``d_in`` counts the
    bias column when there is one)."""
    if not isinstance(factor_masks, (tuple, list)) or len(factor_masks) != 2:
        raise TypeError(
            f"factor_masks must be a pair (k_out, k_in) of coordinates kept per factor, got {factor_masks!r}"
        )
    k_out = check_int(factor_masks[0], "factor_masks[0] (k_out)", low=1, high=MAX_FACTOR_DIM)
    k_in = check_int(factor_masks[1], "factor_masks[1] (k_in)", low=1, high=MAX_FACTOR_DIM)
    if k_out > d_out:
        raise ValueError(f"factor_masks[0] (k_out) must be at most d_out = {d_out} (the output factor), got {k_out}")
    if k_in > d_in:
        raise ValueError(
            f"factor_masks[1] (k_in) must be at most the input factor's {d_in} coordinates (d_in, plus 1 "
            f"with bias), got {k_in}"
        )
    return k_out, k_in


def factor_mask_keys(seed: int, offset: int, factor: str, dim: int, device=None) -> torch.Tensor:
    """``(dim,)`` int64: the 63-bit keys of coordinates ``0 .. dim-1`` of ``factor`` (``"in"`` or
    ``"out"``) of the layer at ``offset``."""
    seed = check_seed(seed)
    offset = check_int(offset, "offset", low=0, high=MAX_ROWS - 1)
    dim = check_int(dim, "dim", low=1, high=MAX_FACTOR_DIM)
    if factor not in KRONECKER_FACTORS:
        raise ValueError(f"factor must be one of {tuple(KRONECKER_FACTORS)}, got {factor!r}")
    j = torch.arange(dim, dtype=torch.int64, device=device)
    c2 = (offset >> 32) | (KRONECKER_FACTORS[factor] << 16)
    r0, r1, _, _ = philox4x32_10((j, offset & MASK32, c2, FACTGRASS_MASK_DOMAIN), seed_to_key(seed))
    return (r0 << 31) | (r1 >> 1)


def factor_mask(seed: int, offset: int, factor: str, dim: int, keep: int, device=None) -> torch.Tensor:
    """``(keep,)`` int64, increasing: the coordinates of ``factor`` (``dim`` of them) that the
    layer at ``offset`` keeps, the ``keep`` of smallest key."""
    keep = check_int(keep, "keep", low=1, high=dim)
    keys = factor_mask_keys(seed, offset, factor, dim, device)
    order = torch.sort(keys, stable=True).indices  # stable: equal keys keep increasing j
    return torch.sort(order[:keep]).values


def factgrass_masks(
    seed: int, offset: int, d_out: int, d_in: int, factor_masks, *, bias: bool = False, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept_out, kept_in)``: the layer's kept output coordinates and input coordinates
    (``d_in`` stands for the bias column when ``bias``)."""
    k_out, k_in = check_factor_masks(factor_masks, d_out, d_in + int(bias))
    kept_out = factor_mask(seed, offset, "out", d_out, k_out, device)
    kept_in = factor_mask(seed, offset, "in", d_in + int(bias), k_in, device)
    return kept_out, kept_in


def factgrass_matrix(
    seed: int,
    offset: int,
    d_out: int,
    d_in: int,
    proj_dim: int,
    *,
    factor_masks,
    sparsity: int = 1,
    bias: bool = False,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> torch.Tensor:
    """The layer's FactGraSS matrix, dense and unscaled (entries 0, ±1): ``(d_out d_in (+ d_out
    with bias), K)`` in ``project_linear``'s layout, so that the projection of example b is
    ``[G_b.flatten(), Σ_t g_bt] @ M``.  The reference the implementation is tested against
    (small layers only: it is formed entry by entry)."""
    kept_out, kept_in = factgrass_masks(seed, offset, d_out, d_in, factor_masks, bias=bias, device=device)
    k_in = kept_in.numel()
    p = torch.arange(kept_out.numel(), device=kept_out.device)[:, None]
    q = torch.arange(k_in, device=kept_out.device)[None, :]
    sjlt_rows = (offset + p * k_in + q).reshape(-1)
    # The row of the layer's gradient each kept (output, input) pair sits in.
    weight_row = kept_out[:, None] * d_in + kept_in[None, :]
    bias_row = d_out * d_in + kept_out[:, None].expand_as(weight_row)
    source = torch.where(kept_in[None, :] == d_in, bias_row, weight_row).reshape(-1)
    columns, signs = sjlt_nonzeros(seed, sjlt_rows, proj_dim, sparsity, device=kept_out.device)
    matrix = torch.zeros(d_out * d_in + (d_out if bias else 0), proj_dim, dtype=dtype, device=kept_out.device)
    rows = source[:, None].expand_as(columns)
    return matrix.index_put_((rows, columns), signs.to(dtype))  # each (row, column) set once
