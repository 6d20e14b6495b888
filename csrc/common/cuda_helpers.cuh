#pragma once
// Launch helpers shared by the project's CUDA kernels.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>

// After every launch: reports a bad launch configuration at its call site (and, under
// CUDA_LAUNCH_BLOCKING=1, the kernel's own faults).
#define CNX_CUDA_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()

namespace cnx::cuda {

template <typename T>
__host__ __device__ constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// Grid for a kernel that grid-strides over `blocks` blocks' worth of work. A few waves of resident blocks
// already keep every SM busy, and the cap keeps gridDim.x in range whatever the tensor. Pass waves = 1 when
// per-thread scratch memory is sized by the grid.
inline unsigned int capped_grid(int64_t blocks, int threads_per_block, int64_t waves = 4) {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t resident =
      int64_t(prop->multiProcessorCount) * std::max(1, prop->maxThreadsPerMultiProcessor / threads_per_block);
  return static_cast<unsigned int>(std::clamp<int64_t>(blocks, 1, resident * waves));
}

__device__ __forceinline__ int64_t global_thread() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_threads() { return int64_t(gridDim.x) * blockDim.x; }

// The block's dynamic shared memory as T*. One untyped declaration serves every kernel: `extern __shared__
// T smem[]` in a template would redeclare the same symbol with a different type per T.
template <typename T>
__device__ __forceinline__ T* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char cnx_dynamic_smem[];
  return reinterpret_cast<T*>(cnx_dynamic_smem);
}

// N elements moved by one load or store instruction (16 bytes: LDG.128) when the address is aligned to it.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

inline bool is_aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace cnx::cuda
