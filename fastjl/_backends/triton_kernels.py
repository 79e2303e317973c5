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

# Inside @triton.jit code only constexpr globals may be read: the GPU compiler rejects a
# plain int global (the interpreter does not check, so only an ahead-of-time compile shows it).
_MASK32 = tl.constexpr(0xFFFFFFFF)


@triton.jit
def _row_counters(row0, BLOCK_D: tl.constexpr):
    """Counter words (c0, c1) = (i mod 2^32, i >> 32) of rows row0 .. row0 + BLOCK_D - 1."""
    rows = row0 + tl.arange(0, BLOCK_D).to(tl.int64)
    return (rows & _MASK32).to(tl.uint32), (rows >> 32).to(tl.uint32)


@triton.jit
def _rademacher_tile(seed, row0, col0, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, P_DTYPE: tl.constexpr):
    """P[row0 : row0 + BLOCK_D, col0 : col0 + BLOCK_K] in P_DTYPE (see
    ``_rademacher_tile_of_rows``); col0 % 128 == 0.

    One Philox call per (row, 128 columns); its four words give the 128 signs.  The calls run
    on a (BLOCK_D * GROUPS,) vector, spread over the program's threads, and ``tl.gather``
    hands each tile element its word.  Broadcasting the words instead (``words[:, :, None]``)
    makes the compiler evaluate Philox in every thread for every row that thread holds
    (~100 calls per thread per tile instead of ~1; tests/test_gpu_compile.py counts them).
    """
    GROUPS: tl.constexpr = BLOCK_K // 128
    flat = tl.arange(0, BLOCK_D * GROUPS)
    rows = row0 + (flat // GROUPS).to(tl.int64)
    return _rademacher_tile_of_rows(seed, rows, col0, BLOCK_D, BLOCK_K, P_DTYPE)


@triton.jit
def _rademacher_tile_of_rows(seed, rows, col0, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, P_DTYPE: tl.constexpr):
    """The rademacher tile of ``rows`` ``(BLOCK_D * BLOCK_K // 128,)`` int64: the global row of
    each (row, 128 columns) group, row-major (see ``_rademacher_tile``).

    P_DTYPE float16 / bfloat16 (the 16-bit dots): the entries' bits are built directly, ±1
    differing from 1.0 only in the sign bit, so no integer-to-float conversion, float
    arithmetic or float32-to-16-bit conversion per entry (Triton 3.6's bf16 B32 step on sm_90:
    651 -> 374 instructions, bench/NOTES.md stop 27).  float32: ``1 - 2 * bit``."""
    GROUPS: tl.constexpr = BLOCK_K // 128
    WORDS: tl.constexpr = 4 * GROUPS
    flat = tl.arange(0, BLOCK_D * GROUPS)
    group = (col0 // 128 + flat % GROUPS).to(tl.uint32)
    zero = tl.zeros((BLOCK_D * GROUPS,), dtype=tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, (rows & _MASK32).to(tl.uint32), (rows >> 32).to(tl.uint32), group, zero)
    # join(join(a, c), join(b, d)) flattens to a, b, c, d: words[d, 4 g + w] = r_w of (d, g).
    words = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (BLOCK_D, WORDS))
    lane = tl.arange(0, BLOCK_K)
    index = tl.zeros((BLOCK_D, BLOCK_K), dtype=tl.int32) + (lane // 32)[None, :]
    word = tl.gather(words, index, 1)
    bit = (word >> (lane % 32).to(tl.uint32)[None, :]) & 1
    # if / elif / else, not early returns: Triton types every return it visits, and a constexpr
    # `if` prunes only what sits in its branches.
    if P_DTYPE == tl.bfloat16:
        tile = ((bit << 15) | 0x3F80).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    elif P_DTYPE == tl.float16:
        tile = ((bit << 15) | 0x3C00).to(tl.uint16).to(tl.float16, bitcast=True)
    else:
        tile = 1.0 - 2.0 * bit.to(tl.float32)
    return tile


@triton.jit
def _gaussian_tile(seed, row0, col0, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    """P[row0 : row0 + BLOCK_D, col0 : col0 + BLOCK_K] in float32; col0 % 4 == 0.

    One Philox call per (row, 4 columns); Box-Muller on (u0, u1) and (u2, u3).  As in
    ``_rademacher_tile`` the calls run on a flat vector, one per (row, group), and the
    four lanes are joined and then gathered into a plain 2-D layout: the joined layout, fed
    straight to a float32 ``tl.dot``, fails sm_90's wgmma lowering ("Illegal shared layout").
    """
    GROUPS: tl.constexpr = BLOCK_K // 4
    flat = tl.arange(0, BLOCK_D * GROUPS)
    rows = row0 + (flat // GROUPS).to(tl.int64)
    return _gaussian_tile_of_rows(seed, rows, col0, BLOCK_D, BLOCK_K)


@triton.jit
def _gaussian_tile_of_rows(seed, rows, col0, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    """The gaussian tile of ``rows`` ``(BLOCK_D * BLOCK_K // 4,)`` int64: the global row of each
    (row, 4 columns) group, row-major (see ``_gaussian_tile``)."""
    GROUPS: tl.constexpr = BLOCK_K // 4
    flat = tl.arange(0, BLOCK_D * GROUPS)
    group = (col0 // 4 + flat % GROUPS).to(tl.uint32)
    one = tl.full((BLOCK_D * GROUPS,), 1, dtype=tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, (rows & _MASK32).to(tl.uint32), (rows >> 32).to(tl.uint32), group, one)
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
    lanes = tl.reshape(tl.join(tl.join(cos01, cos23), tl.join(sin01, sin23)), (BLOCK_D, BLOCK_K))
    index = tl.zeros((BLOCK_D, BLOCK_K), dtype=tl.int32) + tl.arange(0, BLOCK_K)[None, :]
    return tl.gather(lanes, index, 1)


@triton.jit
def _p_tile(seed, row0, col0, KIND: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, P_DTYPE: tl.constexpr):
    """P[row0 : row0 + BLOCK_D, col0 : col0 + BLOCK_K] for KIND (0 rademacher, 1 gaussian);
    row0 int64.  Rademacher tiles come in P_DTYPE (float32, or the 16-bit dtype of the dot:
    the same ±1), gaussian ones always in float32 (the dot splits them into hi + lo).  The one
    place kernels get tiles of P from (``_project_kernel`` and
    ``triton_linear_kernels._project_linear_kernel``), so they cannot drift apart."""
    if KIND == 0:
        tile = _rademacher_tile(seed, row0, col0, BLOCK_D, BLOCK_K, P_DTYPE)
    else:
        tile = _gaussian_tile(seed, row0, col0, BLOCK_D, BLOCK_K)
    return tile


@triton.jit
def _p_tile_indexed(
    seed,
    offset,
    row_index_ptr,
    d0,
    col0,
    KIND: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    P_DTYPE: tl.constexpr,
):
    """The tile of P whose local row d is global row ``offset + row_index[d0 + d]``
    (``fastjl.project_rows``), dtypes as ``_p_tile``; the index array is padded on the host to
    whole splits, so no load is masked."""
    if KIND == 0:
        GROUPS_R: tl.constexpr = BLOCK_K // 128
        flat = tl.arange(0, BLOCK_D * GROUPS_R)
        rows = offset + tl.load(row_index_ptr + d0 + (flat // GROUPS_R).to(tl.int64))
        tile = _rademacher_tile_of_rows(seed, rows, col0, BLOCK_D, BLOCK_K, P_DTYPE)
    else:
        GROUPS_G: tl.constexpr = BLOCK_K // 4
        flat = tl.arange(0, BLOCK_D * GROUPS_G)
        rows = offset + tl.load(row_index_ptr + d0 + (flat // GROUPS_G).to(tl.int64))
        tile = _gaussian_tile_of_rows(seed, rows, col0, BLOCK_D, BLOCK_K)
    return tile


@triton.jit
def _dot16(x, p, acc, EMULATE: tl.constexpr):
    """acc += x @ p for 16-bit x and p.  EMULATE: the same products in float32 (exact for
    16-bit operands), for Triton's interpreter, whose bf16 tl.dot multiplies raw bits."""
    if EMULATE:
        return tl.dot(x.to(tl.float32), p.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(x, p, acc)


@triton.jit
def _dot_tile(x, p, acc, COMPUTE: tl.constexpr, GAUSS: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    """acc += x @ p with x already in the MMA dtype; p float32 (gaussian, or a float32 COMPUTE)
    or already in COMPUTE (rademacher, ``_p_tile``: the conversion below is then a no-op).

    Rademacher tiles (x times ±1: exact products) chain their dots through ``acc``.
    Gaussian tiles start each dot from zero and add it to ``acc`` in float32: chained
    through ``acc`` over the whole D range, the tensor cores' truncating alignment biased
    gaussian projections by ~1e-4..1e-3 at D >= 10^6 on an H100 (bench/NOTES.md).  With a
    16-bit x, gaussian p is split into hi + lo 16-bit halves (two dots), so its entries keep
    ~16 mantissa bits instead of 8 (bf16) or 11 (fp16).
    """
    if COMPUTE == tl.float32:
        if GAUSS:
            acc += _promoted(tl.dot(x, p, input_precision=PRECISION), EMULATE)
        else:
            acc = tl.dot(x, p, acc, input_precision=PRECISION)
    else:
        hi = p.to(COMPUTE)
        if GAUSS:
            part = _dot16(x, hi, tl.zeros(acc.shape, dtype=tl.float32), EMULATE)
            part = _dot16(x, (p - hi.to(tl.float32)).to(COMPUTE), part, EMULATE)
            acc += _promoted(part, EMULATE)
        else:
            acc = _dot16(x, hi, acc, EMULATE)
    return acc


@triton.jit
def _promoted(part, EMULATE: tl.constexpr):
    """``part``, hidden from the compiler's rewrite of ``acc + dot(a, b)`` into
    ``dot(a, b, acc)`` (which would chain the dots again) by an inline no-op move.
    EMULATE (Triton's interpreter, which has no inline assembly): ``part`` itself."""
    if EMULATE:
        return part
    return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [part], dtype=tl.float32, is_pure=True, pack=1)


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
    row_index_ptr,  # ROW_INDEX: int64 global rows of P, one per column of x (padded to whole splits)
    KIND: tl.constexpr,  # 0 rademacher, 1 gaussian
    ROW_INDEX: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    COMPUTE: tl.constexpr,
    GAUSS: tl.constexpr,  # KIND == 1, as a flag for _dot_tile
    PRECISION: tl.constexpr,
    EMULATE: tl.constexpr,
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
        if ROW_INDEX:
            p = _p_tile_indexed(seed, offset, row_index_ptr, d0, col0, KIND, BLOCK_D, BLOCK_K, COMPUTE)
        else:
            p = _p_tile(seed, offset + d0, col0, KIND, BLOCK_D, BLOCK_K, COMPUTE)
        acc = _dot_tile(x.to(COMPUTE), p, acc, COMPUTE, GAUSS, PRECISION, EMULATE)
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
