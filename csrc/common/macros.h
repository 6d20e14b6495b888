#pragma once
// Qualifiers that let one inline function serve the CPU kernels (compiled by the host compiler) and the
// CUDA kernels (compiled by nvcc). Kernel math lives in such functions so CPU tests exercise it.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define CNX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CNX_HOST_DEVICE inline
#endif

// `#pragma unroll` for a loop in such a function: nvcc's; the host compiler's own spelling (GCC warns about
// the other, and the CPU build keeps its log free of warnings).
#if defined(__CUDACC__) || defined(__HIPCC__)
#define CNX_UNROLL _Pragma("unroll")
#elif defined(__clang__)
#define CNX_UNROLL _Pragma("clang loop unroll(full)")
#elif defined(__GNUC__)
#define CNX_UNROLL _Pragma("GCC unroll 64")
#else
#define CNX_UNROLL
#endif

// The namespace the ops register in (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL): classicnets_ext, or
// classicnets_ext_emu in the CUDA emulator's test library (csrc/emu), so both can load into one process.
#ifndef CNX_OPS
#define CNX_OPS classicnets_ext
#endif

// A lambda's call operator inlined before GCC's early optimisations: otherwise a lambda called from another
// (a kernel's per-vector step inside a per-row one) is inlined late, after the scalar replacement of its local
// arrays, and an array of vector accumulators stays on the stack -- stored on every iteration of the loop
// that sums into it.
#if defined(__GNUC__) && !defined(__CUDACC__)
#define CNX_LAMBDA_INLINE __attribute__((always_inline))
#else
#define CNX_LAMBDA_INLINE
#endif
