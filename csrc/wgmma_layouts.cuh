// Shared-memory layouts, matrix descriptors and accumulator fragments of the sm_90a
// (wgmma) projection kernel (wgmma_kernel.cuh).  Everything here is __host__ __device__
// so that the CPU checks it (wgmma_host.cpp, tests/test_wgmma_layouts.py): the tile
// writers of project_tiles.cuh, run with these layouts, must put element (row, col) where
// the descriptor's canonical layout (PTX ISA, "Shared Memory Matrix Layout" and "Matrix
// Descriptor Format" of the asynchronous warpgroup MMA) says the MMA reads it.
//
// The canonical layouts, in CuTe notation, with T = 8 16-bit elements per 16 bytes:
//   K-major,  64B swizzle:  Swizzle<2,4,3> o ((8,m),(T,2k)):((4T,SBO),(1,T))
//   MN-major, 128B swizzle: Swizzle<3,4,3> o ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO))
// Swizzle<B,4,3> acts on byte offsets: bits [4, 4+B) ^= bits [7, 7+B), i.e. the 16-byte
// chunk index within a 128-byte row is XORed with the row index (mod 2^B).  It is applied by
// the hardware to absolute shared-memory addresses, so every swizzle atom (1024 bytes for
// 128B, 512 for 64B) starts at a multiple of its size (base offset field 0).
//
// Why these two: the writers store 16 bytes (x: 8 elements of one row; rademacher P: 8
// columns of one row) or 8 bytes (gaussian P: 4 columns), consecutive threads taking
// consecutive chunks of a row (project_index.cuh).  Unswizzled ("interleaved") canonical
// layouts put those chunks 128 bytes apart -- all in one bank group, 8-way conflicts on
// every P store -- while the swizzles spread them over the 8 bank groups of a 128-byte row.
//
//   x tile  (operand A, M = batch rows x K = 32 d; fp16/bf16 only): K-major, 64B swizzle.
//           A row of the tile is 32 elements = 64 bytes, 8 rows = one 512-byte atom; atoms
//           follow each other down the rows (SBO = 512).  LBO is unused by swizzled K-major
//           layouts (the ISA: "assumed 1").  The k16 slice kk starts 32 bytes into the row.
//           (fp32 x keeps the padded layout: its MMAs take A from registers, see
//           wgmma_kernel.cuh.)
//   P tile  (operand B, K = 32 d x N = 128 n): MN-major ("N-major", imm-trans-b = 1),
//           128B swizzle.  An atom is 8 rows of d x 64 columns of n (128 bytes each);
//           the two 64-column halves are LBO = 1024 bytes apart, groups of 8 rows of d
//           SBO = 2048 bytes apart.  The k16 slice kk starts 2 * SBO bytes in, the column
//           half h (the B64 tile's second warpgroup) h * LBO bytes in.
#pragma once

#include <cstdint>

#include "philox.cuh"  // FASTJL_HD
#include "project_index.cuh"  // RowCol
#include "project_plan.cuh"   // kBlockD, kBlockN
#include "x_layouts.cuh"     // SwizzledXLayout

