// The half of a projection step that the mma.sync kernel (project_kernel.cuh) and the sm_90a
// kernel (wgmma_kernel.cuh) share: the CTA's place in the grid, its tiles in shared memory,
// and the producer work that runs ahead of the MMAs (fetch x Layout::kXStages - 1 steps
// ahead (x_pipeline.h), the rademacher words two to nine steps ahead (words_pipeline.h),
// generate P one step ahead into the other of P's two stages).  The kernels differ only in
// how they multiply a stage (and in the wgmma kernel's proxy fence before its barrier).
//
// Device code only; the CPU emulation (host_emulate.cpp) mirrors this order with the same
// tile functions of project_tiles.cuh.
#pragma once

#include <cstdint>

#include "project_plan.cuh"
#include "project_tiles.cuh"
#include "words_pipeline.h"
#include "x_pipeline.h"

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

// Layout: the kernel's shared-memory layout (x(stage) for kXStages stages, p(stage, plane)
// for two, w(slot) for kWordSlots: byte offsets); PLayout: where the P writers put an element
// (project_tiles.cuh).
template <class Cfg, class Producer, int Kind, class Layout, class PLayout>
struct CtaSteps {
  static constexpr int kT = mma_type_for(Producer::kTileDtype);
  static constexpr bool kGauss = Kind == kGaussian;
  using XPipe = XPipeline<Layout::kXStages>;
  using Words = KernelWords;
  static_assert(Words::kTurns * kWordsBatch == kWarps, "the schedule's warps are the CTA's");
  static_assert(Kind != kRademacher || Layout::kWordSlots == Words::kSlots,
                "the layout holds the words schedule's slots");

  unsigned char* smem;
  const KernelParams<Producer>& kp;
  int tid, warp, lane;
  int64_t b0;     // the CTA's first batch row
  uint32_t col0;  // and first output column
  uint32_t rademacher_group;  // col0's counter group (kBlockN columns = one group)
  DRange range;   // its split's rows of x
  // Step indices are 32-bit: make_plan bounds a split's steps by kMaxStepsPerSplit (2^30,
  // so s + kAhead cannot overflow either); 64-bit counters cost 13-21 instructions a step
  // (carries, paired compares; bench/NOTES.md stop 27).
  int steps;
  int whole_steps;  // steps 0 .. whole_steps - 1 cover kBlockD rows of x each (kWholePath)
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
        steps(static_cast<int>(range_steps(range))),
        whole_steps(static_cast<int>(range_whole_steps(range))),
        row0(kp_.pipe.offset + static_cast<uint64_t>(range.begin)),
        cursor(Producer::cursor(tid_, kp_.src, Cfg::kBlockB, b0)) {}

  __device__ __forceinline__ unsigned char* x_tile(int step) const {
    return smem + Layout::x(XPipe::stage(step));
  }
  __device__ __forceinline__ uint16_t* p_tile(int step, int plane) const {
    return reinterpret_cast<uint16_t*>(smem + Layout::p(static_cast<int>(step & 1), plane));
  }
  __device__ __forceinline__ U32x4* words(int step) const {
    return reinterpret_cast<U32x4*>(smem + Layout::w(Words::slot(step)));
  }
  __device__ __forceinline__ uint64_t step_row(int step) const {
    return row0 + static_cast<uint64_t>(step) * kBlockD;
  }

  // Whether the producer has a fetch of its own for whole steps (project's x tiles with the
  // kinds' TileCode::kFewestInstructions: rademacher; not gaussian, not project_linear's
  // gradient tiles), and so whether whole_steps is used (and held in a register) at all.
  static constexpr bool kWholePath =
      Producer::kWholeStepFetch && tile_code_for(Kind) == TileCode::kFewestInstructions;

  // How many steps a kernel's loop body holds (`#pragma unroll (kStepUnroll)`): 4 for the
  // rademacher x tiles of 16-bit x, else 1.  Unrolled by a power of two, a body's step s has
  // compile-time stages (s % 2, s % 4) and a known answer to "does it compute words" (only
  // s % 8 == 0 does, words_pipeline.h), so the stage addresses and tests the rolled loop
  // recomputed every step become immediates: nvcc 13.0, instructions per warp per step,
  // rolled -> unrolled 4 (bench/NOTES.md, stop 28): mma.sync bf16 B128 149 -> 108, B32
  // 111 -> 86 (112 and 92 with the four x stages below, which the unroll needs); wgmma bf16
  // B128 114 -> 95.  The loops stay within 768 instructions (12 KiB,
  // the order of a scheduler's instruction cache; tests/test_cuda_loop_probe.py).  Unrolled,
  // ptxas moves a step's x wait above the previous step's MMAs, so these kernels fetch x
  // three steps ahead (4 stages, SmemLayout / Sm90SmemLayout), where the wait is for a
  // fetch issued steps earlier.  Rolled: fp32 tiles (their double buffer's wait would delay
  // the MMAs; fp32 B128 unrolled 2 spilled, 4 made a 1630-instruction loop), gaussian and
  // project_linear (~1000-2200 instructions a step).
  static constexpr FASTJL_HD int step_unroll() {
    return kWholePath && Producer::kTileDtype != kFloat32 ? 4 : 1;
  }

