#pragma once
// Launch helpers shared by the project's CUDA kernels, and the few runtime calls their launchers make. Both
// compile for nvcc (the GPU) and for the CPU emulator (-DCNX_CUDA_EMU, csrc/emu/cuda_emu.h), so that the
// emulator runs each .cu file whole -- kernels and launchers, the launch geometry included. The pattern a
// CUDA file follows is at the top of common/cuda_compat.h.
#include "common/cuda_compat.h"
#include "common/int_divider.h"

#ifndef CNX_CUDA_EMU
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include <algorithm>
#include <cstdint>
#include <utility>

#ifdef CNX_CUDA_EMU
#define CNX_CUDA_LAUNCH_CHECK()  // the emulator throws at the launch itself
#else
// After every launch: reports a bad launch configuration at its call site (and, under
// CUDA_LAUNCH_BLOCKING=1, the kernel's own faults).
#define CNX_CUDA_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#endif

namespace cnx::cuda {

#ifdef CNX_CUDA_EMU
using emu::allow_dynamic_smem;
using emu::current_stream;
using emu::DeviceGuard;
using emu::device_properties;
using emu::device_type;
using emu::launch;
using emu::on_device;
using Stream = emu::Stream;
#else
using Stream = cudaStream_t;
using DeviceGuard = c10::cuda::CUDAGuard;
inline Stream current_stream() { return at::cuda::getCurrentCUDAStream(); }
inline const cudaDeviceProp& device_properties() { return *at::cuda::getCurrentDeviceProperties(); }
inline bool on_device(const at::Tensor& t) { return t.is_cuda(); }
inline c10::DeviceType device_type() { return c10::kCUDA; }

// kernel<<<grid, block, smem, stream>>>(args...), as a function the emulator can define too.
template <typename... P, typename... A>
inline void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, Stream stream, A&&... args) {
  kernel<<<grid, block, smem, stream>>>(std::forward<A>(args)...);
}

// Lets `kernel` take up to `bytes` of dynamic shared memory (past the 48 KB default, up to the opt-in limit).
template <typename... P>
inline void allow_dynamic_smem(void (*kernel)(P...), int64_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}
#endif

template <typename T>
__host__ __device__ constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// Grid for a kernel that grid-strides over `blocks` blocks' worth of work. A few waves of resident blocks
// already keep every SM busy, and the cap keeps gridDim.x in range whatever the tensor. Pass waves = 1 when
// per-thread scratch memory is sized by the grid. Resident blocks per SM are bounded by threads and by a block
// count of its own (32 on sm_90): small blocks hit the latter, and a "wave" sized by threads alone was two.
inline unsigned int capped_grid(int64_t blocks, int threads_per_block, int64_t waves = 4) {
  const auto& prop = device_properties();
  const int per_sm = std::min(prop.maxBlocksPerMultiProcessor, prop.maxThreadsPerMultiProcessor / threads_per_block);
  const int64_t resident = int64_t(prop.multiProcessorCount) * std::max(1, per_sm);
  return static_cast<unsigned int>(std::clamp<int64_t>(blocks, 1, resident * waves));
}

__device__ __forceinline__ int64_t global_thread() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_threads() { return int64_t(gridDim.x) * blockDim.x; }

// Work split into `units` (columns, pooled positions) x `chunks` (of channels), walked in tiles of blockDim.x
// consecutive units of one chunk, the next blocks taking the other chunks of the same units: the neighbouring
// channels a chunk reads again (its windows' halo) were just brought into L2 by the blocks beside it. Calls
// f(unit, chunk) for every pair this thread owns; chunk_grid is the launch's grid.
template <typename F>
__device__ __forceinline__ void for_each_unit_chunk(int64_t units, int64_t chunks, F f) {
  const int64_t tiles = ceil_div<int64_t>(units, blockDim.x) * chunks;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t block_units = div_nonneg(tile, chunks);
    const int64_t unit = block_units * blockDim.x + threadIdx.x;
    if (unit < units) f(unit, tile - block_units * chunks);
  }
}

inline unsigned int chunk_grid(int64_t units, int64_t chunks, int threads_per_block) {
  return capped_grid(ceil_div<int64_t>(units, threads_per_block) * chunks, threads_per_block);
}

// compute(e) then store(e, value) for this thread's elements of [0, total), kUnroll consecutive ones at a
// time: the kUnroll computes run with no bounds test between them, so that the loads they make -- a memory-
// bound kernel's work -- issue together rather than element after element; a short last run takes them one by
// one. compute must only read; the stores follow all of a run's computes.
template <int kUnroll, typename Compute, typename Store>
__device__ __forceinline__ void for_each_element_unrolled(int64_t total, Compute compute, Store store) {
  for (int64_t e = global_thread() * kUnroll; e < total; e += grid_threads() * kUnroll) {
    if (e + kUnroll <= total) {
      decltype(compute(e)) values[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) values[u] = compute(e + u);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) store(e + u, values[u]);
    } else {
      for (int64_t t = e; t < total; ++t) store(t, compute(t));
    }
  }
}

// The block's dynamic shared memory as T*. One untyped declaration serves every kernel: `extern __shared__
// T smem[]` in a template would redeclare the same symbol with a different type per T.
template <typename T>
__device__ __forceinline__ T* dynamic_smem() {
  CNX_DYNAMIC_SHARED(unsigned char, cnx_dynamic_smem);
  return reinterpret_cast<T*>(cnx_dynamic_smem);
}

// N elements moved by one load or store instruction (16 bytes: LDG.128) when the address is aligned to it.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

inline bool is_aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace cnx::cuda
