// 16-bit floating-point operands of the tensor-core MMAs, as raw bits.
//
// An MMA register holds two 16-bit values: the element with the lower column (or k) index
// in the low half.  On the GPU the conversions are the hardware's round-to-nearest-even
// cvt instructions; on the host (CPU emulation) bit-exact software versions of the same
// rounding, so the emulation sees the same hi/lo splits as the kernel.
//
// Why splits: 16-bit MMA operands keep 8 (bf16) or 11 (fp16) significant bits.  A value v
// is carried as hi = round16(v) plus lo = round16(v - hi) (v - hi is exact in float32), two
// MMAs instead of one, which keeps ~16 (bf16) or ~22 (fp16) bits.  bf16 is used for fp32
// inputs because it has float32's exponent range: fp16 would flush small gradients.
#pragma once

#include <cstdint>
#include <cstring>

#include "philox.cuh"  // FASTJL_HD

namespace fastjl {

enum MmaType : int { kMmaBF16 = 0, kMmaF16 = 1 };

FASTJL_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

FASTJL_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// ---- host software conversions (round to nearest, ties to even) ----------------------

inline uint16_t host_bf16_bits(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

inline uint16_t host_f16_bits(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return sign | 0x7E00u;   // NaN
  if (a >= 0x477FF000u) return sign | 0x7C00u;  // >= 65520 (or inf) rounds to inf
  if (a < 0x38800000u) {                        // below 2^-14: fp16 subnormal (or zero)
    // value / 2^-24 is exact in float32 (< 1024); round it to an integer, ties to even.
    const float scaled = bits_float(a) * 16777216.0f;
    uint32_t r = static_cast<uint32_t>(scaled);
    const float frac = scaled - static_cast<float>(r);
    if (frac > 0.5f || (frac == 0.5f && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  const uint32_t rebiased = a - 0x38000000u;  // exponent bias 127 -> 15
  return static_cast<uint16_t>(sign | ((rebiased + 0xFFFu + ((rebiased >> 13) & 1u)) >> 13));
}

inline float host_bf16_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

inline float host_f16_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t man = h & 0x3FFu;
  if (exp == 0) {  // zero or subnormal: man * 2^-24
    const float v = static_cast<float>(man) * (1.0f / 16777216.0f);
    return bits_float(float_bits(v) | sign);
  }
  if (exp == 31) return bits_float(sign | 0x7F800000u | (man << 13));
  return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// ---- packing (device: cvt instructions; host: the functions above) --------------------

// Two floats rounded to the MMA type and packed: `low` in bits 0..15, `high` in 16..31.
template <int T>
FASTJL_HD uint32_t pack_pair(float low, float high) {
#if defined(__CUDA_ARCH__)
  uint32_t r;
  // PTX: "the value converted from input a is stored in the upper half of d".
  if (T == kMmaBF16)
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(high), "f"(low));
  else
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(high), "f"(low));
  return r;
#else
  const uint16_t lo = T == kMmaBF16 ? host_bf16_bits(low) : host_f16_bits(low);
  const uint16_t hi = T == kMmaBF16 ? host_bf16_bits(high) : host_f16_bits(high);
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
#endif
}

// One 16-bit value (bits 0..15 of h) widened to float (exact).
template <int T>
FASTJL_HD float half_to_float(uint32_t h) {
  if (T == kMmaBF16) return bits_float(h << 16);
#if defined(__CUDA_ARCH__)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(static_cast<unsigned short>(h & 0xFFFFu)));
  return f;
#else
  return host_f16_float(static_cast<uint16_t>(h & 0xFFFFu));
#endif
}

// (low, high) = hi + lo with hi and lo packed as above.
template <int T>
FASTJL_HD void split_pair(float low, float high, uint32_t& hi, uint32_t& lo) {
  hi = pack_pair<T>(low, high);
  lo = pack_pair<T>(low - half_to_float<T>(hi & 0xFFFFu), high - half_to_float<T>(hi >> 16));
}

}  // namespace fastjl
