// fastjl._C.project: y = x @ P[offset : offset + D, :K] on tensor cores, with P generated
// on the fly from spec v1 and never stored in global memory.
//
// One CTA (8 warps) owns a block_b x 128 tile of y and a contiguous range of D
// (project_plan.cuh).  Per step of 32 rows of P it
//   1. fetches the x tile [block_b x 32] into shared memory with cp.async (16-byte copies,
//      zero-filled past B and past the range) or, for strided/unaligned x, plain loads;
//   2. generates the P tile [32 x 128] into shared memory as 16-bit MMA operands
//      (project_tiles.cuh explains how);
//   3. each warp loads its fragments with ldmatrix (x: A operand; P: B operand, .trans
//      because the tile is stored [d][n]) and issues mma.sync m16n8k16, float32 accumulate.
// x and P are double-buffered, and step s+1's tiles are produced while step s is being
// multiplied, so one __syncthreads per step suffices (warps that finish generating start
// their MMAs while others still generate, which keeps ALU and tensor pipes busy together):
//
//   iteration s:  wait for x(s); barrier   -- x(s), P(s), words(s+1) are complete, and every
//                                             warp is done with step s-1's buffers
//                 fetch x(s+1)       -> stage (s+1)%2   (async)
//                 words(s+2)         -> stage  s%2      (rademacher, one warp: s % 8)
//                 P(s+1)             -> stage (s+1)%2   (from words(s+1), or gaussian)
//                 MMAs on x(s), P(s) from stage s%2
//
// Operand precision (relative error of y against float64, predicted; measured on a GPU
// by tests/test_cuda_backend.py):
//   fp16 / bf16 x: fed as is (exact).  Rademacher P = ±1 is exact in both types, so
//     y is exact products with float32 accumulation (~1e-7).  Gaussian P is split into
//     hi + lo 16-bit halves (two MMAs): ~22 bits for fp16 (error ~1e-7), ~16 bits for bf16
//     (per-entry error <= 2^-16, y error ~1e-5 < 3e-5).
//   fp32 x: split into bf16 hi + lo (two MMAs; bf16 keeps float32's exponent range, fp16
//     would flush small gradients): x is carried to ~16 bits (per-element error <= 2^-16,
//     y error ~5e-6, far below the 1e-3 target; tf32 would give ~3e-4).  Gaussian + fp32:
//     three MMAs (x_hi P_hi + x_lo P_hi + x_hi P_lo), the dropped x_lo P_lo is < 2^-16.
//
// Determinism: every output element is accumulated by one thread in a fixed order; D-splits
// are summed by sum_splits_kernel in split order.  No atomics, bitwise-reproducible runs.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "project_args.h"
#include "project_plan.cuh"
#include "project_tiles.cuh"
#include "sm80_primitives.cuh"

namespace fastjl {
namespace proj {
namespace {

constexpr const char* kOp = "fastjl._C.project";

struct KernelParams {
  XSource xs;
  int vector_loads;  // 1: cp.async path (see use_vector_loads), 0: element loads
  float* dest;       // out when there is one split, else the [splits, B, K] workspace
  int64_t dest_stride_split, dest_stride_b, dest_stride_k;
  int64_t dim, proj_dim;
  int64_t tiles_n, d_per_split;
  PhiloxKey key;
  uint64_t offset;
};

// The copy functor of load_x_tile_vector: cp.async on the device (never called on the host).
struct AsyncCopy16 {
  FASTJL_HD void operator()(unsigned char* dst, const unsigned char* src, int bytes) const {
#if defined(__CUDA_ARCH__)
    sm80::cp_async_16(dst, src, bytes);
#endif
  }
};

template <class Cfg, int XDtype, int Kind>
__global__ void __launch_bounds__(kThreads, 2) project_kernel(const KernelParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int T = XDtype == kFloat16 ? kMmaF16 : kMmaBF16;
  constexpr bool kFp32 = XDtype == kFloat32;
  constexpr bool kGauss = Kind == kGaussian;
  constexpr int kMT = Cfg::kMT, kNT = Cfg::kNT;
  using Layout = SmemLayout<Cfg, kFp32 ? 4 : 2, Kind>;
  extern __shared__ __align__(16) unsigned char smem[];

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x / p.tiles_n) * Cfg::kBlockB;
  const uint32_t col0 = static_cast<uint32_t>(blockIdx.x % p.tiles_n) * kBlockN;
  const uint32_t rademacher_group = col0 / kRademacherColumnsPerCounter;
  const DRange range = split_range(blockIdx.y, p.d_per_split, p.dim);
  const int64_t steps = (range.end - range.begin + kBlockD - 1) / kBlockD;
  const uint64_t row0 = p.offset + static_cast<uint64_t>(range.begin);  // P row of step 0

  auto x_tile = [&](int64_t step) { return smem + Layout::x(static_cast<int>(step & 1)); };
  auto p_tile = [&](int64_t step, int plane) {
    return reinterpret_cast<uint16_t*>(smem + Layout::p(static_cast<int>(step & 1), plane));
  };
  auto words = [&](int64_t step) {
    return reinterpret_cast<U32x4*>(smem + Layout::w(static_cast<int>(step & 1)));
  };
  auto step_row = [&](int64_t step) { return row0 + static_cast<uint64_t>(step) * kBlockD; };

