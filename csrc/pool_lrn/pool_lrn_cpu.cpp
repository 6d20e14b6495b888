// The fused ReLU -> max-pool -> LRN ops on the CPU: splits the work with at::parallel_for and calls the
// kernels built for this CPU's instruction set (pool_lrn_cpu_kernel.cpp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "maxpool/maxpool.h"
#include "pool_lrn/pool_lrn.h"
#include "pool_lrn/pool_lrn_cpu_kernel.h"

namespace cnx::pool_lrn {
namespace {

using maxpool::as_kernel_layout;
using maxpool::empty_4d;
using maxpool::unbatch;

// Items are tiles of about kTileElements pooled values each, plus the input behind them: one or two per
// task keeps the per-task overhead small, and parallel_for splits anything with more items than threads.
constexpr int64_t kGrain = 1;

std::tuple<at::Tensor, at::Tensor, at::Tensor> max_pool2d_lrn_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                                  bool ceil_mode, int64_t size, double alpha,
                                                                  double beta, double k, bool relu,
                                                                  bool save_for_backward) {
  Problem pb = check_forward_args(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu);
  pb.pool.channels_last = maxpool::is_channels_last(input);
  const at::Tensor x = as_kernel_layout(input, pb.pool.channels_last);
  const int64_t OH = pb.pool.h.out, OW = pb.pool.w.out;
  at::Tensor out = empty_4d(pb.pool, OH, OW, input.options());
  at::Tensor pooled = save_for_backward ? empty_4d(pb.pool, OH, OW, input.options()) : at::empty({0}, input.options());
  at::Tensor argmax = save_for_backward
                          ? empty_4d(pb.pool, OH, OW, input.options().dtype(maxpool::argmax_dtype(pb.pool)))
                          : at::empty({0}, input.options().dtype(at::kByte));
  if (out.numel() > 0) {
    const auto kernel = CNX_CPU_DISPATCH(max_pool2d_lrn_forward_kernel);
    void* pooled_data = save_for_backward ? pooled.mutable_data_ptr() : nullptr;
    void* argmax_data = save_for_backward ? argmax.mutable_data_ptr() : nullptr;
    at::parallel_for(0, forward_items(pb), kGrain, [&](int64_t begin, int64_t end) {
      kernel(x.scalar_type(), x.const_data_ptr(), out.mutable_data_ptr(), pooled_data, argmax_data, pb, begin, end);
    });
  }
  const int64_t dim = input.dim();
  if (!save_for_backward) return {unbatch(out, dim), pooled, argmax};
  return {unbatch(out, dim), unbatch(pooled, dim), unbatch(argmax, dim)};
}

at::Tensor max_pool2d_lrn_backward_cpu(const at::Tensor& grad_output, const at::Tensor& pooled,
                                       const at::Tensor& argmax, at::IntArrayRef input_size,
                                       at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                       int64_t size, double alpha, double beta, double k, bool relu) {
  Problem pb = check_backward_args(grad_output, pooled, argmax, input_size, kernel_size, stride, padding, size, alpha,
                                   beta, k, relu);
  pb.pool.channels_last = maxpool::is_channels_last(argmax);
  const at::Tensor a = as_kernel_layout(argmax, pb.pool.channels_last);
  const at::Tensor p = as_kernel_layout(pooled, pb.pool.channels_last);
  const at::Tensor g = as_kernel_layout(grad_output, pb.pool.channels_last);
  at::Tensor grad_input = empty_4d(pb.pool, pb.pool.h.in, pb.pool.w.in, grad_output.options());
  if (grad_input.numel() > 0) {
    const auto kernel = CNX_CPU_DISPATCH(max_pool2d_lrn_backward_kernel);
    at::parallel_for(0, backward_items(pb), kGrain, [&](int64_t begin, int64_t end) {
      kernel(g.scalar_type(), g.const_data_ptr(), p.const_data_ptr(), a.const_data_ptr(), grad_input.mutable_data_ptr(),
             pb, begin, end);
    });
  }
  return unbatch(grad_input, static_cast<int64_t>(input_size.size()));
}

}  // namespace
}  // namespace cnx::pool_lrn

TORCH_LIBRARY_IMPL(classicnets_ext, CPU, m) {
  m.impl("max_pool2d_lrn", &cnx::pool_lrn::max_pool2d_lrn_cpu);
  m.impl("max_pool2d_lrn_backward", &cnx::pool_lrn::max_pool2d_lrn_backward_cpu);
}
