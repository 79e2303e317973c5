// Arguments of fastjl._C.project_linear (and of its CPU emulation) and their cheap checks.
//
// project_linear projects the per-example gradients of an nn.Linear layer without forming
// them: with inputs a [B, T, d_in] and output gradients g [B, T, d_out], example b's weight
// gradient is G_b = sum_t g[b,t,:] a[b,t,:]^T (d_out x d_in, flat index o * d_in + i) and
// its bias gradient sum_t g[b,t,:].  The result is the projection of
//   x = [G.flatten(1)]  or  [G.flatten(1), g.sum(1)]  (bias),   D = d_out * d_in (+ d_out),
// i.e. out[B, K] = x @ P[offset : offset + D, :K], exactly what project() gives for that x.
//
// Plain C++ (no CUDA, no pybind11), like project_args.h.  fastjl validates in Python; these
// checks guard the kernel's invariants (ValueError naming the op and the limit).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "project_args.h"  // Problem, validate_project_sizes, dtype_size

namespace fastjl {

struct LinearArgs {
  uintptr_t a, g;
  int dtype;  // DtypeCode of both a and g: kFloat32, kFloat16 or kBFloat16
  int64_t batch, tokens, d_in, d_out;
  int64_t stride_ab, stride_at, stride_ai;  // element strides of a
  int64_t stride_gb, stride_gt, stride_go;  // element strides of g
  uintptr_t out;                            // float32 [B, K]
  int64_t proj_dim;
  int64_t stride_ob, stride_ok;
  uint64_t seed;
  int kind;        // 0 rademacher, 1 gaussian
  int64_t offset;  // first row of P (signed: a negative Python int becomes a ValueError)
  bool bias;
};

// Throws std::invalid_argument naming `op` unless 1 <= d_in, d_out and d_out * d_in (+ d_out)
// <= 2^48; returns that D.  Shared with project_linear_workspace_bytes.
inline int64_t linear_dim(int64_t d_in, int64_t d_out, bool bias, const char* op) {
  auto fail = [op](const std::string& what) {
    throw std::invalid_argument(std::string(op) + ": " + what);
  };
  if (d_in < 1) fail("d_in must be >= 1, got " + std::to_string(d_in));
  if (d_out < 1) fail("d_out must be >= 1, got " + std::to_string(d_out));
  if (d_in > kMaxRows / d_out)  // d_out * d_in <= 2^48, written without overflow
    fail("d_out * d_in must be <= 2^48, got " + std::to_string(d_out) + " * " +
         std::to_string(d_in));
  return d_out * d_in + (bias ? d_out : 0);  // < 2^49: no overflow
}

inline void validate_linear_args(const LinearArgs& a, const char* op) {
  auto fail = [op](const std::string& what) {
    throw std::invalid_argument(std::string(op) + ": " + what);
  };
  const int64_t dim = linear_dim(a.d_in, a.d_out, a.bias, op);
  validate_project_sizes(a.batch, dim, a.proj_dim, op);
  if (a.tokens < 1) fail("T must be >= 1, got " + std::to_string(a.tokens));
  if (a.dtype != kFloat32 && a.dtype != kFloat16 && a.dtype != kBFloat16)
    fail("dtype must be 0 (float32), 1 (float16) or 2 (bfloat16), got " +
         std::to_string(a.dtype));
  if (a.kind != 0 && a.kind != 1)
    fail("kind must be 0 (rademacher) or 1 (gaussian), got " + std::to_string(a.kind));
  if (a.offset < 0 || a.offset > kMaxRows || dim > kMaxRows - a.offset)
    fail("offset + D must be <= 2^48 (D = d_out * d_in" + std::string(a.bias ? " + d_out" : "") +
         "), got " + std::to_string(a.offset) + " + " + std::to_string(dim));
  if (a.stride_ab < 0 || a.stride_at < 0 || a.stride_ai < 0 || a.stride_gb < 0 ||
      a.stride_gt < 0 || a.stride_go < 0 || a.stride_ob < 0 || a.stride_ok < 0)
    fail("strides must be >= 0");
  if (a.batch > 0 && (a.a == 0 || a.g == 0 || a.out == 0))
    fail("a_ptr, g_ptr and out_ptr must not be null");
}

inline Problem linear_problem(const LinearArgs& a, const char* op) {
  return Problem{a.batch,     linear_dim(a.d_in, a.d_out, a.bias, op),
                 a.proj_dim,  a.out,
                 a.stride_ob, a.stride_ok,
                 a.seed,      a.kind,
                 a.offset};
}

// Implementations, as for project (project_args.h).
// project_linear_device (linear_kernel.cu): a, g, out and workspace are device pointers;
// the workspace is sized by the plan of (B, D, K, num_sms); asynchronous on `stream`.
void project_linear_device(const LinearArgs& a, uintptr_t workspace, int64_t workspace_bytes,
                           int64_t num_sms, uintptr_t stream);
// host_emulate_project_linear (host_emulate.cpp): the same on the CPU, lane by lane, on host
// pointers (see tests/test_c_linear.py).
void host_emulate_project_linear(const LinearArgs& a, int64_t num_sms);

}  // namespace fastjl
