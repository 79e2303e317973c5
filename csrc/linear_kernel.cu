// fastjl._C.project_linear: the projection of a Linear layer's per-example gradients
// (linear_args.h) on the projection pipeline of project_kernel.cuh, whose x tiles come
// from the gradient producer of linear_tiles.cuh instead of a tensor x.  Same plan, P
// generation, MMAs and D-split reduction as project; only the producer is new.
//
// The tile is always float32 (G is formed in float32), so the kernel is instantiated for
// 3 tile configs x 2 kinds; the input dtype is a runtime switch inside the producer.
#include <cuda_runtime.h>

#include <cstdint>

#include "linear_args.h"
#include "linear_tiles.cuh"
#include "project_kernel.cuh"

namespace fastjl {
namespace proj {
namespace {

constexpr const char* kOp = "fastjl._C.project_linear";

// Synchronous: loads, multiply-adds and shared-memory stores happen inside fetch, so there
// is nothing to wait for before the barrier (linear_tiles.cuh says what would be faster).
struct GradTileProducer {
  static constexpr int kTileDtype = kFloat32;
  static constexpr bool kWholeStepFetch = false;  // every step through load_g_tile
  using Source = LinearSource;
  struct Cursor {};  // no per-thread state (the x producer's row addresses)
  __device__ static Cursor cursor(int, const Source&, int, int64_t) { return {}; }
  template <TileCode>  // the x producer's code choice (project_tiles.cuh); nothing to choose here
  __device__ static void fetch(const Cursor&, int tid, const Source& s, int block_b, int64_t b0,
                               int64_t d0, int64_t d_end, bool /*whole_step*/,
                               unsigned char* tile) {
    load_g_tile(tid, s, block_b, b0, d0, d_end, reinterpret_cast<float*>(tile));
  }
  __device__ static void commit(const Source&) {}
  template <int kNewer>
  __device__ static void wait(const Source&) {}
};

}  // namespace
}  // namespace proj

void project_linear_device(const LinearArgs& a, uintptr_t workspace, int64_t workspace_bytes,
                           int64_t num_sms, uintptr_t stream_handle) {
  using namespace proj;
  validate_linear_args(a, kOp);
  const Problem pr = linear_problem(a, kOp);
  const Plan plan = plan_with_workspace(kOp, pr, workspace, workspace_bytes, num_sms);
  if (a.batch == 0) return;
  check_device_pointer(kOp, a.a, "a_ptr");
  check_device_pointer(kOp, a.g, "g_ptr");
  run_pipeline<GradTileProducer>(kOp, linear_source(a), pr, plan, workspace,
                                 reinterpret_cast<cudaStream_t>(stream_handle));
}

}  // namespace fastjl
