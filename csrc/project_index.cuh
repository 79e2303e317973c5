// Index math of the projection kernel: which thread touches which element.
//
// Every mapping the kernel uses is a small __host__ __device__ function here, so the CPU
// emulation (host_emulate.cpp) runs the very same mappings lane by lane and
// tests/test_c_fragments.py checks the result against the torch backend without a GPU.
// The emulation models ldmatrix and mma.sync from the PTX ISA's own description of their
// fragment layouts (written out separately in host_emulate.cpp), so a wrong mapping here
// shows up as a wrong product there.
//
// Notation for an m16n8k16 MMA (PTX ISA, "Matrix Fragments for mma.m16n8k16"):
// lane = 4 * g + t with g = lane / 4 ("groupID") and t = lane % 4.
#pragma once

#include <cstdint>

#include "philox.cuh"  // FASTJL_HD
#include "project_plan.cuh"

namespace fastjl {
namespace proj {

struct RowCol {
  int row, col;
};

// ---- CTA level: tiles in shared memory -----------------------------------------------

// x tile (block_b x kBlockD), vector path: 16-byte chunk c holds `per_chunk` consecutive
// elements of one row.  Consecutive threads take consecutive chunks of a row, so a warp
// reads whole 64- or 128-byte row segments of x.
FASTJL_HD RowCol x_chunk(int chunk, int per_chunk) {
  const int chunks_per_row = kBlockD / per_chunk;
  return RowCol{chunk / chunks_per_row, (chunk % chunks_per_row) * per_chunk};
}

// x tile, element path (strided or unaligned x): element e, row-major.
FASTJL_HD RowCol x_element(int e) { return RowCol{e / kBlockD, e % kBlockD}; }

// How many elements of an x chunk starting at global (b, d) lie inside the matrix:
// 0 for rows past B, fewer than per_chunk at the end of the CTA's D-range.  The rest of
// the chunk is zero-filled, so rows of P past the range multiply zeros.
FASTJL_HD int x_chunk_valid(int64_t b, int64_t batch, int64_t d, int64_t d_end, int per_chunk) {
  if (b >= batch || d >= d_end) return 0;
  return d_end - d < per_chunk ? static_cast<int>(d_end - d) : per_chunk;
}

// Rademacher P tile: chunk c = 8 consecutive columns (16 bytes of 16-bit ±1) of one row.
// Consecutive threads take consecutive chunks of a row: conflict-free 16-byte stores.
constexpr int kPChunkCols = 8;
constexpr int kPChunks = kBlockD * kBlockN / kPChunkCols;  // 512: two per thread
FASTJL_HD RowCol p_chunk(int chunk) {
  constexpr int per_row = kBlockN / kPChunkCols;
  return RowCol{chunk / per_row, (chunk % per_row) * kPChunkCols};
}

// Gaussian P tile: item = one counter group (4 columns) of one row.
constexpr int kPGroups = kBlockD * kBlockN / 4;  // 1024: four per thread
FASTJL_HD RowCol p_group(int item) {
  constexpr int per_row = kBlockN / 4;
  return RowCol{item / per_row, (item % per_row) * 4};
}

// ---- warp level --------------------------------------------------------------------

// Top-left corner, within the CTA's output tile, of warp w's kWarpM x kWarpN outputs.
template <class Cfg>
FASTJL_HD RowCol warp_origin(int warp) {
  return RowCol{(warp / Cfg::kWarpsN) * Cfg::kWarpM, (warp % Cfg::kWarpsN) * Cfg::kWarpN};
}

// ldmatrix .x4: lane supplies the address of row (lane % 8) of 8x8 matrix q = lane / 8.
// We order the four matrices as (rows 0-7, cols 0-7), (rows 8-15, cols 0-7),
// (rows 0-7, cols 8-15), (rows 8-15, cols 8-15) of a 16x16 block:
//  * on the x tile [b][d] (no .trans) they are the A registers a0a1, a2a3, a4a5, a6a7;
//  * on the P tile [d][n] with .trans, rows are k and columns n, so they are b0b1, b2b3 of
//    n8-tile 0 followed by b0b1, b2b3 of n8-tile 1.
FASTJL_HD RowCol ldmatrix_x4_source(int lane) {
  const int q = lane >> 3;
  return RowCol{(q & 1) * 8 + (lane & 7), (q >> 1) * 8};
}

// fp32 x tile (read with plain float2 loads, then split into bf16 hi + lo): A register r
// (0..3) of a lane holds the element pair starting at (row, col) of the 16x16 block.
FASTJL_HD RowCol a_fragment(int lane, int r) {
  return RowCol{(lane >> 2) + 8 * (r & 1), 2 * (lane & 3) + 8 * (r >> 1)};
}

// Accumulator element r (0..3) of a lane: (row, col) of the 16x8 output fragment.
FASTJL_HD RowCol c_fragment(int lane, int r) {
  return RowCol{(lane >> 2) + 8 * (r >> 1), 2 * (lane & 3) + (r & 1)};
}

}  // namespace proj
}  // namespace fastjl
