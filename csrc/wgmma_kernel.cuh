// The projection pipeline of project_kernel.cuh with its MMA stage on Hopper's warpgroup
// MMA (sm_90a: wgmma.mma_async), for batch tiles of 64 and 128 rows.  Same plan, same P
// generation and x fetch (the very functions of project_tiles.cuh, with the wgmma layouts of
// wgmma_layouts.cuh), same D-split order: only the MMAs and the tile layouts differ.
//
// One CTA = 256 threads = 2 warpgroups (the tile writers split their work over 256 threads).
// B128: warpgroup g multiplies rows 64 g .. of the x tile by the whole P tile (m64n128k16,
// 64 f32 accumulators per thread); B64: both use all 64 rows, warpgroup g takes columns
// 64 g .. of P (m64n64k16, 32 accumulators).  mma.sync needed the A and B fragments of every
// warp in registers (ldmatrix) plus 64 accumulators at B128, and hit the 128-register cap of
// 2 CTAs/SM; wgmma reads A and B from shared memory itself, so a thread holds only its
// accumulators (and, for fp32 x, 8 A registers).
//
//   iteration s:  x wait; fence.proxy.async; barrier  -- x(s), P(s), words(s+1) published
//                                     to the async proxy; step s-1's MMAs done
//                 wgmma.fence; issue the wgmmas of step s on x(s), P(s); commit  (async)
//                 fetch x(s+3) -> x stage (s+3)%4 (step s-1's); every 8th step,
//                 words(s+2 .. s+9), a step's per warp (words_pipeline.h);
//                 P(s+1) -> P stage (s+1)%2
//                 wgmma.wait_group 0     -- while the tensor cores ran, this warp generated
// The wgmmas of step s read x stage s%4 and P stage s%2 while the threads write the stages
// step s-1 read, and every thread waits for its wgmmas before the next barrier, after which
// the stages of step s are rewritten.  x runs three steps ahead (x_pipeline.h), P one.
//
// Operands: fp16/bf16 x: A from shared memory (x tile K-major, 64B swizzle), one wgmma per
// k16 slice and P plane.  fp32 x: A from registers, split into bf16 hi + lo per element as
// in the mma.sync kernel (a_fragment + split_pair, read from the padded fp32 tile): two
// wgmmas (x_hi P, x_lo P).  Gaussian: the P tile's hi and lo planes (+ x_hi P_lo).
// Gaussian products are summed per step into a zeroed register tile (scale-d = 0 on the
// step's first wgmma) and added to the accumulators in float32, as the mma.sync kernel does
// per k16 slice: long chains through the accumulator let the tensor cores' truncating
// alignment bias the sum (bench/NOTES.md); here the chain is one step (2 k16 slices).
//
// Determinism: each output is accumulated by one thread in a fixed order, D-splits are
// summed by sum_splits_kernel in split order.  Results are bitwise reproducible run to run;
// they are not bitwise equal to the mma.sync kernel's (another MMA order inside a step).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "project_kernel.cuh"
#include "wgmma_layouts.cuh"
#include "wgmma_primitives.cuh"

