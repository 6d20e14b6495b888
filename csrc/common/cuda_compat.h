#pragma once
// The CUDA keywords our kernels use, for two compilers: nvcc (the GPU build) and the host C++ compiler with
// -DCNX_CUDA_EMU (the CPU emulator in csrc/emu/cuda_emu.h, which CI runs -- plain, under AddressSanitizer and
// under ThreadSanitizer -- since no GPU is available to run the kernels). Under nvcc every macro here expands
// to exactly what the source said before, so the GPU code is unchanged.
//
// The pattern every CUDA file follows (csrc/<op>/<op>_cuda.cu; the next one is inception/inception_cuda.cu):
//  1. Include "common/cuda_helpers.cuh" -- never ATen/cuda, c10/cuda or cuda_runtime headers directly -- and
//     reach the runtime only through cnx::cuda: current_stream(), DeviceGuard, device_properties(),
//     on_device(t), device_type(), allow_dynamic_smem(kernel, bytes), and launch(kernel, grid, block, smem,
//     stream, args...) followed by CNX_CUDA_LAUNCH_CHECK() (never `<<<...>>>`, which g++ cannot parse).
//  2. Shared memory: dynamic through cuda::dynamic_smem<T>(); static as CNX_SHARED(float, tile, [32][33])
//     (a bare `__shared__` does not compile in the emulator). __syncthreads() as usual. No warp primitives
//     (__shfl_*, __ballot_sync, __syncwarp, ...) and no atomics: the emulator rejects them at compile time.
//  3. Register with TORCH_LIBRARY_IMPL(CNX_OPS, CNX_CUDA_KEY, m) and declare the schema (in <op>.cpp) with
//     TORCH_LIBRARY_FRAGMENT(CNX_OPS, m): the emulator's test library registers the same ops as
//     classicnets_ext_emu::* for CPU tensors.
//  4. Add the .cu and its <op>.cpp to EMU_SOURCES in tests/emu/build.py, and its cases to
//     tests/test_cuda_emu.py (compared with torch, every kernel and launch path).
// Then the whole file -- kernels and launchers, so the launch geometry too -- runs in the emulator.
#include "common/macros.h"

#ifdef CNX_CUDA_EMU
#include "emu/cuda_emu.h"  // __global__, __device__, threadIdx, __syncthreads(), ... for the host compiler
#define CNX_CUDA_KEY CPU   // the emulated kernels take CPU tensors
#define CNX_SHARED(type, name, ...)                          \
  type(&name) __VA_ARGS__ = ::cnx::emu::static_shared<type __VA_ARGS__>([] { \
    static const char site = 0; /* one key per declaration */        \
    return &site;                                                    \
  }())
#define CNX_DYNAMIC_SHARED(type, name) type* const name = reinterpret_cast<type*>(::cnx::emu::dynamic_smem())
#else
#define CNX_CUDA_KEY CUDA
#define CNX_SHARED(type, name, ...) __shared__ type name __VA_ARGS__
#define CNX_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif
