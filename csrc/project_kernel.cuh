// The projection pipeline: y = x @ P[offset : offset + D, :K] on tensor cores, with P
// generated on the fly from spec v1 and never stored in global memory.  ONE copy of the
// pipeline, P generation, MMA feeding and D-split reduction, parameterized on where the
// rows of x come from (its "x-tile producer"):
//   * project (project_kernel.cu): x is a [B, D] tensor, copied tile by tile;
//   * project_linear (linear_kernel.cu): x is the per-example weight gradient of a Linear
//     layer, G_b = sum_t g[b,t,:] a[b,t,:]^T flattened, formed tile by tile from a and g.
//
// One CTA (8 warps) owns a block_b x 128 tile of y and a contiguous range of D
// (project_plan.cuh).  Per step of 32 rows of P it
//   1. has the producer write the x tile [block_b x 32] into shared memory (zeros past B
//      and past the range);
//   2. generates the P tile [32 x 128] into shared memory as 16-bit MMA operands
//      (project_tiles.cuh explains how);
//   3. each warp loads its fragments (x: A operand, ldmatrix for 16-bit tiles, float2 loads
//      + bf16 hi/lo split for fp32 tiles; P: B operand, ldmatrix.trans because the tile is
//      stored [d][n]) and issues mma.sync m16n8k16, float32 accumulate.
// P is double-buffered, x in SmemLayout::kXStages stages (rademacher 16-bit tiles: 4,
// fetched three steps ahead; otherwise 2, x_pipeline.h), and step s+1's tiles are produced
// while step s is being multiplied, so one __syncthreads per step suffices (warps that finish
// generating start their MMAs while others still generate, which keeps ALU and tensor pipes
// busy together).  16-bit rademacher loops are unrolled (CtaSteps::step_unroll).  With two
// x stages:
//
//   iteration s:  producer wait; barrier    -- x(s), P(s), words(s+1) are complete, and every
//                                             warp is done with step s-1's buffers
//                 MMAs on x(s), P(s), rows 0-15 from stage s%2
//                 fetch x(s+1)       -> stage (s+1)%2   (cp.async for project's vector path;
//                                                       4 stages: x(s+3) -> stage (s+3)%4)
//                 words(s+2..s+9)    -> their slots     (rademacher, s % 8 == 0: a step's
//                                                           words per warp, words_pipeline.h)
//                 P(s+1)             -> stage (s+1)%2   (from words(s+1), or gaussian)
//                 MMAs on x(s), P(s), rows 16-31 from stage s%2
//
// Operand precision (relative error of y against float64, predicted; measured on a GPU
// by tests/test_cuda_backend.py and tests/test_cuda_linear.py):
//   fp16 / bf16 x tile: fed as is (exact).  Rademacher P = ±1 is exact in both types, so
//     y is exact products with float32 accumulation (~1e-7).  Gaussian P is split into
//     hi + lo 16-bit halves (two MMAs): ~22 bits for fp16 (error ~1e-7), ~16 bits for bf16
//     (per-entry error <= 2^-16, y error ~1e-5 < 3e-5).
//   fp32 x tile (fp32 x, and every project_linear tile): split into bf16 hi + lo (two MMAs;
//     bf16 keeps float32's exponent range, fp16 would flush small gradients): x is carried
//     to ~16 bits (per-element error <= 2^-16, y error ~5e-6, far below the 1e-3 target;
//     tf32 would give ~3e-4).  Gaussian + fp32: three MMAs (x_hi P_hi + x_lo P_hi +
//     x_hi P_lo), the dropped x_lo P_lo is < 2^-16.
//
// Determinism: every output element is accumulated by one thread in a fixed order; D-splits
// are summed by sum_splits_kernel in split order.  No atomics, bitwise-reproducible runs.
//
// Included only by .cu files (device code); the CPU emulation (host_emulate.cpp) mirrors
// the loop below with the same tile functions.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cta_steps.cuh"  // PipelineParams, KernelParams, CtaSteps
#include "project_args.h"
#include "project_plan.cuh"
#include "project_tiles.cuh"
#include "sm80_primitives.cuh"

