// The fused ReLU -> max-pool -> LRN ops' schemas and the checks every backend shares. Kernels:
// pool_lrn_cpu.cpp, pool_lrn_cuda.cu, and triton_kernels/pool_lrn.py (registered from Python as
// classicnets_ext::max_pool2d_lrn_triton*).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "pool_lrn/pool_lrn.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/layout.h"
#include "lrn/lrn.h"
#include "maxpool/maxpool.h"

namespace cnx::pool_lrn {
namespace {

constexpr int64_t kNoDilation[] = {1, 1};

}  // namespace

Problem check_forward_args(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode, int64_t size, double alpha, double beta,
                           double k, bool relu, c10::DeviceType device) {
  constexpr const char* op = "max_pool2d_lrn";
  const maxpool::Problem pool =
      maxpool::check_forward_args(input, kernel_size, stride, padding, kNoDilation, ceil_mode, device, op);
  lrn::check_settings(op, size, alpha, beta, k);
  const lrn::Window w = lrn::kernel_window(size, alpha, pool.C);
  return {pool, w.size, w.alpha, beta, k, relu};
}

Problem check_backward_args(const at::Tensor& grad_output, const at::Tensor& pooled, const at::Tensor& argmax,
                            at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, int64_t size, double alpha, double beta, double k, bool relu,
                            c10::DeviceType device) {
  constexpr const char* op = "max_pool2d_lrn_backward";
  const maxpool::Problem pool = maxpool::check_argmax_args(op, grad_output, argmax, input_size, kernel_size, stride,
                                                           padding, kNoDilation, device);
  TORCH_CHECK_VALUE(pooled.sizes() == argmax.sizes(), op, ": `pooled` shape ", pooled.sizes(),
                    " differs from `argmax` shape ", argmax.sizes());
  TORCH_CHECK_TYPE(pooled.scalar_type() == grad_output.scalar_type(), op, ": `pooled` dtype ", pooled.scalar_type(),
                   " differs from `grad_output` dtype ", grad_output.scalar_type());
  check_device(op, "pooled", pooled, device);
  TORCH_CHECK(pooled.device() == argmax.device(), op, ": `pooled` is on ", pooled.device(), " but `argmax` is on ",
              argmax.device());
  lrn::check_settings(op, size, alpha, beta, k);
  const lrn::Window w = lrn::kernel_window(size, alpha, pool.C);
  return {pool, w.size, w.alpha, beta, k, relu};
}

Forward prepare_forward(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                        at::IntArrayRef padding, bool ceil_mode, int64_t size, double alpha, double beta, double k,
                        bool relu, bool save_for_backward, c10::DeviceType device) {
  Forward f;
  f.pb = check_forward_args(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu, device);
  maxpool::Problem& pool = f.pb.pool;
  pool.channels_last = maxpool::is_channels_last(input);
  f.x = maxpool::as_kernel_layout(input, pool.channels_last);
  const auto options = input.options();
  // The output in LRN's layout rule (lrn::layout_of): a channels-last map that is contiguous too -- one channel,
  // a 1x1 map -- is answered with contiguous strides, as local_response_norm answers max_pool2d's output there
  // (and torch's composite likewise). pooled and argmax keep max_pool2d's.
  f.out = maxpool::empty_4d(pool, pool.h.out, pool.w.out, options);
  if (pool.channels_last) f.out = with_dense_strides(f.out, is_channels_last(f.out));
  f.pooled = save_for_backward ? maxpool::empty_4d(pool, pool.h.out, pool.w.out, options) : at::empty({0}, options);
  f.argmax = save_for_backward ? maxpool::empty_4d(pool, pool.h.out, pool.w.out, options.dtype(maxpool::argmax_dtype(pool)))
                               : at::empty({0}, options.dtype(at::kByte));
  f.dim = input.dim();
  f.save = save_for_backward;
  return f;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> Forward::result() const {
  if (!save) return {maxpool::unbatch(out, dim), pooled, argmax};
  return {maxpool::unbatch(out, dim), maxpool::unbatch(pooled, dim), maxpool::unbatch(argmax, dim)};
}

Backward prepare_backward(const at::Tensor& grad_output, const at::Tensor& pooled, const at::Tensor& argmax,
                          at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, int64_t size, double alpha, double beta, double k, bool relu,
                          c10::DeviceType device) {
  Backward b;
  b.pb = check_backward_args(grad_output, pooled, argmax, input_size, kernel_size, stride, padding, size, alpha, beta,
                             k, relu, device);
  maxpool::Problem& pool = b.pb.pool;
  pool.channels_last = maxpool::is_channels_last(argmax);
  b.argmax = maxpool::as_kernel_layout(argmax, pool.channels_last);
  b.pooled = maxpool::as_kernel_layout(pooled, pool.channels_last);
  b.grad = maxpool::as_kernel_layout(grad_output, pool.channels_last);
  b.grad_input = maxpool::empty_4d(pool, pool.h.in, pool.w.in, grad_output.options());
  b.dim = static_cast<int64_t>(input_size.size());
  return b;
}

at::Tensor Backward::result() const { return maxpool::unbatch(grad_input, dim); }

void Forward::to_channels_last() {
  maxpool::Problem& pool = pb.pool;
  pool.channels_last = true;
  x = maxpool::as_kernel_layout(x, true);
  const auto realloc = [&](const at::Tensor& t) {
    return t.numel() > 0 ? maxpool::empty_4d(pool, pool.h.out, pool.w.out, t.options()) : t;
  };
  out = realloc(out);
  pooled = realloc(pooled);
  argmax = realloc(argmax);
}

void Backward::to_channels_last() {
  maxpool::Problem& pool = pb.pool;
  pool.channels_last = true;
  grad = maxpool::as_kernel_layout(grad, true);
  pooled = maxpool::as_kernel_layout(pooled, true);
  argmax = maxpool::as_kernel_layout(argmax, true);
  grad_input = maxpool::empty_4d(pool, pool.h.in, pool.w.in, grad_input.options());
}

}  // namespace cnx::pool_lrn

// max_pool2d_lrn returns (output, pooled, argmax). With save_for_backward the forward also writes what the
// backward needs -- pooled = relu?(max_pool2d(x)), LRN's input, and the window-local argmax (uint8 up to
// 256 taps, int32 beyond, as max_pool2d's) -- and otherwise two empty tensors: the inference forward reads
// x once and writes y once. The backward needs neither x nor y (see pool_lrn_math.h).
TORCH_LIBRARY_FRAGMENT(CNX_OPS, m) {
  m.def("max_pool2d_lrn(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, int size, "
        "float alpha, float beta, float k, bool relu, bool save_for_backward) -> (Tensor, Tensor, Tensor)");
  m.def("max_pool2d_lrn_backward(Tensor grad_output, Tensor pooled, Tensor argmax, SymInt[] input_size, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int size, float alpha, float beta, float k, "
        "bool relu) -> Tensor");
}
