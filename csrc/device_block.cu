// GPU generation of a block of P into device memory: the same numbers as host_block.cpp,
// drawn from the same header (matrix_entries.cuh).  This kernel favours simplicity over
// speed (one Philox call per entry, coalesced writes); fast projection kernels that
// generate P on the fly reuse the tile helpers of matrix_entries.cuh instead.
//
// Every CUDA error becomes a C++ exception (std::runtime_error -> Python RuntimeError)
// whose message starts with the op name, so nothing fails silently or asynchronously
// without a trace; bad arguments raise ValueError before anything is launched.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "block_args.h"
#include "matrix_entries.cuh"

namespace fastjl {
namespace {

constexpr const char* kOp = "fastjl._C.device_matrix_block";
constexpr int kThreads = 256;
// Grid-stride loop: a capped grid covers any block size, and ~1M threads fill every GPU.
constexpr int64_t kMaxBlocks = 4096;

template <typename T>
__global__ void fill_block(PhiloxKey key, int kind, uint64_t row0, uint64_t col0,
                           uint64_t ncols, uint64_t total, T* __restrict__ out) {
  const uint64_t stride = uint64_t(gridDim.x) * blockDim.x;
  for (uint64_t idx = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const uint64_t r = idx / ncols;
    const uint64_t c = idx - r * ncols;
    out[idx] = matrix_entry<T>(key, kind, row0 + r, col0 + c);
  }
}

[[noreturn]] void raise_cuda(cudaError_t err, const char* call) {
  cudaGetLastError();  // clear the (non-sticky) error so later CUDA calls are unaffected
  throw std::runtime_error(std::string(kOp) + ": " + cudaGetErrorString(err) + " (" + call +
                           ")");
}

// Refuses host pointers before launching: a kernel writing through one would fault and
// leave the CUDA context unusable for the rest of the process (a "sticky" error).  This
// is also where a machine without a GPU or driver gets its clear error.
void check_device_pointer(uintptr_t ptr) {
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr));
  if (err != cudaSuccess) raise_cuda(err, "cudaPointerGetAttributes");
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    throw std::invalid_argument(std::string(kOp) + ": out_ptr is not CUDA device memory");
}

template <typename T>
void launch(const BlockArgs& a, cudaStream_t stream) {
  const uint64_t total = uint64_t(a.nrows) * uint64_t(a.ncols);
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks);
  fill_block<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      key_from_seed(a.seed), a.kind, uint64_t(a.row0), uint64_t(a.col0), uint64_t(a.ncols),
      total, reinterpret_cast<T*>(a.out));
  const cudaError_t err = cudaGetLastError();  // launch errors only; the kernel runs async
  if (err != cudaSuccess) raise_cuda(err, "kernel launch");
}

}  // namespace

void device_matrix_block(const BlockArgs& a, uintptr_t stream) {
  validate_block_args(a, kOp);
  if (a.nrows == 0 || a.ncols == 0) return;  // nothing to write; launch nothing
  check_device_pointer(a.out);
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  if (a.dtype_code == kFloat32)
    launch<float>(a, s);
  else
    launch<double>(a, s);
}

int compiled_cudart_version() { return CUDART_VERSION; }

}  // namespace fastjl
