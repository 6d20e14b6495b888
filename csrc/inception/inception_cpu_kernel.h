#pragma once
// The per-instruction-set CPU kernels of the fused Inception op (inception_cpu_kernel.cpp, compiled once per
// ISA). Raw pointers only, so that no at::Tensor code is compiled with AVX flags. The GEMMs and the spatial
// convolutions are the BLAS / oneDNN ones; these are the parts around them that the libraries cannot fuse.
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>

#include "common/cpu_dispatch.h"
#include "inception/inception_math.h"

namespace cnx::inception {

// Pixels per work item of the 1x1 stage: a number of tiles that is a multiple of the thread count (7 tiles on 2
// threads left one thread a tile behind: 4e lost 1.1x), each at most kMaxTileRows. The GEMMs' B operands (the
// stacked 1x1 weights, up to 832 x 624 in block 5b) are re-read once per tile, so tiles must not be small:
// 29-row tiles made 5b's GEMMs 1.6x slower than 196-row ones. Up to 256 rows, a tile and its pooled twin stay
// within L2 + L3 reach between the GEMM and its epilogue.
constexpr int64_t kMinTileRows = 32, kMaxTileRows = 256;

inline int64_t tile_rows(const Problem& pb, int64_t threads) {
  threads = std::max<int64_t>(threads, 1);
  const int64_t M = pb.pixels();
  const int64_t rounds = (M + threads * kMaxTileRows - 1) / (threads * kMaxTileRows);  // tiles per thread
  const int64_t tiles = std::max<int64_t>(threads * rounds, 1);
  return std::clamp<int64_t>((M + tiles - 1) / tiles, kMinTileRows, kMaxTileRows);
}

}  // namespace cnx::inception

// dst[r * dst_ld + c] = relu(src[r * src_ld + c] + bias[c]) for r < rows, c < cols; NaN stays NaN.
CNX_CPU_DECLARE(void, inception_bias_relu_kernel, c10::ScalarType dtype, const void* src, int64_t src_ld, int64_t rows,
                int64_t cols, const void* bias, void* dst, int64_t dst_ld)
// tile[i * C + c] = the 3x3/s1/p1 max around pixel m0 + i of the channels-last input x, for m0 <= m0 + i < m1.
CNX_CPU_DECLARE(void, inception_pool_rows_kernel, c10::ScalarType dtype, const void* x,
                const cnx::inception::Problem& pb, int64_t m0, int64_t m1, void* tile)
