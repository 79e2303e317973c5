// Tile sizes and the launch plan of the projection kernel (project_kernel.cu).
//
// Shared by the CUDA launcher and the CPU emulation (host_emulate.cpp), so both decompose
// a problem into exactly the same CTAs, warps and D-ranges.
//
// Decomposition of y[B, K] = x[B, D] @ P[offset + d, k]:
//   * a CTA owns an output tile of kBlockB(config) rows x kBlockN = 128 columns and walks
//     its share of D in steps of kBlockD = 32 rows of P (two k16 MMA steps);
//   * 128 columns is one rademacher counter group, so one Philox call per row of a step
//     yields the CTA's whole row of signs;
//   * when there are too few output tiles to fill the GPU, D is split into `splits`
//     contiguous ranges (grid.y), as many as fit in the CTAs per SM the plan launches
//     (planned_ctas_per_sm); each writes float32 partial sums to a workspace
//     [splits, B, K] that a second kernel adds up in split order: no atomics, so results
//     are bitwise reproducible for a given device (the plan depends on the SM count).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "philox.cuh"  // FASTJL_HD

namespace fastjl {
namespace proj {

constexpr int kThreads = 256;  // 8 warps per CTA, always
constexpr int kWarps = kThreads / 32;
constexpr int kMaxBlockB = 128;  // the largest batch tile (ConfigB128)
constexpr int kBlockD = 32;   // rows of P per pipeline step
constexpr int kBlockN = 128;  // output columns per CTA (one rademacher group)
// Shared-memory row pitches (elements).  x: 32 used + 8 padding, so that 8 consecutive rows
// start in distinct 16-byte bank groups (16-bit: 80-byte rows, for ldmatrix) or, in fp32,
// 4 consecutive rows fall in disjoint 32-byte bank ranges (160-byte rows, for the float2
// fragment loads).  P: 128 used + 8 padding (272-byte rows) so the 8 row addresses of an
// ldmatrix.trans hit 8 distinct bank groups.
constexpr int kXStride = kBlockD + 8;
constexpr int kPStride = kBlockN + 8;
// A D-split gets at least this many steps, so the second (reduction) pass stays small.
constexpr int kMinStepsPerSplit = 8;
// CTAs per SM the mma.sync kernel's launch bounds ask for (project_kernel.cuh): 3 for the
// 32-row tile (at most 80 registers; 6 warps per scheduler where 2 CTAs gave 4, and run 7
// measured this kernel latency-bound at 4), 2 for the others (their accumulators need up to
// 128 registers).
template <class Cfg>
constexpr int resident_ctas_per_sm() {
  return Cfg::kBlockB == 32 ? 3 : 2;
}
constexpr int64_t kMaxSplits = 65535;  // grid.y limit
// The most steps a split may have: the kernels count steps in 32 bits (cta_steps.cuh), with
// room for the few steps their pipelines look ahead.  Binds only past D = 2^35 (~3.4e10).
constexpr int64_t kMaxStepsPerSplit = int64_t(1) << 30;

// Batch-tile configurations, chosen from B so that small batches do not pay for 128-row
// tiles and large ones reuse each generated tile of P for 128 rows.  Warps are laid out
// kWarpsB x kWarpsN over the tile; each warp owns kWarpM x kWarpN outputs, i.e. kMT x kNT
// m16n8 accumulator fragments.
template <int BlockB, int WarpsB>
struct TileConfig {
  static constexpr int kBlockB = BlockB;
  static constexpr int kWarpsB = WarpsB;
  static constexpr int kWarpsN = kWarps / WarpsB;
  static constexpr int kWarpM = BlockB / WarpsB;
  static constexpr int kWarpN = kBlockN / kWarpsN;
  static constexpr int kMT = kWarpM / 16;
  static constexpr int kNT = kWarpN / 8;
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0, "warp tile must be m16 x (2 x n8)");
  static_assert(BlockB <= kMaxBlockB, "the tile writers size their loops for kMaxBlockB rows");
};
using ConfigB32 = TileConfig<32, 2>;    // warp 16 x 32
using ConfigB64 = TileConfig<64, 2>;    // warp 32 x 32
using ConfigB128 = TileConfig<128, 4>;  // warp 32 x 64

inline int config_index(int64_t batch) { return batch <= 32 ? 0 : batch <= 64 ? 1 : 2; }
inline int64_t config_block_b(int index) { return index == 0 ? 32 : index == 1 ? 64 : 128; }

// CTAs per SM the D-split plan launches, in whole rounds of the resident ones.  The 32-row
// tile plans 6: two rounds of 3 where 3 fit, three rounds of 2 where shared memory caps it at 2
// (its gaussian instantiations on sm_86 / sm_89: 100 KiB per SM, 38-44 KiB per CTA).  A round
// then runs a sixth of the work: W / 3 or W / 2 in all, never slower than the former plan of 2
// per SM (W / 2).  A plan of 3 would leave a half-empty second round where 2 fit (2 W / 3).
inline int64_t planned_ctas_per_sm(int config) { return config == 0 ? 6 : 2; }

struct Plan {
  int config;  // 0: ConfigB32, 1: ConfigB64, 2: ConfigB128
  int64_t block_b;
  int64_t tiles_b, tiles_n;  // grid.x = tiles_b * tiles_n (column tile fastest)
  int64_t splits;            // grid.y
  int64_t d_per_split;       // rows of D per split, a multiple of kBlockD
  int64_t workspace_bytes;   // float32 [splits, B, K] when splits > 1, else 0
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// D-splits for `ctas` output tiles on a GPU with `slots` resident CTAs: as many as fit in ONE
// wave (floor, not ceil).  Rounding up put e.g. 16 tiles x 17 splits = 272 CTAs on 264 slots
// of an H100: a second wave of 8 CTAs as long as the first, wave efficiency 0.52; 16 x 16 =
// 256 runs in one wave (0.97).  No split when the tiles alone fill the slots.
inline int64_t one_wave_splits(int64_t ctas, int64_t slots) {
  return ctas <= 0 || ctas >= slots ? 1 : slots / ctas;
}

// The plan for a (B, D, K) problem on a GPU with num_sms SMs.  Deterministic: the same
// arguments always give the same plan (and so the same summation order).
inline Plan make_plan(int64_t batch, int64_t dim, int64_t proj_dim, int64_t num_sms,
                      const char* op) {
  if (num_sms < 1) throw std::invalid_argument(std::string(op) + ": num_sms must be >= 1");
  Plan p{};
  p.config = config_index(batch);
  p.block_b = config_block_b(p.config);
  p.tiles_b = ceil_div(batch, p.block_b);
  p.tiles_n = ceil_div(proj_dim, kBlockN);
  const int64_t ctas = p.tiles_b * p.tiles_n;
  if (ctas > INT32_MAX)
    throw std::invalid_argument(std::string(op) + ": B * K is too large for one launch");
  const int64_t steps = ceil_div(dim, kBlockD);
  int64_t splits = one_wave_splits(ctas, planned_ctas_per_sm(p.config) * num_sms);
  const int64_t max_splits = steps / kMinStepsPerSplit;
  if (splits > max_splits) splits = max_splits;
  if (splits > kMaxSplits) splits = kMaxSplits;
  const int64_t min_splits = ceil_div(steps, kMaxStepsPerSplit);  // 1 up to D = 2^35
  if (min_splits > kMaxSplits)
    throw std::invalid_argument(std::string(op) + ": D is too large for one launch");
  if (splits < min_splits) splits = min_splits;
  if (splits < 1) splits = 1;
  const int64_t steps_per_split = ceil_div(steps, splits);
  p.splits = ceil_div(steps, steps_per_split);  // every split non-empty
  p.d_per_split = steps_per_split * kBlockD;
  p.workspace_bytes = p.splits > 1 ? p.splits * batch * proj_dim * int64_t(sizeof(float)) : 0;
  return p;
}

// Rows [begin, end) of x handled by split s.
struct DRange {
  int64_t begin, end;
};
FASTJL_HD DRange split_range(int64_t split, int64_t d_per_split, int64_t dim) {
  const int64_t begin = split * d_per_split;
  const int64_t end = begin + d_per_split < dim ? begin + d_per_split : dim;
  return DRange{begin, end};
}

// The steps of kBlockD rows a range takes, and how many of them are whole (all but a partial
// last one): the kernels' CtaSteps and the CPU emulation count them here.
FASTJL_HD int64_t range_steps(const DRange& r) { return (r.end - r.begin + kBlockD - 1) / kBlockD; }
FASTJL_HD int64_t range_whole_steps(const DRange& r) { return (r.end - r.begin) / kBlockD; }

}  // namespace proj
}  // namespace fastjl
