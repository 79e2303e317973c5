"""Triton kernels: ``x @ P`` with tiles of ``P`` generated in registers from spec v1.

Imported lazily by ``triton_backend`` (``triton.jit`` reads ``TRITON_INTERPRET`` when the
kernels are defined, so the interpreter can be switched on before first use).

Grid: (batch tiles, column tiles, D splits).  Program (b, k, s) accumulates
``x[b-tile, d] @ P[offset + d, k-tile]`` in float32 over its share of D, then writes either
``out`` (one split) or its slot of a ``(splits, B, K)`` workspace that ``_sum_splits_kernel``
adds up in a fixed order: no atomics, so results are bitwise reproducible.
"""

import triton
import triton.language as tl

_MASK32 = 0xFFFFFFFF


@triton.jit
def _row_counters(row0, BLOCK_D: tl.constexpr):
    """Counter words (c0, c1) = (i mod 2^32, i >> 32) of rows row0 .. row0 + BLOCK_D - 1."""
    rows = row0 + tl.arange(0, BLOCK_D).to(tl.int64)
    return (rows & _MASK32).to(tl.uint32), (rows >> 32).to(tl.uint32)


@triton.jit
def _rademacher_tile(seed, row0, col0, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    """P[row0 : row0 + BLOCK_D, col0 : col0 + BLOCK_K] in float32; col0 % 128 == 0.

    One Philox call per (row, 128 columns); its four words give the 128 signs.
    """
    GROUPS: tl.constexpr = BLOCK_K // 128
    c0, c1 = _row_counters(row0, BLOCK_D)
    group = (col0 // 128 + tl.arange(0, GROUPS)).to(tl.uint32)
    zero = tl.zeros((BLOCK_D, GROUPS), dtype=tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, c0[:, None] + zero, c1[:, None] + zero, group[None, :] + zero, zero)
    lane = tl.arange(0, 128)[None, None, :]
    word = tl.where(
        lane < 64,
        tl.where(lane < 32, r0[:, :, None], r1[:, :, None]),
        tl.where(lane < 96, r2[:, :, None], r3[:, :, None]),
    )
    bit = (word >> (lane & 31).to(tl.uint32)) & 1
    return tl.reshape(1.0 - 2.0 * bit.to(tl.float32), (BLOCK_D, BLOCK_K))


@triton.jit
def _gaussian_tile(seed, row0, col0, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    """P[row0 : row0 + BLOCK_D, col0 : col0 + BLOCK_K] in float32; col0 % 4 == 0.

    One Philox call per (row, 4 columns); Box-Muller on (u0, u1) and (u2, u3).
    """
    GROUPS: tl.constexpr = BLOCK_K // 4
    c0, c1 = _row_counters(row0, BLOCK_D)
    group = (col0 // 4 + tl.arange(0, GROUPS)).to(tl.uint32)
    zero = tl.zeros((BLOCK_D, GROUPS), dtype=tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, c0[:, None] + zero, c1[:, None] + zero, group[None, :] + zero, zero + 1)
    scale: tl.constexpr = 1.0 / 16777216.0
    u0 = ((r0 >> 9) * 2 + 1).to(tl.float32) * scale
    u1 = ((r1 >> 9) * 2 + 1).to(tl.float32) * scale
    u2 = ((r2 >> 9) * 2 + 1).to(tl.float32) * scale
    u3 = ((r3 >> 9) * 2 + 1).to(tl.float32) * scale
    two_pi: tl.constexpr = 6.283185307179586
    radius01 = tl.sqrt(-2.0 * tl.log(u0))
    radius23 = tl.sqrt(-2.0 * tl.log(u2))
    cos01 = radius01 * tl.cos(two_pi * u1)
    sin01 = radius01 * tl.sin(two_pi * u1)
    cos23 = radius23 * tl.cos(two_pi * u3)
    sin23 = radius23 * tl.sin(two_pi * u3)
    # join(join(a, c), join(b, d)) flattens to a, b, c, d along the last axis: lanes 0..3.
    lanes = tl.join(tl.join(cos01, cos23), tl.join(sin01, sin23))
    return tl.reshape(lanes, (BLOCK_D, BLOCK_K))


@triton.jit
def _p_tile(seed, row0, col0, KIND: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    """P[row0 : row0 + BLOCK_D, col0 : col0 + BLOCK_K] in float32 for KIND (0 rademacher,
    1 gaussian); row0 int64.  The one place kernels get tiles of P from (``_project_kernel``
    and ``triton_linear_kernels._project_linear_kernel``), so they cannot drift apart."""
    if KIND == 0:
        return _rademacher_tile(seed, row0, col0, BLOCK_D, BLOCK_K)
    return _gaussian_tile(seed, row0, col0, BLOCK_D, BLOCK_K)


@triton.jit
def _dot16(x, p, acc, EMULATE: tl.constexpr):
    """acc += x @ p for 16-bit x and p.  EMULATE: the same products in float32 (exact for
    16-bit operands), for Triton's interpreter, whose bf16 tl.dot multiplies raw bits."""
    if EMULATE:
        return tl.dot(x.to(tl.float32), p.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(x, p, acc)


@triton.jit
def _dot_tile(x, p, acc, COMPUTE: tl.constexpr, SPLIT_P: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    """acc += x @ p with x already in the MMA dtype; p float32.

    SPLIT_P: p = hi + lo with both halves in the 16-bit MMA dtype, two dots, so gaussian
    entries keep ~16 mantissa bits instead of 8 (bf16) or 11 (fp16).
    """
    if COMPUTE == tl.float32:
        acc = tl.dot(x, p, acc, input_precision=PRECISION)
    else:
        hi = p.to(COMPUTE)
        acc = _dot16(x, hi, acc, EMULATE)
        if SPLIT_P:
            acc = _dot16(x, (p - hi.to(tl.float32)).to(COMPUTE), acc, EMULATE)
    return acc


@triton.jit
def _project_kernel(
    x_ptr,
    dest_ptr,
    B,
    D,
    K,
    stride_xb,
    stride_xd,
    stride_ds,  # destination strides: split, batch, column
    stride_db,
    stride_dk,
    seed,
    offset,
    d_per_split,
    KIND: tl.constexpr,  # 0 rademacher, 1 gaussian
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    COMPUTE: tl.constexpr,
    SPLIT_P: tl.constexpr,
    PRECISION: tl.constexpr,
    EMULATE_DOT16: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    col0 = pid_k * BLOCK_K
    offs_k = col0 + tl.arange(0, BLOCK_K)
    b_mask = offs_b < B
    x_rows = x_ptr + offs_b.to(tl.int64)[:, None] * stride_xb
    d_start = pid_s.to(tl.int64) * d_per_split
    d_stop = tl.minimum(d_start + d_per_split, D)
    acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
    for d0 in range(d_start, d_stop, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        # Rows past D load zeros, so the (valid but unused) entries of P there add nothing.
        x = tl.load(x_rows + offs_d[None, :] * stride_xd, mask=b_mask[:, None] & (offs_d[None, :] < d_stop), other=0.0)
        p = _p_tile(seed, offset + d0, col0, KIND, BLOCK_D, BLOCK_K)
        acc = _dot_tile(x.to(COMPUTE), p, acc, COMPUTE, SPLIT_P, PRECISION, EMULATE_DOT16)
    dest = dest_ptr + pid_s.to(tl.int64) * stride_ds + offs_b.to(tl.int64)[:, None] * stride_db
    tl.store(dest + offs_k[None, :].to(tl.int64) * stride_dk, acc, mask=b_mask[:, None] & (offs_k[None, :] < K))


@triton.jit
def _sum_splits_kernel(parts_ptr, out_ptr, N, K, SPLITS, stride_ob, stride_ok, BLOCK: tl.constexpr):
    """out[b, k] = sum over s in order 0..SPLITS-1 of parts[s, b, k] (parts contiguous)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, SPLITS):
        total += tl.load(parts_ptr + s * N + offs, mask=mask, other=0.0)
    b = offs // K
    k = offs % K
    tl.store(out_ptr + b * stride_ob + k * stride_ok, total, mask=mask)
