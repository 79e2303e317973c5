// fastjl._C's entry points of the sm_90a (wgmma) projection kernel, kept out of
// bindings.cpp (which calls bind_wgmma): project_sm90 (built when CMake compiles
// project_kernel_sm90.cu, FASTJL_HAS_SM90A) and wgmma_host_stage (the CPU layout checks of
// tests/test_wgmma_layouts.py, always built).  Same conventions as bindings.cpp: raw
// addresses, element strides, dtype codes 0 float32 / 1 float16 / 2 bfloat16.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>

#include "project_args.h"
#include "wgmma_host.h"

namespace py = pybind11;

namespace fastjl {

#ifdef FASTJL_HAS_SM90A
// project_kernel_sm90.cu
void project_device_sm90(const ProjectArgs& a, uintptr_t workspace, int64_t workspace_bytes,
                         int64_t num_sms, uintptr_t stream);
#endif

void bind_wgmma(py::module_& m) {
#ifdef FASTJL_HAS_SM90A
  m.def(
      "project_sm90",
      [](uintptr_t x_ptr, int x_dtype, int64_t batch, int64_t dim, int64_t stride_xb,
         int64_t stride_xd, uintptr_t out_ptr, int64_t proj_dim, int64_t stride_ob,
         int64_t stride_ok, uint64_t seed, int kind, int64_t offset, uintptr_t workspace_ptr,
         int64_t workspace_bytes, int64_t num_sms, uintptr_t stream) {
        project_device_sm90(project_args(x_ptr, x_dtype, batch, dim, stride_xb, stride_xd,
                                         out_ptr, proj_dim, stride_ob, stride_ok, seed, kind,
                                         offset),
                            workspace_ptr, workspace_bytes, num_sms, stream);
      },
      py::arg("x_ptr"), py::arg("x_dtype"), py::arg("B"), py::arg("D"), py::arg("stride_xb"),
      py::arg("stride_xd"), py::arg("out_ptr"), py::arg("K"), py::arg("stride_ob"),
      py::arg("stride_ok"), py::arg("seed"), py::arg("kind"), py::arg("offset"),
      py::arg("workspace_ptr"), py::arg("workspace_bytes"), py::arg("num_sms"),
      py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
      "project() on the sm_90a kernel (wgmma.mma_async; compute capability 9.0 only, B > 32):\n"
      "same arguments, plan, workspace (project_workspace_bytes) and D-split order as\n"
      "project().  The cuda backend's default where it was measured faster (an H100, rademacher,\n"
      "16-bit x, B > 64: cuda_backend.measured_faster); FASTJL_CUDA_WGMMA=1 (B >= 64) / 0:\n"
      "on / off.");
#endif

  m.def(
      "wgmma_host_stage",
      [](uintptr_t x_ptr, int x_dtype, int64_t batch, int64_t dim, int64_t stride_xb,
         int64_t stride_xd, int64_t proj_dim, uint64_t seed, int kind, int64_t offset,
         int config, int64_t b0, int64_t d0, int64_t d_end, int64_t col0, bool vector) {
        // out is never touched: a dummy non-null address passes validate_project_args.
        const ProjectArgs a = project_args(x_ptr, x_dtype, batch, dim, stride_xb, stride_xd, 1,
                                           proj_dim, 0, 0, seed, kind, offset);
        const WgmmaHostStage st = wgmma_host_stage(a, config, b0, d0, d_end, col0, vector);
        auto bytes = [](const std::vector<uint8_t>& v) {
          return py::bytes(reinterpret_cast<const char*>(v.data()), v.size());
        };
        py::dict d;
        d["n"] = st.n;
        d["x_tile"] = bytes(st.x_tile);
        d["p_hi"] = bytes(st.p_hi);
        d["p_lo"] = bytes(st.p_lo);
        d["a_desc"] = st.a_desc;
        d["b_desc"] = st.b_desc;
        d["epilogue"] = st.epilogue;
        d["accumulator"] = st.accumulator;
        return d;
      },
      py::arg("x_ptr"), py::arg("x_dtype"), py::arg("B"), py::arg("D"), py::arg("stride_xb"),
      py::arg("stride_xd"), py::arg("K"), py::arg("seed"), py::arg("kind"), py::arg("offset"),
      py::arg("config"), py::arg("b0"), py::arg("d0"), py::arg("d_end"), py::arg("col0"),
      py::arg("vector"),
      "One step of the sm_90a kernel's shared-memory tiles on the CPU (HOST x pointer,\n"
      "float16/bfloat16): x tile and P planes as the kernel's writers lay them out for wgmma,\n"
      "the A/B descriptors it issues (tile base address 0) per [warpgroup][k16 slice], and\n"
      "its accumulator and epilogue fragment maps as flat [thread][register][row, col].");
}

}  // namespace fastjl
