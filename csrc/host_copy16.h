// The host's stand-in for cp.async.cg ... 16 with src-size, shared by the CPU emulations
// (host_emulate.cpp, sparse_emulate.cpp, wgmma_host.cpp): `bytes` (0..16) bytes copied, the
// rest of the 16 zero-filled.  The tile loaders take it as their copy functor.
#pragma once

#include <cstddef>
#include <cstring>

namespace fastjl {

struct HostCopy16 {
  void operator()(unsigned char* dst, const unsigned char* src, int bytes) const {
    std::memcpy(dst, src, static_cast<size_t>(bytes));
    std::memset(dst + bytes, 0, static_cast<size_t>(16 - bytes));
  }
};

}  // namespace fastjl
