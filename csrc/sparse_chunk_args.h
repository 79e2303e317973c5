// Arguments, checks and launch plan of fastjl._C.project_sparse (the CUDA kernel of the sparse
// kinds, sparse_kernel.cu) and of its CPU emulation (sparse_emulate.cpp).
//
// Plain C++ (no CUDA, no pybind11): bindings.cpp, sparse_emulate.cpp and sparse_kernel.cu share
// one definition.  The matrix never reaches C++ as (seed, offset, s): the Python side
// (fastjl/_backends/sparse_chunks.py) turns it into a column-sorted structure per chunk of rows,
// the same one the Triton kernel reads:
//   entries  int16 (chunks, chunk_nonzeros): per chunk, its nonzeros sorted by column (rows
//            ascending within a column), each `local row << 1 | negative`, zero-padded;
//   col_ptr  int16 (chunks, ptr_stride): the start of each column's run, width + 1 used
//            (col_ptr[c][width] = the chunk's count).
// A chunk holds chunk_nonzeros / s rows of P (so at most chunk_nonzeros nonzeros), at most
// kMaxChunkRows: chunk_nonzeros is 4096, 8192 or 16384, a launch argument.  Larger chunks give a
// column more entries per chunk (chunk_nonzeros / K on average), so a warp's lanes, one column
// each, walk runs of more even length (fastjl/_backends/cuda_sparse.py picks the largest that
// the GPU's shared memory holds).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "block_args.h"  // DtypeCode

