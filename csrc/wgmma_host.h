// CPU side of the sm_90a kernel's layout checks (tests/test_wgmma_layouts.py): one pipeline
// step's shared-memory tiles written by the kernel's own tile writers with the wgmma
// layouts, the descriptors the kernel would issue for them, and its fragment maps.
// Plain C++ (bindings.cpp includes it); implemented in wgmma_host.cpp.
#pragma once

#include <cstdint>
#include <vector>

#include "project_args.h"

namespace fastjl {

struct WgmmaHostStage {
  int n;                          // wgmma N of the configuration (64 or 128)
  std::vector<uint8_t> x_tile;    // 16-bit x tile, XTileK64B layout (block_b x 32)
  std::vector<uint8_t> p_hi;      // P tile (hi plane), PTileMN128B layout (32 x 128)
  std::vector<uint8_t> p_lo;      // gaussian lo plane (empty for rademacher)
  std::vector<uint64_t> a_desc;   // [warpgroup][k16 slice], tile base address 0
  std::vector<uint64_t> b_desc;   // [warpgroup][k16 slice], plane base address 0
  std::vector<int32_t> epilogue;  // [tid 0..255][register][row, col] in the CTA tile
  std::vector<int32_t> accumulator;  // [t 0..127][register][row, col] in the m64nN tile
};

// The step whose x tile starts at (b0, d0) (D-range end d_end) and whose P tile covers rows
// a.offset + d0 .. + 31 and columns col0 .. col0 + 127 (col0 % 128 == 0), for the tile
// configuration `config` (1: B64, 2: B128; project_plan.cuh).  x (a HOST pointer) must be
// float16 or bfloat16; `vector`: the cp.async path's writer (else the element path's).
WgmmaHostStage wgmma_host_stage(const ProjectArgs& a, int config, int64_t b0, int64_t d0,
                                int64_t d_end, int64_t col0, bool vector);

}  // namespace fastjl
