// The per-chunk steps of the sparse kinds' CUDA kernel (sparse_kernel.cu), written once as
// __host__ __device__ functions over plain arrays: the kernel runs them per thread on shared
// memory, the CPU emulation (sparse_emulate.cpp) runs the very same functions for every thread
// of a CTA on a host buffer.  The structure they read is described in sparse_chunk_args.h.
//
// A CTA owns BatchRows batch rows and kBlockK = 4096 output columns; thread t owns columns
// t + c·kThreads (c < kColsPerThread: t, t + 1024, t + 2048, t + 3072) of the tile for all
// BatchRows rows (kColsPerThread·BatchRows float32 accumulators in registers, kept across the
// CTA's chunks).  The lanes of a warp hold consecutive columns: their pointer loads are
// consecutive int16 (conflict-free), their runs adjacent in the entries (few bank conflicts),
// their stores coalesced.  Per chunk, shared memory holds
//   * the x window of each batch row (the chunk's rows of x, native dtype), as cp.async copies
//     them: 16-byte pieces of one batch row;
//   * the same values transposed, T[row] = (x[b0][row], ..., x[b0 + BatchRows - 1][row]): one
//     8- or 16-byte vector per row of the chunk, so the run loop loads an entry's x for every
//     batch row with one shared load (since stop 29: a scalar load per batch row before);
//   * the chunk's entries (chunk_nonzeros int16) and its tile's column pointers,
// staged once and read by all BatchRows rows: the structure is decoded once per CTA, not once
// per batch row.  Thread t walks the runs of its columns in order (rows ascending within a
// column) and adds ±x to its accumulators: float32 sums in a fixed order (no atomics, no
// prefix difference), so results are bitwise reproducible and as accurate as a sequential
// float32 sum over each column's nonzeros.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "half_bits.cuh"
#include "sparse_chunk_args.h"