namespace fastjl {
namespace proj {

// An x-tile producer writes the CTA's [block_b x kBlockD] tile of x -- rows b0 .., columns
// d0 .. of x, zeros at columns >= d_end; rows >= B zeros or left as they are (only outputs
// that are never stored read them) -- into shared memory (elements of type kTileDtype):
//   using Source = ...;               // its kernel argument (trivially copyable)
//   static constexpr int kTileDtype;  // DtypeCode: kFloat32 (split into bf16 hi + lo for
//                                     // the MMAs), kFloat16 or kBFloat16 (fed as is)
//   static constexpr bool kWholeStepFetch;  // fetch has a faster path for whole_step
//   using Cursor = ...;               // per-thread state, built once per CTA (may be empty)
//   __device__ static Cursor cursor(int tid, const Source&, int block_b, int64_t b0);
//   template <TileCode kCode>         // project_tiles.cuh: the kind's instructions/registers
//   __device__ static void fetch(const Cursor&, int tid, const Source&, int block_b,
//                                int64_t b0, int64_t d0, int64_t d_end,
//                                bool whole_step,  // promise: d0 + kBlockD <= d_end
//                                unsigned char* tile);
//   __device__ static void commit(const Source&);  // closes a step slot's asynchronous copies
//   template <int kNewer>             // this thread's fetches have landed but for (at
//   __device__ static void wait(const Source&);  // most) those of its kNewer latest slots
// All 256 threads call fetch for every step, Layout::kXStages - 1 steps ahead, into the
// stage the previous step read, and commit once per step slot, fetched or not
// (x_pipeline.h); the barrier after wait() publishes the tile.
template <class Cfg, class Producer, int Kind>
__global__ void __launch_bounds__(kThreads, (resident_ctas_per_sm<Cfg>()))
    project_kernel(const KernelParams<Producer> kp) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int XDtype = Producer::kTileDtype;
  constexpr int T = mma_type_for(XDtype);
  constexpr bool kFp32 = XDtype == kFloat32;
  constexpr bool kGauss = Kind == kGaussian;
  // Gaussian tiles (products of up to 16 + 16 significant bits) promote each k16 slice's
  // partial sum into acc with a float32 add (see multiply()); rademacher tiles (a 16-bit x,
  // or x's bf16 halves, times ±1) chain their MMAs through acc.
  constexpr bool kPromote = kGauss;
  constexpr int kMT = Cfg::kMT, kNT = Cfg::kNT;
  using Layout = SmemLayout<Cfg, kFp32 ? 4 : 2, Kind>;
  using XLayout = MmaXLayout<XDtype>;  // the producers' 16-bit tiles (fp32: kXStride rows)
  extern __shared__ __align__(16) unsigned char smem[];
  const PipelineParams& p = kp.pipe;
  using Steps = CtaSteps<Cfg, Producer, Kind, Layout, PaddedPLayout>;
  const Steps cta(smem, kp, threadIdx.x);
  const int warp = cta.warp, lane = cta.lane;

  const RowCol wo = warp_origin<Cfg>(warp);
  const RowCol lm = ldmatrix_x4_source(lane);
  // 16-bit x: this lane's ldmatrix row address in the tile (m16 tile 0, k16 slice 0).
  const uint32_t a_base =
      kFp32 ? 0u : static_cast<uint32_t>(XLayout::offset(wo.row + lm.row, lm.col, 2));
  float acc[kMT][kNT][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mt][nt][r] = 0.0f;

