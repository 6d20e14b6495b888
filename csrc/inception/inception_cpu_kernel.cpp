// Inception CPU kernels: the bias + ReLU epilogue that scatters a GEMM or convolution tile into its output
// slice, and the 3x3/s1/p1 max-pool of a block of pixels into the pool projection's A tile. setup.py compiles
// this file once per instruction set.
//
// Memory traffic: the epilogue reads its tile from L2 (the 1x1 stage) or the convolution's output from memory
// (the spatial stage) and writes each output element once; the pool reads the input rows around the block
// (from L2 after the 1x1 GEMM of the same block has read them) and writes the tile, which never leaves L2.
#include "inception/inception_cpu_kernel.h"

#include <ATen/Dispatch.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/cpu_vec.h"

namespace cnx::cpu::CPU_CAPABILITY {
namespace {

template <typename scalar_t>
void bias_relu(const scalar_t* src, int64_t src_ld, int64_t rows, int64_t cols, const scalar_t* bias, scalar_t* dst,
               int64_t dst_ld) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const Vec zero(acc_t(0));
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* s = src + r * src_ld;
    scalar_t* d = dst + r * dst_ld;
    int64_t c = 0;
    // at::vec::maximum propagates NaN, as torch.relu does.
    for (; c + V <= cols; c += V)
      store(d + c, at::vec::maximum(load(s + c, V) + load(bias + c, V), zero), V);
    if (c < cols) {
      const int64_t n = cols - c;
      store(d + c, at::vec::maximum(load(s + c, n) + load(bias + c, n), zero), n);
    }
  }
}

// One pixel's window max over C channels, V at a time: the first tap initialises, NaN wins (vec::maximum).
template <typename scalar_t>
void pool_pixel(const scalar_t* x, const inception::Problem& pb, int64_t n, int64_t h, int64_t w, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const int64_t C = pb.C;
  const inception::Window win = inception::pool_window(h, w, pb.H, pb.W);
  const scalar_t* base = x + (n * pb.H * pb.W) * C;
  for (int64_t c = 0; c < C; c += V) {
    const int64_t count = std::min(V, C - c);
    Vec m = load(base + (win.h0 * pb.W + win.w0) * C + c, count);
    for (int64_t i = win.h0; i < win.h1; ++i)
      for (int64_t j = win.w0; j < win.w1; ++j) m = at::vec::maximum(m, load(base + (i * pb.W + j) * C + c, count));
    store(out + c, m, count);
  }
}

}  // namespace

void inception_bias_relu_kernel(c10::ScalarType dtype, const void* src, int64_t src_ld, int64_t rows, int64_t cols,
                                const void* bias, void* dst, int64_t dst_ld) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "inception_bias_relu", [&] {
    bias_relu(static_cast<const scalar_t*>(src), src_ld, rows, cols, static_cast<const scalar_t*>(bias),
              static_cast<scalar_t*>(dst), dst_ld);
  });
}

void inception_pool_rows_kernel(c10::ScalarType dtype, const void* x, const inception::Problem& pb, int64_t m0,
                                int64_t m1, void* tile) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "inception_pool_rows", [&] {
    const auto* in = static_cast<const scalar_t*>(x);
    auto* out = static_cast<scalar_t*>(tile);
    const int64_t plane = pb.H * pb.W;
    for (int64_t m = m0; m < m1; ++m) {
      const int64_t n = m / plane, hw = m % plane;
      pool_pixel(in, pb, n, hw / pb.W, hw % pb.W, out + (m - m0) * pb.C);
    }
  });
}

}  // namespace cnx::cpu::CPU_CAPABILITY
