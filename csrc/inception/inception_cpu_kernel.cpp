// Inception CPU kernels: the bias + ReLU epilogue that scatters a GEMM or convolution tile into its output
// slice, and the 3x3/s1/p1 max-pool of a block of pixels into the pool projection's A tile. setup.py compiles
// this file once per instruction set.
//
// Memory traffic: the epilogue reads its tile from L2 (the 1x1 stage) or the convolution's output from memory
// (the spatial stage) and writes each output element once; the pool reads the input rows around the block
// (from L2 after the 1x1 GEMM of the same block has read them), each input vector up to 3 times (once per
// output row whose window covers it), and writes the tile, which never leaves L2.
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

// The 3x3/s1/p1 max of pixels w0..w1-1 of image row (n, h), into out (a row of C per pixel). Separable: each
// column's max over the window's rows once, then each pixel's the max of three neighbouring column maxima --
// 3 loads per output vector instead of 9. At an image edge the missing column is the middle one again, which
// leaves the max unchanged (NaN included).
template <typename scalar_t>
void pool_run(const scalar_t* x, const inception::Problem& pb, int64_t n, int64_t h, int64_t w0, int64_t w1,
              scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const int64_t C = pb.C, W = pb.W, row = W * C;
  const int64_t r0 = h > 0 ? h - 1 : 0, rows = (h + 2 < pb.H ? h + 2 : pb.H) - r0;
  const scalar_t* top = x + ((n * pb.H + r0) * W) * C;
  for (int64_t c = 0; c < C; c += V) {
    const int64_t count = std::min(V, C - c);
    const auto column = [&](int64_t j) {
      const scalar_t* p = top + j * C + c;
      Vec m = load(p, count);
      for (int64_t r = 1; r < rows; ++r) m = at::vec::maximum(m, load(p + r * row, count));
      return m;
    };
    Vec cur = column(w0);
    Vec prev = w0 > 0 ? column(w0 - 1) : cur;
    for (int64_t w = w0; w < w1; ++w) {
      const Vec next = w + 1 < W ? column(w + 1) : cur;
      store(out + (w - w0) * C + c, at::vec::maximum(at::vec::maximum(prev, cur), next), count);
      prev = cur;
      cur = next;
    }
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
    for (int64_t m = m0; m < m1;) {
      const int64_t n = m / plane, hw = m % plane, h = hw / pb.W, w = hw % pb.W;
      const int64_t end = std::min(m1, m + (pb.W - w));  // the rest of this image row, within the tile
      pool_run(in, pb, n, h, w, w + (end - m), out + (m - m0) * pb.C);
      m = end;
    }
  });
}

}  // namespace cnx::cpu::CPU_CAPABILITY