  // The MMAs of one k16 slice (rows kk .. kk+15 of the step's tiles; kBlockD = 32: two).
  static_assert(kBlockD == 32, "two k16 slices per step");
  auto multiply = [&](int step, int kk) {
    const unsigned char* xt = cta.x_tile(step);
    const uint16_t* p_hi = cta.p_tile(step, 0);
    const uint16_t* p_lo = cta.p_tile(step, kGauss ? 1 : 0);
    uint32_t a_hi[kMT][4], a_lo[kMT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      const int row = wo.row + mt * 16;
      if constexpr (kFp32) {
        const float* xf = reinterpret_cast<const float*>(xt);
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const RowCol a = a_fragment(lane, r);
          const float2 v = *reinterpret_cast<const float2*>(
              xf + (row + a.row) * kXStride + kk + a.col);
          split_pair<kMmaBF16>(v.x, v.y, a_hi[mt][r], a_lo[mt][r]);
        }
      } else {
        sm80::ldmatrix_x4(a_hi[mt], reinterpret_cast<const uint16_t*>(
                                        xt + XLayout::shifted(a_base, mt * 16, kk)));
      }
    }
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np) {
      const int offset = (kk + lm.row) * kPStride + wo.col + np * 16 + lm.col;
      uint32_t b_hi[4], b_lo[4];
      sm80::ldmatrix_x4_trans(b_hi, p_hi + offset);
      if (kGauss) sm80::ldmatrix_x4_trans(b_lo, p_lo + offset);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float(&c)[4] = acc[mt][2 * np + h];
          if constexpr (!kPromote) {
            sm80::mma_16816<T>(c, a_hi[mt], b_hi[2 * h], b_hi[2 * h + 1]);
            if (kFp32) sm80::mma_16816<T>(c, a_lo[mt], b_hi[2 * h], b_hi[2 * h + 1]);
          } else {
            // Gaussian products: this k16 slice's sum starts from zero and is added to acc
            // in float32 (round to nearest).  Chaining the MMAs through acc over the whole
            // D range instead lets the tensor cores' truncating alignment bias the sum:
            // measured on an H100, gaussian bf16 at D = 10^8 was off by 7e-4 (bench/NOTES.md).
            float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            sm80::mma_16816<T>(t, a_hi[mt], b_hi[2 * h], b_hi[2 * h + 1]);
            if (kFp32) sm80::mma_16816<T>(t, a_lo[mt], b_hi[2 * h], b_hi[2 * h + 1]);
            sm80::mma_16816<T>(t, a_hi[mt], b_lo[2 * h], b_lo[2 * h + 1]);
#pragma unroll
            for (int r = 0; r < 4; ++r) c[r] += t[r];
          }
        }
    }
  };

  // Rademacher with 16-bit x tiles: a step's two k16 slices go on either side of the
  // producer's work for step s + 1, so the tensor cores run the first slice's MMAs while this
  // warp fetches x and expands signs (the wgmma kernel overlaps the same work with its
  // asynchronous wgmmas); with the producer first, a warp's MMAs waited for all of it (its
  // shared stores precede the ldmatrix loads).  The slices read stage s % 2, the producer
  // writes stage (s + 1) % 2 and the words of step s + 2: the order changes no result.
  // Only the B128 tiles (B > 64; on compute capability 9.0 the wgmma kernel runs there by
  // default, so this serves other GPUs and FASTJL_CUDA_WGMMA=0): split, gaussian P and fp32
  // tiles (fp32 x, project_linear) spill, and the B32 / B64 tiles' steps grow 10-20%
  // (cuda_loop_probe.py, tests/test_cuda_compile.py; bench/NOTES.md, stop 25).
  constexpr bool kInterleave = !kGauss && !kFp32 && Cfg::kBlockB == 128;
  cta.prologue();
  constexpr int kStepUnroll = Steps::step_unroll();
#pragma unroll(kStepUnroll)
  for (int s = 0; s < cta.steps; ++s) {
    cta.wait_x();
    __syncthreads();
    if constexpr (kInterleave) {
      multiply(s, 0);
      cta.produce_next(s);
      multiply(s, 16);
    } else {
      cta.produce_next(s);
#pragma unroll
      for (int kk = 0; kk < kBlockD; kk += 16) multiply(s, kk);
    }
  }

  float* dest = p.dest + static_cast<int64_t>(blockIdx.y) * p.dest_stride_split;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const RowCol c = c_fragment(lane, r);
        const int64_t b = cta.b0 + wo.row + mt * 16 + c.row;
        const int64_t k = static_cast<int64_t>(cta.col0) + wo.col + nt * 8 + c.col;
        if (b < p.batch && k < p.proj_dim)
          dest[b * p.dest_stride_b + k * p.dest_stride_k] = acc[mt][nt][r];
      }
#else
  __trap();  // built for an architecture without mma.sync bf16 / cp.async (needs sm_80+)
#endif
}

// ---- host side -----------------------------------------------------------------------
// The non-template helpers are defined once, in project_kernel.cu.  Error messages start
// with `op`, the Python name of the entry point.

[[noreturn]] void raise_cuda(const char* op, cudaError_t err, const char* call);

inline void check_cuda(const char* op, cudaError_t err, const char* call) {
  if (err != cudaSuccess) raise_cuda(op, err, call);
}

