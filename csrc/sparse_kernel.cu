// fastjl._C.project_sparse: out = x @ P for the sparse kinds (sjlt, grass) on the GPU, from the
// column-sorted chunk structure of sparse_chunk_args.h, with the per-chunk code of
// sparse_chunk.cuh (which explains what a thread does).
//
// Grid: x = batch tiles x column tiles (column tile fastest: the CTAs that read the same x
// windows run side by side), y = splits (contiguous ranges of chunks).  A CTA walks its chunks
// in order: chunk c+1's x windows, entries and pointers are copied to shared memory with
// cp.async while chunk c is summed (from its transposed windows, T), two barriers per chunk.  Splits write float32
// partials to a workspace [splits, B, width] that project_kernel.cu's sum_splits kernel adds
// up in split order.  No atomics anywhere: for a given GPU (the plan depends on its SM count)
// the result is bitwise the same run after run.
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "project_kernel.cuh"  // check_cuda, check_device_pointer, launch_sum_splits
#include "sm80_primitives.cuh"
#include "sparse_chunk.cuh"

namespace fastjl {
namespace sparse {
namespace {

constexpr const char* kOp = "fastjl._C.project_sparse";

struct AsyncCopy16 {
  __device__ void operator()(unsigned char* dst, const unsigned char* src, int bytes) const {
    sm80::cp_async_16(dst, src, bytes);
  }
};

struct KernelArgs {
  ChunkSource src;
  int vector;  // sparse_vector_loads
  int64_t tiles_k, chunks, chunks_per_split;
  float* dest;  // out, or the workspace when the plan splits
  int64_t dest_stride_split, dest_stride_b, dest_stride_k;
};

// One CTA per SM (1024 threads, up to 64 registers each, ~96-213 KiB of shared memory).
template <int XDtype, int BatchRows>
__global__ void __launch_bounds__(kThreads, 1) sparse_project_kernel(const KernelArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = static_cast<int>(threadIdx.x);
  const CtaTile t = cta_tile(blockIdx.x, blockIdx.y, a.tiles_k, a.chunks_per_split, a.chunks,
                             BatchRows);
  const int ncols = tile_columns(t.k0, a.src.width);
  float acc[BatchRows][kColsPerThread];
#pragma unroll
  for (int r = 0; r < BatchRows; ++r)
#pragma unroll
    for (int c = 0; c < kColsPerThread; ++c) acc[r][c] = 0.0f;

  stage_chunk<XDtype, BatchRows>(tid, a.src, a.vector != 0, t.b0, t.k0, t.chunk_begin, smem, 0,
                                 AsyncCopy16{});
  sm80::cp_async_commit();
  for (int64_t c = t.chunk_begin; c < t.chunk_end; ++c) {
    const int slot = static_cast<int>((c - t.chunk_begin) & 1);
    sm80::cp_async_wait_all();
    // Chunk c's x windows and structure are in shared memory for every thread, and every
    // thread is done summing chunk c-1 from T.
    __syncthreads();
    transpose_windows<XDtype, BatchRows>(tid, static_cast<int>(a.src.chunk_rows), smem);
    // T holds chunk c's x for every thread, and the raw windows are free for chunk c+1's.
    __syncthreads();
    if (c + 1 < t.chunk_end) {
      stage_chunk<XDtype, BatchRows>(tid, a.src, a.vector != 0, t.b0, t.k0, c + 1, smem,
                                     slot ^ 1, AsyncCopy16{});
      sm80::cp_async_commit();
    }
    chunk_columns<XDtype, BatchRows>(tid, smem, slot, a.src.chunk_nonzeros, ncols, acc);
  }
  store_columns<BatchRows>(tid, acc, a.dest + blockIdx.y * a.dest_stride_split, a.dest_stride_b,
                           a.dest_stride_k, t.b0, a.src.batch, t.k0, a.src.width);
#else
  __trap();  // needs sm_80+ (cp.async)
#endif
}

template <int XDtype, int BatchRows>
void launch(const KernelArgs& ka, const SparsePlan& plan, cudaStream_t stream) {
  const int smem = SmemLayout<XDtype, BatchRows>::total(ka.src.chunk_nonzeros);
  auto kernel = sparse_project_kernel<XDtype, BatchRows>;
  proj::check_cuda(kOp,
                   cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
                   "cudaFuncSetAttribute (shared memory; fewer batch_rows or chunk_nonzeros "
                   "need less)");
  const dim3 grid(static_cast<unsigned>(plan.tiles_b * plan.tiles_k),
                  static_cast<unsigned>(plan.splits));
  kernel<<<grid, kThreads, smem, stream>>>(ka);
  proj::check_cuda(kOp, cudaGetLastError(), "sparse_project_kernel launch");
}

// The kernel's batch-row counts for x of XDtype: a 16- or 8-byte row of T (valid_batch_rows).
template <int XDtype>
void launch_rows(int batch_rows, const KernelArgs& ka, const SparsePlan& plan,
                 cudaStream_t stream) {
  constexpr int kFull = full_batch_rows(XDtype);
  if (batch_rows == kFull)
    launch<XDtype, kFull>(ka, plan, stream);
  else
    launch<XDtype, kFull / 2>(ka, plan, stream);
}

}  // namespace

void sparse_project_device(const SparseChunkArgs& a, int batch_rows, uintptr_t workspace,
                           int64_t workspace_bytes, int64_t num_sms, uintptr_t stream_handle) {
  validate_sparse_chunk_args(a, kOp);
  validate_batch_rows(a.x_dtype, batch_rows, kOp);
  const SparsePlan plan = make_sparse_plan(a.batch, a.chunks, a.width, num_sms, batch_rows, kOp);
  if (workspace_bytes < plan.workspace_bytes || (plan.workspace_bytes > 0 && workspace == 0))
    throw std::invalid_argument(std::string(kOp) + ": this call needs a workspace of " +
                                std::to_string(plan.workspace_bytes) + " bytes, got " +
                                std::to_string(workspace_bytes) +
                                " (size it with project_sparse_workspace_bytes)");
  if (plan.workspace_bytes > 0 && workspace % 16 != 0)
    throw std::invalid_argument(std::string(kOp) + ": workspace_ptr must be 16-byte aligned");
  if (a.batch == 0) return;
  proj::check_device_pointer(kOp, a.x, "x_ptr");
  proj::check_device_pointer(kOp, a.entries, "entries_ptr");
  proj::check_device_pointer(kOp, a.col_ptr, "col_ptr_ptr");
  proj::check_device_pointer(kOp, a.out, "out_ptr");
  if (plan.splits > 1) proj::check_device_pointer(kOp, workspace, "workspace_ptr");

  KernelArgs ka{};
  ka.src = chunk_source(a);
  ka.vector = sparse_vector_loads(a) ? 1 : 0;
  ka.tiles_k = plan.tiles_k;
  ka.chunks = a.chunks;
  ka.chunks_per_split = plan.chunks_per_split;
  if (plan.splits == 1) {
    ka.dest = reinterpret_cast<float*>(a.out);
    ka.dest_stride_b = a.stride_ob;
    ka.dest_stride_k = a.stride_ok;
  } else {
    ka.dest = reinterpret_cast<float*>(workspace);
    ka.dest_stride_split = a.batch * a.width;
    ka.dest_stride_b = a.width;
    ka.dest_stride_k = 1;
  }
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  with_x_dtype(a.x_dtype, [&](auto dtype) {
    launch_rows<decltype(dtype)::value>(batch_rows, ka, plan, stream);
  });

  if (plan.splits > 1) {
    // project_kernel.cu's ordered reduction reads only these fields of its Problem and Plan.
    Problem pr{};
    pr.batch = a.batch;
    pr.proj_dim = a.width;
    pr.out = a.out;
    pr.stride_ob = a.stride_ob;
    pr.stride_ok = a.stride_ok;
    proj::Plan pp{};
    pp.splits = plan.splits;
    proj::launch_sum_splits(kOp, pr, pp, workspace, stream);
  }
}

}  // namespace sparse
}  // namespace fastjl
