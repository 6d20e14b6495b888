#pragma once
// Qualifiers that let one inline function serve the CPU kernels (compiled by the host compiler) and the
// CUDA kernels (compiled by nvcc). Kernel math lives in such functions so CPU tests exercise it.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define CNX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CNX_HOST_DEVICE inline
#endif

// The namespace the ops register in (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL): classicnets_ext, or
// classicnets_ext_emu in the CUDA emulator's test library (csrc/emu), so both can load into one process.
#ifndef CNX_OPS
#define CNX_OPS classicnets_ext
#endif
