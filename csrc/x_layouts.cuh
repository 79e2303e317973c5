// Where the projection kernels' x tile keeps element (row, col): the XLayouts the tile
// writers of project_tiles.cuh take (offset: the byte offset of a 16-byte chunk's first
// element, for the vector path; element: the element index, for the element path).
// __host__ __device__, no CUDA types: the CPU emulations use them too.
#pragma once

#include <cstdint>
#include <type_traits>

#include "block_args.h"    // DtypeCode
#include "philox.cuh"      // FASTJL_HD
#include "project_plan.cuh"  // kBlockD, kXStride

namespace fastjl {
namespace proj {

// Swizzle<B, 4, 3> on a byte offset from an atom-aligned base: bits [4, 4+B) ^= bits [7, 7+B),
// i.e. the 16-byte chunk index within a 128-byte row XORed with the row index (mod 2^B).  The
// wgmma kernel's layouts (wgmma_layouts.cuh) and SwizzledXLayout below.
template <int B>
constexpr FASTJL_HD uint32_t swizzle_bytes(uint32_t byte) {
  return byte ^ (((byte >> 7) & ((1u << B) - 1u)) << 4);
}

// An XLayout gives the byte offset of x tile element (row, col) for elements of esize bytes
// (offset: the vector path's 16-byte chunks) and its element index (element: the element
// path's stores).
struct PaddedXLayout {
  static FASTJL_HD int64_t offset(int row, int col, int64_t esize) {
    return (static_cast<int64_t>(row) * kXStride + col) * esize;
  }
  static FASTJL_HD int element(int row, int col) { return row * kXStride + col; }
};
// 16-bit x without padding: 64-byte rows, the 16-byte chunk index within a row XORed with
// (row / 2) % 4, i.e. Swizzle<2,4,3> on the byte offset (the wgmma kernel's A operand layout,
// wgmma_layouts.cuh).  The 8 rows an ldmatrix reads at one column fall in 8 distinct 16-byte
// bank groups, and the fetch's 8-lane phases (two whole rows) write 128 contiguous bytes.  The
// padded layout's 80-byte rows conflicted on those writes: on an H100 (run 7, ncu) 34% of the
// mma.sync kernel's shared-memory wavefronts were excess, and its cp.async fetched 1.5x the
// ideal global sectors, against 1.0x for the wgmma kernel's same fetch into this layout.
struct SwizzledXLayout {
  static constexpr int kRowBytes = kBlockD * 2;
  static constexpr FASTJL_HD int64_t offset(int row, int col, int64_t /*esize: 2*/) {
    return swizzle_bytes<2>(static_cast<uint32_t>(row) * kRowBytes +
                            static_cast<uint32_t>(col) * 2u);
  }
  static FASTJL_HD int element(int row, int col) {
    return static_cast<int>(offset(row, col, 2) / 2);
  }
  // offset(row + dr, col + dc) from base = offset(row, col), for dr % 8 == 0 (the swizzle
  // reads row bits 1-2 only) and chunk indices col / 8, dc / 8 with no bit in common (the
  // chunk index then adds without carry, i.e. XORs).  The mma.sync kernel's ldmatrix
  // addresses: one swizzled base per lane, the 4 (m16 tile, k16 slice) offsets by constants.
  static constexpr FASTJL_HD uint32_t shifted(uint32_t base, int dr, int dc) {
    return (base ^ static_cast<uint32_t>(dc * 2)) + static_cast<uint32_t>(dr * kRowBytes);
  }
};

// shifted() against offset() for every case the kernel uses (lane columns 0 and 8, k16 slices
// 0 and 16, m16 tiles 0..7), at compile time.
constexpr bool swizzled_shift_is_exact() {
  for (int row = 0; row < 16; ++row)
    for (int col = 0; col <= 8; col += 8)
      for (int dr = 0; dr < 128; dr += 16)
        for (int dc = 0; dc < kBlockD; dc += 16)
          if (SwizzledXLayout::shifted(static_cast<uint32_t>(SwizzledXLayout::offset(row, col, 2)),
                                       dr, dc) !=
              static_cast<uint32_t>(SwizzledXLayout::offset(row + dr, col + dc, 2)))
            return false;
  return true;
}
static_assert(swizzled_shift_is_exact(), "SwizzledXLayout::shifted must match offset()");
// The mma.sync kernel's x tile for x of DtypeCode XDtype: fp32 keeps the padded rows (its A
// fragments are read as float2 pairs, 4 rows of 160 bytes in disjoint bank ranges).
template <int XDtype>
using MmaXLayout = std::conditional_t<XDtype == kFloat32, PaddedXLayout, SwizzledXLayout>;

}  // namespace proj
}  // namespace fastjl
