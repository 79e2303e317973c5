// CPU product of a block of x with a block of a sparse kind's P (sjlt, grass): the torch
// backend's fast CPU path (fastjl/_backends/sparse_torch.py), used when fastjl._C is built.
//
// Why C++: the product is memory-bound (one signed add per nonzero, each x element read
// once), but every torch formulation pays for more than the read: the CSR product needs x's
// block transposed (a strided copy that alone took half the time), and scatter_add_ /
// index_add_ / dense@CSR run at 3-5 ns per element through their generic iterators.  Here
// each element is one load, a sign flip by XOR and one add into an output row that stays
// in L1 (K float32 = 16 KiB at K = 4096).
//
// Order of the sums (deterministic, no threads here): out[b, k] is the sum of its nonzeros'
// signed x values in ascending row order, starting from zero; the same order as the CSR
// gather over rows sorted within each column.  The Python side runs blocks on its CPU
// workers and adds their partials in block order, so results do not depend on the workers.
//
// Structure (built by the Python side from the spec, cached per block): `packed` holds the
// s nonzeros of each used row consecutively, column in bits 0..30 and the sign (1 = -1) in
// bit 31 (K <= 2^31); `kept` (grass) lists the block-local rows those belong to, ascending,
// or is null when every row of the block is used (sjlt).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#include <xmmintrin.h>
#endif

#include "block_args.h"
#include "half_bits.cuh"
#include "sparse_cpu.h"

namespace fastjl {
namespace {

// 16-bit inputs as their raw bits, widened to float32 exactly.
struct F16 {
  uint16_t bits;
};
struct BF16 {
  uint16_t bits;
};

template <typename In, typename Acc>
inline Acc widen(In v);
template <>
inline float widen<float, float>(float v) { return v; }
template <>
inline double widen<double, double>(double v) { return v; }
template <>
inline float widen<F16, float>(F16 v) { return host_f16_float(v.bits); }
template <>
inline float widen<BF16, float>(BF16 v) { return host_bf16_float(v.bits); }

// Flips the sign of v when bit 31 of `word` is set: exact (no multiply), branch-free.
inline float signed_by(float v, uint32_t word) { return bits_float(float_bits(v) ^ (word & 0x80000000u)); }
inline double signed_by(double v, uint32_t word) {
  uint64_t u;
  std::memcpy(&u, &v, 8);
  u ^= static_cast<uint64_t>(word & 0x80000000u) << 32;
  std::memcpy(&v, &u, 8);
  return v;
}

// A tile of kTileRows batch rows is summed into a column-major scratch `acc[k][r]`: the
// tile's kTileRows updates of one nonzero land in one contiguous run (two SSE vectors for
// float32) instead of kTileRows cache lines, which measured ~2x faster than row-major
// updates (bench/sparse_cpu_kernel.md).  The tile walks the whole block's structure once;
// the structure (4 s bytes per row) is re-read once per tile from L2, x exactly once.
constexpr int kTileRows = 8;

template <typename In, typename Acc, int S, bool kKept>
void accumulate(const SparseBlockArgs& a, Acc* __restrict acc) {
  const In* x = reinterpret_cast<const In*>(a.x);
  const uint32_t* packed = reinterpret_cast<const uint32_t*>(a.packed);
  const int32_t* kept = reinterpret_cast<const int32_t*>(a.kept);
  Acc* out = reinterpret_cast<Acc*>(a.out);
  constexpr uint32_t kColumn = 0x7FFFFFFFu;
  const int64_t used = kKept ? a.n_kept : a.rows;  // rows with nonzeros

  for (int64_t b0 = 0; b0 < a.batch; b0 += kTileRows) {
    const int n = static_cast<int>(std::min<int64_t>(kTileRows, a.batch - b0));
    // A short last tile repeats its first row in the unused lanes; they are not written back.
    const In* xr[kTileRows];
    for (int r = 0; r < kTileRows; ++r) xr[r] = x + (b0 + (r < n ? r : 0)) * a.stride_xb;
    std::fill(acc, acc + a.proj_dim * kTileRows, Acc(0));
    for (int64_t u = 0; u < used; ++u) {
      const int64_t row = kKept ? kept[u] : u;
      Acc v[kTileRows];
      for (int r = 0; r < kTileRows; ++r) v[r] = widen<In, Acc>(xr[r][row]);
      const uint32_t* w = packed + u * S;
      for (int t = 0; t < S; ++t) {
        Acc* dst = acc + static_cast<int64_t>(w[t] & kColumn) * kTileRows;
        for (int r = 0; r < kTileRows; ++r) dst[r] += signed_by(v[r], w[t]);
      }
    }
    for (int r = 0; r < n; ++r) {
      Acc* ob = out + (b0 + r) * a.stride_ob;
      for (int64_t k = 0; k < a.proj_dim; ++k) ob[k] = acc[k * kTileRows + r];
    }
  }
}

#if defined(__SSE2__)
// Four consecutive inputs of one batch row as float32 lanes (float32 and bfloat16 inputs).
inline __m128 load4(const float* p) { return _mm_loadu_ps(p); }
inline __m128 load4(const BF16* p) {
  const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h));  // bits << 16, exact
}

