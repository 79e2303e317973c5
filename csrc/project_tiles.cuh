// Per-thread work on the shared-memory tiles of the projection kernel: fetching a tile of x
// and generating a tile of P.  __host__ __device__: the kernel calls these with
// threadIdx.x, the CPU emulation (host_emulate.cpp) calls them for tid = 0 .. 255 on a
// byte array standing in for shared memory.
//
// Shared-memory layouts (pitches in project_plan.cuh):
//   x tile  [block_b][row]       raw input elements, rows = batch: fp32 padded to kXStride,
//                                16-bit 64-byte rows swizzled (MmaXLayout)
//   P tile  [kBlockD][kPStride]  16-bit MMA operands, rows = input index d, cols = output n
//                                (gaussian: two such planes, hi and lo)
//   words   [kBlockD]            rademacher: the 4 Philox words of each row (128 signs),
//                                one such tile per words slot (words_pipeline.h)
//
// How P is generated (spec v1, matrix_entries.cuh):
//   rademacher: one Philox call per row of a step covers all 128 columns of the CTA.  One
//     warp computes the 32 calls of a step (a lane per row; philox is ~60-70 instructions,
//     so giving every warp its own copy would cost 8x the issue slots), the words go through
//     shared memory, and all 256 threads expand bits to packed ±1 (4 logic ops per register
//     of two values) with 16-byte stores.  The kernel computes the words two to nine steps
//     ahead, every warp every 8th step (words_pipeline.h), so no extra barrier is needed.
//   gaussian: one Philox call + Box-Muller per 4 columns; every thread does 4 groups per
//     step and stores hi and lo halves.  Groups entirely at or past column K are skipped
//     (zeros): they only feed outputs that are never stored.
#pragma once

#include <cstdint>

#include "block_args.h"  // DtypeCode
#include "half_bits.cuh"
#include "project_args.h"  // ProjectArgs, dtype_size
#include "matrix_entries.cuh"
#include "project_index.cuh"
#include "words_pipeline.h"  // KernelWords: the words' slots
#include "x_layouts.cuh"  // PaddedXLayout, SwizzledXLayout, MmaXLayout

