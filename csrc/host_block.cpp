// Host (CPU) generation of a block of P: the C++ reference that the GPU kernels are tested
// against, and a CPU fallback.  Compiled by the host compiler, not nvcc: this proves that
// philox.cuh / matrix_entries.cuh are valid plain C++ and keeps the reference independent
// of the CUDA toolchain.  Single-threaded; the binding releases the GIL around it.
#include <algorithm>
#include <cstdint>

#include "block_args.h"
#include "matrix_entries.cuh"

namespace fastjl {
namespace {

// Walks each row one counter group at a time: one Philox call yields all entries of the
// group (tile), and the part of the tile inside [col0, col0 + ncols) is copied out.  The
// first and last group of a row may be partial, e.g. when col0 is not a multiple of 128.
template <typename T>
void fill(const BlockArgs& a, T* out) {
  const PhiloxKey key = key_from_seed(a.seed);
  const uint64_t per = columns_per_counter(a.kind);
  const uint64_t col0 = static_cast<uint64_t>(a.col0);
  const uint64_t col_end = col0 + static_cast<uint64_t>(a.ncols);
  T tile[kRademacherColumnsPerCounter];  // large enough for either kind

  for (int64_t r = 0; r < a.nrows; ++r) {
    const uint64_t i = static_cast<uint64_t>(a.row0 + r);
    T* row_out = out + r * a.ncols;
    for (uint64_t j = col0; j < col_end;) {
      const uint64_t g = j / per;
      const U32x4 words = group_words(key, a.kind, i, static_cast<uint32_t>(g));
      if (a.kind == kRademacher)
        rademacher_tile<T>(words, tile);
      else
        gaussian_tile<T>(words, tile);
      const uint64_t lane0 = j - g * per;
      const uint64_t lane_end = std::min(per, col_end - g * per);
      std::copy(tile + lane0, tile + lane_end, row_out + (j - col0));
      j = g * per + lane_end;
    }
  }
}

}  // namespace

void host_matrix_block(const BlockArgs& a) {
  validate_block_args(a, "fastjl._C.host_matrix_block");
  if (a.dtype_code == kFloat32)
    fill(a, reinterpret_cast<float*>(a.out));
  else
    fill(a, reinterpret_cast<double*>(a.out));
}

}  // namespace fastjl