namespace fastjl {
namespace sm90 {

using proj::kBlockD;
using proj::kThreads;
using proj::KernelParams;
using proj::PipelineParams;

// 2 CTAs per SM (128 registers) except gaussian B128, whose 64 accumulators plus the 64 of
// the per-step sum do not fit in 128.
template <class Cfg, int Kind>
constexpr int sm90_min_blocks() {
  return Kind == kGaussian && Cfg::kBlockB == 128 ? 1 : 2;
}

// Byte offsets of the tiles: P double-buffered, the rademacher words in kWordSlots slots
// (words_pipeline.h), x in kXStages stages (x_pipeline.h: fetched three steps ahead; run 7
// measured this kernel waiting on x with the double buffer's one step of lead).  P planes
// first: they are 1024-byte swizzle atoms and the base is 1024-aligned (the kernel rounds
// its dynamic shared memory up); the 16-bit x tile's atoms are 512 bytes, the fp32 tile is
// the padded one (16-byte aligned).
template <class Cfg, int XDtypeSize, int Kind>
struct Sm90SmemLayout {
  static constexpr int kXStages = 4;
  static constexpr int kPPlanes = Kind == kGaussian ? 2 : 1;
  static constexpr int kPBytes = PTileMN128B::kPlaneBytes;  // per plane and stage
  static constexpr int kXBytes = XDtypeSize == 4
                                     ? Cfg::kBlockB * proj::kXStride * 4
                                     : Cfg::kBlockB * XTileK64B::kRowBytes;
  // Rademacher words: kWordSlots slots of 32 rows x 16 bytes (words_pipeline.h).
  static constexpr int kWordSlots = Kind == kRademacher ? proj::KernelWords::kSlots : 0;
  static constexpr int kWBytes = kBlockD * 16;  // per slot
  static constexpr int kTotal =
      2 * kPPlanes * kPBytes + kXStages * kXBytes + kWordSlots * kWBytes;
  static constexpr int kAlign = 1024;  // rounding slack requested on top of kTotal
  static constexpr FASTJL_HD int p(int stage, int plane) {
    return (stage * kPPlanes + plane) * kPBytes;
  }
  static constexpr FASTJL_HD int x(int stage) { return 2 * kPPlanes * kPBytes + stage * kXBytes; }
  static constexpr FASTJL_HD int w(int slot) {
    return 2 * kPPlanes * kPBytes + kXStages * kXBytes + slot * kWBytes;
  }
  static_assert(kPBytes % 1024 == 0 && (2 * kPPlanes * kPBytes) % 1024 == 0, "P atoms");
  static_assert(XDtypeSize == 4 || kXBytes % 512 == 0, "x atoms");
  static_assert(p(1, kPPlanes - 1) + kPBytes == x(0) && x(kXStages - 1) + kXBytes == w(0) &&
                    w(kWordSlots) == kTotal,
                "the stages' regions tile the buffer without overlap");
  // An H100 SM has 228 KiB of shared memory and reserves 1 KiB per CTA: the CTAs per SM
  // that sm90_min_blocks asks for must fit (the largest, fp32 x rademacher B128, takes
  // 2 x 106 KiB).
  static_assert(sm90_min_blocks<Cfg, Kind>() * (kTotal + kAlign + 1024) <= 228 * 1024,
                "the x stages leave room for the CTAs per SM the launch bounds promise");
  // The kernel advances descriptors encoded once (descriptor_advance) over its whole buffer.
  static_assert(descriptor_advance_holds(kTotal, 228 * 1024),
                "a descriptor advanced within the buffer equals the one encoded there");
};

template <class Cfg, class Producer, int Kind>
__global__ void __launch_bounds__(kThreads, (sm90_min_blocks<Cfg, Kind>()))
    project_kernel_sm90(const KernelParams<Producer> kp) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int XDtype = Producer::kTileDtype;
  constexpr int T = proj::mma_type_for(XDtype);
  constexpr bool kFp32 = XDtype == kFloat32;
  constexpr bool kGauss = Kind == kGaussian;
  using W = WarpgroupTile<Cfg>;
  using Layout = Sm90SmemLayout<Cfg, kFp32 ? 4 : 2, Kind>;
  using PL = PTileMN128B;
  constexpr int kRegs = W::kAccRegs;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // The swizzle atoms need 1024-byte aligned addresses (base offset 0 in the descriptors):
  // rounded up here, within the kAlign bytes of slack the launch adds.
  unsigned char* smem =
      smem_raw + ((1024u - (sm80::smem_addr(smem_raw) & 1023u)) & 1023u);
  const PipelineParams& p = kp.pipe;

  using Steps = proj::CtaSteps<Cfg, Producer, Kind, Layout, PL>;
  const Steps cta(smem, kp, threadIdx.x);
  const int tid = cta.tid;
  const int wg = tid >> 7, wt = tid & 127;  // warpgroup, thread within it

  float acc[kRegs];
#pragma unroll
  for (int i = 0; i < kRegs; ++i) acc[i] = 0.0f;
  // Gaussian: the step's products, zeroed by scale-d = 0 on its first wgmma (unused, and
  // optimized away, for rademacher).
  float part[kRegs];

  // The operands' descriptors at stage 0, slice 0, encoded once: a step advances them by its
  // stage's and slice's byte offsets (re-encoding the stage's address every step was ~25
  // instructions of the step, bench/NOTES.md stop 27).
  const uint64_t p_desc0 = PL::descriptor(sm80::smem_addr(smem + Layout::p(0, 0)), W::col0(wg), 0);
  const uint64_t a_desc0 =
      XTileK64B::descriptor(sm80::smem_addr(smem + Layout::x(0)), W::row0(wg), 0);

