#pragma once
// Qualifiers that let one inline function serve the CPU kernels (compiled by the host compiler) and the
// CUDA kernels (compiled by nvcc). Kernel math lives in such functions so CPU tests exercise it.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define CNX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CNX_HOST_DEVICE inline
#endif
