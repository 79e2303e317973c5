// The x-tile producer of fastjl._C.project (project_kernel.cu) and of its sm_90a variant
// (project_kernel_sm90.cu): 16-byte cp.async copies (zero-filled past B and past the range)
// when x has unit stride along D and 16-byte aligned rows (use_vector_loads), else plain
// element loads; the tile holds x's own elements (fp32, fp16 or bf16), placed by XLayout
// (project_tiles.cuh: the padded row-major layout by default).  Device code only.
#pragma once

#include <cstdint>

#include "project_tiles.cuh"
#include "sm80_primitives.cuh"

namespace fastjl {
namespace proj {

// The copy functor of load_x_tile_vector: cp.async on the device (never called on the host).
struct AsyncCopy16 {
  FASTJL_HD void operator()(unsigned char* dst, const unsigned char* src, int bytes) const {
#if defined(__CUDA_ARCH__)
    sm80::cp_async_16(dst, src, bytes);
#endif
  }
};

// Tiles of x itself (see the top of this file), placed by XLayout.
template <int XDtype, class XLayout>
struct XTileProducerIn {
  static constexpr int kTileDtype = XDtype;
  static constexpr int kEsize = XDtype == kFloat32 ? 4 : 2;
  static constexpr bool kWholeStepFetch = true;  // load_x_tile_rows (kFewestInstructions)
  struct Source {
    XSource xs;
    int vector_loads;  // 1: cp.async path (use_vector_loads), 0: element loads
  };
  // Per-thread state built once per CTA: the cp.async path's row addresses.
  using Cursor = XChunkRows<kEsize>;
  __device__ static Cursor cursor(int tid, const Source& s, int block_b, int64_t b0) {
    return s.vector_loads ? x_chunk_rows<kEsize>(tid, s.xs, block_b, b0) : Cursor{};
  }
  template <TileCode kCode>
  __device__ static void fetch(const Cursor& cur, int tid, const Source& s, int block_b,
                               int64_t b0, int64_t d0, int64_t d_end, bool whole_step,
                               unsigned char* tile) {
    if (s.vector_loads)
      fetch_vector<kCode>(cur, tid, s, block_b, b0, d0, d_end, whole_step, tile);
    else
      load_x_tile<XDtype, XLayout>(tid, s.xs, false, block_b, b0, d0, d_end, whole_step, tile,
                                   AsyncCopy16{});
  }
  // Closes the cp.async group of one step slot (empty past the range: the wait counts
  // groups, x_pipeline.h).  Unconditional: on the element path it closes an empty group.
  __device__ static void commit(const Source&) { sm80::cp_async_commit(); }
  template <int kNewer>
  __device__ static void wait(const Source& s) {
    if (s.vector_loads) sm80::cp_async_wait_group<kNewer>();
  }
  // The cp.async path alone: the common case, and what bench/cuda_loop_probe.cu measures.
  template <TileCode kCode>
  __device__ static void fetch_vector(const Cursor& cur, int tid, const Source& s, int block_b,
                                      int64_t b0, int64_t d0, int64_t d_end, bool whole_step,
                                      unsigned char* tile) {
    if constexpr (kCode == TileCode::kFewestInstructions)
      load_x_tile_rows<kEsize, XLayout>(tid, cur, s.xs, block_b, d0, d_end, whole_step, tile,
                                        AsyncCopy16{});
    else
      load_x_tile_vector<kEsize, XLayout, kCode>(tid, s.xs, block_b, b0, d0, d_end, whole_step,
                                                 tile, AsyncCopy16{});
  }
};

// The mma.sync kernel's producer: MmaXLayout (project_tiles.cuh).  A type of its own (not a default
// template argument) so that its kernels keep their names, which the register and spill
// tables (tests/test_cuda_compile.py, bench/NOTES.md) are keyed by.
template <int XDtype>
struct XTileProducer : XTileProducerIn<XDtype, MmaXLayout<XDtype>> {};

}  // namespace proj
}  // namespace fastjl
