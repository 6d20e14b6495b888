#pragma once
// Host-side pieces of the fused ReLU -> max-pool -> LRN ops shared by the CPU and CUDA backends: argument
// checks and the problem. The layout rule is max pooling's (maxpool.h): a 4-D channels-last input is
// answered channels-last -- output, pooled, argmax, gradient -- anything else contiguous.
#include <ATen/core/Tensor.h>

#include "pool_lrn/pool_lrn_math.h"

namespace cnx::pool_lrn {

// Checks the forward's arguments (max_pool2d's with dilation 1, then local_response_norm's) and returns its
// problem, layout not yet set.
Problem check_forward_args(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode, int64_t size, double alpha, double beta,
                           double k, bool relu);

// Checks the backward's arguments against each other and returns its problem, layout not yet set.
Problem check_backward_args(const at::Tensor& grad_output, const at::Tensor& pooled, const at::Tensor& argmax,
                            at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, int64_t size, double alpha, double beta, double k, bool relu);

}  // namespace cnx::pool_lrn
