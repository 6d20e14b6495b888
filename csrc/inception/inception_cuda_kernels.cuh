#pragma once
// The fused Inception op's CUDA kernels (launched by inception_cuda.cu; both files also compile for the CPU
// emulator, see common/cuda_compat.h). The GEMM of the three 1x1 convolutions and the spatial convolutions are
// cuBLAS's and cuDNN's; these kernels are what those libraries cannot fuse.
#include <ATen/OpMathType.h>

#include <cstdint>

#include "common/cuda_helpers.cuh"
#include "inception/inception_math.h"

namespace cnx::inception::kernels {

// Up to three destinations of an epilogue's columns: destination i takes the columns [end[i-1], end[i])
// (end[-1] = 0), written at column c - end[i-1] of rows ld[i] apart.
template <typename T>
struct Scatter {
  T* dst[3];
  int64_t ld[3];
  int64_t end[3];
};

// dst(r, c) = relu(src[r * src_ld + c] + bias[c]) for r < rows, c < cols = scatter.end[2], grid-striding over
// the elements (consecutive threads, consecutive columns: coalesced both ways). Memory traffic: src read once,
// each destination element written once.
template <typename scalar_t>
__global__ void __launch_bounds__(256) bias_relu_scatter_kernel(const scalar_t* __restrict__ src, int64_t src_ld,
                                                                 int64_t rows, const scalar_t* __restrict__ bias,
                                                                 Scatter<scalar_t> out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t cols = out.end[2], total = rows * cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i - r * cols;
    // Selects, not indexing: a run-time index into the struct would put it in local memory.
    const bool p0 = c < out.end[0], p1 = !p0 && c < out.end[1];
    scalar_t* dst = p0 ? out.dst[0] : p1 ? out.dst[1] : out.dst[2];
    const int64_t ld = p0 ? out.ld[0] : p1 ? out.ld[1] : out.ld[2];
    const int64_t begin = p0 ? 0 : p1 ? out.end[0] : out.end[1];
    const acc_t v = bias_relu(static_cast<acc_t>(src[r * src_ld + c]), static_cast<acc_t>(bias[c]));
    dst[r * ld + (c - begin)] = static_cast<scalar_t>(v);
  }
}

// The pool projection as one GEMM whose A tile is pooled while it is loaded:
//   out[m, n] = relu(sum_k maxpool3x3(x)[m, k] * w[n, k] + bias[n])   (m: pixel, n: projection channel)
// A block computes a kPoolBM x kPoolBN tile of out, each of its 256 threads a 4 x 4 sub-tile in registers, over
// K = C in steps of kPoolBK staged in shared memory (A transposed so the inner loop reads both operands along
// the tile's edges). Memory traffic: x read about once per column block of out (the 9 taps of neighbouring
// pixels hit L1/L2), w once per row block, out written once; the pooled tensor never exists.
constexpr int kPoolBM = 64, kPoolBN = 64, kPoolBK = 16, kPoolThreads = 256;

template <typename scalar_t>
__global__ void __launch_bounds__(kPoolThreads) pool_projection_kernel(const scalar_t* __restrict__ x,
                                                                       const scalar_t* __restrict__ w,
                                                                       const scalar_t* __restrict__ bias,
                                                                       scalar_t* __restrict__ out, int64_t out_ld,
                                                                       Problem pb) {
  using acc_t = at::opmath_type<scalar_t>;
  CNX_SHARED(acc_t, a_tile, [kPoolBK][kPoolBM + 1]);  // +1: the transposed stores do not all hit one bank
  CNX_SHARED(acc_t, b_tile, [kPoolBK][kPoolBN + 1]);
  const int64_t M = pb.pixels(), C = pb.C, N = pb.cp;
  const int64_t m0 = int64_t(blockIdx.x) * kPoolBM;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  // Channel tiles past gridDim.y * kPoolBN (a projection wider than 65535 tiles) come round again.
  for (int64_t n0 = int64_t(blockIdx.y) * kPoolBN; n0 < N; n0 += int64_t(gridDim.y) * kPoolBN) {
    acc_t acc[4][4] = {};
    for (int64_t k0 = 0; k0 < C; k0 += kPoolBK) {
      // kPoolBM * kPoolBK = 4 * kPoolThreads elements of each tile; consecutive threads read consecutive channels.
      for (int e = threadIdx.x; e < kPoolBM * kPoolBK; e += kPoolThreads) {
        const int row = e / kPoolBK, kk = e % kPoolBK;
        const int64_t m = m0 + row, n = n0 + row, k = k0 + kk;
        a_tile[kk][row] = (m < M && k < C) ? pooled_element<acc_t>(x, pb, m, k) : acc_t(0);
        b_tile[kk][row] = (n < N && k < C) ? static_cast<acc_t>(w[n * C + k]) : acc_t(0);
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kPoolBK; ++kk) {
        acc_t a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          a[i] = a_tile[kk][ty * 4 + i];
          b[i] = b_tile[kk][tx * 4 + i];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
      }
      __syncthreads();  // the next step overwrites the tiles
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t m = m0 + ty * 4 + i;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t n = n0 + tx * 4 + j;
        if (m < M && n < N) out[m * out_ld + n] = static_cast<scalar_t>(bias_relu(acc[i][j], static_cast<acc_t>(bias[n])));
      }
    }
  }
}

}  // namespace cnx::inception::kernels
