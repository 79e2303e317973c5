// Entries of the projection matrix P (D x K), spec v1: P[i, j] is a pure function of
// (seed, kind, i, j).  Shared by the host reference (host_block.cpp) and every GPU kernel,
// so that all of them draw exactly the same numbers.  The Python statement of the same
// contract is fastjl/spec.py; tests/test_c_host.py checks the two agree.
//
// One Philox call (one "counter group") serves 128 consecutive rademacher columns or
// 4 consecutive gaussian columns of one row:
//   counter = (i mod 2^32, i >> 32, j / columns_per_counter, domain),  key from the seed.
// The *_tile functions turn one such output into all the entries it serves; kernels that
// produce whole tiles use them, element-wise code uses *_entry.
#pragma once

#include <math.h>

#include <cstdint>

#include "philox.cuh"

namespace fastjl {

// Kind codes as passed from Python; they are also the counter word c3 ("domain") that
// keeps the kinds' random streams apart (2 is reserved for sjlt).
enum Kind : int { kRademacher = 0, kGaussian = 1 };

constexpr uint32_t kRademacherColumnsPerCounter = 128;
constexpr uint32_t kGaussianColumnsPerCounter = 4;

FASTJL_HD uint32_t columns_per_counter(int kind) {
  return kind == kRademacher ? kRademacherColumnsPerCounter : kGaussianColumnsPerCounter;
}

struct PhiloxKey {
  uint32_t k0, k1;
};

// key (k0, k1) = (seed mod 2^32, seed >> 32).
FASTJL_HD PhiloxKey key_from_seed(uint64_t seed) {
  return PhiloxKey{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
}

// Philox output for row i (< 2^48) and counter group g of the given kind.
FASTJL_HD U32x4 group_words(PhiloxKey key, int kind, uint64_t i, uint32_t g) {
  const U32x4 counter{static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), g,
                      static_cast<uint32_t>(kind)};
  return philox4x32_10(counter, key.k0, key.k1);
}

// ---- rademacher ---------------------------------------------------------------------

// Sign of lane l (0..127) of a group: bit l % 32 of word l / 32; bit 0 -> +1, 1 -> -1.
template <typename T>
FASTJL_HD T rademacher_from_words(const U32x4& r, uint32_t lane) {
  const uint32_t bit = (word(r, lane >> 5) >> (lane & 31u)) & 1u;
  return bit ? T(-1) : T(1);
}

// All 128 signs of one group, lane order (columns 128 g .. 128 g + 127).
template <typename T>
FASTJL_HD void rademacher_tile(const U32x4& r, T out[kRademacherColumnsPerCounter]) {
  for (uint32_t lane = 0; lane < kRademacherColumnsPerCounter; ++lane)
    out[lane] = rademacher_from_words<T>(r, lane);
}

// ---- gaussian -----------------------------------------------------------------------

// Precision-overloaded math, so gaussian entries are computed in the output precision
// (float for fp32 output, double for fp64) exactly as fastjl/spec.py does.  These are
// the accurate library functions, never the fast intrinsics (__logf, __cosf ...): the
// contract is that every backend agrees with the reference to rounding error.
FASTJL_HD float math_log(float x) { return logf(x); }
FASTJL_HD double math_log(double x) { return log(x); }
FASTJL_HD float math_sqrt(float x) { return sqrtf(x); }
FASTJL_HD double math_sqrt(double x) { return sqrt(x); }
FASTJL_HD float math_cos(float x) { return cosf(x); }
FASTJL_HD double math_cos(double x) { return cos(x); }
FASTJL_HD float math_sin(float x) { return sinf(x); }
FASTJL_HD double math_sin(double x) { return sin(x); }

// u = (2 (r >> 9) + 1) / 2^24: the odd integer is < 2^24, so the value is exact in fp32
// and fp64 and lies strictly inside (0, 1), keeping log(u) finite.
template <typename T>
FASTJL_HD T uniform_from_word(uint32_t r) {
  return T(2u * (r >> 9) + 1u) * T(1.0 / 16777216.0);
}

// 2 pi rounded to T first, then multiplied by u in T: the same operation order as the
// reference, (2.0 * math.pi) * u on a tensor of dtype T.
template <typename T>
FASTJL_HD T two_pi() {
  return T(6.283185307179586);
}

// Box-Muller on the uniform pair (u_{2p}, u_{2p+1}) of a group: entry 2p of the group is
// radius * cos(angle), entry 2p + 1 is radius * sin(angle).
template <typename T>
struct PolarPair {
  T radius, angle;
};

template <typename T>
FASTJL_HD PolarPair<T> box_muller_polar(const U32x4& r, uint32_t pair) {
  const T u_radius = uniform_from_word<T>(word(r, 2 * pair));
  const T u_angle = uniform_from_word<T>(word(r, 2 * pair + 1));
  return PolarPair<T>{math_sqrt(T(-2) * math_log(u_radius)), two_pi<T>() * u_angle};
}

// Entry `lane` (0..3) of a group.
template <typename T>
FASTJL_HD T gaussian_from_words(const U32x4& r, uint32_t lane) {
  const PolarPair<T> p = box_muller_polar<T>(r, lane >> 1);
  return p.radius * ((lane & 1u) ? math_sin(p.angle) : math_cos(p.angle));
}

// All 4 entries of one group (columns 4 g .. 4 g + 3), one log per pair.
template <typename T>
FASTJL_HD void gaussian_tile(const U32x4& r, T out[kGaussianColumnsPerCounter]) {
  for (uint32_t pair = 0; pair < 2; ++pair) {
    const PolarPair<T> p = box_muller_polar<T>(r, pair);
    out[2 * pair] = p.radius * math_cos(p.angle);
    out[2 * pair + 1] = p.radius * math_sin(p.angle);
  }
}

// ---- single entries -----------------------------------------------------------------

// P[i, j] for a kind code in {kRademacher, kGaussian}; j < 2^32.  One Philox call per entry:
// simple, and fine where generation is not the bottleneck (kernels that care use tiles).
template <typename T>
FASTJL_HD T matrix_entry(PhiloxKey key, int kind, uint64_t i, uint64_t j) {
  const uint32_t per = columns_per_counter(kind);
  const U32x4 r = group_words(key, kind, i, static_cast<uint32_t>(j / per));
  const uint32_t lane = static_cast<uint32_t>(j % per);
  return kind == kRademacher ? rademacher_from_words<T>(r, lane) : gaussian_from_words<T>(r, lane);
}

}  // namespace fastjl
