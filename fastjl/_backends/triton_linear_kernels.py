"""Triton kernel: projections of a Linear layer's per-example gradients, never forming them.

For inputs ``a`` (B, T, d_in) and output gradients ``g`` (B, T, d_out), example b's weight
gradient is ``G_b = sum_t g[b, t, :] a[b, t, :]^T`` (d_out x d_in, flattened row-major:
``r = o * d_in + i``), followed, with a bias, by ``d_out`` rows ``r = d_out * d_in + o``
holding ``sum_t g[b, t, o]`` (the "a" value of a bias row is 1).  The kernel computes
``x @ P[offset : offset + D, :K]`` for that x, with tiles of x formed in registers from a and g
and tiles of P generated in registers exactly as in ``_project_kernel`` (shared ``_p_tile``).

Tiling: flattened rows r, as in ``_project_kernel``, rather than (o-tile x i-tile) blocks.  A
tile of consecutive r maps to consecutive rows of P, so ``_p_tile`` (which takes a contiguous
row range), the D split and the bias rows (which simply continue the flattened index) all
work unchanged; the price is a gather (o = r // d_in, i = r % d_in) once per tile of D, and
loads of g that repeat the same few o's, which the cache serves.  An o x i tiling would need
non-contiguous rows of P whenever the i-tile does not cover d_in, and padding on both axes.

Precision: G is formed in float32 (a product of two 16-bit floats is exact there, so for T = 1
a 16-bit G tile is exact; for T > 1 the sum over t rounds in float32, in a fixed order) and
then goes through ``tl.dot`` like a float32 x tile, with ``input_precision=PRECISION``.

Imported lazily by ``triton_backend`` (``triton.jit`` reads ``TRITON_INTERPRET`` when the
kernels are defined).
"""

import triton
import triton.language as tl

from .triton_kernels import _p_tile, _promoted


@triton.jit
def _project_linear_kernel(
    a_ptr,
    g_ptr,
    dest_ptr,
    B,
    T,
    D_IN,
    W,  # d_out * d_in: rows at or past W are bias rows
    D,  # total rows: W, or W + d_out with a bias
    K,
    stride_ab,
    stride_at,
    stride_ai,
    stride_gb,
    stride_gt,
    stride_go,
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
    PRECISION: tl.constexpr,
    EMULATE: tl.constexpr,  # Triton's interpreter (no inline assembly)
):
    pid_b = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    col0 = pid_k * BLOCK_K
    offs_k = col0 + tl.arange(0, BLOCK_K)
    b_mask = offs_b < B
    # All element offsets in int64: B * T * d_in may pass 2^31 (e.g. 64 x 2048 x 16384).
    offs_b64 = offs_b.to(tl.int64)
    a_rows = a_ptr + offs_b64[:, None] * stride_ab
    g_rows = g_ptr + offs_b64[:, None] * stride_gb
    d_start = pid_s.to(tl.int64) * d_per_split
    d_stop = tl.minimum(d_start + d_per_split, D)
    acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
    for d0 in range(d_start, d_stop, BLOCK_D):
        r = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        is_bias = r >= W
        # Weight row r = o * d_in + i; bias row r = W + o.  Rows past d_stop (the tail of D,
        # or the next split's rows) are masked to zero, so their entries of P add nothing.
        o = tl.where(is_bias, r - W, r // D_IN)
        i = r % D_IN
        g_mask = b_mask[:, None] & (r[None, :] < d_stop)
        a_mask = g_mask & (r[None, :] < W)
        a_ptrs = a_rows + i[None, :] * stride_ai
        g_ptrs = g_rows + o[None, :] * stride_go
        x = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
        # Fixed order t = 0 .. T-1: bitwise reproducible.  Advancing the pointers (64-bit)
        # instead of computing t * stride keeps the offsets out of int32.
        for _t in range(0, T):
            av = tl.load(a_ptrs, mask=a_mask, other=0.0).to(tl.float32)
            gv = tl.load(g_ptrs, mask=g_mask, other=0.0).to(tl.float32)
            x += gv * tl.where(is_bias[None, :], 1.0, av)
            a_ptrs += stride_at
            g_ptrs += stride_gt
        p = _p_tile(seed, offset + d0, col0, KIND, BLOCK_D, BLOCK_K, tl.float32)  # float32 dots
        if KIND == 1:  # gaussian: each tile's dot from zero, added in float32 (see _dot_tile)
            acc += _promoted(tl.dot(x, p, input_precision=PRECISION), EMULATE)
        else:
            acc = tl.dot(x, p, acc, input_precision=PRECISION)
    dest = dest_ptr + pid_s.to(tl.int64) * stride_ds + offs_b64[:, None] * stride_db
    tl.store(dest + offs_k[None, :].to(tl.int64) * stride_dk, acc, mask=b_mask[:, None] & (offs_k[None, :] < K))