  auto fetch_x = [&](int64_t step) {
    const int64_t d0 = range.begin + step * kBlockD;
    unsigned char* tile = x_tile(step);
    if (p.vector_loads) {
      load_x_tile_vector(tid, p.xs, Cfg::kBlockB, b0, d0, range.end, tile, AsyncCopy16{});
      sm80::cp_async_commit();
    } else if (kFp32) {
      load_x_tile_elements(tid, p.xs, Cfg::kBlockB, b0, d0, range.end,
                           reinterpret_cast<float*>(tile));
    } else {
      load_x_tile_elements(tid, p.xs, Cfg::kBlockB, b0, d0, range.end,
                           reinterpret_cast<uint16_t*>(tile));
    }
  };
  auto compute_words = [&](int64_t step) {
    rademacher_words(lane, p.key, step_row(step), rademacher_group, words(step));
  };
  auto generate_p = [&](int64_t step) {
    if (kGauss)
      gaussian_generate<T>(tid, p.key, step_row(step), col0, p.proj_dim, p_tile(step, 0),
                           p_tile(step, 1));
    else
      rademacher_expand<T>(tid, words(step), p_tile(step, 0));
  };

  const RowCol wo = warp_origin<Cfg>(warp);
  const RowCol lm = ldmatrix_x4_source(lane);
  float acc[kMT][kNT][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mt][nt][r] = 0.0f;

  auto multiply = [&](int64_t step) {
    const unsigned char* xt = x_tile(step);
    const uint16_t* p_hi = p_tile(step, 0);
    const uint16_t* p_lo = p_tile(step, kGauss ? 1 : 0);
#pragma unroll
    for (int kk = 0; kk < kBlockD; kk += 16) {
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
          sm80::ldmatrix_x4(a_hi[mt], reinterpret_cast<const uint16_t*>(xt) +
                                          (row + lm.row) * kXStride + kk + lm.col);
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
            sm80::mma_16816<T>(c, a_hi[mt], b_hi[2 * h], b_hi[2 * h + 1]);
            if (kFp32) sm80::mma_16816<T>(c, a_lo[mt], b_hi[2 * h], b_hi[2 * h + 1]);
            if (kGauss) sm80::mma_16816<T>(c, a_hi[mt], b_lo[2 * h], b_lo[2 * h + 1]);
          }
      }
    }
  };

  // Prologue: x(0), P(0), and for rademacher words(1).
  fetch_x(0);
  if (kGauss) {
    generate_p(0);
  } else {
    if (warp == 0) compute_words(0);
    if (warp == 1 && steps > 1) compute_words(1);
    __syncthreads();
    generate_p(0);
  }

  for (int64_t s = 0; s < steps; ++s) {
    if (p.vector_loads) sm80::cp_async_wait_all();
    __syncthreads();
    if (s + 1 < steps) {
      fetch_x(s + 1);
      if (!kGauss && s + 2 < steps && warp == s % kWarps) compute_words(s + 2);
      generate_p(s + 1);
    }
    multiply(s);
  }

  float* dest = p.dest + static_cast<int64_t>(blockIdx.y) * p.dest_stride_split;
  const int64_t batch = p.xs.batch;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const RowCol c = c_fragment(lane, r);
        const int64_t b = b0 + wo.row + mt * 16 + c.row;
        const int64_t k = static_cast<int64_t>(col0) + wo.col + nt * 8 + c.col;
        if (b < batch && k < p.proj_dim)
          dest[b * p.dest_stride_b + k * p.dest_stride_k] = acc[mt][nt][r];
      }
#else
  __trap();  // built for an architecture without mma.sync bf16 / cp.async (needs sm_80+)
#endif
}

// out[b, k] = sum over s = 0, 1, ..., splits-1 (in that order) of parts[s, b, k].
__global__ void sum_splits_kernel(const float* __restrict__ parts, float* __restrict__ out,
                                  int64_t batch, int64_t proj_dim, int64_t splits,
                                  int64_t stride_ob, int64_t stride_ok) {
  const int64_t n = batch * proj_dim;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += stride) {
    float total = parts[idx];
    for (int64_t s = 1; s < splits; ++s) total += parts[s * n + idx];
    const int64_t b = idx / proj_dim;
    out[b * stride_ob + (idx - b * proj_dim) * stride_ok] = total;
  }
}

// ---- host side ---------------------------------------------------------------------

[[noreturn]] void raise_cuda(cudaError_t err, const char* call) {
  cudaGetLastError();  // clear a non-sticky error so later CUDA calls are unaffected
  throw std::runtime_error(std::string(kOp) + ": " + cudaGetErrorString(err) + " (" + call +
                           ")");
}

void check(cudaError_t err, const char* call) {
  if (err != cudaSuccess) raise_cuda(err, call);
}