namespace fastjl {
namespace sparse {

// Byte offsets in shared memory: the raw x windows (one per batch row, each sized for the
// longest chunk, kMaxChunkRows rows, whatever the chunk's shape), their transpose T (a vector of
// kVecBytes per row), then two structure buffers (entries for chunk_nonzeros, then the tile's
// column pointers).  Only the structure is double-buffered: chunk c + 1's x is copied into the
// raw windows once chunk c's have been transposed, while chunk c is summed from T (kernel loop
// in sparse_kernel.cu).  The pointers follow the entries directly: the run loop's look-ahead
// past the last entry reads the first pointer.
template <int XDtype, int BatchRows>
struct SmemLayout {
  static constexpr int kEsize = sparse_dtype_size(XDtype);
  static constexpr int kVecBytes = BatchRows * kEsize;  // one row of T
  static_assert(kVecBytes == 8 || kVecBytes == 16, "a row of T is one 8- or 16-byte load");
  static constexpr int kWindowBytes = kMaxChunkRows * kEsize;
  static constexpr int kTransposedOffset = BatchRows * kWindowBytes;
  static constexpr int kStructureOffset = kTransposedOffset + kMaxChunkRows * kVecBytes;
  static constexpr int kPtrCount = kBlockK + kPtrAlign;  // kBlockK + 1 used, 16-byte rounded
  static_assert(kStructureOffset % 16 == 0 && kPtrCount * 2 % 16 == 0, "16-byte aligned pieces");
  FASTJL_HD static int structure_bytes(int chunk_nonzeros) {
    return chunk_nonzeros * 2 + kPtrCount * 2;
  }
  // Structure buffer `slot` (0 or 1): its entries, then its pointers.
  FASTJL_HD static int entries_offset(int slot, int chunk_nonzeros) {
    return kStructureOffset + slot * structure_bytes(chunk_nonzeros);
  }
  FASTJL_HD static int ptr_offset(int slot, int chunk_nonzeros) {
    return entries_offset(slot, chunk_nonzeros) + chunk_nonzeros * 2;
  }
  FASTJL_HD static int total(int chunk_nonzeros) {
    return kStructureOffset + 2 * structure_bytes(chunk_nonzeros);
  }
};

// Where a CTA reads from (global memory on the GPU, host memory in the emulation).
struct ChunkSource {
  const unsigned char* x;
  int64_t batch, rows, stride_xb, stride_xd;  // x: element strides
  const uint16_t* entries;                    // (chunks, chunk_nonzeros)
  const uint16_t* col_ptr;                    // (chunks, ptr_stride)
  int64_t ptr_stride, chunk_rows, width;
  int rows_shift;  // log2(chunk_rows): chunk_rows = chunk_nonzeros / s is a power of two
  int chunk_nonzeros;
};

// log2 of a power of two (chunk_rows), on the host: chunk_source runs there.
inline int log2_exact(int64_t pow2) {
  int shift = 0;
  while ((int64_t(1) << shift) < pow2) ++shift;
  return shift;
}

// The source view of a call's arguments (one place for the launcher and the emulation).
inline ChunkSource chunk_source(const SparseChunkArgs& a) {
  return ChunkSource{reinterpret_cast<const unsigned char*>(a.x),
                     a.batch,
                     a.rows,
                     a.stride_xb,
                     a.stride_xd,
                     reinterpret_cast<const uint16_t*>(a.entries),
                     reinterpret_cast<const uint16_t*>(a.col_ptr),
                     a.ptr_stride,
                     chunk_rows(a.chunk_nonzeros, a.sparsity),
                     a.width,
                     log2_exact(chunk_rows(a.chunk_nonzeros, a.sparsity)),
                     a.chunk_nonzeros};
}

// Columns of the tile starting at k0 (the last tile may be narrower than kBlockK).
FASTJL_HD int tile_columns(int64_t k0, int64_t width) {
  return static_cast<int>(width - k0 < kBlockK ? width - k0 : kBlockK);
}

// Thread tid's share of staging chunk `chunk` for batch rows b0 .. b0+BatchRows-1 and the
// column tile at k0: x into the raw windows, the structure into structure buffer `slot`.
// copy(dst, src, bytes) copies `bytes` (0..16) bytes and zero-fills the rest of 16 (cp.async on
// the GPU).  Vector path (sparse_vector_loads): x in 16-byte pieces; element path: plain loads
// (any strides and alignment).  Rows past B and past the chunk's end read as zeros.
//
// Vector path, written for few instructions per copy (every thread runs it every chunk): a row
// window is `pieces` = chunk_rows / (16 / esize) pieces, a power of two <= kThreads, so thread
// tid always copies piece q = tid % pieces, of rows tid / pieces, + kThreads / pieces, ... : its
// valid byte count and source offset within a row are computed once, in 32 bits, with shifts
// (no division, no 64-bit clamps), and each copy is a pointer step.
template <int XDtype, int BatchRows, class Copy16>
FASTJL_HD void stage_chunk(int tid, const ChunkSource& s, bool vector, int64_t b0, int64_t k0,
                           int64_t chunk, unsigned char* smem, int slot, Copy16 copy) {
  using L = SmemLayout<XDtype, BatchRows>;
  constexpr int kE = L::kEsize;
  const int64_t d0 = chunk * s.chunk_rows;
  // Rows of this chunk that exist (the last chunk may be short): 1 .. chunk_rows.
  const int rows_here = static_cast<int>(s.rows - d0 < s.chunk_rows ? s.rows - d0 : s.chunk_rows);
  if (vector) {
    constexpr int kPer = 16 / kE, kPerShift = kE == 4 ? 2 : 3;  // elements per piece, log2
    static_assert(kMaxChunkRows / kPer <= kThreads, "a thread copies one piece of a row");
    const int piece_shift = s.rows_shift - kPerShift;  // log2(pieces)
    const int q = tid & ((1 << piece_shift) - 1);
    const int row_step = kThreads >> piece_shift;
    int valid = rows_here - (q << kPerShift);
    valid = valid < 0 ? 0 : valid > kPer ? kPer : valid;
    const int rows_real = s.batch - b0 < BatchRows ? static_cast<int>(s.batch - b0) : BatchRows;
    int r = tid >> piece_shift;
    int64_t offset = ((b0 + r) * s.stride_xb + d0 + (q << kPerShift)) * kE;  // bytes
    const int64_t step = row_step * s.stride_xb * kE;
    if (rows_here == s.chunk_rows && rows_real == BatchRows) {
      // A whole chunk of a whole batch tile (every chunk but a call's last, in every batch
      // tile but the last; uniform over the CTA): every piece is 16 bytes of x, so a copy is a
      // pointer step with no clamp, zero-fill size or source select (23 -> 13 instructions a
      // copy on sm_90, 22 -> 12 on sm_80, bench/sparse_sass_stats.py; stop 27).
      for (; r < BatchRows; r += row_step, offset += step)
        copy(smem + r * L::kWindowBytes + q * 16, s.x + offset, 16);
    } else {
      for (; r < BatchRows; r += row_step, offset += step) {
        const int bytes = r < rows_real ? valid * kE : 0;
        copy(smem + r * L::kWindowBytes + q * 16, bytes > 0 ? s.x + offset : s.x, bytes);
      }
    }
  } else {
    using Elem = typename std::conditional<kE == 4, uint32_t, uint16_t>::type;
    const Elem* x = reinterpret_cast<const Elem*>(s.x);
    const int mask = (1 << s.rows_shift) - 1;
    for (int i = tid; i < (BatchRows << s.rows_shift); i += kThreads) {
      const int r = i >> s.rows_shift, q = i & mask;
      const int64_t b = b0 + r;
      reinterpret_cast<Elem*>(smem + r * L::kWindowBytes)[q] =
          (b < s.batch && q < rows_here) ? x[b * s.stride_xb + (d0 + q) * s.stride_xd] : Elem(0);
    }
  }
  const unsigned char* e =
      reinterpret_cast<const unsigned char*>(s.entries + chunk * int64_t(s.chunk_nonzeros));
  for (int i = tid; i < s.chunk_nonzeros * 2 / 16; i += kThreads)
    copy(smem + L::entries_offset(slot, s.chunk_nonzeros) + i * 16, e + i * 16, 16);
  // Pointers of columns k0 .. k0+ncols (ncols + 1 values), in 16-byte pieces: k0 is a
  // multiple of 8 and ptr_stride a multiple of 8 >= width + 1, so they stay in the row.
  const int pieces = (tile_columns(k0, s.width) + 1 + kPtrAlign - 1) / kPtrAlign;
  const unsigned char* p =
      reinterpret_cast<const unsigned char*>(s.col_ptr + chunk * s.ptr_stride + k0);
  unsigned char* ptr_dst = smem + L::ptr_offset(slot, s.chunk_nonzeros);
  for (int i = tid; i < pieces; i += kThreads) copy(ptr_dst + i * 16, p + i * 16, 16);
}

// 1, 2 or 4 32-bit words at p, 4·Words-byte aligned: a row of T, or two 16-bit values of a
// window (shared memory on the GPU, where each is one LDS / STS; memcpy on the host).
template <int Words>
FASTJL_HD void load_words(const unsigned char* p, uint32_t (&w)[Words]) {
  static_assert(Words == 1 || Words == 2 || Words == 4, "a 4-, 8- or 16-byte load");
#if defined(__CUDA_ARCH__)
  if constexpr (Words == 4) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  } else if constexpr (Words == 2) {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    w[0] = v.x, w[1] = v.y;
  } else {
    w[0] = *reinterpret_cast<const uint32_t*>(p);
  }
#else
  std::memcpy(w, p, Words * 4);
#endif
}
template <int Words>
FASTJL_HD void store_words(unsigned char* p, const uint32_t (&w)[Words]) {
  static_assert(Words == 2 || Words == 4, "8- or 16-byte rows");
#if defined(__CUDA_ARCH__)
  if constexpr (Words == 4)
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  else
    *reinterpret_cast<uint2*>(p) = make_uint2(w[0], w[1]);
#else
  std::memcpy(p, w, Words * 4);
#endif
}

// PTX prmt / __byte_perm: byte i of the result is byte (sel >> 4i) & 7 of b:a (a's bytes 0-3,
// then b's), or that byte's sign replicated where bit 3 of the nibble is set.  One PRMT on the
// GPU; on the host the same rule, so the emulation runs the kernel's selectors.
FASTJL_HD uint32_t byte_perm(uint32_t a, uint32_t b, uint32_t sel) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(a, b, sel);
#else
  const uint64_t both = (static_cast<uint64_t>(b) << 32) | a;
  uint32_t out = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t nibble = (sel >> (4 * i)) & 0xFu;
    uint32_t byte = static_cast<uint32_t>(both >> (8 * (nibble & 7u))) & 0xFFu;
    if (nibble & 8u) byte = (byte & 0x80u) ? 0xFFu : 0u;
    out |= byte << (8 * i);
  }
  return out;