namespace fastjl {
namespace sparse {

// 32 warps per CTA, 4 columns each: the summing step waits on chains of shared loads, and 32
// warps per SM hide twice the latency of 16 (512 threads x 8 columns, until stop 24), for the
// same instructions in all; at 64 registers a thread (1024 threads x 64 = the register file),
// no kernel spills (tests/test_cuda_compile.py).
constexpr int kThreads = 1024;
constexpr int kColsPerThread = 4;  // thread t owns columns t + kThreads c (c < 4) of the tile
constexpr int kBlockK = kThreads * kColsPerThread;  // 4096 columns per CTA
// Batch rows per CTA (a launch argument), sharing each staged chunk structure: as many as one
// 16-byte vector of x holds (4 float32, 8 float16/bfloat16), or 8 bytes' worth (2, 4) where the
// GPU's shared memory is short (sparse_smem_bytes): the run loop loads an entry's x for all
// the CTA's batch rows with one vector load from the transposed windows (sparse_chunk.cuh).
constexpr int kMaxChunkRows = 4096;       // rows per chunk (chunk_nonzeros / s) at most
constexpr int kPtrAlign = 8;          // col_ptr rows start 16-byte aligned (8 int16)
constexpr int64_t kMinChunksPerSplit = 2;
constexpr int64_t kMaxSplits = 65535;  // grid.y

inline int64_t chunk_rows(int chunk_nonzeros, int sparsity) { return chunk_nonzeros / sparsity; }
// Nonzeros per chunk the kernel takes (int16 column pointers count up to 16384).
inline bool valid_chunk_nonzeros(int n) { return n == 4096 || n == 8192 || n == 16384; }
inline int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

constexpr int sparse_dtype_size(int code) { return code == kFloat32 ? 4 : 2; }
// Batch rows per CTA whose x fill a 16-byte row of the transposed windows (4 float32, 8 16-bit);
// half as many fill 8 bytes.
constexpr int full_batch_rows(int x_dtype) { return 16 / sparse_dtype_size(x_dtype); }

// out[B, width] (float32, element strides) = x[B, rows] @ P_structure[rows, width].
struct SparseChunkArgs {
  uintptr_t x;
  int x_dtype;  // kFloat32, kFloat16 or kBFloat16
  int64_t batch, rows, stride_xb, stride_xd;
  uintptr_t entries, col_ptr;
  int64_t ptr_stride;  // int16 elements between two chunks' col_ptr rows
  int64_t chunks;      // = ceil(rows / chunk_rows(chunk_nonzeros, sparsity))
  int sparsity;
  int chunk_nonzeros;  // 4096, 8192 or 16384, with chunk_nonzeros / sparsity <= kMaxChunkRows
  uintptr_t out;
  int64_t width, stride_ob, stride_ok;
};

struct SparsePlan {
  int64_t tiles_k, tiles_b;   // grid.x = tiles_b * tiles_k (column tile fastest)
  int64_t splits;             // grid.y: contiguous ranges of chunks
  int64_t chunks_per_split;
  int64_t workspace_bytes;    // float32 [splits, B, width] when splits > 1, else 0
};

inline void validate_batch_rows(int batch_rows, const char* op) {
  if (batch_rows != 2 && batch_rows != 4 && batch_rows != 8)
    throw std::invalid_argument(std::string(op) + ": batch_rows must be 2, 4 or 8, got " +
                                std::to_string(batch_rows));
}
// The plan takes any of the kernel's batch-row counts; the kernel, per x dtype, those whose
// values of one row of x fill an 8- or 16-byte vector.
inline bool valid_batch_rows(int x_dtype, int batch_rows) {
  return batch_rows == full_batch_rows(x_dtype) || batch_rows == full_batch_rows(x_dtype) / 2;
}
inline void validate_batch_rows(int x_dtype, int batch_rows, const char* op) {
  if (!valid_batch_rows(x_dtype, batch_rows))
    throw std::invalid_argument(std::string(op) + ": batch_rows must be 2 or 4 for float32 x, " +
                                "4 or 8 for float16 / bfloat16 x, got " +
                                std::to_string(batch_rows));
}

// Splits of the chunks: as many as fill ONE wave of one CTA per SM (the kernel's 1024 threads
// and ~96-213 KiB of shared memory allow one per SM), each split at least kMinChunksPerSplit
// chunks.  Depends only on (B, chunks, width, num_sms): the summation order is fixed per GPU
// model.
inline SparsePlan make_sparse_plan(int64_t batch, int64_t chunks, int64_t width, int64_t num_sms,
                                   int batch_rows, const char* op) {
  if (num_sms < 1) throw std::invalid_argument(std::string(op) + ": num_sms must be >= 1");
  validate_batch_rows(batch_rows, op);
  SparsePlan p{};
  p.tiles_k = ceil_div64(width, kBlockK);
  p.tiles_b = ceil_div64(batch, batch_rows);
  const int64_t ctas = p.tiles_k * p.tiles_b;
  if (ctas > INT32_MAX)
    throw std::invalid_argument(std::string(op) + ": B * K is too large for one launch");
  int64_t splits = ctas <= 0 || ctas >= num_sms ? 1 : num_sms / ctas;
  if (splits > chunks / kMinChunksPerSplit) splits = chunks / kMinChunksPerSplit;
  if (splits > kMaxSplits) splits = kMaxSplits;
  if (splits < 1) splits = 1;
  p.chunks_per_split = ceil_div64(chunks, splits);
  p.splits = ceil_div64(chunks, p.chunks_per_split);  // every split non-empty
  p.workspace_bytes = p.splits > 1 ? p.splits * batch * width * int64_t(sizeof(float)) : 0;
  return p;
}

// Throws std::invalid_argument (-> ValueError) naming `op` and the argument.
inline void validate_sparse_chunk_args(const SparseChunkArgs& a, const char* op) {
  auto fail = [op](const std::string& what) {
    throw std::invalid_argument(std::string(op) + ": " + what);
  };
  if (a.x_dtype != kFloat32 && a.x_dtype != kFloat16 && a.x_dtype != kBFloat16)
    fail("x_dtype must be 0 (float32), 1 (float16) or 2 (bfloat16), got " +
         std::to_string(a.x_dtype));
  if (a.sparsity != 1 && a.sparsity != 2 && a.sparsity != 4 && a.sparsity != 8)
    fail("sparsity must be 1, 2, 4 or 8, got " + std::to_string(a.sparsity));
  if (a.batch < 0) fail("B must be >= 0, got " + std::to_string(a.batch));
  if (a.rows < 1) fail("rows must be >= 1, got " + std::to_string(a.rows));
  if (a.width < 1 || a.width > (int64_t(1) << 31))
    fail("width must be in [1, 2^31], got " + std::to_string(a.width));
  if (!valid_chunk_nonzeros(a.chunk_nonzeros))
    fail("chunk_nonzeros must be 4096, 8192 or 16384, got " + std::to_string(a.chunk_nonzeros));
  if (chunk_rows(a.chunk_nonzeros, a.sparsity) > kMaxChunkRows)
    fail("chunk_nonzeros / sparsity (rows per chunk) must be <= 4096, got " +
         std::to_string(a.chunk_nonzeros) + " / " + std::to_string(a.sparsity));
  if (a.chunks != ceil_div64(a.rows, chunk_rows(a.chunk_nonzeros, a.sparsity)))
    fail("chunks must be ceil(rows / (chunk_nonzeros / sparsity)) = " +
         std::to_string(ceil_div64(a.rows, chunk_rows(a.chunk_nonzeros, a.sparsity))) +
         ", got " + std::to_string(a.chunks));
  if (a.ptr_stride < a.width + 1 || a.ptr_stride % kPtrAlign != 0)
    fail("ptr_stride must be a multiple of 8 and >= width + 1, got " +
         std::to_string(a.ptr_stride));
  if (a.stride_xb < 0 || a.stride_xd < 0 || a.stride_ob < 0 || a.stride_ok < 0)
    fail("strides must be >= 0");
  if (a.batch > 0 && (a.x == 0 || a.out == 0 || a.entries == 0 || a.col_ptr == 0))
    fail("x_ptr, entries_ptr, col_ptr_ptr and out_ptr must not be null");
  if (a.entries % 16 != 0 || a.col_ptr % 16 != 0)
    fail("entries_ptr and col_ptr_ptr must be 16-byte aligned");
}

// Whether x's chunk windows can be staged with 16-byte asynchronous copies: unit stride along
// the rows of P and 16-byte aligned batch rows.  Otherwise element loads.
inline bool sparse_vector_loads(const SparseChunkArgs& a) {
  const int64_t esize = sparse_dtype_size(a.x_dtype);
  const bool rows_aligned = a.batch <= 1 || (a.stride_xb * esize) % 16 == 0;
  return a.stride_xd == 1 && a.x % 16 == 0 && rows_aligned;
}

// sparse_kernel.cu: device pointers, asynchronous on `stream`; workspace of
// plan.workspace_bytes (16-byte aligned) when the plan splits.
void sparse_project_device(const SparseChunkArgs& a, int batch_rows, uintptr_t workspace,
                           int64_t workspace_bytes, int64_t num_sms, uintptr_t stream);
// sparse_emulate.cpp: the same plan and per-chunk code on host pointers.  Returns whether the
// vector (cp.async) staging path was taken.
bool host_emulate_sparse_project(const SparseChunkArgs& a, int batch_rows, int64_t num_sms);
// Dynamic shared memory of the kernel for x of dtype code x_dtype, batch_rows and chunk_nonzeros
// (sparse_chunk.cuh's SmemLayout; throws for values the kernel does not take).
int64_t sparse_smem_bytes(int x_dtype, int batch_rows, int chunk_nonzeros);

}  // namespace sparse
}  // namespace fastjl
