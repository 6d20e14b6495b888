#pragma once
// Division by a divisor fixed for a whole launch, without a division instruction sequence.
#include <cstdint>

#include "common/macros.h"

namespace cnx {

// a / b for a >= 0 and b > 0, in 32 bits when a and b fit: a 64-bit division costs tens of cycles on a CPU
// and about a hundred instructions on a GPU, several times the 32-bit one. Exact either way.
CNX_HOST_DEVICE int64_t div_nonneg(int64_t a, int64_t b) {
  if (((a | b) >> 31) == 0) return static_cast<uint32_t>(a) / static_cast<uint32_t>(b);
  return a / b;
}

// The high 32 bits of a * b.
CNX_HOST_DEVICE uint32_t mulhi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// n / d for a divisor d in [1, 2^31] and n in [0, 2^31): a multiply-high, an add and a shift. A GPU has no
// integer divider: a 32-bit division by a value known only at run time is a ~20-instruction sequence (a 64-bit
// one ~100), which dominated the per-element cost of the pooling kernels (several per element, against a
// handful of loads). Granlund-Montgomery's method with magic = floor(2^32 (2^shift - d) / d) + 1 and
// shift = ceil(log2 d): exact for every n < 2^31 (t + n then stays below 2^32).
struct IntDivider {
  uint32_t divisor = 1, magic = 1, shift = 0;

  IntDivider() = default;
  explicit IntDivider(uint32_t d) : divisor(d) {
    while ((uint64_t(1) << shift) < d) ++shift;
    magic = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1);
  }

  CNX_HOST_DEVICE uint32_t div(uint32_t n) const { return (mulhi(n, magic) + n) >> shift; }
};

}  // namespace cnx