#endif
}

// (a's low half, b's low half) and (a's high half, b's high half), low half first: one PRMT
// each (the plain expressions compiled to a mask and a PRMT).
FASTJL_HD uint32_t low_halves(uint32_t a, uint32_t b) { return byte_perm(a, b, 0x5410); }
FASTJL_HD uint32_t high_halves(uint32_t a, uint32_t b) { return byte_perm(a, b, 0x7632); }

// Thread tid's share of transposing the staged windows into T (rows past B and past the
// chunk's end were staged as zeros, so T's are zeros too).  Consecutive lanes read consecutive
// words of a window (conflict-free) and write consecutive rows of T.
//  * 16-bit x: two rows at a time, d and d + 1 for d = 2 tid, 2 (tid + kThreads), ...
//    (chunk_rows is a power of two >= 512): per batch row one 32-bit load holds both rows'
//    values, and one PRMT per word of T pairs two batch rows; 10.2 instructions per row of the
//    chunk at 8 batch rows against 14.2 a row at a time (bench/NOTES.md, stop 29).
//  * float32: a row at a time, one 32-bit load per batch row straight into the registers of
//    T's row (two rows at a time loaded 64 bits per batch row and moved every value into place
//    for the 16-byte stores: 6.6 instructions per row against 6.2).
template <int XDtype, int BatchRows>
FASTJL_HD void transpose_windows(int tid, int chunk_rows, unsigned char* smem) {
  using L = SmemLayout<XDtype, BatchRows>;
  constexpr int kWords = L::kVecBytes / 4;
  if constexpr (XDtype == kFloat32) {
    for (int d = tid; d < chunk_rows; d += kThreads) {
      uint32_t w[kWords];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (int i = 0; i < kWords; ++i)
        w[i] = reinterpret_cast<const uint32_t*>(smem + i * L::kWindowBytes)[d];
      store_words(smem + L::kTransposedOffset + d * L::kVecBytes, w);
    }
  } else {
    for (int d = 2 * tid; d < chunk_rows; d += 2 * kThreads) {
      uint32_t first[kWords], second[kWords];  // rows d and d + 1 of T
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (int i = 0; i < kWords; ++i) {  // batch rows 2i (low halves of T's words), 2i + 1
        uint32_t lo[1], hi[1];            // x[r][d] in the low half, x[r][d + 1] in the high
        load_words(smem + 2 * i * L::kWindowBytes + d * 2, lo);
        load_words(smem + (2 * i + 1) * L::kWindowBytes + d * 2, hi);
        first[i] = low_halves(lo[0], hi[0]);
        second[i] = high_halves(lo[0], hi[0]);
      }
      store_words(smem + L::kTransposedOffset + d * L::kVecBytes, first);
      store_words(smem + L::kTransposedOffset + (d + 1) * L::kVecBytes, second);
    }
  }
}