  // whole_step: step < whole_steps, which lets the producer skip the clamp to the range
  // (load_x_tile_rows).
  __device__ __forceinline__ void fetch_x(int step, bool whole_step) const {
    const int64_t d0 = range.begin + static_cast<int64_t>(step) * kBlockD;  // 64-bit rows
    Producer::template fetch<tile_code_for(Kind)>(cursor, tid, kp.src, Cfg::kBlockB, b0, d0,
                                                  range.end, whole_step, x_tile(step));
  }
  __device__ __forceinline__ void compute_words(int step) const {  // the whole warp
    rademacher_words(lane, kp.pipe.key, step_row(step), rademacher_group, words(step));
  }
  __device__ __forceinline__ void generate_p(int step) const {
    if (kGauss)
      gaussian_generate<kT, PLayout>(tid, kp.pipe.key, step_row(step), col0, kp.pipe.proj_dim,
                                     p_tile(step, 0), p_tile(step, 1));
    else
      rademacher_expand<kT, PLayout>(tid, words(step), p_tile(step, 0));
  }

  // Before step s's barrier: this thread's copies of x(s) have landed (the newer slots'
  // may still be in flight, x_pipeline.h).
  __device__ __forceinline__ void wait_x() const {
    Producer::template wait<XPipe::kNewerInFlight>(kp.src);
  }

  // Step slot t of the x pipeline: fetch x(t) if there is such a step, and close the slot's
  // group of copies.  A pipeline deeper than a double buffer counts groups at its waits, so
  // every slot closes one (empty past the last step, x_pipeline.h); the double buffer waits
  // for all, so only a fetch needs one.  The common case, a whole step, is decided by one
  // compare (as `t < steps` was before whole steps had a fetch of their own).  Without
  // kWholePath, one call as before.
  //
  // Tried and not kept (stop 27): the loop split in two, the steps with whole slots first,
  // so that the first loop holds no clamp and no tests.  nvcc then kept fewer of the step's
  // addresses and descriptors in registers: the wgmma bf16 B128 step grew from 128 to ~164
  // instructions (the mma.sync B32 one fell from 122 to 101), bench/NOTES.md.
  __device__ __forceinline__ void fetch_slot(int t) const {
    if (kWholePath && t < whole_steps) {
      fetch_x(t, true);
      Producer::commit(kp.src);
    } else if (t < steps) {
      fetch_x(t, false);
      Producer::commit(kp.src);
    } else if (XPipe::kAhead > 1) {
      Producer::commit(kp.src);
    }
  }

  // x of steps 0 .. kAhead - 1, P of step 0 and, for rademacher, the words of steps 0 and 1.
  // x(0) is fetched even when the split has no step (zeros, never read): as fetch_slot(0),
  // its guard alone moved nvcc's schedule of the mma.sync kernel's interleaved B128 step
  // from 188 to 232 instructions (bench/cuda_loop_probe.py).
  __device__ __forceinline__ void prologue() const {
    fetch_x(0, kWholePath && whole_steps > 0);
    Producer::commit(kp.src);
#pragma unroll
    for (int t = 1; t < XPipe::kAhead; ++t) fetch_slot(t);
    if (kGauss) {
      generate_p(0);
    } else {
      static_assert(Words::kLead == 2, "the prologue computes the words of steps 0 and 1");
      if (warp == 0) compute_words(0);
      if (warp == 1 && steps > 1) compute_words(1);
      __syncthreads();
      generate_p(0);
    }
  }

  // Called by every thread after step s's barrier: fetches x(s + kAhead) into the stage step
  // s - 1 read, generates P(s + 1) into the other P stage, and, every kBatch-th step, the
  // batch's warps compute the words of steps s + 2 .. into slots whose words were read
  // before that barrier (words_pipeline.h); so no extra barrier is needed.
  __device__ __forceinline__ void produce_next(int s) const {
    fetch_slot(s + XPipe::kAhead);
    if (s + 1 < steps) {
      if (!kGauss && Words::computes(s, warp) && Words::target(s, warp) < steps)
        compute_words(Words::target(s, warp));
      generate_p(s + 1);
    }
  }
};

}  // namespace proj
}  // namespace fastjl
