// pybind11 module fastjl._C: the compiled half of fastjl.
//
// Deliberately torch-free: tensors cross this boundary as raw addresses (Python ints from
// tensor.data_ptr()) plus sizes and codes, and streams as ints (torch's
// Stream.cuda_stream).  So the module does not depend on the torch version or its ABI,
// and the build never needs torch.  The Python side (fastjl) checks dtype, device,
// contiguity and size of the tensors before passing their addresses here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <tuple>

#include "block_args.h"
#include "build_config.h"
#include "philox.cuh"

namespace py = pybind11;

namespace {

std::tuple<uint32_t, uint32_t, uint32_t, uint32_t> philox_py(std::array<uint32_t, 4> counter,
                                                             std::array<uint32_t, 2> key) {
  const fastjl::U32x4 r =
      fastjl::philox4x32_10({counter[0], counter[1], counter[2], counter[3]}, key[0], key[1]);
  return {r.x, r.y, r.z, r.w};
}

fastjl::BlockArgs block_args(uint64_t seed, int kind, int64_t row0, int64_t nrows, int64_t col0,
                             int64_t ncols, uintptr_t out_ptr, int dtype_code) {
  return fastjl::BlockArgs{seed, kind, row0, nrows, col0, ncols, out_ptr, dtype_code};
}

py::dict build_info() {
  py::dict info;
  info["version"] = FASTJL_VERSION;
  info["spec_version"] = 1;
  info["cuda_version"] = fastjl::compiled_cudart_version();  // CUDART_VERSION, e.g. 13000
  info["nvcc_version"] = FASTJL_CUDA_COMPILER_VERSION;
  info["archs"] = FASTJL_CUDA_ARCHS;
  info["cudart"] = "static";
  info["build_type"] = FASTJL_BUILD_TYPE;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastjl compiled kernels (raw pointers only; no torch dependency)";

  m.def("philox4x32_10", &philox_py, py::arg("counter"), py::arg("key"),
        "Philox4x32-10 of a 4-word counter under a 2-word key (uint32 words).");

  // The GIL is released: filling a large block takes a while, and the arguments are plain
  // integers that need no Python objects once converted.
  m.def(
      "host_matrix_block",
      [](uint64_t seed, int kind, int64_t row0, int64_t nrows, int64_t col0, int64_t ncols,
         uintptr_t out_ptr, int dtype_code) {
        fastjl::host_matrix_block(
            block_args(seed, kind, row0, nrows, col0, ncols, out_ptr, dtype_code));
      },
      py::arg("seed"), py::arg("kind"), py::arg("row0"), py::arg("nrows"), py::arg("col0"),
      py::arg("ncols"), py::arg("out_ptr"), py::arg("dtype_code"),
      py::call_guard<py::gil_scoped_release>(),
      "Write P[row0:row0+nrows, col0:col0+ncols] row-major to host memory at out_ptr.\n"
      "kind: 0 rademacher, 1 gaussian; dtype_code: 0 float32, 3 float64.");

  m.def(
      "device_matrix_block",
      [](uint64_t seed, int kind, int64_t row0, int64_t nrows, int64_t col0, int64_t ncols,
         uintptr_t out_ptr, int dtype_code, uintptr_t stream) {
        fastjl::device_matrix_block(
            block_args(seed, kind, row0, nrows, col0, ncols, out_ptr, dtype_code), stream);
      },
      py::arg("seed"), py::arg("kind"), py::arg("row0"), py::arg("nrows"), py::arg("col0"),
      py::arg("ncols"), py::arg("out_ptr"), py::arg("dtype_code"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>(),
      "Same as host_matrix_block into CUDA device memory, launched on `stream` (an int\n"
      "cudaStream_t, e.g. torch.cuda.current_stream().cuda_stream); asynchronous.");

  m.def("build_info", &build_info, "Facts about this build (versions, CUDA archs).");
}
