// The CPU emulations' stand-in for project_kernel.cu's sum_splits_kernel (host_emulate.cpp,
// sparse_emulate.cpp): out[b, k] = the D-splits' float32 partials of workspace [splits, B, K]
// added in split order 0, 1, 2, ..., as the kernel adds them.
#pragma once

#include <cstdint>
#include <vector>

namespace fastjl {

inline void host_sum_splits(const std::vector<float>& workspace, int64_t splits, int64_t batch,
                            int64_t width, float* out, int64_t stride_ob, int64_t stride_ok) {
  const int64_t n = batch * width;
  for (int64_t idx = 0; idx < n; ++idx) {
    float total = workspace[idx];
    for (int64_t s = 1; s < splits; ++s) total += workspace[s * n + idx];
    const int64_t b = idx / width;
    out[b * stride_ob + (idx - b * width) * stride_ok] = total;
  }
}

}  // namespace fastjl
