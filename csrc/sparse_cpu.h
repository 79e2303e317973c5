// Arguments of the CPU sparse-block product (sparse_cpu.cpp); plain C++, torch-free like the
// rest of fastjl._C: tensors arrive as addresses plus sizes and dtype codes (block_args.h).
#pragma once

#include <cstdint>

namespace fastjl {

// out[b, :proj_dim] = x[b, :rows] @ P_block for b < batch (out is overwritten, not added to).
struct SparseBlockArgs {
  uintptr_t x;        // (batch, rows) elements of dtype x_dtype; row stride stride_xb, unit column stride
  int x_dtype;        // DtypeCode: float32, float16, bfloat16 or float64
  int64_t batch, rows, stride_xb;
  uintptr_t packed;   // uint32 per nonzero: column (bits 0..30) | sign (bit 31 set = -1), s per used row
  uintptr_t kept;     // int32 block-local rows that are used (grass), ascending; 0 = every row (sjlt)
  int64_t n_kept;     // entries of kept (ignored when kept is 0)
  int sparsity;       // s: 1, 2, 4 or 8 nonzeros per used row
  uintptr_t out;      // (batch, proj_dim) float32 (float64 for float64 x), row stride stride_ob
  int out_dtype;
  int64_t proj_dim, stride_ob;
};

// Throws std::invalid_argument (-> ValueError) naming `op` for arguments it cannot serve.
void validate_sparse_block_args(const SparseBlockArgs& a, const char* op);

// Single-threaded; the binding releases the GIL so the Python CPU workers run blocks in parallel.
void host_sparse_block(const SparseBlockArgs& a);

}  // namespace fastjl
