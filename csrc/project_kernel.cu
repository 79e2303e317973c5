// fastjl._C.project: y = x @ P[offset : offset + D, :K] for a [B, D] tensor x, on the
// pipeline of project_kernel.cuh (which explains the kernel).  This file holds x's tile
// producer, the host helpers every pipeline entry point shares, and the entry point.
//
// x's producer (project_x_producer.cuh, shared with the sm_90a kernel) copies tiles of x.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "project_args.h"
#include "project_kernel.cuh"
#include "project_x_producer.cuh"

namespace fastjl {
namespace proj {
namespace {

constexpr const char* kOp = "fastjl._C.project";

// out[b, k] = sum over s = 0, 1, ..., splits-1 (in that order) of parts[s, b, k].
__global__ void sum_splits_kernel(const float* __restrict__ parts, float* __restrict__ out,
                                  int64_t batch, int64_t proj_dim, int64_t splits,
                                  int64_t stride_ob, int64_t stride_ok) {
  const int64_t n = batch * proj_dim;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += stride) {
    float total = parts[idx];
    for (int64_t s = 1; s < splits; ++s) total += parts[s * n + idx];
    const int64_t b = idx / proj_dim;
    out[b * stride_ob + (idx - b * proj_dim) * stride_ok] = total;
  }
}

}  // namespace

// ---- host helpers shared by every entry point (declared in project_kernel.cuh) -----------

void raise_cuda(const char* op, cudaError_t err, const char* call) {
  cudaGetLastError();  // clear a non-sticky error so later CUDA calls are unaffected
  throw std::runtime_error(std::string(op) + ": " + cudaGetErrorString(err) + " (" + call +
                           ")");
}

void check_device_pointer(const char* op, uintptr_t ptr, const char* name) {
  cudaPointerAttributes attr{};
  check_cuda(op, cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr)),
             "cudaPointerGetAttributes");
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    throw std::invalid_argument(std::string(op) + ": " + name + " is not CUDA device memory");
}

Plan plan_with_workspace(const char* op, const Problem& pr, uintptr_t workspace,
                         int64_t workspace_bytes, int64_t num_sms) {
  const Plan plan = make_plan(pr.batch, pr.dim, pr.proj_dim, num_sms, op);
  if (workspace_bytes < plan.workspace_bytes || (plan.workspace_bytes > 0 && workspace == 0))
    throw std::invalid_argument(std::string(op) + ": this call needs a workspace of " +
                                std::to_string(plan.workspace_bytes) + " bytes, got " +
                                std::to_string(workspace_bytes) +
                                " (size it with " + op + "_workspace_bytes)");
  if (plan.workspace_bytes > 0 && workspace % 16 != 0)
    throw std::invalid_argument(std::string(op) + ": workspace_ptr must be 16-byte aligned");
  return plan;
}

void launch_sum_splits(const char* op, const Problem& pr, const Plan& plan, uintptr_t workspace,
                       cudaStream_t stream) {
  constexpr int kReduceThreads = 256;
  const int64_t n = pr.batch * pr.proj_dim;
  const int64_t blocks = std::min<int64_t>(ceil_div(n, kReduceThreads), 4096);
  sum_splits_kernel<<<static_cast<unsigned>(blocks), kReduceThreads, 0, stream>>>(
      reinterpret_cast<const float*>(workspace), reinterpret_cast<float*>(pr.out), pr.batch,
      pr.proj_dim, plan.splits, pr.stride_ob, pr.stride_ok);
  check_cuda(op, cudaGetLastError(), "sum_splits_kernel launch");
}

}  // namespace proj

void project_device(const ProjectArgs& a, uintptr_t workspace, int64_t workspace_bytes,
                    int64_t num_sms, uintptr_t stream_handle) {
  using namespace proj;
  validate_project_args(a, kOp);
  const Problem pr = problem_of(a);
  const Plan plan = plan_with_workspace(kOp, pr, workspace, workspace_bytes, num_sms);
  if (a.batch == 0) return;
  check_device_pointer(kOp, a.x, "x_ptr");

  const XSource xs = x_source(a);
  const int vector_loads = use_vector_loads(a) ? 1 : 0;
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  with_x_dtype(a.x_dtype, [&](auto dtype) {
    using Producer = XTileProducer<decltype(dtype)::value>;
    run_pipeline<Producer>(kOp, {xs, vector_loads}, pr, plan, workspace, stream);
  });
}

}  // namespace fastjl
