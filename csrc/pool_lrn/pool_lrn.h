#pragma once
// Host-side pieces of the fused ReLU -> max-pool -> LRN ops shared by the CPU and CUDA backends: argument
// checks and the problem. The layout rule is max pooling's (maxpool.h): a 4-D channels-last input is
// answered channels-last -- output, pooled, argmax, gradient -- anything else contiguous.
#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <tuple>

#include "pool_lrn/pool_lrn_math.h"

namespace cnx::pool_lrn {

// Checks the forward's arguments (max_pool2d's with dilation 1, then local_response_norm's; tensors on
// `device`, the backend's) and returns its problem, layout not yet set.
Problem check_forward_args(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode, int64_t size, double alpha, double beta,
                           double k, bool relu, c10::DeviceType device);

// Checks the backward's arguments against each other and returns its problem, layout not yet set.
Problem check_backward_args(const at::Tensor& grad_output, const at::Tensor& pooled, const at::Tensor& argmax,
                            at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, int64_t size, double alpha, double beta, double k, bool relu,
                            c10::DeviceType device);

// The forward's operands after all of its checks (the one place they run, for every backend): the input in the
// kernels' layout and the outputs, allocated on the input's device (pooled and argmax empty unless saved). A
// CUDA backend sets its device guard, and touches its device, only after this.
struct Forward {
  Problem pb;
  at::Tensor x, out, pooled, argmax;
  int64_t dim;  // the input's (3 or 4)
  bool save;

  // What the op returns: 3-D inputs drop the batch dimension again.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> result() const;
  // The same problem set up for the channels-last kernels: x copied channels-last, the outputs reallocated so.
  void to_channels_last();
};

Forward prepare_forward(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                        at::IntArrayRef padding, bool ceil_mode, int64_t size, double alpha, double beta, double k,
                        bool relu, bool save_for_backward, c10::DeviceType device);

// The backward's operands after all of its checks, in the argmax's layout, and the gradient allocated (as above).
struct Backward {
  Problem pb;
  at::Tensor grad, pooled, argmax, grad_input;
  int64_t dim;

  at::Tensor result() const;
  // The same problem set up for the channels-last kernels: operands copied channels-last, grad_input so.
  void to_channels_last();
};

Backward prepare_backward(const at::Tensor& grad_output, const at::Tensor& pooled, const at::Tensor& argmax,
                          at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, int64_t size, double alpha, double beta, double k, bool relu,
                          c10::DeviceType device);

}  // namespace cnx::pool_lrn
