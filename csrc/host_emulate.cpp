// CPU emulation of the projection pipeline (project_kernel.cuh), lane by lane, for both of
// its x-tile producers: project's x tiles and project_linear's gradient tiles.
//
// Runs the kernel's decomposition with the kernel's own code: the launch plan and D-splits
// (project_plan.cuh), the thread/lane index maps (project_index.cuh), the x-tile producers
// (load_x_tile of project_tiles.cuh, load_g_tile of linear_tiles.cuh) and the P-tile
// generation (project_tiles.cuh), all called for tid = 0..255 on a byte array standing in
// for shared memory, with the same pitches and double-buffer offsets, and the 16-bit
// conversions (half_bits.cuh, software round-to-nearest-even).  The three instructions the
// host cannot run are modelled from the PTX ISA's description, written out here
// independently of project_index.cuh:
//   * cp.async 16 with src-size: copy src-size bytes, zero-fill the rest;
//   * ldmatrix .m8n8.x4(.trans).b16: which lane receives which elements;
//   * mma.sync m16n8k16 .row.col: the A/B/C fragment layouts (products exact in float64,
//     added to the float32 accumulator; the hardware's internal summation order differs,
//     so results agree with the GPU to float32 rounding, not bit for bit).
// tests/test_c_fragments.py and tests/test_c_linear.py compare the results with fastjl's
// torch backend.
//
// What this does NOT verify (needs a GPU run, tests/test_cuda_backend.py and
// tests/test_cuda_linear.py): the PTX strings themselves (operand order of cvt/mma, .trans),
// cp.async completion and the barrier placement (races), shared-memory alignment and bank
// conflicts, launch config.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "host_copy16.h"
#include "host_sum_splits.h"
#include "linear_args.h"
#include "linear_tiles.cuh"
#include "project_args.h"
#include "project_plan.cuh"
#include "project_tiles.cuh"
#include "x_pipeline.h"  // XPipeline: the x tiles' stages

