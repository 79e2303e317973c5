// fastjl._C.host_emulate_project_sparse: the sparse kinds' CUDA kernel (sparse_kernel.cu) run on
// the CPU, on host pointers, for tests without a GPU.
//
// Same plan (make_sparse_plan), same grid walk (cta_tile), same per-thread code
// (stage_chunk, transpose_windows, chunk_columns, store_columns from sparse_chunk.cuh, compiled
// for the host) and the same buffers; each phase runs for all kThreads threads of a CTA before
// the next, as the kernel's barriers order them.  cp.async is modelled by a copy that zero-fills
// the rest of its 16 bytes and refuses to read outside x's rows or the structure; shared memory
// starts poisoned (0xFF: NaN), so reading anything unstaged shows.
// The split partials are summed in split order, as project_kernel.cu's sum_splits kernel does.
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "host_copy16.h"
#include "host_sum_splits.h"
#include "sparse_chunk.cuh"
#include "sparse_chunk_args.h"

namespace fastjl {
namespace sparse {
namespace {

constexpr const char* kOp = "fastjl._C.host_emulate_project_sparse";

// HostCopy16 that first checks what the GPU's cp.async would read: a copy of x stays inside one
// batch row's `rows` elements (reading past a row, or past x, is a bug even where the values are
// never summed), a copy of the structure inside its arrays.  Throws (-> RuntimeError) otherwise.
struct CheckedCopy16 {
  const SparseChunkArgs* a;
  int64_t esize;
  void operator()(unsigned char* dst, const unsigned char* src, int bytes) const {
    if (bytes > 0 && !inside(src, bytes))
      throw std::runtime_error(std::string(kOp) + ": a 16-byte copy reads outside x's rows or "
                                                  "the chunk structure");
    HostCopy16{}(dst, src, bytes);
  }
  bool inside(const unsigned char* src, int bytes) const {
    const auto at = reinterpret_cast<uintptr_t>(src);
    const int64_t entries_bytes = a->chunks * int64_t(a->chunk_nonzeros) * 2;
    const int64_t ptr_bytes = a->chunks * a->ptr_stride * 2;
    if (at >= a->entries && at + bytes <= a->entries + entries_bytes) return true;
    if (at >= a->col_ptr && at + bytes <= a->col_ptr + ptr_bytes) return true;
    if (at < a->x || (at - a->x) % esize != 0) return false;
    const int64_t element = static_cast<int64_t>(at - a->x) / esize;
    const int64_t row_pitch = a->batch > 1 ? a->stride_xb : a->rows;
    const int64_t b = element / row_pitch, d = element - b * row_pitch;
    return b < a->batch && d + bytes / esize <= a->rows;  // vector copies: stride_xd == 1
  }
};

template <int XDtype, int BatchRows>
void emulate(const SparseChunkArgs& a, const SparsePlan& plan, bool vector, float* dest,
             int64_t stride_split, int64_t stride_b, int64_t stride_k) {
  using L = SmemLayout<XDtype, BatchRows>;
  const CheckedCopy16 copy{&a, L::kEsize};
  std::vector<uint64_t> smem_store(L::total(a.chunk_nonzeros) / sizeof(uint64_t));  // 8-aligned
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_store.data());
  const ChunkSource src = chunk_source(a);
  using Acc = float[BatchRows][kColsPerThread];
  std::vector<Acc> acc(kThreads);
  for (int64_t split = 0; split < plan.splits; ++split)
    for (int64_t cta = 0; cta < plan.tiles_b * plan.tiles_k; ++cta) {
      const CtaTile t =
          cta_tile(cta, split, plan.tiles_k, plan.chunks_per_split, a.chunks, BatchRows);
      const int ncols = tile_columns(t.k0, a.width);
      std::memset(smem, 0xFF, smem_store.size() * sizeof(uint64_t));
      for (auto& thread : acc)
        for (auto& row : thread)
          for (float& v : row) v = 0.0f;
      for (int tid = 0; tid < kThreads; ++tid)
        stage_chunk<XDtype, BatchRows>(tid, src, vector, t.b0, t.k0, t.chunk_begin, smem, 0,
                                       copy);
      for (int64_t c = t.chunk_begin; c < t.chunk_end; ++c) {
        const int slot = static_cast<int>((c - t.chunk_begin) & 1);
        for (int tid = 0; tid < kThreads; ++tid)
          transpose_windows<XDtype, BatchRows>(tid, static_cast<int>(src.chunk_rows), smem);
        if (c + 1 < t.chunk_end)
          for (int tid = 0; tid < kThreads; ++tid)
            stage_chunk<XDtype, BatchRows>(tid, src, vector, t.b0, t.k0, c + 1, smem, slot ^ 1,
                                           copy);
        for (int tid = 0; tid < kThreads; ++tid)
          chunk_columns<XDtype, BatchRows>(tid, smem, slot, a.chunk_nonzeros, ncols, acc[tid]);
      }
      for (int tid = 0; tid < kThreads; ++tid)
        store_columns<BatchRows>(tid, acc[tid], dest + split * stride_split, stride_b, stride_k,
                                 t.b0, a.batch, t.k0, a.width);
    }
}

template <int XDtype>
void emulate_rows(int batch_rows, const SparseChunkArgs& a, const SparsePlan& plan, bool vector,
                  float* dest, int64_t stride_split, int64_t stride_b, int64_t stride_k) {
  constexpr int kFull = full_batch_rows(XDtype);  // as sparse_kernel.cu's launch_rows
  if (batch_rows == kFull)
    emulate<XDtype, kFull>(a, plan, vector, dest, stride_split, stride_b, stride_k);
  else
    emulate<XDtype, kFull / 2>(a, plan, vector, dest, stride_split, stride_b, stride_k);
}

}  // namespace

int64_t sparse_smem_bytes(int x_dtype, int batch_rows, int chunk_nonzeros) {
  constexpr const char* op = "fastjl._C.project_sparse_smem_bytes";
  if (x_dtype != kFloat32 && x_dtype != kFloat16 && x_dtype != kBFloat16)
    throw std::invalid_argument(std::string(op) + ": x_dtype must be 0, 1 or 2");
  validate_batch_rows(x_dtype, batch_rows, op);
  if (!valid_chunk_nonzeros(chunk_nonzeros))
    throw std::invalid_argument(std::string(op) + ": chunk_nonzeros must be 4096, 8192 or 16384");
  // The layout depends only on the bytes of an element and of a row of T.
  const bool full = batch_rows == full_batch_rows(x_dtype);
  if (x_dtype == kFloat32)
    return full ? SmemLayout<kFloat32, full_batch_rows(kFloat32)>::total(chunk_nonzeros)
                : SmemLayout<kFloat32, full_batch_rows(kFloat32) / 2>::total(chunk_nonzeros);
  return full ? SmemLayout<kFloat16, full_batch_rows(kFloat16)>::total(chunk_nonzeros)
              : SmemLayout<kFloat16, full_batch_rows(kFloat16) / 2>::total(chunk_nonzeros);
}

bool host_emulate_sparse_project(const SparseChunkArgs& a, int batch_rows, int64_t num_sms) {
  validate_sparse_chunk_args(a, kOp);
  validate_batch_rows(a.x_dtype, batch_rows, kOp);
  const SparsePlan plan = make_sparse_plan(a.batch, a.chunks, a.width, num_sms, batch_rows, kOp);
  const bool vector = sparse_vector_loads(a);
  if (a.batch == 0) return vector;
  std::vector<float> workspace;
  float* dest = reinterpret_cast<float*>(a.out);
  int64_t stride_split = 0, stride_b = a.stride_ob, stride_k = a.stride_ok;
  if (plan.splits > 1) {
    workspace.assign(static_cast<size_t>(plan.workspace_bytes / sizeof(float)), NAN);
    dest = workspace.data();
    stride_split = a.batch * a.width;
    stride_b = a.width;
    stride_k = 1;
  }
  with_x_dtype(a.x_dtype, [&](auto dtype) {
    emulate_rows<decltype(dtype)::value>(batch_rows, a, plan, vector, dest, stride_split,
                                         stride_b, stride_k);
  });
  if (plan.splits > 1)
    host_sum_splits(workspace, plan.splits, a.batch, a.width, reinterpret_cast<float*>(a.out),
                    a.stride_ob, a.stride_ok);
  return vector;
}

}  // namespace sparse
}  // namespace fastjl