// The sjlt (every row used) float32-accumulation path with SSE2, 4 rows of the block at a time:
// a tile's 8 batch rows x 4 block rows are loaded as 8 vectors and transposed in registers, so
// each nonzero costs one sign XOR and one add per 4 batch rows.  Same sums in the same order as
// accumulate(): only the loads differ.
template <typename In, int S>
void accumulate_sse(const SparseBlockArgs& a, float* __restrict acc) {
  static_assert(kTileRows == 8, "two 4x4 transposes per group");
  const In* x = reinterpret_cast<const In*>(a.x);
  const uint32_t* packed = reinterpret_cast<const uint32_t*>(a.packed);
  float* out = reinterpret_cast<float*>(a.out);
  constexpr uint32_t kColumn = 0x7FFFFFFFu;
  const int64_t rows4 = a.rows & ~int64_t(3);

  for (int64_t b0 = 0; b0 < a.batch; b0 += kTileRows) {
    const int n = static_cast<int>(std::min<int64_t>(kTileRows, a.batch - b0));
    const In* xr[kTileRows];
    for (int r = 0; r < kTileRows; ++r) xr[r] = x + (b0 + (r < n ? r : 0)) * a.stride_xb;
    std::fill(acc, acc + a.proj_dim * kTileRows, 0.0f);
    auto add = [&](const uint32_t* w, __m128 lo, __m128 hi) {
      for (int t = 0; t < S; ++t) {
        const __m128 sign = _mm_castsi128_ps(_mm_set1_epi32(static_cast<int>(w[t] & 0x80000000u)));
        float* dst = acc + static_cast<int64_t>(w[t] & kColumn) * kTileRows;
        _mm_storeu_ps(dst, _mm_add_ps(_mm_loadu_ps(dst), _mm_xor_ps(lo, sign)));
        _mm_storeu_ps(dst + 4, _mm_add_ps(_mm_loadu_ps(dst + 4), _mm_xor_ps(hi, sign)));
      }
    };
    for (int64_t u = 0; u < rows4; u += 4) {
      __m128 l0 = load4(xr[0] + u), l1 = load4(xr[1] + u), l2 = load4(xr[2] + u), l3 = load4(xr[3] + u);
      __m128 h0 = load4(xr[4] + u), h1 = load4(xr[5] + u), h2 = load4(xr[6] + u), h3 = load4(xr[7] + u);
      _MM_TRANSPOSE4_PS(l0, l1, l2, l3);  // l_j: block row u + j, batch rows 0..3
      _MM_TRANSPOSE4_PS(h0, h1, h2, h3);  // h_j: block row u + j, batch rows 4..7
      const uint32_t* w = packed + u * S;
      add(w, l0, h0);
      add(w + S, l1, h1);
      add(w + 2 * S, l2, h2);
      add(w + 3 * S, l3, h3);
    }
    for (int64_t u = rows4; u < a.rows; ++u) {
      float v[kTileRows];
      for (int r = 0; r < kTileRows; ++r) v[r] = widen<In, float>(xr[r][u]);
      add(packed + u * S, _mm_loadu_ps(v), _mm_loadu_ps(v + 4));
    }
    for (int r = 0; r < n; ++r) {
      float* ob = out + (b0 + r) * a.stride_ob;
      for (int64_t k = 0; k < a.proj_dim; ++k) ob[k] = acc[k * kTileRows + r];
    }
  }
}
#endif

