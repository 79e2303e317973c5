// The arguments of a "fill a block of P" call and their validation, shared by the host and
// the device implementation.  Plain C++ with no CUDA or pybind11 types, so bindings.cpp
// (host compiler) and device_block.cu (nvcc) can both include it.
//
// Errors are standard exceptions that pybind11 translates: std::invalid_argument becomes
// ValueError, std::runtime_error becomes RuntimeError.  Messages start with the Python name
// of the failing function so users can tell which call failed.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace fastjl {

// dtype codes shared with the Python side (fastjl maps torch dtypes to these).
enum DtypeCode : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// f(std::integral_constant<int, code>{}) for an x dtype code (kFloat32, kFloat16, else
// kBFloat16; callers validate the code first): the one dtype switch of the launchers and the
// CPU emulations.
template <class F>
decltype(auto) with_x_dtype(int code, F&& f) {
  if (code == kFloat32) return f(std::integral_constant<int, kFloat32>{});
  if (code == kFloat16) return f(std::integral_constant<int, kFloat16>{});
  return f(std::integral_constant<int, kBFloat16>{});
}

constexpr int64_t kMaxRows = int64_t(1) << 48;     // global row index i < 2^48
constexpr int64_t kMaxColumns = int64_t(1) << 32;  // j / 4 must fit counter word c2

// P[row0 : row0 + nrows, col0 : col0 + ncols] written row-major (row stride ncols) at out.
// Signed sizes so that negative Python ints arrive here and are rejected with ValueError
// (an unsigned parameter would make pybind11 raise an unhelpful TypeError instead).
struct BlockArgs {
  uint64_t seed;
  int kind;
  int64_t row0, nrows, col0, ncols;
  uintptr_t out;
  int dtype_code;
};

// Throws std::invalid_argument (-> ValueError) naming `op` if the arguments break the spec.
inline void validate_block_args(const BlockArgs& a, const char* op) {
  auto fail = [op](const std::string& what) {
    throw std::invalid_argument(std::string(op) + ": " + what);
  };
  if (a.kind != 0 && a.kind != 1)
    fail("kind must be 0 (rademacher) or 1 (gaussian), got " + std::to_string(a.kind));
  if (a.dtype_code != kFloat32 && a.dtype_code != kFloat64)
    fail("dtype_code must be 0 (float32) or 3 (float64), got " + std::to_string(a.dtype_code));
  if (a.row0 < 0 || a.nrows < 0 || a.col0 < 0 || a.ncols < 0)
    fail("row0, nrows, col0 and ncols must be >= 0");
  if (a.row0 > kMaxRows - a.nrows)  // row0 + nrows <= 2^48, written without overflow
    fail("row0 + nrows must be <= 2^48, got " + std::to_string(a.row0) + " + " +
         std::to_string(a.nrows));
  if (a.col0 > kMaxColumns - a.ncols)
    fail("col0 + ncols must be <= 2^32, got " + std::to_string(a.col0) + " + " +
         std::to_string(a.ncols));
  if (a.ncols > 0 && a.nrows > INT64_MAX / a.ncols)  // element offsets must fit int64
    fail("nrows * ncols is too large");
  if (a.out == 0 && a.nrows > 0 && a.ncols > 0) fail("out_ptr is null");
}

// Implementations (host_block.cpp, device_block.cu).  Both validate first.
void host_matrix_block(const BlockArgs& a);
// stream is a cudaStream_t passed as an integer (0 = legacy default stream).
void device_matrix_block(const BlockArgs& a, uintptr_t stream);

// CUDART_VERSION the device code was compiled against (e.g. 13000 for CUDA 13.0).
int compiled_cudart_version();

}  // namespace fastjl