namespace fastjl {
namespace proj {

// 16 bytes / 8 bytes of shared memory written in one store (the compiler emits st.v4/v2).
struct alignas(16) Packed4 {
  uint32_t v[4];
};
struct alignas(8) Packed2 {
  uint32_t v[2];
};

// ---- tile layouts ----------------------------------------------------------------------
// Where each writer below puts element (row, col) of its tile.  x: the XLayouts of
// x_layouts.cuh (the mma.sync kernel takes MmaXLayout: padded fp32 rows, swizzled 16-bit rows).
// P: the padded row-major layout (the mma.sync kernel's: ldmatrix.trans reads it
// conflict-free); the sm_90a kernel passes the swizzled canonical layouts its wgmma
// descriptors describe (wgmma_layouts.cuh), so both kernels share one writer of each tile.

struct PaddedPLayout {  // 16-bit element index of P tile element (row d, col n)
  static FASTJL_HD int index(int row, int col) { return row * kPStride + col; }
};

// ---- x tile --------------------------------------------------------------------------

struct XSource {
  const unsigned char* x;  // base pointer of x
  int64_t esize;           // bytes per element
  int64_t batch, stride_xb, stride_xd;
};

inline XSource x_source(const ProjectArgs& a) {
  return XSource{reinterpret_cast<const unsigned char*>(a.x), dtype_size(a.x_dtype), a.batch,
                 a.stride_xb, a.stride_xd};
}

// Thread tid's items of a CTA-wide loop over `items` (tid, tid + 256, ...): body(item, trip),
// trip = (item - tid) / 256.  kUnrolled: a fixed trip count, unrolled, so that with `items`
// known at compile time (the kernels inline every caller with constant tile sizes) there is
// no loop and no guard when 256 divides it, and `trip` is a constant.  Otherwise a plain
// rolled loop.
template <int kMaxTrips, bool kUnrolled, class Body>
FASTJL_HD void for_thread_items(int tid, int items, Body body) {
  if constexpr (kUnrolled) {
#if defined(__CUDA_ARCH__)
    __builtin_assume(tid >= 0 && tid < kThreads);  // lets the compiler drop trips past `items`
#endif
#pragma unroll
    for (int i = 0; i < kMaxTrips; ++i) {
      const int item = tid + i * kThreads;
      // The first test folds to true for the trips a constant `items` always fills.
      if (items >= (i + 1) * kThreads || item < items) body(item, i);
    }
  } else {
    int trip = 0;
#pragma unroll 1
    for (int item = tid; item < items; item += kThreads) body(item, trip++);
  }
}

// How a tile writer trades instructions for registers (the kernels pick per kind):
//   kFewestInstructions: unrolled, compile-time element size.  With the element size read
//     at run time every thread paid 64- and 32-bit divisions per step, and the rolled loops
//     a 4-way branch per entry: the rademacher kernels were issue-bound on that
//     (bench/NOTES.md, issue 12; bench/cuda_loop_probe.py measures it).
//   kFewestRegisters: a rolled loop, element size at run time.  The gaussian kernels sit at
//     the 128-register cap of 2 CTAs per SM and are bound by generating P: unrolled, they
//     spilled more (bench/NOTES.md).
enum class TileCode : int { kFewestInstructions, kFewestRegisters };

// The MMAs' 16-bit operand type for x of DtypeCode x_dtype: fp16 x as it is, bf16 x as it is,
// fp32 x split into bf16 halves (so is P, to match).
constexpr FASTJL_HD int mma_type_for(int x_dtype) {
  return x_dtype == kFloat16 ? kMmaF16 : kMmaBF16;
}

// The choice of every projection kernel (and of their CPU emulation) for a kind.
constexpr FASTJL_HD TileCode tile_code_for(int kind) {
  return kind == kGaussian ? TileCode::kFewestRegisters : TileCode::kFewestInstructions;
}

// The vector path's chunks: 16 bytes of one row of x, per_chunk = 16 / element size.
template <int kEsize>
constexpr FASTJL_HD int x_vector_trips() {  // the most chunks one thread copies per step
  return (kMaxBlockB * kBlockD * kEsize / 16 + kThreads - 1) / kThreads;
}

// The step-invariant half of thread tid's vector fetch (TileCode::kFewestInstructions), built
// once per CTA (the kernels' producer keeps it in registers), so that a step only adds d0:
// recomputing b * stride_xb every step was most of the fetch's cost.  A thread's chunks sit
// in one column of the tile (256 threads cover whole rows), kRowsPerTrip rows apart, so one
// address and one stride describe them all (an address per chunk spilled at B128, fp32 x).
template <int kEsize>
struct XChunkRows {
  static constexpr int kPerChunk = 16 / kEsize;
  static constexpr int kChunksPerRow = kBlockD / kPerChunk;
  static constexpr int kRowsPerTrip = kThreads / kChunksPerRow;
  static_assert(kThreads % kChunksPerRow == 0, "a thread's chunks must share one column");
  const unsigned char* first;  // x at (b0 + the thread's row, its column) for d0 = 0
  int64_t trip_bytes;          // kRowsPerTrip rows of x
  uint32_t rows_in;            // bit t: trip t's row is < B
};

template <int kEsize>
FASTJL_HD XChunkRows<kEsize> x_chunk_rows(int tid, const XSource& s, int block_b, int64_t b0) {
  using R = XChunkRows<kEsize>;
  const RowCol rc = x_chunk(tid, R::kPerChunk);
  R rows{s.x + ((b0 + rc.row) * s.stride_xb + rc.col) * kEsize,
         R::kRowsPerTrip * s.stride_xb * kEsize, 0u};
  for_thread_items<x_vector_trips<kEsize>(), true>(
      tid, block_b * kBlockD / R::kPerChunk, [&](int c, int trip) {
        if (b0 + x_chunk(c, R::kPerChunk).row < s.batch) rows.rows_in |= 1u << trip;
      });
  return rows;
}

// Thread tid's 16-byte chunks of the x tile at column d0 (rows from x_chunk_rows), through
// `copy` (device: cp.async with zero-fill; host: memcpy + zero-fill).  copy(dst, src, bytes)
// copies `bytes` (0..16) bytes and zero-fills the rest of the 16; src is valid (x itself)
// even when bytes == 0.
//
// whole_step (the caller's promise: d0 + kBlockD <= d_end, every step of a split but its
// last): every chunk of a row inside the batch is 16 bytes of x at one address per trip,
// and rows past B are not written at all.  Their tile rows keep whatever the stage held
// (stale x, zeros, or never-written shared memory): each output row of the MMAs reads only
// its own row of x, and rows past B are never stored, so nothing the kernel stores depends
// on them.  This skips the clamp of the range below (64-bit compares and selects, ~40 of a
// step's instructions in the compiled loop, bench/NOTES.md stop 27).  The last step zero-
// fills as before: P's rows past the range are not zero, so x's columns there must be.
template <int kEsize, class XLayout, class Copy16>
FASTJL_HD void load_x_tile_rows(int tid, const XChunkRows<kEsize>& rows, const XSource& s,
                                int block_b, int64_t d0, int64_t d_end, bool whole_step,
                                unsigned char* tile, Copy16 copy) {
  using R = XChunkRows<kEsize>;
  const unsigned char* at_d0 = rows.first + d0 * kEsize;
  if (whole_step) {
    for_thread_items<x_vector_trips<kEsize>(), true>(
        tid, block_b * kBlockD / R::kPerChunk, [&](int c, int trip) {
          if ((rows.rows_in >> trip) & 1u) {
            const RowCol rc = x_chunk(c, R::kPerChunk);
            copy(tile + XLayout::offset(rc.row, rc.col, kEsize), at_d0 + trip * rows.trip_bytes,
                 16);
          }
        });
    return;
  }
  const RowCol rc0 = x_chunk(tid, R::kPerChunk);
  const int64_t left = d_end - d0 - rc0.col;  // elements of the thread's rows left in range
  const int in_range = left <= 0 ? 0 : left < R::kPerChunk ? static_cast<int>(left) : R::kPerChunk;
  for_thread_items<x_vector_trips<kEsize>(), true>(
      tid, block_b * kBlockD / R::kPerChunk, [&](int c, int trip) {
        const int valid = (rows.rows_in >> trip) & 1u ? in_range : 0;
        const unsigned char* src = valid > 0 ? at_d0 + trip * rows.trip_bytes : s.x;
        const RowCol rc = x_chunk(c, R::kPerChunk);
        copy(tile + XLayout::offset(rc.row, rc.col, kEsize), src, valid * kEsize);
      });
}

// Vector path, both codes: thread tid's chunks of the x tile at (b0, d0).  kEsize: the
// element size (s.esize) as a compile-time constant; kFewestRegisters reads s.esize instead,
// and takes the general path on whole steps too (whole_step: load_x_tile_rows).
template <int kEsize, class XLayout = PaddedXLayout,
          TileCode kCode = TileCode::kFewestInstructions, class Copy16>
FASTJL_HD void load_x_tile_vector(int tid, const XSource& s, int block_b, int64_t b0,
                                  int64_t d0, int64_t d_end, bool whole_step,
                                  unsigned char* tile, Copy16 copy) {
  if constexpr (kCode == TileCode::kFewestInstructions) {
    load_x_tile_rows<kEsize, XLayout>(tid, x_chunk_rows<kEsize>(tid, s, block_b, b0), s, block_b,
                                      d0, d_end, whole_step, tile, copy);
  } else {
    const int64_t esize = s.esize;
    const int per_chunk = static_cast<int>(16 / esize);
    for_thread_items<x_vector_trips<kEsize>(), false>(
        tid, block_b * kBlockD / per_chunk, [&](int c, int) {
          const RowCol rc = x_chunk(c, per_chunk);
          const int64_t b = b0 + rc.row, d = d0 + rc.col;
          const int valid = x_chunk_valid(b, s.batch, d, d_end, per_chunk);
          const unsigned char* src = valid > 0 ? s.x + (b * s.stride_xb + d) * esize : s.x;
          copy(tile + XLayout::offset(rc.row, rc.col, esize), src,
               static_cast<int>(valid * esize));
        });
  }
}

// Element path (any strides, any alignment): plain loads, zeros outside the matrix.
template <typename Elem, class XLayout = PaddedXLayout>
FASTJL_HD void load_x_tile_elements(int tid, const XSource& s, int block_b, int64_t b0,
                                    int64_t d0, int64_t d_end, Elem* tile) {
  const Elem* x = reinterpret_cast<const Elem*>(s.x);
  for (int e = tid; e < block_b * kBlockD; e += kThreads) {
    const RowCol rc = x_element(e);
    const int64_t b = b0 + rc.row, d = d0 + rc.col;
    tile[XLayout::element(rc.row, rc.col)] =
        (b < s.batch && d < d_end) ? x[b * s.stride_xb + d * s.stride_xd] : Elem(0);
  }
}

// Thread tid's share of the x tile of element type XDtype (a DtypeCode): the vector path
// when `vector` (use_vector_loads), else element loads (which write every element, whole
// step or not).  The kernel's producer and the CPU emulation both call this, with their own
// copy functor.
template <int XDtype, class XLayout = PaddedXLayout,
          TileCode kCode = TileCode::kFewestInstructions, class Copy16>
FASTJL_HD void load_x_tile(int tid, const XSource& s, bool vector, int block_b, int64_t b0,
                           int64_t d0, int64_t d_end, bool whole_step, unsigned char* tile,
                           Copy16 copy) {
  if (vector)
    load_x_tile_vector<XDtype == kFloat32 ? 4 : 2, XLayout, kCode>(tid, s, block_b, b0, d0,
                                                                   d_end, whole_step, tile, copy);
  else if (XDtype == kFloat32)
    load_x_tile_elements<float, XLayout>(tid, s, block_b, b0, d0, d_end,
                                         reinterpret_cast<float*>(tile));
  else
    load_x_tile_elements<uint16_t, XLayout>(tid, s, block_b, b0, d0, d_end,
                                            reinterpret_cast<uint16_t*>(tile));
}

// ---- rademacher ----------------------------------------------------------------------

// Words of rows row0 + lane (lane 0..31) for counter group `group`; one warp runs this.
FASTJL_HD void rademacher_words(int lane, PhiloxKey key, uint64_t row0, uint32_t group,
                                U32x4* words) {
  words[lane] = group_words(key, kRademacher, row0 + static_cast<uint64_t>(lane), group);
}

// Signs of columns col .. col + 7 (col % 8 == 0) of `row` as 8 bits, bit q = column col + q:
// one byte load from shared memory.  A row's four words are little-endian (GPU and the
// x86 / ARM hosts that run the emulation), so bits col .. col + 7 of the row's 128 are its
// byte col / 8.  (Indexing a U32x4 by a runtime word number compiled to a 4-way branch; a
// 32-bit load then cost a shift and a mask per byte, 4 instructions a step, stop 27.)
FASTJL_HD uint32_t rademacher_byte(const U32x4* words, int row, int col) {
  return reinterpret_cast<const uint8_t*>(words)[row * 16 + (col >> 3)];
}

// 8 sign bits (bits < 256) -> 4 registers of two 16-bit ±1 (bit 1 -> -1): only the sign bit
// (15 or 31) differs from 1.0, so no conversion instruction is needed.  Register q takes bit 2q
// to position 15 and bit 2q + 1 to 31: with a second copy of the byte at bit 15 (one multiply:
// the copies do not overlap), both move by the same shift, 15 - 2q, and one mask keeps them
// (a shift and a 3-input logic op per register).
// The pair (1.0, 1.0) of 16-bit type T.
template <int T>
constexpr uint32_t kRademacherOnes = T == kMmaBF16 ? 0x3F803F80u : 0x3C003C00u;

template <int T>
constexpr FASTJL_HD Packed4 rademacher_pack8(uint32_t bits) {
  constexpr uint32_t kOnes = kRademacherOnes<T>;
  const uint32_t twice = bits * 0x8001u;  // bits at 0..7 and again at 15..22
  Packed4 p{};
#pragma unroll
  for (int q = 0; q < 4; ++q) p.v[q] = ((twice << (15 - 2 * q)) & 0x80008000u) | kOnes;
  return p;
}

// Every byte against the plain statement (sign bit 15 of register q = bit 2q, sign bit 31 =
// bit 2q + 1), at compile time.
template <int T>
constexpr bool rademacher_pack8_is_exact() {
  constexpr uint32_t kOnes = kRademacherOnes<T>;
  for (uint32_t bits = 0; bits < 256; ++bits)
    for (int q = 0; q < 4; ++q)
      if (rademacher_pack8<T>(bits).v[q] !=
          (kOnes | (((bits >> (2 * q)) & 1u) << 15) | (((bits >> (2 * q + 1)) & 1u) << 31)))
        return false;
  return true;
}
static_assert(rademacher_pack8_is_exact<kMmaBF16>() && rademacher_pack8_is_exact<kMmaF16>(),
              "rademacher_pack8 must match the sign rule for every byte");

// rademacher_pack8 as the kernels compile it: each register's mask and ones in one 3-input
// logic op, (x & 0x80008000) | ones.  A logic op takes one immediate, so nvcc split it into
// two with the constants as immediates (8 extra instructions a step); here `ones` is a
// register operand of the PTX lop3.  The host (and the compile-time check above) computes
// the same expression in C++.
template <int T>
FASTJL_HD Packed4 rademacher_pack8_fused(uint32_t bits, uint32_t ones) {
#if defined(__CUDA_ARCH__)
  const uint32_t twice = bits * 0x8001u;
  Packed4 p{};
#pragma unroll
  for (int q = 0; q < 4; ++q)
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;"  // 0xEA: (a & b) | c
        : "=r"(p.v[q])
        : "r"(twice << (15 - 2 * q)), "n"(0x80008000u), "r"(ones));
  return p;
#else
  (void)ones;
  return rademacher_pack8<T>(bits);
#endif
}

// Thread tid's share of expanding a step's words into the P tile.
template <int T, class PLayout = PaddedPLayout>
FASTJL_HD void rademacher_expand(int tid, const U32x4* words, uint16_t* p_tile) {
  const uint32_t ones = kRademacherOnes<T>;
  for_thread_items<kPChunks / kThreads, true>(tid, kPChunks, [&](int c, int) {
    const RowCol rc = p_chunk(c);
    *reinterpret_cast<Packed4*>(p_tile + PLayout::index(rc.row, rc.col)) =
        rademacher_pack8_fused<T>(rademacher_byte(words, rc.row, rc.col), ones);
  });
}

// ---- gaussian ------------------------------------------------------------------------

// Thread tid's share of the gaussian P tile for rows row0 .. row0 + 31, columns
// col0 .. col0 + 127: hi and lo planes (P = hi + lo to ~16 / ~22 bits).
template <int T, class PLayout = PaddedPLayout>
FASTJL_HD void gaussian_generate(int tid, PhiloxKey key, uint64_t row0, uint32_t col0,
                                 int64_t proj_dim, uint16_t* p_hi, uint16_t* p_lo) {
  for (int item = tid; item < kPGroups; item += kThreads) {
    const RowCol rc = p_group(item);
    Packed2 hi{{0u, 0u}}, lo{{0u, 0u}};
    const uint32_t col = col0 + static_cast<uint32_t>(rc.col);
    if (static_cast<int64_t>(col) < proj_dim) {
      const U32x4 r = group_words(key, kGaussian, row0 + static_cast<uint64_t>(rc.row),
                                  col / kGaussianColumnsPerCounter);
      float v[kGaussianColumnsPerCounter];
      gaussian_tile<float>(r, v);
      split_pair<T>(v[0], v[1], hi.v[0], lo.v[0]);
      split_pair<T>(v[2], v[3], hi.v[1], lo.v[1]);
    }
    const int at = PLayout::index(rc.row, rc.col);
    *reinterpret_cast<Packed2*>(p_hi + at) = hi;
    *reinterpret_cast<Packed2*>(p_lo + at) = lo;
  }
}

// ---- shared-memory layout ------------------------------------------------------------

// Byte offsets of the mma.sync kernel's tiles: x in kXStages stages, P in two (stage s % 2),
// the rademacher words in kWordSlots slots.  All 16-byte aligned.
//
// Against sm_86 / sm_89's 100 KiB of shared memory per SM, the four x stages and the 16 words
// slots (stop 28) cost a resident CTA at B32 (3 -> 2: rademacher 16-bit and fp32 tiles) and
// at rademacher 16-bit B128 (2 -> 1); "auto" runs Triton first on those GPUs.  The H100 and
// the A100 keep the CTAs per SM the launch bounds promise.
template <class Cfg, int XDtypeSize, int Kind>
struct SmemLayout {
  // x stages (x_pipeline.h): rademacher 16-bit tiles four, fetched three steps ahead, as in
  // the wgmma kernel: with two, every step waited one global-load latency for the fetch it
  // issued itself, and in their unrolled loop (CtaSteps::step_unroll) ptxas put that wait
  // above the step's MMAs (bench/NOTES.md, stop 28).  Gaussian (bound by generating P) and
  // fp32 tiles (rolled loops; fp32 B128 would not fit 2 CTAs on an A100) keep a double
  // buffer.
  static constexpr int kXStages = XDtypeSize == 2 && Kind == kRademacher ? 4 : 2;
  static constexpr int kXBytes = XDtypeSize == 4  // per stage: MmaXLayout's rows
                                     ? Cfg::kBlockB * kXStride * 4
                                     : Cfg::kBlockB * SwizzledXLayout::kRowBytes;
  static constexpr int kPPlanes = Kind == kGaussian ? 2 : 1;
  static constexpr int kPBytes = kBlockD * kPStride * 2;  // per plane and stage
  // Rademacher words: kWordSlots slots (words_pipeline.h) of a step's 32 rows x 16 bytes.
  static constexpr int kWordSlots = Kind == kRademacher ? KernelWords::kSlots : 0;
  static constexpr int kWBytes = kBlockD * 16;  // per slot
  static constexpr int kTotal =
      kXStages * kXBytes + 2 * kPPlanes * kPBytes + kWordSlots * kWBytes;
  static constexpr FASTJL_HD int x(int stage) { return stage * kXBytes; }
  static constexpr FASTJL_HD int p(int stage, int plane) {
    return kXStages * kXBytes + (stage * kPPlanes + plane) * kPBytes;
  }
  static constexpr FASTJL_HD int w(int slot) {
    return kXStages * kXBytes + 2 * kPPlanes * kPBytes + slot * kWBytes;
  }
  static_assert(kXBytes % 16 == 0 && kPBytes % 16 == 0, "tiles must stay 16-byte aligned");
  static_assert(x(kXStages - 1) + kXBytes == p(0, 0) && p(1, kPPlanes - 1) + kPBytes == w(0) &&
                    w(kWordSlots) == kTotal,
                "the stages' regions tile the buffer without overlap");
};

}  // namespace proj
}  // namespace fastjl