namespace fastjl {
namespace sm90 {

using proj::RowCol;

// Descriptor bits 63-62 (PTX ISA "Matrix Descriptor Format").
enum SwizzleMode : int { kSwizzleNone = 0, kSwizzle128B = 1, kSwizzle64B = 2, kSwizzle32B = 3 };

using proj::swizzle_bytes;  // x_layouts.cuh

// matrix-descriptor-encode(x) = (x & 0x3FFFF) >> 4.
constexpr FASTJL_HD uint64_t descriptor_encode(uint32_t bytes) {
  return (bytes & 0x3FFFFu) >> 4;
}

// The 64-bit wgmma matrix descriptor: start address (bits 13-0), leading dimension byte
// offset (29-16), stride dimension byte offset (45-32), base offset 0 (51-49: every atom
// starts at a multiple of its size), swizzle mode (63-62).
constexpr FASTJL_HD uint64_t make_descriptor(uint32_t start, uint32_t lbo, uint32_t sbo,
                                             int swizzle) {
  return descriptor_encode(start) | (descriptor_encode(lbo) << 16) |
         (descriptor_encode(sbo) << 32) | (static_cast<uint64_t>(swizzle & 3) << 62);
}

// The descriptor of the same matrix `bytes` further on (a multiple of 16): one add to the
// start address field, instead of encoding the new address (the kernel encodes each
// operand's descriptor once per CTA and advances it by the step's stage and k16 slice).
// Equal to make_descriptor(start + bytes, ...) while start + bytes < 2^18, i.e. inside the
// shared window (228 KiB on the H100; descriptor_advance_holds checks a layout's range).
constexpr FASTJL_HD uint64_t descriptor_advance(uint64_t desc, uint32_t bytes) {
  // The add stays inside the low word (the start field does not carry, see above): a 32-bit
  // add, where a 64-bit one compiled to a carry chain through the uniform registers.
  const uint32_t low = static_cast<uint32_t>(desc) + (bytes >> 4);
  return (desc & 0xFFFFFFFF00000000ull) | low;
}

// For every 1024-aligned base at which a CTA's `total` bytes of shared memory can start in a
// `window`-byte shared window: advancing the base's descriptor to the last 16 bytes equals
// encoding that address.  The last is the one that decides: the add carries out of the
// 14-bit start field (into LBO) only when base + offset reaches 2^18.
constexpr bool descriptor_advance_holds(uint32_t total, uint32_t window) {
  for (uint32_t base = 0; base + total <= window; base += 1024)
    if (descriptor_advance(make_descriptor(base, 16, 1024, kSwizzle128B), total - 16) !=
        make_descriptor(base + total - 16, 16, 1024, kSwizzle128B))
      return false;
  return true;
}

// x tile, 16-bit elements: the XLayout of project_tiles.cuh's writers (byte offsets).
// offset / element / kRowBytes (64: one swizzle row) from SwizzledXLayout.
struct XTileK64B : proj::SwizzledXLayout {
  static constexpr uint32_t kSBO = 8 * kRowBytes;  // next 8 rows
  static constexpr uint32_t kLBO = 16;  // unused (swizzled K-major); encodes as 1
  static constexpr int kSwizzle = kSwizzle64B;
  static constexpr uint32_t kAtomBytes = 512;
  static constexpr uint32_t kSliceBytes = 32;  // k16 slice kk starts kk * 32 bytes into a row
  // Operand A of one m64nNk16: rows row0 .. row0 + 63 (row0 % 8 == 0), k16 slice kk.
  static constexpr FASTJL_HD uint64_t descriptor(uint32_t tile_addr, int row0, int kk) {
    return make_descriptor(tile_addr + static_cast<uint32_t>(row0) * kRowBytes +
                               static_cast<uint32_t>(kk) * kSliceBytes,
                           kLBO, kSBO, kSwizzle);
  }
};

// P tile (one plane): the PLayout of project_tiles.cuh's writers (16-bit element index).
struct PTileMN128B {
  static constexpr uint32_t kLBO = 1024;      // next 64 columns of n
  static constexpr uint32_t kSBO = 2 * 1024;  // next 8 rows of d
  static constexpr int kSwizzle = kSwizzle128B;
  static constexpr uint32_t kAtomBytes = 1024;
  static constexpr int kPlaneBytes = proj::kBlockD * proj::kBlockN * 2;  // 8 KiB
  static constexpr uint32_t kSliceBytes = 2 * kSBO;  // k16 slice kk: 16 rows of d further
  static FASTJL_HD uint32_t byte_offset(int row, int col) {
    const uint32_t r = static_cast<uint32_t>(row), c = static_cast<uint32_t>(col);
    return swizzle_bytes<3>((r / 8) * kSBO + (c / 64) * kLBO + (r % 8) * 128 + (c % 64) * 2);
  }
  static FASTJL_HD int index(int row, int col) {
    return static_cast<int>(byte_offset(row, col) / 2);
  }
  // Operand B of one m64nNk16: columns col0 .. col0 + N - 1 (col0 % 64 == 0), k16 slice kk.
  static constexpr FASTJL_HD uint64_t descriptor(uint32_t tile_addr, int col0, int kk) {
    return make_descriptor(tile_addr + static_cast<uint32_t>(col0 / 64) * kLBO +
                               static_cast<uint32_t>(kk) * kSliceBytes,
                           kLBO, kSBO, kSwizzle);
  }
};
static_assert(PTileMN128B::kPlaneBytes == 2 * PTileMN128B::kSBO * 2, "4 row groups of 8");

// ---- warpgroup tiling of a CTA (2 warpgroups, kThreads = 256) --------------------------
// B128 (ConfigB128): warpgroup g owns rows 64 g .. 64 g + 63, all 128 columns: m64n128k16.
// B64  (ConfigB64):  warpgroup g owns all 64 rows, columns 64 g .. 64 g + 63: m64n64k16.
template <class Cfg>
struct WarpgroupTile {
  static_assert(Cfg::kBlockB == 64 || Cfg::kBlockB == 128, "wgmma tiles are B64 or B128");
  static constexpr int kN = Cfg::kBlockB == 128 ? 128 : 64;  // wgmma N
  static constexpr int kAccRegs = kN / 2;                     // f32 accumulators per thread
  static FASTJL_HD int row0(int wg) { return Cfg::kBlockB == 128 ? 64 * wg : 0; }
  static FASTJL_HD int col0(int wg) { return Cfg::kBlockB == 128 ? 0 : 64 * wg; }
};

// m64nNk16 f32 accumulator (PTX ISA, "Matrix Fragments for wgmma.mma_async.m64nNk16",
// accumulator D): register i (0 .. N/2 - 1) of thread t (0 .. 127) of a warpgroup holds
// D(row, col): warp t / 32 owns rows 16 (t / 32) .. + 15, and within each n8 block the
// registers follow mma.sync's m16n8 accumulator (c_fragment).
FASTJL_HD RowCol accumulator_element(int t, int i) {
  const RowCol c = proj::c_fragment(t & 31, i & 3);
  return RowCol{16 * (t >> 5) + c.row, 8 * (i >> 2) + c.col};
}

// The epilogue's store map: register i of CTA thread tid holds output (row, col) of the
// CTA's block_b x 128 tile.
template <class Cfg>
FASTJL_HD RowCol epilogue_element(int tid, int i) {
  using W = WarpgroupTile<Cfg>;
  const int wg = tid >> 7;
  const RowCol e = accumulator_element(tid & 127, i);
  return RowCol{W::row0(wg) + e.row, W::col0(wg) + e.col};
}

// fp32 x: A from registers.  Register r (0..3) of thread t of a warpgroup holds the bf16
// pair at (row, col) of the 64 x 16 A slice (PTX ISA, m64nNk16 "Multiplicand A in
// registers": per warp the m16n8k16 A fragment, a_fragment, warp t / 32 on rows 16 (t / 32)).
FASTJL_HD RowCol a_register_element(int t, int r) {
  const RowCol a = proj::a_fragment(t & 31, r);
  return RowCol{16 * (t >> 5) + a.row, a.col};
}

}  // namespace sm90
}  // namespace fastjl
