// The fused ReLU -> max-pool -> LRN ops on the CPU: splits the work with at::parallel_for and calls the
// kernels built for this CPU's instruction set (pool_lrn_cpu_kernel.cpp).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <tuple>

#include "common/layout.h"
#include "maxpool/maxpool.h"
#include "maxpool/maxpool_cpu_kernel.h"
#include "pool_lrn/pool_lrn.h"
#include "pool_lrn/pool_lrn_cpu_kernel.h"

namespace cnx::pool_lrn {
namespace {

// Items are tiles of up to kTileElements pooled values each, plus the input behind them (forward_tiling,
// backward_tiling: at least one per thread where the rows allow): one or two per task keeps the per-task
// overhead small, and parallel_for splits anything with more items than threads.
constexpr int64_t kGrain = 1;

// Windows far wider than the input make the channels-first kernels' row scratch huge (maxpool::wide_windows);
// such a problem runs the channels-last kernels on channels-last copies and answers in the caller's layout.
// Unlike max_pool2d's, the LRN needs the channels, so a reinterpretation with C = 1 cannot serve. The layout
// is set here, not re-derived from the copies: a tensor that is both contiguous and channels-last (C = 1, or
// 1 x 1 maps) counts as contiguous, and going through the op again with it recursed until the stack overflowed.
bool wide_channels_first(const maxpool::Problem& pool) { return !pool.channels_last && maxpool::wide_windows(pool); }

// Back in the caller's (contiguous) layout with its strides: with one channel, the channels-last copy is already
// contiguous, and .contiguous() would hand it back with its channels-last strides.
at::Tensor contiguous_dense(const at::Tensor& t) { return with_dense_strides(t.contiguous(), false); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> max_pool2d_lrn_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                                  bool ceil_mode, int64_t size, double alpha,
                                                                  double beta, double k, bool relu,
                                                                  bool save_for_backward) {
  Forward f = prepare_forward(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu,
                              save_for_backward, at::kCPU);
  const bool wide = wide_channels_first(f.pb.pool);
  if (wide) f.to_channels_last();
  if (f.out.numel() > 0) {
    const auto kernel = CNX_CPU_DISPATCH(max_pool2d_lrn_forward_kernel);
    void* pooled = f.save ? f.pooled.mutable_data_ptr() : nullptr;
    void* argmax = f.save ? f.argmax.mutable_data_ptr() : nullptr;
    const Tiling tiling = forward_tiling(f.pb, at::get_num_threads());
    at::parallel_for(0, f.pb.pool.N * tiling.blocks, kGrain, [&](int64_t begin, int64_t end) {
      kernel(f.x.scalar_type(), f.x.const_data_ptr(), f.out.mutable_data_ptr(), pooled, argmax, f.pb, tiling, begin,
             end);
    });
  }
  if (wide) {  // all three in the caller's layout, as the fake kernels (_layouts) have them; the backward copies back
    f.out = contiguous_dense(f.out);
    f.pooled = contiguous_dense(f.pooled);
    f.argmax = contiguous_dense(f.argmax);
  }
  return f.result();
}

at::Tensor max_pool2d_lrn_backward_cpu(const at::Tensor& grad_output, const at::Tensor& pooled,
                                       const at::Tensor& argmax, at::IntArrayRef input_size,
                                       at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                       int64_t size, double alpha, double beta, double k, bool relu) {
  Backward b = prepare_backward(grad_output, pooled, argmax, input_size, kernel_size, stride, padding, size,
                                alpha, beta, k, relu, at::kCPU);
  const bool wide = wide_channels_first(b.pb.pool);
  if (wide) b.to_channels_last();
  if (b.grad_input.numel() > 0) {
    const auto kernel = CNX_CPU_DISPATCH(max_pool2d_lrn_backward_kernel);
    const Tiling tiling = backward_tiling(b.pb, at::get_num_threads());
    at::parallel_for(0, b.pb.pool.N * tiling.blocks, kGrain, [&](int64_t begin, int64_t end) {
      kernel(b.grad.scalar_type(), b.grad.const_data_ptr(), b.pooled.const_data_ptr(), b.argmax.const_data_ptr(),
             b.grad_input.mutable_data_ptr(), b.pb, tiling, begin, end);
    });
  }
  if (wide) b.grad_input = contiguous_dense(b.grad_input);
  return b.result();
}

}  // namespace
}  // namespace cnx::pool_lrn

TORCH_LIBRARY_IMPL(classicnets_ext, CPU, m) {
  m.impl("max_pool2d_lrn", &cnx::pool_lrn::max_pool2d_lrn_cpu);
  m.impl("max_pool2d_lrn_backward", &cnx::pool_lrn::max_pool2d_lrn_backward_cpu);
}
