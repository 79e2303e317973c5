// Instantiations of the projection kernels for bench/cuda_loop_probe.py: the production
// kernels (project_kernel.cuh, wgmma_kernel.cuh) with an x-tile producer that has only the
// cp.async path (XTileProducerIn::fetch_vector), so the main loop of the compiled code holds
// no untaken element-load path and its static instruction count is what a step issues for
// contiguous, aligned x (the common case), once bench/cuda_loop_probe.py takes out the blocks
// that only one warp (the words) or only a split's last step (the range clamp) runs.  Never
// linked into fastjl._C.
//
// Compiled twice by the script: -DPROBE_SM90A (wgmma kernel, sm_90a) and without (mma.sync
// kernel, sm_80 / sm_90).
#include <cuda_runtime.h>

#include "project_x_producer.cuh"
#ifdef PROBE_SM90A
#include "wgmma_kernel.cuh"
#else
#include "project_kernel.cuh"
#endif

namespace fastjl {
namespace probe {

template <int XDtype, class XLayout>
struct VectorOnly : proj::XTileProducerIn<XDtype, XLayout> {
  using Base = proj::XTileProducerIn<XDtype, XLayout>;
  using Source = typename Base::Source;
  using Cursor = typename Base::Cursor;
  __device__ static Cursor cursor(int tid, const Source& s, int block_b, int64_t b0) {
    return proj::x_chunk_rows<Base::kEsize>(tid, s.xs, block_b, b0);
  }
  template <proj::TileCode kCode>
  __device__ static void fetch(const Cursor& cur, int tid, const Source& s, int block_b,
                               int64_t b0, int64_t d0, int64_t d_end, bool whole_step,
                               unsigned char* tile) {
    Base::template fetch_vector<kCode>(cur, tid, s, block_b, b0, d0, d_end, whole_step, tile);
  }
  __device__ static void commit(const Source&) { sm80::cp_async_commit(); }
  template <int kNewer>
  __device__ static void wait(const Source&) {
    sm80::cp_async_wait_group<kNewer>();
  }
};

#ifdef PROBE_SM90A
template <int XDtype>
using Producer = VectorOnly<XDtype, std::conditional_t<XDtype == kFloat32, proj::PaddedXLayout,
                                                       sm90::XTileK64B>>;
#define PROBE(CFG, DT, KIND)                                                            \
  template __global__ void sm90::project_kernel_sm90<proj::CFG, probe::Producer<DT>, KIND>( \
      const proj::KernelParams<probe::Producer<DT>>);
#define PROBE_CONFIGS(DT, KIND) PROBE(ConfigB64, DT, KIND) PROBE(ConfigB128, DT, KIND)
#else
template <int XDtype>
using Producer = VectorOnly<XDtype, proj::MmaXLayout<XDtype>>;
#define PROBE(CFG, DT, KIND)                                                 \
  template __global__ void proj::project_kernel<proj::CFG, probe::Producer<DT>, KIND>( \
      const proj::KernelParams<probe::Producer<DT>>);
#define PROBE_CONFIGS(DT, KIND) \
  PROBE(ConfigB32, DT, KIND) PROBE(ConfigB64, DT, KIND) PROBE(ConfigB128, DT, KIND)
#endif

}  // namespace probe

PROBE_CONFIGS(kBFloat16, kRademacher)
PROBE_CONFIGS(kBFloat16, kGaussian)
PROBE_CONFIGS(kFloat32, kRademacher)
PROBE_CONFIGS(kFloat32, kGaussian)

}  // namespace fastjl