  // Issues (does not wait for) the wgmmas of one step.  fp32 x: the A registers of both k16
  // slices are formed first, so one wgmma.fence covers them and the accumulators.
  auto issue = [&](int step) {
    float(&dst)[kRegs] = *(kGauss ? &part : &acc);
    const int p_stage = static_cast<int>(step & 1);
    const uint32_t p_hi = static_cast<uint32_t>(Layout::p(p_stage, 0) - Layout::p(0, 0));
    const uint32_t p_lo =
        static_cast<uint32_t>(Layout::p(p_stage, kGauss ? 1 : 0) - Layout::p(0, 0));
    const int x_stage = proj::XPipeline<Layout::kXStages>::stage(step);
    const uint32_t x_at = static_cast<uint32_t>(Layout::x(x_stage) - Layout::x(0));
    constexpr int kSlices = kBlockD / 16;
    uint32_t a_hi[kSlices][4], a_lo[kSlices][4];
    if constexpr (kFp32) {
      const float* xf = reinterpret_cast<const float*>(cta.x_tile(step));
#pragma unroll
      for (int kk = 0; kk < kSlices; ++kk)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const proj::RowCol a = a_register_element(wt, r);
          const float2 v = *reinterpret_cast<const float2*>(
              xf + (W::row0(wg) + a.row) * proj::kXStride + kk * 16 + a.col);
          split_pair<kMmaBF16>(v.x, v.y, a_hi[kk][r], a_lo[kk][r]);
        }
    }
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kSlices; ++kk) {
      const uint64_t b_hi = descriptor_advance(p_desc0, p_hi + kk * PL::kSliceBytes);
      const uint64_t b_lo = descriptor_advance(p_desc0, p_lo + kk * PL::kSliceBytes);
      const int first = kGauss && kk == 0 ? 0 : 1;  // scale-d of the step's first wgmma
      if constexpr (kFp32) {
        Wgmma<W::kN>::template rs<kMmaBF16>(dst, a_hi[kk], b_hi, first);
        Wgmma<W::kN>::template rs<kMmaBF16>(dst, a_lo[kk], b_hi, 1);
        if (kGauss) Wgmma<W::kN>::template rs<kMmaBF16>(dst, a_hi[kk], b_lo, 1);
      } else {
        const uint64_t a = descriptor_advance(a_desc0, x_at + kk * XTileK64B::kSliceBytes);
        Wgmma<W::kN>::template ss<T>(dst, a, b_hi, first);
        if (kGauss) Wgmma<W::kN>::template ss<T>(dst, a, b_lo, 1);
      }
    }
    wgmma_commit();
  };

  cta.prologue();
  constexpr int kStepUnroll = Steps::step_unroll();
#pragma unroll(kStepUnroll)
  for (int s = 0; s < cta.steps; ++s) {
    cta.wait_x();
    fence_proxy_async_shared();  // this thread's x and P writes -> visible to wgmma
    __syncthreads();
    issue(s);
    cta.produce_next(s);  // overlaps the wgmmas in flight
    wgmma_wait<0>();
    if constexpr (kGauss) {
#pragma unroll
      for (int i = 0; i < kRegs; ++i) acc[i] += part[i];
    }
  }

  float* dest = p.dest + static_cast<int64_t>(blockIdx.y) * p.dest_stride_split;
#pragma unroll
  for (int i = 0; i < kRegs; ++i) {
    const proj::RowCol e = epilogue_element<Cfg>(tid, i);
    const int64_t b = cta.b0 + e.row;
    const int64_t k = static_cast<int64_t>(cta.col0) + e.col;
    if (b < p.batch && k < p.proj_dim) dest[b * p.dest_stride_b + k * p.dest_stride_k] = acc[i];
  }
#else
  __trap();  // built for an architecture without wgmma (needs sm_90a)
#endif
}

template <class Cfg, class Producer, int Kind>
void launch_tiles_sm90(const char* op, const KernelParams<Producer>& kp, const proj::Plan& plan,
                       cudaStream_t stream) {
  using Layout = Sm90SmemLayout<Cfg, Producer::kTileDtype == kFloat32 ? 4 : 2, Kind>;
  constexpr int kSmem = Layout::kTotal + Layout::kAlign;
  auto kernel = project_kernel_sm90<Cfg, Producer, Kind>;
  proj::check_cuda(op,
                   cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        kSmem),
                   "cudaFuncSetAttribute");
  const dim3 grid(static_cast<unsigned>(plan.tiles_b * plan.tiles_n),
                  static_cast<unsigned>(plan.splits));
  kernel<<<grid, kThreads, kSmem, stream>>>(kp);
  proj::check_cuda(op, cudaGetLastError(), "project_kernel_sm90 launch");
}

template <class Cfg, class Producer>
void launch_kind_sm90(const char* op, int kind, const KernelParams<Producer>& kp,
                      const proj::Plan& plan, cudaStream_t stream) {
  if (kind == kRademacher)
    launch_tiles_sm90<Cfg, Producer, kRademacher>(op, kp, plan, stream);
  else
    launch_tiles_sm90<Cfg, Producer, kGaussian>(op, kp, plan, stream);
}

// run_pipeline (project_kernel.cuh) on the wgmma kernel: plan configs 1 (B64) and 2 (B128).
template <class Producer>
void run_pipeline_sm90(const char* op, const typename Producer::Source& src,
                       const Problem& pr, const proj::Plan& plan, uintptr_t workspace,
                       cudaStream_t stream) {
  proj::check_device_pointer(op, pr.out, "out_ptr");
  if (plan.splits > 1) proj::check_device_pointer(op, workspace, "workspace_ptr");
  KernelParams<Producer> kp{};
  kp.src = src;
  kp.pipe = proj::pipeline_params(pr, plan, workspace);
  if (plan.config == 1)
    launch_kind_sm90<proj::ConfigB64>(op, pr.kind, kp, plan, stream);
  else
    launch_kind_sm90<proj::ConfigB128>(op, pr.kind, kp, plan, stream);
  if (plan.splits > 1) proj::launch_sum_splits(op, pr, plan, workspace, stream);
}

}  // namespace sm90
}  // namespace fastjl
