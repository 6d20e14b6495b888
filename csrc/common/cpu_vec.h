#pragma once
// Vector loads and stores shared by the per-instruction-set CPU kernels (*_cpu_kernel.cpp and the
// *_cpu_vec.h headers they include). Compiled only inside those files, once per CPU_CAPABILITY.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

namespace cnx::cpu::CPU_CAPABILITY {

// `count` elements of scalar_t as a vector of the accumulation type (zero-filled tail).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
at::vec::Vectorized<acc_t> load(const scalar_t* p, int64_t count) {
  using Vec = at::vec::Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return Vec::loadu(p, count);
  } else {
    acc_t tmp[Vec::size()] = {};
    for (int64_t i = 0; i < count; ++i) tmp[i] = static_cast<acc_t>(p[i]);
    return Vec::loadu(tmp);
  }
}

// The first `count` lanes of v, converted to scalar_t.
template <typename scalar_t, typename acc_t>
void store(scalar_t* p, const at::vec::Vectorized<acc_t>& v, int64_t count) {
  using Vec = at::vec::Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    v.store(p, count);
  } else {
    acc_t tmp[Vec::size()];
    v.store(tmp);
    for (int64_t i = 0; i < count; ++i) p[i] = static_cast<scalar_t>(tmp[i]);
  }
}

}  // namespace cnx::cpu::CPU_CAPABILITY
