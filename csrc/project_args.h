// Arguments of fastjl._C.project (and of its CPU emulation) and their cheap checks.
//
// Plain C++ (no CUDA, no pybind11) so bindings.cpp, host_emulate.cpp and project_kernel.cu
// share one definition.  fastjl validates everything in Python before calling; these checks
// only guard the invariants the kernel relies on, so that a wrong call from elsewhere gets a
// ValueError (std::invalid_argument) instead of an out-of-bounds access.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "block_args.h"  // DtypeCode, kMaxRows

namespace fastjl {

// y[B, K] = x[B, D] @ P[offset : offset + D, :K].  Element strides (not bytes), as torch
// reports them.  The destination is float32; x is float32, float16 or bfloat16.
struct ProjectArgs {
  uintptr_t x;
  int x_dtype;  // DtypeCode: kFloat32, kFloat16 or kBFloat16
  int64_t batch, dim;
  int64_t stride_xb, stride_xd;
  uintptr_t out;
  int64_t proj_dim;
  int64_t stride_ob, stride_ok;
  uint64_t seed;
  int kind;  // 0 rademacher, 1 gaussian
  int64_t offset;  // signed so that a negative Python int arrives here as a ValueError
};

// ProjectArgs from the bindings' positional arguments (both bindings files build it so).
inline ProjectArgs project_args(uintptr_t x_ptr, int x_dtype, int64_t batch, int64_t dim,
                                int64_t stride_xb, int64_t stride_xd, uintptr_t out_ptr,
                                int64_t proj_dim, int64_t stride_ob, int64_t stride_ok,
                                uint64_t seed, int kind, int64_t offset) {
  return ProjectArgs{x_ptr,    x_dtype,   batch,     dim,  stride_xb, stride_xd, out_ptr,
                     proj_dim, stride_ob, stride_ok, seed, kind,      offset};
}

inline int64_t dtype_size(int code) { return code == kFloat32 ? 4 : 2; }

// What the projection pipeline computes, whatever produces the rows of x (x itself for
// project, tiles of per-example Linear gradients for project_linear):
// out[B, K] (float32, element strides) = x[B, D] @ P[offset : offset + D, :K].
struct Problem {
  int64_t batch, dim, proj_dim;
  uintptr_t out;
  int64_t stride_ob, stride_ok;
  uint64_t seed;
  int kind;
  int64_t offset;
};

inline Problem problem_of(const ProjectArgs& a) {
  return Problem{a.batch, a.dim, a.proj_dim, a.out, a.stride_ob, a.stride_ok,
                 a.seed,  a.kind, a.offset};
}

// Throws std::invalid_argument naming `op` if the sizes are out of range (also used by
// project_workspace_bytes / project_plan).
inline void validate_project_sizes(int64_t batch, int64_t dim, int64_t proj_dim,
                                   const char* op) {
  auto fail = [op](const std::string& what) {
    throw std::invalid_argument(std::string(op) + ": " + what);
  };
  if (batch < 0) fail("B must be >= 0, got " + std::to_string(batch));
  if (dim < 1) fail("D must be >= 1, got " + std::to_string(dim));
  if (proj_dim < 1 || proj_dim >= kMaxColumns)
    fail("K must be in [1, 2^32), got " + std::to_string(proj_dim));
}

// Throws std::invalid_argument naming `op` if the arguments break an invariant.
inline void validate_project_args(const ProjectArgs& a, const char* op) {
  auto fail = [op](const std::string& what) {
    throw std::invalid_argument(std::string(op) + ": " + what);
  };
  validate_project_sizes(a.batch, a.dim, a.proj_dim, op);
  if (a.x_dtype != kFloat32 && a.x_dtype != kFloat16 && a.x_dtype != kBFloat16)
    fail("x_dtype must be 0 (float32), 1 (float16) or 2 (bfloat16), got " +
         std::to_string(a.x_dtype));
  if (a.kind != 0 && a.kind != 1)
    fail("kind must be 0 (rademacher) or 1 (gaussian), got " + std::to_string(a.kind));
  if (a.offset < 0 || a.offset > kMaxRows || a.dim > kMaxRows - a.offset)
    fail("offset + D must be <= 2^48, got " + std::to_string(a.offset) + " + " +
         std::to_string(a.dim));
  if (a.stride_xb < 0 || a.stride_xd < 0 || a.stride_ob < 0 || a.stride_ok < 0)
    fail("strides must be >= 0");
  if (a.batch > 0 && (a.x == 0 || a.out == 0)) fail("x_ptr and out_ptr must not be null");
}

// Whether the x tile can be fetched with 16-byte asynchronous copies: unit stride along D
// and every row start 16-byte aligned.  Otherwise the kernel loads element by element.
inline bool use_vector_loads(const ProjectArgs& a) {
  const int64_t esize = dtype_size(a.x_dtype);
  const bool rows_aligned = a.batch <= 1 || (a.stride_xb * esize) % 16 == 0;
  return a.stride_xd == 1 && a.x % 16 == 0 && rows_aligned;
}

// Implementations.  num_sms (the GPU's multiprocessor count) fixes the launch plan, so the
// caller sizes the workspace with project_workspace_bytes(..., num_sms) first.
// project_device (project_kernel.cu): x, out and workspace are device pointers; launches
// on `stream` (a cudaStream_t as an integer) and returns without synchronizing.
void project_device(const ProjectArgs& a, uintptr_t workspace, int64_t workspace_bytes,
                    int64_t num_sms, uintptr_t stream);
// host_emulate_project (host_emulate.cpp): the same decomposition run on the CPU, lane by
// lane, on host pointers (see tests/test_c_fragments.py).
void host_emulate_project(const ProjectArgs& a, int64_t num_sms);

}  // namespace fastjl
