"""Projection contract, spec v1: the random matrix ``P`` as a pure function.

``P[i, j]`` depends only on ``(seed, kind, i, j)``: never on the batch, batch size, device,
SM count, backend, dtype, tile sizes or ``K``.  Every backend is tested against the functions
in this module, so they are written for clarity (one element at a time, broadcast over
tensors), not speed.  The fast block generator used by the torch backend lives in
``fastjl.blocks`` and is tested against :func:`matrix_block`.

Random bits: Philox4x32-10 (Salmon et al., SC'11; identical to Random123's philox4x32-10,
cuRAND's Philox4_32_10 and Triton's ``tl.philox`` with 32-bit counters).

* key ``(k0, k1) = (seed mod 2^32, seed >> 32)`` for a 64-bit unsigned seed.
* ``rademacher``: counter ``(i mod 2^32, i >> 32, j // 128, 0)``; bit
  ``b = (r[(j mod 128) // 32] >> (j mod 32)) & 1``; ``P[i, j] = 1 - 2 b``.
* ``gaussian``: counter ``(i mod 2^32, i >> 32, j // 4, 1)``; uniforms
  ``u_t = (2 (r_t >> 9) + 1) / 2^24`` (exact in fp32, strictly inside (0, 1)); Box-Muller on
  ``(u0, u1)`` gives entries ``4m, 4m+1`` = ``sqrt(-2 ln u0) cos(2 pi u1)``,
  ``sqrt(-2 ln u0) sin(2 pi u1)``; on ``(u2, u3)`` entries ``4m+2, 4m+3``.
* Counter word ``c3`` is the kind's domain: 0 rademacher, 1 gaussian, 2 sjlt, 4 GraSS's mask
  (both in :mod:`fastjl.sparse_spec`), 5 FactGraSS's factor masks (:mod:`fastjl.factgrass_spec`),
  and ``c3 = 3 (mod 4)`` for the kronecker factors below (never 0, 1, 2, 4 or 5, so no stream
  is shared).
* ``kronecker`` (used by :func:`fastjl.project_linear` only): a layer whose weight gradient
  starts at row ``offset`` of the gradient vector gets two gaussian factor matrices,
  ``F_in (d_in, k_in)`` (factor ``f = 0``) and ``F_out (d_out, k_out)`` (``f = 1``), both drawn
  from spec v1's Box-Muller as for ``gaussian``: entry ``(r, j)`` of factor ``f`` uses counter
  ``(r, offset mod 2^32, (offset >> 32) | (f << 16), 3 + 4 (j // 4))`` and lane ``j mod 4``.
  Keyed by ``(seed, offset, f)``: every layer (every offset) gets its own factors, and they do
  not depend on ``d_in``, ``d_out``, ``k_in`` or ``k_out`` beyond their extent.

Changing anything here is a breaking change; ``tests/test_spec.py`` pins golden values.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np
import torch

SPEC_VERSION = 1

KINDS = ("rademacher", "gaussian")
# project_linear also takes the structured kinds: a Kronecker product of two small factors, and
# FactGraSS (masked factors, then sjlt; fastjl.factgrass_spec).
LINEAR_KINDS = KINDS + ("kronecker", "factgrass")
KIND_CODES = {"rademacher": 0, "gaussian": 1}
# Counter word c3 separates the kinds' random streams.  5: FactGraSS's factor-mask keys, counter
# (j, offset mod 2^32, (offset >> 32) | (f << 16), 5): c3 = 5 is odd and not 3 mod 4, so it meets
# none of 0, 1, 2, 4 nor the kronecker factors' 3 + 4m.
COUNTER_DOMAIN = {"rademacher": 0, "gaussian": 1, "sjlt": 2, "grass_mask": 4, "factgrass_mask": 5}
# Kronecker factors use c3 = KRONECKER_DOMAIN + 4 * (j // 4): c3 mod 4 == 3 keeps them apart.
KRONECKER_DOMAIN = 3
KRONECKER_FACTORS = {"in": 0, "out": 1}
MAX_FACTOR_ROWS = 1 << 32  # the factor row is counter word c0
MAX_FACTOR_COLS = 1 << 32  # 3 + 4 (j // 4) must fit counter word c3
# Columns served by one Philox call.
COLUMNS_PER_COUNTER = {"rademacher": 128, "gaussian": 4}

MAX_ROWS = 1 << 48  # global row index i must satisfy 0 <= i < 2^48
MAX_SEED = (1 << 64) - 1
# j // 4 must fit the 32-bit counter word c2 for gaussian; keep K well inside that.
MAX_PROJ_DIM = 1 << 32

MASK32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10


def seed_to_key(seed: int) -> tuple[int, int]:
    """Split a 64-bit unsigned seed into the Philox key ``(k0, k1)``."""
    return seed & MASK32, (seed >> 32) & MASK32


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * m`` for ``a`` in int64 holding uint32 values.

    The 64-bit product can exceed int64's range, so ``m`` is split into 16-bit halves and
    every partial product stays below 2^49: no signed overflow anywhere.
    """
    p_lo = a * (m & 0xFFFF)
    p_hi = a * (m >> 16)
    t = p_lo + ((p_hi & 0xFFFF) << 16)
    return (p_hi >> 16) + (t >> 32), t & MASK32