template <typename In, typename Acc, bool kKept>
void dispatch_sparsity(const SparseBlockArgs& a) {
  std::vector<Acc> acc(static_cast<size_t>(a.proj_dim) * kTileRows);
#if defined(__SSE2__)
  if constexpr (!kKept && (std::is_same_v<In, float> || std::is_same_v<In, BF16>)) {
    switch (a.sparsity) {
      case 1: return accumulate_sse<In, 1>(a, acc.data());
      case 2: return accumulate_sse<In, 2>(a, acc.data());
      case 4: return accumulate_sse<In, 4>(a, acc.data());
      default: return accumulate_sse<In, 8>(a, acc.data());
    }
  }
#endif
  switch (a.sparsity) {
    case 1: return accumulate<In, Acc, 1, kKept>(a, acc.data());
    case 2: return accumulate<In, Acc, 2, kKept>(a, acc.data());
    case 4: return accumulate<In, Acc, 4, kKept>(a, acc.data());
    default: return accumulate<In, Acc, 8, kKept>(a, acc.data());
  }
}

template <typename In, typename Acc>
void dispatch_kept(const SparseBlockArgs& a) {
  if (a.kept)
    dispatch_sparsity<In, Acc, true>(a);
  else
    dispatch_sparsity<In, Acc, false>(a);
}

}  // namespace

void validate_sparse_block_args(const SparseBlockArgs& a, const char* op) {
  auto fail = [op](const std::string& what) { throw std::invalid_argument(std::string(op) + ": " + what); };
  if (a.batch < 0 || a.rows < 0 || a.proj_dim < 1 || a.n_kept < 0)
    fail("batch, rows, n_kept must be >= 0 and proj_dim >= 1");
  if (a.proj_dim > (int64_t(1) << 31)) fail("proj_dim must be <= 2^31 (the column field is 31 bits)");
  if (a.sparsity != 1 && a.sparsity != 2 && a.sparsity != 4 && a.sparsity != 8)
    fail("sparsity must be 1, 2, 4 or 8, got " + std::to_string(a.sparsity));
  if (a.kept && a.n_kept > a.rows) fail("n_kept must be <= rows");
  if (a.stride_xb < a.rows && a.batch > 1) fail("stride_xb must be >= rows (rows of x are contiguous)");
  if (a.stride_ob < a.proj_dim && a.batch > 1) fail("stride_ob must be >= proj_dim");
  const bool f64 = a.x_dtype == kFloat64;
  if (a.x_dtype != kFloat32 && a.x_dtype != kFloat16 && a.x_dtype != kBFloat16 && !f64)
    fail("x_dtype must be 0 (float32), 1 (float16), 2 (bfloat16) or 3 (float64)");
  if (a.out_dtype != (f64 ? kFloat64 : kFloat32)) fail("out_dtype must be float64 for float64 x, else float32");
  if (!a.x || !a.packed || !a.out) fail("null pointer");
}

void host_sparse_block(const SparseBlockArgs& a) {
  validate_sparse_block_args(a, "fastjl._C.host_sparse_block");
  switch (a.x_dtype) {
    case kFloat32: return dispatch_kept<float, float>(a);
    case kFloat16: return dispatch_kept<F16, float>(a);
    case kBFloat16: return dispatch_kept<BF16, float>(a);
    default: return dispatch_kept<double, double>(a);
  }
}

}  // namespace fastjl
