// fastjl._C.project_sm90: fastjl._C.project on the sm_90a (wgmma) kernel of
// wgmma_kernel.cuh, for batch tiles of 64 and 128 rows (B > 32).  Compiled for sm_90a only
// (CMakeLists.txt: its own -gencode arch=compute_90a,code=sm_90a), so the sm_80/86/89/90
// build of everything else is unchanged; the host helpers (plan, workspace and pointer
// checks, the split reduction) are project_kernel.cu's.
//
// x's producer is project's (project_x_producer.cuh), writing 16-bit tiles in the K-major
// 64B-swizzled layout the A descriptors describe and fp32 tiles in the padded layout the
// register path reads.
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "project_args.h"
#include "project_x_producer.cuh"
#include "wgmma_kernel.cuh"

namespace fastjl {
namespace {

constexpr const char* kOp = "fastjl._C.project_sm90";

template <int XDtype>
using Sm90XProducer =
    proj::XTileProducerIn<XDtype, std::conditional_t<XDtype == kFloat32, proj::PaddedXLayout,
                                                   sm90::XTileK64B>>;

}  // namespace

void project_device_sm90(const ProjectArgs& a, uintptr_t workspace, int64_t workspace_bytes,
                         int64_t num_sms, uintptr_t stream_handle) {
  using namespace proj;
  validate_project_args(a, kOp);
  const Problem pr = problem_of(a);
  const Plan plan = plan_with_workspace(kOp, pr, workspace, workspace_bytes, num_sms);
  if (a.batch == 0) return;
  if (plan.config == 0)
    throw std::invalid_argument(std::string(kOp) +
                                ": the wgmma kernel needs B > 32 (64- or 128-row tiles), got B = " +
                                std::to_string(a.batch) + "; use fastjl._C.project");
  check_device_pointer(kOp, a.x, "x_ptr");

  const XSource xs = x_source(a);
  const int vector_loads = use_vector_loads(a) ? 1 : 0;
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  with_x_dtype(a.x_dtype, [&](auto dtype) {
    using Producer = Sm90XProducer<decltype(dtype)::value>;
    sm90::run_pipeline_sm90<Producer>(kOp, {xs, vector_loads}, pr, plan, workspace, stream);
  });
}

}  // namespace fastjl
