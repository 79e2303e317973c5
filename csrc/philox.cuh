// Philox4x32-10 counter-based random numbers (Salmon et al., SC'11), spec v1 of fastjl.
//
// Bit-for-bit identical to Random123's philox4x32-10, cuRAND's Philox4_32_10 and Triton's
// tl.philox with 32-bit counters.  Every entry of the projection matrix P is derived from
// one call of philox4x32_10, so this header is the root of the whole contract; it is
// checked against three published known-answer vectors in tests/test_c_host.py.
//
// The header compiles both under nvcc (functions are __host__ __device__) and as plain
// C++ (host_block.cpp and bindings.cpp are built by the host compiler, which keeps the
// reference path independent of nvcc and lets the tests exercise exactly this code).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FASTJL_HD __host__ __device__ __forceinline__
#else
#define FASTJL_HD inline
#endif

namespace fastjl {

// Four 32-bit words: a Philox counter or a Philox output.  Plain named fields (not an
// array) so that GPU code keeps them in registers; see word() for indexed access.
struct U32x4 {
  uint32_t x, y, z, w;
};

// Word t (0..3) of v.  Written as selects rather than array indexing because a
// dynamically indexed local array is spilled to local memory on the GPU.
FASTJL_HD uint32_t word(const U32x4& v, uint32_t t) {
  return t == 0 ? v.x : t == 1 ? v.y : t == 2 ? v.z : v.w;
}

// The two halves of the 64-bit product a * b.
FASTJL_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  lo = a * b;
  hi = __umulhi(a, b);  // one instruction on the GPU
#else
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
#endif
}

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;  // round multipliers
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // key schedule ("Weyl") increments
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

// One Philox round with round key (k0, k1).
FASTJL_HD U32x4 philox_round(const U32x4& c, uint32_t k0, uint32_t k1) {
  uint32_t hi0, lo0, hi1, lo1;
  mulhilo32(kPhiloxM0, c.x, hi0, lo0);
  mulhilo32(kPhiloxM1, c.z, hi1, lo1);
  return U32x4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
}

// Philox4x32-10: 10 rounds, the key bumped between rounds (round 1 uses the key as given).
FASTJL_HD U32x4 philox4x32_10(U32x4 counter, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < kPhiloxRounds; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;  // unsigned arithmetic wraps modulo 2^32, as the spec requires
      k1 += kPhiloxW1;
    }
    counter = philox_round(counter, k0, k1);
  }
  return counter;
}

}  // namespace fastjl
