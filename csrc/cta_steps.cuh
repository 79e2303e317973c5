// The half of a projection step that the mma.sync kernel (project_kernel.cuh) and the sm_90a
// kernel (wgmma_kernel.cuh) share: the CTA's place in the grid, the tiles of its two stages
// in shared memory, and the producer work that fills a stage one step ahead (fetch x, the
// rademacher words two steps ahead, generate P).  The kernels differ only in how they
// multiply a stage (and in the wgmma kernel's proxy fence before its barrier).
//
// Device code only; the CPU emulation (host_emulate.cpp) mirrors this order with the same
// tile functions of project_tiles.cuh.
#pragma once

#include <cstdint>

#include "project_plan.cuh"
#include "project_tiles.cuh"

namespace fastjl {
namespace proj {

// Everything a CTA needs besides its producer's source.
struct PipelineParams {
  float* dest;  // out when there is one split, else the [splits, B, K] workspace
  int64_t dest_stride_split, dest_stride_b, dest_stride_k;
  int64_t batch, dim, proj_dim;
  int64_t tiles_n, d_per_split;
  PhiloxKey key;
  uint64_t offset;
};

// The kernel argument: the producer's source and the pipeline's parameters.
template <class Producer>
struct KernelParams {
  typename Producer::Source src;
  PipelineParams pipe;
};

// Layout: the kernel's shared-memory layout (x(stage), p(stage, plane), w(stage) byte
// offsets); PLayout: where the P writers put an element (project_tiles.cuh).
template <class Cfg, class Producer, int Kind, class Layout, class PLayout>
struct CtaSteps {
  static constexpr int kT = mma_type_for(Producer::kTileDtype);
  static constexpr bool kGauss = Kind == kGaussian;

  unsigned char* smem;
  const KernelParams<Producer>& kp;
  int tid, warp, lane;
  int64_t b0;     // the CTA's first batch row
  uint32_t col0;  // and first output column
  uint32_t rademacher_group;  // col0's counter group (kBlockN columns = one group)
  DRange range;   // its split's rows of x
  int64_t steps;
  uint64_t row0;  // P row of step 0
  typename Producer::Cursor cursor;

  __device__ __forceinline__ CtaSteps(unsigned char* smem_, const KernelParams<Producer>& kp_,
                                      int tid_)
      : smem(smem_),
        kp(kp_),
        tid(tid_),
        warp(tid_ >> 5),
        lane(tid_ & 31),
        b0(static_cast<int64_t>(blockIdx.x / kp_.pipe.tiles_n) * Cfg::kBlockB),
        col0(static_cast<uint32_t>(blockIdx.x % kp_.pipe.tiles_n) * kBlockN),
        rademacher_group(col0 / kRademacherColumnsPerCounter),
        range(split_range(blockIdx.y, kp_.pipe.d_per_split, kp_.pipe.dim)),
        steps((range.end - range.begin + kBlockD - 1) / kBlockD),
        row0(kp_.pipe.offset + static_cast<uint64_t>(range.begin)),
        cursor(Producer::cursor(tid_, kp_.src, Cfg::kBlockB, b0)) {}

  __device__ __forceinline__ unsigned char* x_tile(int64_t step) const {
    return smem + Layout::x(static_cast<int>(step & 1));
  }
  __device__ __forceinline__ uint16_t* p_tile(int64_t step, int plane) const {
    return reinterpret_cast<uint16_t*>(smem + Layout::p(static_cast<int>(step & 1), plane));
  }
  __device__ __forceinline__ U32x4* words(int64_t step) const {
    return reinterpret_cast<U32x4*>(smem + Layout::w(static_cast<int>(step & 1)));
  }
  __device__ __forceinline__ uint64_t step_row(int64_t step) const {
    return row0 + static_cast<uint64_t>(step) * kBlockD;
  }

  __device__ __forceinline__ void fetch_x(int64_t step) const {
    Producer::template fetch<tile_code_for(Kind)>(cursor, tid, kp.src, Cfg::kBlockB, b0,
                                                  range.begin + step * kBlockD, range.end,
                                                  x_tile(step));
  }
  __device__ __forceinline__ void compute_words(int64_t step) const {  // one warp
    rademacher_words(lane, kp.pipe.key, step_row(step), rademacher_group, words(step));
  }
  __device__ __forceinline__ void generate_p(int64_t step) const {
    if (kGauss)
      gaussian_generate<kT, PLayout>(tid, kp.pipe.key, step_row(step), col0, kp.pipe.proj_dim,
                                     p_tile(step, 0), p_tile(step, 1));
    else
      rademacher_expand<kT, PLayout>(tid, words(step), p_tile(step, 0));
  }

  // Stage 0 (x, P) and, for rademacher, the words of steps 0 and 1.
  __device__ __forceinline__ void prologue() const {
    fetch_x(0);
    if (kGauss) {
      generate_p(0);
    } else {
      if (warp == 0) compute_words(0);
      if (warp == 1 && steps > 1) compute_words(1);
      __syncthreads();
      generate_p(0);
    }
  }

  // Called by every thread after step s's barrier: fills the other stage for step s + 1, and
  // one warp (a different one each step) computes the words of step s + 2 into the words
  // stage that generate_p(s) read before that barrier; so no extra barrier is needed.
  __device__ __forceinline__ void produce_next(int64_t s) const {
    if (s + 1 < steps) {
      fetch_x(s + 1);
      if (!kGauss && s + 2 < steps && warp == s % kWarps) compute_words(s + 2);
      generate_p(s + 1);
    }
  }
};

}  // namespace proj
}  // namespace fastjl
