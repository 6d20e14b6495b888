#pragma once
// Run-time choice among the per-instruction-set builds of a *_cpu_kernel.cpp file.
//
// setup.py compiles each *_cpu_kernel.cpp three times with -DCPU_CAPABILITY=DEFAULT|AVX2|AVX512 (and the
// matching -m flags), so every kernel function exists as cnx::cpu::DEFAULT::f, cnx::cpu::AVX2::f and
// cnx::cpu::AVX512::f. CNX_CPU_DISPATCH(f) returns the best one this CPU runs. Like ATen, the choice
// honours ATEN_CPU_CAPABILITY=default|avx2|avx512 (useful to test the baseline path on a modern CPU).
#include <string>

namespace cnx::cpu {

enum class Capability { DEFAULT = 0, AVX2 = 1, AVX512 = 2 };

// The best capability both compiled in and supported by this CPU (cached after the first call).
Capability capability();
const char* capability_name(Capability c);

// Whether the AVX-512 kernels may use AVX512-BF16's dot products of bf16 pairs (vdpbf16ps): the CPU has them
// (Zen 4 and later, Cooper Lake and Sapphire Rapids and later), capability() is AVX512, and CNX_AVX512_BF16 is
// not "0" (a switch to run and test the plain AVX-512 path on such a CPU). Cached after the first call.
bool has_avx512_bf16();

// "amd", "intel" or "other": which library products are slow here depends on it (MKL, torch's BLAS on x86, runs
// slower code paths on AMD CPUs; see ops.linear).
const char* vendor_name();

// Whether capability() is AVX512 on a core that runs 512-bit vector ops at full width. AMD's Zen 4 (family 19h),
// its first core with AVX-512, runs each as two 256-bit halves: no more FLOPs a cycle than AVX2, so the products
// our AVX-512 kernels outrun on Zen 5 (family 1Ah, full width) turn compute-bound against MKL's and oneDNN's
// sooner there (ops.linear's row limits). Intel's AVX-512 cores count as full width.
bool avx512_full_width();

}  // namespace cnx::cpu

#if defined(__x86_64__) || defined(_M_X64)
#define CNX_CPU_DECLARE(ret, name, ...)                  \
  namespace cnx::cpu::DEFAULT { ret name(__VA_ARGS__); } \
  namespace cnx::cpu::AVX2 { ret name(__VA_ARGS__); }    \
  namespace cnx::cpu::AVX512 { ret name(__VA_ARGS__); }
#define CNX_CPU_DISPATCH(name)                                         \
  (::cnx::cpu::capability() == ::cnx::cpu::Capability::AVX512 ? &::cnx::cpu::AVX512::name \
   : ::cnx::cpu::capability() == ::cnx::cpu::Capability::AVX2 ? &::cnx::cpu::AVX2::name   \
                                                                : &::cnx::cpu::DEFAULT::name)
#else
#define CNX_CPU_DECLARE(ret, name, ...) \
  namespace cnx::cpu::DEFAULT { ret name(__VA_ARGS__); }
#define CNX_CPU_DISPATCH(name) (&::cnx::cpu::DEFAULT::name)
#endif
