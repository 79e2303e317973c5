// CPU side of the sm_90a kernel's layout checks (wgmma_host.h): runs the tile writers of
// project_tiles.cuh for every thread id with the wgmma layouts (wgmma_layouts.cuh) on byte
// arrays standing in for shared memory.  Host compiler only.
#include "wgmma_host.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "host_copy16.h"
#include "project_plan.cuh"
#include "project_tiles.cuh"
#include "wgmma_layouts.cuh"

namespace fastjl {
namespace {

constexpr const char* kOp = "fastjl._C.wgmma_host_stage";

template <class Cfg>
void fill_maps(WgmmaHostStage& st) {
  using W = sm90::WarpgroupTile<Cfg>;
  st.n = W::kN;
  for (int wg = 0; wg < 2; ++wg)
    for (int kk = 0; kk < 2; ++kk) {
      st.a_desc.push_back(sm90::XTileK64B::descriptor(0, W::row0(wg), kk));
      st.b_desc.push_back(sm90::PTileMN128B::descriptor(0, W::col0(wg), kk));
    }
  for (int tid = 0; tid < proj::kThreads; ++tid)
    for (int i = 0; i < W::kAccRegs; ++i) {
      const proj::RowCol e = sm90::epilogue_element<Cfg>(tid, i);
      st.epilogue.push_back(e.row);
      st.epilogue.push_back(e.col);
    }
  for (int t = 0; t < 128; ++t)
    for (int i = 0; i < W::kAccRegs; ++i) {
      const proj::RowCol e = sm90::accumulator_element(t, i);
      st.accumulator.push_back(e.row);
      st.accumulator.push_back(e.col);
    }
}

template <int T>
void fill_p(WgmmaHostStage& st, const ProjectArgs& a, uint64_t row0, uint32_t col0) {
  using PL = sm90::PTileMN128B;
  const PhiloxKey key = key_from_seed(a.seed);
  st.p_hi.assign(PL::kPlaneBytes, 0xEE);  // poisoned: a spot no writer covers shows up
  auto* hi = reinterpret_cast<uint16_t*>(st.p_hi.data());
  if (a.kind == kRademacher) {
    U32x4 words[proj::kBlockD];
    for (int lane = 0; lane < proj::kBlockD; ++lane)
      proj::rademacher_words(lane, key, row0, col0 / kRademacherColumnsPerCounter, words);
    for (int tid = 0; tid < proj::kThreads; ++tid)
      proj::rademacher_expand<T, PL>(tid, words, hi);
  } else {
    st.p_lo.assign(PL::kPlaneBytes, 0xEE);
    auto* lo = reinterpret_cast<uint16_t*>(st.p_lo.data());
    for (int tid = 0; tid < proj::kThreads; ++tid)
      proj::gaussian_generate<T, PL>(tid, key, row0, col0, a.proj_dim, hi, lo);
  }
}

}  // namespace

WgmmaHostStage wgmma_host_stage(const ProjectArgs& a, int config, int64_t b0, int64_t d0,
                                int64_t d_end, int64_t col0, bool vector) {
  using namespace proj;
  validate_project_args(a, kOp);
  auto fail = [](const std::string& what) {
    throw std::invalid_argument(std::string(kOp) + ": " + what);
  };
  if (a.x_dtype == kFloat32) fail("x_dtype must be float16 or bfloat16 (fp32 x keeps the padded tile)");
  if (config != 1 && config != 2) fail("config must be 1 (B64) or 2 (B128), got " + std::to_string(config));
  if (col0 < 0 || col0 % kBlockN != 0) fail("col0 must be a non-negative multiple of 128");
  if (b0 < 0 || d0 < 0 || d_end > a.dim || d0 > d_end) fail("need 0 <= b0, 0 <= d0 <= d_end <= D");
  if (vector && !use_vector_loads(a)) fail("the vector path needs unit stride along D and aligned rows");

  WgmmaHostStage st{};
  const int block_b = static_cast<int>(config_block_b(config));
  st.x_tile.assign(static_cast<size_t>(block_b) * sm90::XTileK64B::kRowBytes, 0xEE);
  const XSource xs = x_source(a);
  // As the kernel's CtaSteps: a step of kBlockD whole columns takes the whole-step path
  // (rows past B left as they were: 0xEE here).
  const bool whole_step = d0 + kBlockD <= d_end;
  for (int tid = 0; tid < kThreads; ++tid)
    load_x_tile<kFloat16, sm90::XTileK64B>(tid, xs, vector, block_b, b0, d0, d_end, whole_step,
                                           st.x_tile.data(), HostCopy16{});
  const uint64_t row0 = static_cast<uint64_t>(a.offset + d0);
  if (a.x_dtype == kFloat16)
    fill_p<kMmaF16>(st, a, row0, static_cast<uint32_t>(col0));
  else
    fill_p<kMmaBF16>(st, a, row0, static_cast<uint32_t>(col0));
  if (config == 1)
    fill_maps<ConfigB64>(st);
  else
    fill_maps<ConfigB128>(st);
  return st;
}

}  // namespace fastjl
