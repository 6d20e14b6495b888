#pragma once
// The fused Inception op's CUDA kernel (launched by inception_cuda.cu; both files also compile for the CPU
// emulator, see common/cuda_compat.h). The GEMMs and the spatial convolutions are cuBLAS's and cuDNN's, the pool
// is max-pool's own kernel; this epilogue is what those cannot fuse: bias, ReLU and the scatter into slices.
#include <ATen/OpMathType.h>

#include <cstdint>

#include "common/cuda_helpers.cuh"
#include "inception/inception_math.h"

namespace cnx::inception::kernels {

// Up to three destinations of an epilogue's columns: destination i takes the columns [end[i-1], end[i])
// (end[-1] = 0), written at column c - end[i-1] of rows ld[i] apart. T: the epilogue's unit, a pack of columns.
template <typename T>
struct Scatter {
  T* dst[3];
  int64_t ld[3];
  int64_t end[3];
};

// dst(r, c) = relu(src[r * src_ld + c] + bias[c]) for r < rows, c < cols = scatter.end[2], grid-striding over
// units of kPack consecutive columns of one row (consecutive threads, consecutive units: coalesced both ways).
// Every column count, leading dimension and column boundary is in units: the launcher takes 16-byte packs (one
// load and one store instruction for 8 fp16 values) where all of them and every pointer are aligned to one, else
// single columns. Memory traffic: src read once, each destination element written once.
template <typename scalar_t, int kPack>
__global__ void __launch_bounds__(256) bias_relu_scatter_kernel(const cuda::Pack<scalar_t, kPack>* __restrict__ src,
                                                                 int64_t src_ld, int64_t rows,
                                                                 const cuda::Pack<scalar_t, kPack>* __restrict__ bias,
                                                                 Scatter<cuda::Pack<scalar_t, kPack>> out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t cols = out.end[2], total = rows * cols;
  for (int64_t i = cuda::global_thread(); i < total; i += cuda::grid_threads()) {
    const int64_t r = div_nonneg(i, cols), c = i - r * cols;
    // Selects, not indexing: a run-time index into the struct would put it in local memory.
    const bool p0 = c < out.end[0], p1 = !p0 && c < out.end[1];
    cuda::Pack<scalar_t, kPack>* dst = p0 ? out.dst[0] : p1 ? out.dst[1] : out.dst[2];
    const int64_t ld = p0 ? out.ld[0] : p1 ? out.ld[1] : out.ld[2];
    const int64_t begin = p0 ? 0 : p1 ? out.end[0] : out.end[1];
    const cuda::Pack<scalar_t, kPack> s = src[r * src_ld + c], b = bias[c];
    cuda::Pack<scalar_t, kPack> v;
#pragma unroll
    for (int u = 0; u < kPack; ++u)
      v.v[u] = static_cast<scalar_t>(bias_relu(static_cast<acc_t>(s.v[u]), static_cast<acc_t>(b.v[u])));
    dst[r * ld + (c - begin)] = v;
  }
}

}  // namespace cnx::inception::kernels