// Batch row r's value in a row of T, widened to float32 (exact).
template <int XDtype, int Words>
FASTJL_HD float row_value(const uint32_t (&w)[Words], int r) {
  if constexpr (XDtype == kFloat32) {
    return bits_float(w[r]);
  } else {
    const uint32_t pair = w[r >> 1];
    if constexpr (XDtype == kBFloat16) return bits_float((r & 1) ? pair & 0xFFFF0000u : pair << 16);
    return half_to_float<kMmaF16>(static_cast<uint16_t>((r & 1) ? pair >> 16 : pair & 0xFFFFu));
  }
}

// entries[j], loaded where it is written: on the GPU as a volatile shared load, so that nvcc
// keeps the run loop's look-ahead (entry j + 1 loaded before entry j's x) instead of reloading
// entry j at the top of the next iteration, which would chain two shared loads per entry.
FASTJL_HD uint32_t look_ahead(const uint16_t* entries, int j) {
#if defined(__CUDA_ARCH__)
  uint32_t v;  // ld.u16 into a 32-bit register zero-extends (no mask instruction)
  asm volatile("ld.shared.u16 %0, [%1];\n"
               : "=r"(v)
               : "r"(static_cast<uint32_t>(__cvta_generic_to_shared(entries + j))));
  return v;
#else
  return entries[j];
#endif
}

// Thread tid adds the staged chunk's contribution to its columns: for each of its columns
// in order, the column's run of entries in order (rows ascending), ±x for every batch row, x
// loaded as one row of T (one vector load for all BatchRows rows).  The sign is entry bit 0
// moved into the sign bit of a ±1.0f, and each add is an FFMA acc + x·(±1): the product is
// exact, so the result is bitwise acc ± x, one instruction instead of a sign flip and an add.
//
// Shared loads are issued as early as their addresses are known: the thread's columns' bounds
// and first entries are loaded before any sum (a column then starts without a pointer -> entry
// chain), and within a run entry j + 1 is loaded before entry j's x values are summed, so an
// entry waits on one shared-load latency (x) instead of two (entry, then x).  The look-ahead
// reads one entry past a run's end: at most entries[chunk_nonzeros], i.e. the first pointer of
// the same structure buffer (SmemLayout puts the pointers right after the entries).
template <int XDtype, int BatchRows>
FASTJL_HD void chunk_columns(int tid, const unsigned char* smem, int slot, int chunk_nonzeros,
                             int ncols, float (&acc)[BatchRows][kColsPerThread]) {
  using L = SmemLayout<XDtype, BatchRows>;
  constexpr int kWords = L::kVecBytes / 4;
  const unsigned char* transposed = smem + L::kTransposedOffset;
  const uint16_t* entries =
      reinterpret_cast<const uint16_t*>(smem + L::entries_offset(slot, chunk_nonzeros));
  const uint16_t* ptr =
      reinterpret_cast<const uint16_t*>(smem + L::ptr_offset(slot, chunk_nonzeros));
  int begin[kColsPerThread], end[kColsPerThread];
  uint32_t first[kColsPerThread];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int c = 0; c < kColsPerThread; ++c) {
    const int k = c * kThreads + tid;  // lanes of a warp: consecutive columns
    begin[c] = k < ncols ? ptr[k] : 0;
    end[c] = k < ncols ? ptr[k + 1] : 0;  // empty past the tile's columns
  }
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int c = 0; c < kColsPerThread; ++c) first[c] = entries[begin[c]];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int c = 0; c < kColsPerThread; ++c) {
    uint32_t code = first[c];
    // Not unrolled: runs are short (~1 entry a column per chunk at K = 4096), and nvcc's 4x
    // unroll runs a remainder loop first, so a warp paid max over lanes of (run % 4) remainder
    // iterations, then a 4-entry body whenever one lane's run reached 4, plus the split's
    // setup: ~3.5 iterations' worth more per column than max(run) single iterations.
#if defined(__CUDA_ARCH__)
#pragma unroll 1
#endif
    for (int j = begin[c]; j < end[c]; ++j) {
      const uint32_t next = look_ahead(entries, j + 1);
      const float unit = bits_float(0x3F800000u | (code << 31));  // -1 or +1
      uint32_t w[kWords];
      load_words(transposed + (code >> 1) * L::kVecBytes, w);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (int r = 0; r < BatchRows; ++r)  // x·(±1) is exact: one rounding, as acc ± x
        acc[r][c] = fmaf(row_value<XDtype>(w, r), unit, acc[r][c]);
      code = next;
    }
  }
}

// Thread tid's accumulators to dest (rows b0 + r < batch, columns k0 + kThreads c + tid < width).
template <int BatchRows>
FASTJL_HD void store_columns(int tid, const float (&acc)[BatchRows][kColsPerThread], float* dest,
                             int64_t stride_b, int64_t stride_k, int64_t b0, int64_t batch,
                             int64_t k0, int64_t width) {
  for (int r = 0; r < BatchRows; ++r) {
    if (b0 + r >= batch) break;
    for (int c = 0; c < kColsPerThread; ++c) {
      const int64_t k = k0 + c * kThreads + tid;
      if (k < width) dest[(b0 + r) * stride_b + k * stride_k] = acc[r][c];
    }
  }
}

// The CTA's place in the grid: blockIdx.x = cta (column tile fastest), blockIdx.y = split.
struct CtaTile {
  int64_t b0, k0, chunk_begin, chunk_end;
};
FASTJL_HD CtaTile cta_tile(int64_t cta, int64_t split, int64_t tiles_k, int64_t chunks_per_split,
                           int64_t chunks, int batch_rows) {
  const int64_t tile_b = cta / tiles_k, tile_k = cta - tile_b * tiles_k;
  const int64_t begin = split * chunks_per_split;
  const int64_t end = begin + chunks_per_split < chunks ? begin + chunks_per_split : chunks;
  return CtaTile{tile_b * batch_rows, tile_k * kBlockK, begin, end};
}

}  // namespace sparse
}  // namespace fastjl
