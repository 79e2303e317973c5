// The x-tile producer of project_linear: tiles of the per-example weight (and bias)
// gradients of a Linear layer, formed in float32 from a and g (linear_args.h) straight into
// shared memory, so that no d_out * d_in-sized array ever exists in global memory.
//
// __host__ __device__: the kernel (linear_kernel.cu) calls load_g_tile with threadIdx.x,
// the CPU emulation (host_emulate.cpp) for tid = 0 .. 255, with the pipeline's own tile
// shape and pitch (project_kernel.cuh), so tests/test_c_linear.py checks this index math
// -- flat row d -> (o, i), the bias rows, the t-loop, strides, tile edges -- on the CPU.
//
// The tile is the fp32 x tile of the pipeline: element (row, col) = x[b0 + row, d0 + col],
//   x[b, d] = sum_t g[b,t,o] * a[b,t,i]   with (o, i) = (d / d_in, d % d_in), d < d_out*d_in
//   x[b, d] = sum_t g[b,t,o]              with o = d - d_out*d_in (bias rows, d < D)
// and 0 for b >= B or d >= d_end.  Sums run over t = 0, 1, ..., T-1 in that order with fused
// multiply-adds (products of 16-bit inputs are exact in float32); the pipeline then splits
// the float32 tile into bf16 hi + lo MMA operands (~16 bits kept, project_kernel.cuh).
//
// Simple on purpose: every thread loads, multiplies and stores its own elements
// synchronously (T pairs of global loads per element, no reuse between elements).  A
// faster producer would tile (o, i) rather than flat d, stage a[b, t, i-block] and
// g[b, t, o-block] in shared memory once per step (cp.async, double-buffered like x) and
// form the tile from them -- or, for large T, compute G's tile itself with MMAs over t.
#pragma once

#include <math.h>

#include <cstdint>

#include "half_bits.cuh"
#include "linear_args.h"
#include "project_plan.cuh"  // kThreads, kBlockD, kXStride

namespace fastjl {
namespace proj {

// Kernel argument of the producer: linear_args.h's inputs as byte pointers.
struct LinearSource {
  const unsigned char* a;
  const unsigned char* g;
  int dtype;  // of a and g
  int64_t batch, tokens, d_in, d_out;
  int64_t stride_ab, stride_at, stride_ai;
  int64_t stride_gb, stride_gt, stride_go;
  int64_t weight_rows;  // d_out * d_in: rows of x at or past it are bias rows
};

inline LinearSource linear_source(const LinearArgs& a) {
  return LinearSource{reinterpret_cast<const unsigned char*>(a.a),
                      reinterpret_cast<const unsigned char*>(a.g),
                      a.dtype,
                      a.batch,
                      a.tokens,
                      a.d_in,
                      a.d_out,
                      a.stride_ab,
                      a.stride_at,
                      a.stride_ai,
                      a.stride_gb,
                      a.stride_gt,
                      a.stride_go,
                      a.d_out * a.d_in};
}

// Which gradient entry row d (0 <= d < D) of x is: weight (o, i), or bias o (i = -1).
struct GradIndex {
  int64_t o, i;
};
FASTJL_HD GradIndex grad_index(int64_t d, int64_t d_in, int64_t weight_rows) {
  if (d >= weight_rows) return GradIndex{d - weight_rows, -1};
  const int64_t o = d / d_in;
  return GradIndex{o, d - o * d_in};
}

// Element `index` of a float32 / float16 / bfloat16 array, widened to float (exact).
FASTJL_HD float load_as_float(const unsigned char* base, int dtype, int64_t index) {
  if (dtype == kFloat32) return reinterpret_cast<const float*>(base)[index];
  const uint32_t bits = reinterpret_cast<const uint16_t*>(base)[index];
  return dtype == kFloat16 ? half_to_float<kMmaF16>(bits) : half_to_float<kMmaBF16>(bits);
}

// x[b, d] for the GradIndex of d (b < B).
FASTJL_HD float grad_entry(const LinearSource& s, int64_t b, GradIndex ix) {
  const int64_t g_row = b * s.stride_gb + ix.o * s.stride_go;
  const int64_t a_row = b * s.stride_ab + ix.i * s.stride_ai;
  float sum = 0.0f;
  for (int64_t t = 0; t < s.tokens; ++t) {
    const float gv = load_as_float(s.g, s.dtype, g_row + t * s.stride_gt);
    sum = ix.i < 0 ? sum + gv
                   : fmaf(gv, load_as_float(s.a, s.dtype, a_row + t * s.stride_at), sum);
  }
  return sum;
}

// Thread tid's share of the fp32 tile x[b0 .. b0 + block_b, d0 .. d0 + kBlockD] (rows >= B
// and columns >= d_end are zeros), row pitch kXStride.  A thread keeps one column for all
// its rows (kThreads is a multiple of kBlockD), so it decomposes its d once per step;
// consecutive threads take consecutive d, i.e. consecutive i of one output row o: the
// loads of a are coalesced (unit stride along d_in) and those of g mostly broadcasts.
static_assert(kThreads % kBlockD == 0, "a thread's column must stay fixed across its rows");
FASTJL_HD void load_g_tile(int tid, const LinearSource& s, int block_b, int64_t b0, int64_t d0,
                           int64_t d_end, float* tile) {
  const int col = tid % kBlockD;
  const int64_t d = d0 + col;
  const bool in_range = d < d_end;
  const GradIndex ix = in_range ? grad_index(d, s.d_in, s.weight_rows) : GradIndex{0, 0};
  for (int row = tid / kBlockD; row < block_b; row += kThreads / kBlockD) {
    const int64_t b = b0 + row;
    tile[row * kXStride + col] = in_range && b < s.batch ? grad_entry(s, b, ix) : 0.0f;
  }
}

}  // namespace proj
}  // namespace fastjl