// A host pointer would make the kernel fault and poison the CUDA context for the rest of
// the process; refuse it up front.  Also where a machine without a driver gets its error.
void check_device_pointer(uintptr_t ptr, const char* name) {
  cudaPointerAttributes attr{};
  check(cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr)),
        "cudaPointerGetAttributes");
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    throw std::invalid_argument(std::string(kOp) + ": " + name + " is not CUDA device memory");
}

template <class Cfg, int XDtype, int Kind>
void launch_tiles(const KernelParams& kp, const Plan& plan, cudaStream_t stream) {
  constexpr int kSmem = SmemLayout<Cfg, XDtype == kFloat32 ? 4 : 2, Kind>::kTotal;
  auto kernel = project_kernel<Cfg, XDtype, Kind>;
  // Above 48 KiB of dynamic shared memory a kernel must opt in (per device; cheap).
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem),
        "cudaFuncSetAttribute");
  const dim3 grid(static_cast<unsigned>(plan.tiles_b * plan.tiles_n),
                  static_cast<unsigned>(plan.splits));
  kernel<<<grid, kThreads, kSmem, stream>>>(kp);
  check(cudaGetLastError(), "project_kernel launch");
}

template <class Cfg, int XDtype>
void launch_kind(int kind, const KernelParams& kp, const Plan& plan, cudaStream_t stream) {
  if (kind == kRademacher)
    launch_tiles<Cfg, XDtype, kRademacher>(kp, plan, stream);
  else
    launch_tiles<Cfg, XDtype, kGaussian>(kp, plan, stream);
}

template <class Cfg>
void launch_dtype(const ProjectArgs& a, const KernelParams& kp, const Plan& plan,
                  cudaStream_t stream) {
  if (a.x_dtype == kFloat32)
    launch_kind<Cfg, kFloat32>(a.kind, kp, plan, stream);
  else if (a.x_dtype == kFloat16)
    launch_kind<Cfg, kFloat16>(a.kind, kp, plan, stream);
  else
    launch_kind<Cfg, kBFloat16>(a.kind, kp, plan, stream);
}

}  // namespace
}  // namespace proj

void project_device(const ProjectArgs& a, uintptr_t workspace, int64_t workspace_bytes,
                    int64_t num_sms, uintptr_t stream_handle) {
  using namespace proj;
  validate_project_args(a, kOp);
  const Plan plan = make_plan(a.batch, a.dim, a.proj_dim, num_sms, kOp);
  if (workspace_bytes < plan.workspace_bytes || (plan.workspace_bytes > 0 && workspace == 0))
    throw std::invalid_argument(std::string(kOp) + ": this call needs a workspace of " +
                                std::to_string(plan.workspace_bytes) + " bytes, got " +
                                std::to_string(workspace_bytes) +
                                " (size it with project_workspace_bytes)");
  if (plan.workspace_bytes > 0 && workspace % 16 != 0)
    throw std::invalid_argument(std::string(kOp) + ": workspace_ptr must be 16-byte aligned");
  if (a.batch == 0) return;
  check_device_pointer(a.x, "x_ptr");
  check_device_pointer(a.out, "out_ptr");
  if (plan.splits > 1) check_device_pointer(workspace, "workspace_ptr");

  KernelParams kp{};
  kp.xs = XSource{reinterpret_cast<const unsigned char*>(a.x), dtype_size(a.x_dtype), a.batch,
                  a.stride_xb, a.stride_xd};
  kp.vector_loads = use_vector_loads(a) ? 1 : 0;
  if (plan.splits == 1) {
    kp.dest = reinterpret_cast<float*>(a.out);
    kp.dest_stride_split = 0;
    kp.dest_stride_b = a.stride_ob;
    kp.dest_stride_k = a.stride_ok;
  } else {
    kp.dest = reinterpret_cast<float*>(workspace);
    kp.dest_stride_split = a.batch * a.proj_dim;
    kp.dest_stride_b = a.proj_dim;
    kp.dest_stride_k = 1;
  }
  kp.dim = a.dim;
  kp.proj_dim = a.proj_dim;
  kp.tiles_n = plan.tiles_n;
  kp.d_per_split = plan.d_per_split;
  kp.key = key_from_seed(a.seed);
  kp.offset = static_cast<uint64_t>(a.offset);

  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (plan.config == 0)
    launch_dtype<ConfigB32>(a, kp, plan, stream);
  else if (plan.config == 1)
    launch_dtype<ConfigB64>(a, kp, plan, stream);
  else
    launch_dtype<ConfigB128>(a, kp, plan, stream);

  if (plan.splits > 1) {
    constexpr int kReduceThreads = 256;
    const int64_t n = a.batch * a.proj_dim;
    const int64_t blocks = std::min<int64_t>(ceil_div(n, kReduceThreads), 4096);
    sum_splits_kernel<<<static_cast<unsigned>(blocks), kReduceThreads, 0, stream>>>(
        reinterpret_cast<const float*>(workspace), reinterpret_cast<float*>(a.out), a.batch,
        a.proj_dim, plan.splits, a.stride_ob, a.stride_ok);
    check(cudaGetLastError(), "sum_splits_kernel launch");
  }
}

}  // namespace fastjl