// Refuses anything but device (or managed) memory: a host pointer would make the kernel
// fault and poison the CUDA context for the rest of the process.  Also where a machine
// without a driver gets its error.
void check_device_pointer(const char* op, uintptr_t ptr, const char* name);

// The launch plan of pr on a GPU with num_sms SMs, after checking that the caller's
// workspace is large enough and aligned for it (ValueError otherwise).
Plan plan_with_workspace(const char* op, const Problem& pr, uintptr_t workspace,
                         int64_t workspace_bytes, int64_t num_sms);

// out = the sum of the plan's D-split partials in the workspace, in split order.
void launch_sum_splits(const char* op, const Problem& pr, const Plan& plan, uintptr_t workspace,
                       cudaStream_t stream);

template <class Cfg, class Producer, int Kind>
void launch_tiles(const char* op, const KernelParams<Producer>& kp, const Plan& plan,
                  cudaStream_t stream) {
  constexpr int kSmem =
      SmemLayout<Cfg, Producer::kTileDtype == kFloat32 ? 4 : 2, Kind>::kTotal;
  auto kernel = project_kernel<Cfg, Producer, Kind>;
  // Above 48 KiB of dynamic shared memory a kernel must opt in (per device; cheap).
  check_cuda(op, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem),
             "cudaFuncSetAttribute");
  const dim3 grid(static_cast<unsigned>(plan.tiles_b * plan.tiles_n),
                  static_cast<unsigned>(plan.splits));
  kernel<<<grid, kThreads, kSmem, stream>>>(kp);
  check_cuda(op, cudaGetLastError(), "project_kernel launch");
}

template <class Cfg, class Producer>
void launch_kind(const char* op, int kind, const KernelParams<Producer>& kp, const Plan& plan,
                 cudaStream_t stream) {
  if (kind == kRademacher)
    launch_tiles<Cfg, Producer, kRademacher>(op, kp, plan, stream);
  else
    launch_tiles<Cfg, Producer, kGaussian>(op, kp, plan, stream);
}

// The PipelineParams of pr under `plan`: the destination is out when there is one split,
// else the [splits, B, K] workspace.  Shared by every kernel of the pipeline (the sm_90a
// one too: project_kernel_sm90.cu).
inline PipelineParams pipeline_params(const Problem& pr, const Plan& plan, uintptr_t workspace) {
  PipelineParams pp{};
  if (plan.splits == 1) {
    pp.dest = reinterpret_cast<float*>(pr.out);
    pp.dest_stride_split = 0;
    pp.dest_stride_b = pr.stride_ob;
    pp.dest_stride_k = pr.stride_ok;
  } else {
    pp.dest = reinterpret_cast<float*>(workspace);
    pp.dest_stride_split = pr.batch * pr.proj_dim;
    pp.dest_stride_b = pr.proj_dim;
    pp.dest_stride_k = 1;
  }
  pp.batch = pr.batch;
  pp.dim = pr.dim;
  pp.proj_dim = pr.proj_dim;
  pp.tiles_n = plan.tiles_n;
  pp.d_per_split = plan.d_per_split;
  pp.key = key_from_seed(pr.seed);
  pp.offset = static_cast<uint64_t>(pr.offset);
  return pp;
}

// Runs pr with x tiles from `src` (plan from plan_with_workspace, B > 0, the producer's
// own pointers already checked): the tile kernel into out, or into the workspace followed
// by the ordered reduction into out.  Asynchronous on `stream`.
template <class Producer>
void run_pipeline(const char* op, const typename Producer::Source& src, const Problem& pr,
                  const Plan& plan, uintptr_t workspace, cudaStream_t stream) {
  check_device_pointer(op, pr.out, "out_ptr");
  if (plan.splits > 1) check_device_pointer(op, workspace, "workspace_ptr");

  KernelParams<Producer> kp{};
  kp.src = src;
  kp.pipe = pipeline_params(pr, plan, workspace);

  if (plan.config == 0)
    launch_kind<ConfigB32>(op, pr.kind, kp, plan, stream);
  else if (plan.config == 1)
    launch_kind<ConfigB64>(op, pr.kind, kp, plan, stream);
  else
    launch_kind<ConfigB128>(op, pr.kind, kp, plan, stream);

  if (plan.splits > 1) launch_sum_splits(op, pr, plan, workspace, stream);
}

}  // namespace proj
}  // namespace fastjl