def _mulhilo_wrapping(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Same as :func:`_mulhilo` in 4 ops instead of 9, relying on int64 products wrapping
    modulo 2^64 (two's complement), which torch does on CPU and CUDA but does not promise.
    :func:`philox4x32_10` uses it only after :func:`_wrapping_mul_works` checked the device."""
    p = a * m
    return (p >> 32) & MASK32, p & MASK32


_WRAPPING_OK: dict[str, bool] = {}


def _wrapping_mul_works(device: torch.device) -> bool:
    """Checks once per device type that int64 products wrap, on the worst-case operands."""
    if device.type not in _WRAPPING_OK:
        a = torch.tensor([MASK32, 0x80000000, 0x7FFFFFFF, 1, 0], dtype=torch.int64, device=device)
        ok = all(
            torch.equal(torch.stack(_mulhilo_wrapping(a, m)), torch.stack(_mulhilo(a, m)))
            for m in (PHILOX_M0, PHILOX_M1, MASK32)
        )
        _WRAPPING_OK[device.type] = ok
    return _WRAPPING_OK[device.type]


def philox4x32_10(
    counter: Sequence[torch.Tensor | int], key: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 on int64 tensors (or ints) holding uint32 words; broadcasts the counters.

    Returns four int64 tensors with values in ``[0, 2^32)``.
    """
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) for c in counter)
    mulhilo = _mulhilo_wrapping if _wrapping_mul_works(c0.device) else _mulhilo
    k0, k1 = key
    for round_ in range(PHILOX_ROUNDS):
        if round_:
            k0 = (k0 + PHILOX_W0) & MASK32
            k1 = (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = mulhilo(c0, PHILOX_M0)
        hi1, lo1 = mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def uniforms_from_words(words: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spec v1 uniforms ``(2 (r >> 9) + 1) / 2^24`` in ``dtype``: exact in fp32 and fp64."""
    return ((words >> 9) * 2 + 1).to(dtype) * (1.0 / (1 << 24))


def box_muller(u_radius: torch.Tensor, u_angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec's Box-Muller pair: ``sqrt(-2 ln u_r) * (cos, sin)(2 pi u_a)``."""
    radius = torch.sqrt(-2.0 * torch.log(u_radius))
    angle = (2.0 * math.pi) * u_angle
    return radius * torch.cos(angle), radius * torch.sin(angle)


def gaussian_lanes(words: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The four gaussian entries (lanes 0..3) drawn from Philox words ``(..., 4)``: Box-Muller
    on ``(u0, u1)`` gives lanes 0, 1 (cos, sin) and on ``(u2, u3)`` lanes 2, 3."""
    u = uniforms_from_words(words, dtype)
    cos01, sin01 = box_muller(u[..., 0], u[..., 1])
    cos23, sin23 = box_muller(u[..., 2], u[..., 3])
    return cos01, sin01, cos23, sin23


def _as_index(idx, name: str, limit: int) -> torch.Tensor:
    t = torch.arange(idx.start, idx.stop, idx.step or 1) if isinstance(idx, range) else idx
    t = torch.as_tensor(t, dtype=torch.int64).reshape(-1)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= limit):
        raise ValueError(f"matrix_block: {name} must lie in [0, {limit}), got {int(t.min())}..{int(t.max())}")
    return t


def check_int(value, name: str, *, low: int, high: int) -> int:
    """``value`` as a Python int in ``[low, high]``.

    Only true integers are accepted: Python ints, numpy integers and 0-d integer tensors.
    Bools (Python, numpy or tensor), floats (even integral-valued ones) and float tensors
    raise TypeError instead of being truncated (``torch.tensor(8.7)`` is not 8).
    """
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer, got a bool ({value!r})")
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.dtype.is_floating_point or value.dtype.is_complex:
            raise TypeError(
                f"{name} must be an integer (a 0-d integer tensor at most), got a tensor of dtype "
                f"{value.dtype} and shape {tuple(value.shape)}"
            )
        if value.device.type == "meta":
            raise TypeError(f"{name} must be an integer, got a meta tensor (it has no value)")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} ({value!r})") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")
    return value


def check_seed(seed) -> int:
    return check_int(seed, "seed", low=0, high=MAX_SEED)


def check_kind(kind) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def matrix_block(
    seed: int,
    kind: str,
    rows,
    cols,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The block ``P[rows][:, cols]`` of spec v1's matrix, computed entry by entry.

    Args:
        seed: 0 <= seed < 2^64.
        kind: ``"rademacher"`` or ``"gaussian"``.
        rows: global row indices (a ``range``, sequence or 1-D integer tensor), each < 2^48.
        cols: output column indices (same forms), each < 2^32.
        dtype: ``torch.float64`` (default) or ``torch.float32``; gaussian entries are computed
            in this precision.
    Returns:
        ``(len(rows), len(cols))`` tensor of ``dtype``, unscaled (entries ±1 or N(0, 1)).
    """
    seed = check_seed(seed)
    kind = check_kind(kind)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"matrix_block: dtype must be torch.float32 or torch.float64, got {dtype}")
    r = _as_index(rows, "rows", MAX_ROWS).to(device)[:, None]
    c = _as_index(cols, "cols", MAX_PROJ_DIM).to(device)[None, :]
    per = COLUMNS_PER_COUNTER[kind]
    counter = (r & MASK32, r >> 32, c // per, COUNTER_DOMAIN[kind])
    words = torch.stack(philox4x32_10(counter, seed_to_key(seed)), dim=-1)  # (R, C, 4)
    lane = c % per
    if kind == "rademacher":
        word = torch.gather(words, -1, (lane // 32).expand(r.shape[0], -1)[..., None])[..., 0]
        bit = (word >> (lane % 32)) & 1
        return (1 - 2 * bit).to(dtype)
    u = uniforms_from_words(words, dtype)
    # Lanes 0,1 use (u0, u1); lanes 2,3 use (u2, u3); even lanes take cos, odd lanes sin.
    pair = (lane // 2).expand(r.shape[0], -1)[..., None]
    cos_part, sin_part = box_muller(torch.gather(u, -1, 2 * pair)[..., 0], torch.gather(u, -1, 2 * pair + 1)[..., 0])
    return torch.where((lane % 2) == 0, cos_part, sin_part)


def kronecker_factor(
    seed: int,
    offset: int,
    factor: str,
    nrows: int,
    ncols: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rows ``0..nrows-1`` and columns ``0..ncols-1`` of the kronecker factor ``factor``
    (``"in"`` or ``"out"``) of the layer at ``offset`` (see the module docstring).

    Args:
        seed: 0 <= seed < 2^64.
        offset: the layer's first row in the gradient vector, 0 <= offset < 2^48.
        factor: ``"in"`` (``F_in``, rows indexed by input features) or ``"out"``.
        nrows, ncols: extent, each in [1, 2^32].
        dtype: float64 (default) or float32; Box-Muller runs in this precision.
    Returns:
        ``(nrows, ncols)`` tensor of N(0, 1) entries.
    """
    seed = check_seed(seed)
    offset = check_int(offset, "offset", low=0, high=MAX_ROWS - 1)
    if factor not in KRONECKER_FACTORS:
        raise ValueError(f"factor must be one of {tuple(KRONECKER_FACTORS)}, got {factor!r}")
    nrows = check_int(nrows, "nrows", low=1, high=MAX_FACTOR_ROWS)
    ncols = check_int(ncols, "ncols", low=1, high=MAX_FACTOR_COLS)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"kronecker_factor: dtype must be torch.float32 or torch.float64, got {dtype}")
    groups = -(-ncols // 4)  # one Philox call serves 4 columns
    r = torch.arange(nrows, dtype=torch.int64, device=device)[:, None]
    m = torch.arange(groups, dtype=torch.int64, device=device)[None, :]
    high = (offset >> 32) | (KRONECKER_FACTORS[factor] << 16)
    counter = (r, offset & MASK32, high, KRONECKER_DOMAIN + 4 * m)
    words = torch.stack(philox4x32_10(counter, seed_to_key(seed)), dim=-1)
    entries = torch.stack(gaussian_lanes(words, dtype), dim=-1).reshape(nrows, 4 * groups)
    return entries[:, :ncols].contiguous()
