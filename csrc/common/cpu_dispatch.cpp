#include "common/cpu_dispatch.h"

#include <cstdlib>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

namespace cnx::cpu {
namespace {

Capability detect() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  Capability best = Capability::DEFAULT;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Capability::AVX2;
  if (best == Capability::AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    best = Capability::AVX512;
  if (const char* env = std::getenv("ATEN_CPU_CAPABILITY")) {
    // Read exactly as ATen reads it (DispatchStub.cpp: case-sensitive, anything else ignored), so that our
    // kernels and torch's run the same instruction set: "AVX2" lowered ours while torch's stayed AVX-512.
    // The override can only lower the level: asking for AVX-512 on a CPU without it must not crash.
    const std::string want(env);
    if (want == "default") best = Capability::DEFAULT;
    else if (want == "avx2" && best == Capability::AVX512) best = Capability::AVX2;
  }
  return best;
#else
  return Capability::DEFAULT;
#endif
}

}  // namespace

Capability capability() {
  static const Capability cached = detect();
  return cached;
}

bool has_avx512_bf16() {
  static const bool cached = [] {
#if defined(__x86_64__) || defined(_M_X64)
    const char* env = std::getenv("CNX_AVX512_BF16");
    return capability() == Capability::AVX512 && __builtin_cpu_supports("avx512bf16") &&
           !(env != nullptr && std::string(env) == "0");
#else
    return false;
#endif
  }();
  return cached;
}

const char* vendor_name() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (__builtin_cpu_is("amd")) return "amd";
  if (__builtin_cpu_is("intel")) return "intel";
#endif
  return "other";
}

bool avx512_full_width() {
  static const bool cached = [] {
    if (capability() != Capability::AVX512) return false;
#if defined(__x86_64__) || defined(_M_X64)
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (std::string(vendor_name()) == "amd" && __get_cpuid(1, &eax, &ebx, &ecx, &edx)) {
      const unsigned base = (eax >> 8) & 0xf;  // the family: base 0xf plus the extended field (Zen 4: 0x19)
      const unsigned family = base == 0xf ? base + ((eax >> 20) & 0xff) : base;
      return family >= 0x1a;
    }
#endif
    return true;
  }();
  return cached;
}

const char* capability_name(Capability c) {
  switch (c) {
    case Capability::AVX512: return "avx512";
    case Capability::AVX2: return "avx2";
    default: return "default";
  }
}

}  // namespace cnx::cpu