namespace fastjl {
namespace {

using namespace proj;

constexpr const char* kOp = "fastjl._C.host_emulate_project";
constexpr const char* kLinearOp = "fastjl._C.host_emulate_project_linear";

// A warp's registers: 32 lanes x up to 4 32-bit registers.
struct WarpRegs {
  uint32_t r[32][4];
};

float half_value(int type, uint32_t bits16) {
  return type == kMmaBF16 ? half_to_float<kMmaBF16>(bits16) : half_to_float<kMmaF16>(bits16);
}

uint16_t read16(const unsigned char* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 (PTX ISA): lanes 8q .. 8q+7 supply the
// addresses of rows 0..7 of matrix q (8 consecutive 16-bit elements each).  Without .trans
// lane l receives in register q the elements (row l/4, cols 2(l%4), 2(l%4)+1) of matrix q;
// with .trans the elements (rows 2(l%4), 2(l%4)+1, col l/4).  First element in the low half.
WarpRegs ldmatrix_x4(const unsigned char* const address[32], bool trans) {
  WarpRegs out{};
  for (int q = 0; q < 4; ++q)
    for (int lane = 0; lane < 32; ++lane) {
      uint16_t e[2];
      for (int i = 0; i < 2; ++i) {
        const int row = trans ? 2 * (lane % 4) + i : lane / 4;
        const int col = trans ? lane / 4 : 2 * (lane % 4) + i;
        e[i] = read16(address[8 * q + row] + 2 * col);
      }
      out.r[lane][q] = static_cast<uint32_t>(e[0]) | (static_cast<uint32_t>(e[1]) << 16);
    }
  return out;
}

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 (PTX ISA fragment
// layouts; groupID = lane >> 2, threadID_in_group = lane % 4):
//   A a_i (i = 0..7, register i/2, half i%2): row = groupID + 8 if i in {2,3,6,7};
//       col = 2 * threadID_in_group + (i & 1), + 8 if i >= 4.
//   B b_i (i = 0..3, register b_reg[i/2], half i%2): row = 2 * threadID_in_group + (i & 1),
//       + 8 if i >= 2; col = groupID.
//   C c_i (i = 0..3): row = groupID, + 8 if i >= 2; col = 2 * threadID_in_group + (i & 1).
void mma_16816(int type, float acc[32][4], const WarpRegs& a, const uint32_t b_reg[32][2]) {
  double am[16][16], bm[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 8; ++i) {
      const int row = g + ((i == 2 || i == 3 || i == 6 || i == 7) ? 8 : 0);
      const int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
      const uint32_t reg = a.r[lane][i / 2];
      am[row][col] = half_value(type, (i & 1) ? reg >> 16 : reg & 0xFFFFu);
    }
    for (int i = 0; i < 4; ++i) {
      const int row = 2 * t + (i & 1) + (i >= 2 ? 8 : 0);
      const uint32_t reg = b_reg[lane][i / 2];
      bm[row][g] = half_value(type, (i & 1) ? reg >> 16 : reg & 0xFFFFu);
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
      const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
      double sum = 0.0;
      for (int k = 0; k < 16; ++k) sum += am[row][k] * bm[k][col];
      acc[lane][i] = static_cast<float>(static_cast<double>(acc[lane][i]) + sum);
    }
  }
}

struct Dest {
  float* base;
  int64_t stride_split, stride_b, stride_k;
};

// One CTA (tile_b, tile_n, split): the kernel's steps in order, each phase run for all
// threads / warps before the next (the kernel separates them by barriers).  XDtype is the
// x tile's element type; fetch(code, tid, block_b, b0, d0, d_end, whole_step, tile) is the
// producer's fetch, code the kernel's TileCode for the kind (a std::integral_constant).
template <class Cfg, int XDtype, int Kind, class Fetch>
void emulate_cta(const Problem& a, const Plan& plan, int64_t cta, int64_t split,
                 const Dest& dest, std::vector<Packed4>& smem_store, const Fetch& fetch) {
  constexpr int T = mma_type_for(XDtype);
  constexpr bool kFp32 = XDtype == kFloat32;
  constexpr bool kGauss = Kind == kGaussian;
  constexpr int kMT = Cfg::kMT, kNT = Cfg::kNT;
  using Layout = SmemLayout<Cfg, kFp32 ? 4 : 2, Kind>;
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_store.data());
  std::memset(smem, 0xFF, Layout::kTotal);  // poison: anything not written reads as NaN

  const PhiloxKey key = key_from_seed(a.seed);
  // Same index arithmetic as the kernel's prologue (blockIdx.x = cta, blockIdx.y = split).
  const int64_t b0 = (cta / plan.tiles_n) * Cfg::kBlockB;
  const uint32_t col0 = static_cast<uint32_t>(cta % plan.tiles_n) * kBlockN;
  const DRange range = split_range(split, plan.d_per_split, a.dim);
  const int64_t steps = range_steps(range), whole_steps = range_whole_steps(range);
  const uint64_t row0 = a.offset + static_cast<uint64_t>(range.begin);

  std::vector<float> acc_store(static_cast<size_t>(kWarps) * kMT * kNT * 32 * 4, 0.0f);
  auto acc = [&](int warp, int mt, int nt) {
    return reinterpret_cast<float(*)[4]>(&acc_store[((warp * kMT + mt) * kNT + nt) * 32 * 4]);
  };

  for (int64_t s = 0; s < steps; ++s) {
    const int stage = static_cast<int>(s & 1);  // P: double-buffered
    unsigned char* x_tile = smem + Layout::x(XPipeline<Layout::kXStages>::stage(s));
    uint16_t* p_hi = reinterpret_cast<uint16_t*>(smem + Layout::p(stage, 0));
    uint16_t* p_lo = reinterpret_cast<uint16_t*>(smem + Layout::p(stage, kGauss ? 1 : 0));
    const int64_t d0 = range.begin + s * kBlockD;
    const uint64_t step_row = row0 + static_cast<uint64_t>(s) * kBlockD;

    for (int tid = 0; tid < kThreads; ++tid)
      fetch(std::integral_constant<TileCode, tile_code_for(Kind)>{}, tid, Cfg::kBlockB, b0, d0,
            range.end, s < whole_steps, x_tile);
    if (kGauss) {
      for (int tid = 0; tid < kThreads; ++tid)
        gaussian_generate<T>(tid, key, step_row, col0, a.proj_dim, p_hi, p_lo);
    } else {
      // The kernel's slot for this step's words (which warp computes them, and when, is
      // words_pipeline.h's schedule, checked there at compile time).
      const int slot = KernelWords::slot(static_cast<int>(s));
      U32x4* words = reinterpret_cast<U32x4*>(smem + Layout::w(slot));
      for (int lane = 0; lane < 32; ++lane)
        rademacher_words(lane, key, step_row, col0 / kRademacherColumnsPerCounter, words);
      for (int tid = 0; tid < kThreads; ++tid) rademacher_expand<T>(tid, words, p_hi);
    }

    for (int warp = 0; warp < kWarps; ++warp) {
      const RowCol wo = warp_origin<Cfg>(warp);
      for (int kk = 0; kk < kBlockD; kk += 16) {
        WarpRegs a_hi[kMT], a_lo[kMT];
        for (int mt = 0; mt < kMT; ++mt) {
          const int row = wo.row + mt * 16;
          if constexpr (kFp32) {
            const float* xf = reinterpret_cast<const float*>(x_tile);
            for (int lane = 0; lane < 32; ++lane)
              for (int r = 0; r < 4; ++r) {
                const RowCol f = a_fragment(lane, r);
                const float* v = xf + (row + f.row) * kXStride + kk + f.col;
                split_pair<kMmaBF16>(v[0], v[1], a_hi[mt].r[lane][r], a_lo[mt].r[lane][r]);
              }
          } else {
            const unsigned char* address[32];
            for (int lane = 0; lane < 32; ++lane) {
              const RowCol lm = ldmatrix_x4_source(lane);
              // As the kernel: the lane's base offset, then the m16 tile and k16 slice.
              using XL = MmaXLayout<XDtype>;
              const auto base = static_cast<uint32_t>(XL::offset(wo.row + lm.row, lm.col, 2));
              address[lane] = x_tile + XL::shifted(base, mt * 16, kk);
            }
            a_hi[mt] = ldmatrix_x4(address, false);
          }
        }
        for (int np = 0; np < kNT / 2; ++np) {
          const unsigned char* hi_address[32];
          const unsigned char* lo_address[32];
          for (int lane = 0; lane < 32; ++lane) {
            const RowCol lm = ldmatrix_x4_source(lane);
            const int offset = (kk + lm.row) * kPStride + wo.col + np * 16 + lm.col;
            hi_address[lane] = reinterpret_cast<const unsigned char*>(p_hi + offset);
            lo_address[lane] = reinterpret_cast<const unsigned char*>(p_lo + offset);
          }
          const WarpRegs b_hi = ldmatrix_x4(hi_address, true);
          const WarpRegs b_lo = ldmatrix_x4(lo_address, true);
          for (int h = 0; h < 2; ++h) {
            uint32_t bh[32][2], bl[32][2];
            for (int lane = 0; lane < 32; ++lane) {
              bh[lane][0] = b_hi.r[lane][2 * h];
              bh[lane][1] = b_hi.r[lane][2 * h + 1];
              bl[lane][0] = b_lo.r[lane][2 * h];
              bl[lane][1] = b_lo.r[lane][2 * h + 1];
            }
            for (int mt = 0; mt < kMT; ++mt) {
              float(*c)[4] = acc(warp, mt, 2 * np + h);
              if (!kGauss) {
                mma_16816(T, c, a_hi[mt], bh);
                if (kFp32) mma_16816(T, c, a_lo[mt], bh);
                continue;
              }
              // As the kernel: the slice's MMAs from zero, then one float32 add into acc.
              float t[32][4] = {};
              mma_16816(T, t, a_hi[mt], bh);
              if (kFp32) mma_16816(T, t, a_lo[mt], bh);
              mma_16816(T, t, a_hi[mt], bl);
              for (int lane = 0; lane < 32; ++lane)
                for (int r = 0; r < 4; ++r) c[lane][r] += t[lane][r];
            }
          }
        }
      }
    }
  }

  // Epilogue, as in the kernel.
  float* out = dest.base + split * dest.stride_split;
  for (int warp = 0; warp < kWarps; ++warp) {
    const RowCol wo = warp_origin<Cfg>(warp);
    for (int mt = 0; mt < kMT; ++mt)
      for (int nt = 0; nt < kNT; ++nt)
        for (int lane = 0; lane < 32; ++lane)
          for (int r = 0; r < 4; ++r) {
            const RowCol c = c_fragment(lane, r);
            const int64_t b = b0 + wo.row + mt * 16 + c.row;
            const int64_t k = static_cast<int64_t>(col0) + wo.col + nt * 8 + c.col;
            if (b < a.batch && k < a.proj_dim)
              out[b * dest.stride_b + k * dest.stride_k] = acc(warp, mt, nt)[lane][r];
          }
  }
}

template <class Cfg, int XDtype, int Kind, class Fetch>
void emulate_grid(const Problem& a, const Plan& plan, const Dest& dest, const Fetch& fetch) {
  using Layout = SmemLayout<Cfg, XDtype == kFloat32 ? 4 : 2, Kind>;
  std::vector<Packed4> smem(Layout::kTotal / sizeof(Packed4));
  for (int64_t split = 0; split < plan.splits; ++split)
    for (int64_t cta = 0; cta < plan.tiles_b * plan.tiles_n; ++cta)
      emulate_cta<Cfg, XDtype, Kind>(a, plan, cta, split, dest, smem, fetch);
}

template <class Cfg, int XDtype, class Fetch>
void emulate_config(const Problem& a, const Plan& plan, const Dest& dest, const Fetch& fetch) {
  if (a.kind == kGaussian)
    emulate_grid<Cfg, XDtype, kGaussian>(a, plan, dest, fetch);
  else
    emulate_grid<Cfg, XDtype, kRademacher>(a, plan, dest, fetch);
}

// The whole launch (run_pipeline of project_kernel.cuh): plan, tile kernel into out or the
// workspace, ordered reduction of the D-splits.
template <int XDtype, class Fetch>
void emulate(const Problem& a, int64_t num_sms, const char* op, const Fetch& fetch) {
  const Plan plan = make_plan(a.batch, a.dim, a.proj_dim, num_sms, op);
  if (a.batch == 0) return;
  std::vector<float> workspace;
  Dest dest{reinterpret_cast<float*>(a.out), 0, a.stride_ob, a.stride_ok};
  if (plan.splits > 1) {
    workspace.assign(static_cast<size_t>(plan.workspace_bytes / sizeof(float)), NAN);
    dest = Dest{workspace.data(), a.batch * a.proj_dim, a.proj_dim, 1};
  }
  if (plan.config == 0)
    emulate_config<ConfigB32, XDtype>(a, plan, dest, fetch);
  else if (plan.config == 1)
    emulate_config<ConfigB64, XDtype>(a, plan, dest, fetch);
  else
    emulate_config<ConfigB128, XDtype>(a, plan, dest, fetch);

  if (plan.splits > 1)
    host_sum_splits(workspace, plan.splits, a.batch, a.proj_dim, reinterpret_cast<float*>(a.out),
                    a.stride_ob, a.stride_ok);
}

// project's producer: x's own tiles, vector (cp.async, modelled by HostCopy16) or element path.
template <int XDtype>
void emulate_project(const ProjectArgs& a, int64_t num_sms) {
  const XSource xs = x_source(a);
  const bool vector = use_vector_loads(a);
  emulate<XDtype>(problem_of(a), num_sms, kOp,
                  [&](auto code, int tid, int block_b, int64_t b0, int64_t d0, int64_t d_end,
                      bool whole_step, unsigned char* tile) {
                    if (whole_step && d0 + kBlockD > d_end)
                      throw std::logic_error("emulate_project: a whole step past the range");
                    load_x_tile<XDtype, MmaXLayout<XDtype>, decltype(code)::value>(
                        tid, xs, vector, block_b, b0, d0, d_end, whole_step, tile, HostCopy16{});
                  });
}

}  // namespace

void host_emulate_project(const ProjectArgs& a, int64_t num_sms) {
  validate_project_args(a, kOp);
  with_x_dtype(a.x_dtype,
               [&](auto dtype) { emulate_project<decltype(dtype)::value>(a, num_sms); });
}

void host_emulate_project_linear(const LinearArgs& a, int64_t num_sms) {
  validate_linear_args(a, kLinearOp);
  const LinearSource src = linear_source(a);
  emulate<kFloat32>(linear_problem(a, kLinearOp), num_sms, kLinearOp,
                    [&](auto /*code: no choice for gradient tiles*/, int tid, int block_b,
                        int64_t b0, int64_t d0, int64_t d_end, bool /*whole_step*/,
                        unsigned char* tile) {
                      load_g_tile(tid, src, block_b, b0, d0, d_end,
                                  reinterpret_cast<float*>(tile));
                    });
}

}  // namespace fastjl
