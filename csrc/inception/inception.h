#pragma once
// Host-side pieces of the fused Inception op shared by the CPU and CUDA backends: argument checks, the
// channels-last operands and the outputs. See inception_math.h for the formula.
#include <ATen/core/Tensor.h>

#include <tuple>

#include "inception/inception_math.h"

namespace cnx::inception {

// The forward's operands after the checks. Everything is channels-last; the weights are viewed as the GEMM
// operands the kernels need. A CUDA caller sets its device guard first.
struct Forward {
  Problem pb;
  at::Tensor x;               // [N, C, H, W] channels-last
  at::Tensor w1, wp;          // [n1, C] and [cp, C]: the 1x1 weights as matrices (rows = output channels)
  at::Tensor b1, bp;          // [n1], [cp]
  at::Tensor w3, b3, w5, b5;  // the spatial convolutions' weights, as given
  at::Tensor out, red3, red5; // outputs, channels-last

  std::tuple<at::Tensor, at::Tensor, at::Tensor> result() const { return {out, red3, red5}; }
};

Forward prepare_forward(const at::Tensor& input, const at::Tensor& weight_1x1, const at::Tensor& bias_1x1,
                        const at::Tensor& weight_3x3, const at::Tensor& bias_3x3, const at::Tensor& weight_5x5,
                        const at::Tensor& bias_5x5, const at::Tensor& weight_pool, const at::Tensor& bias_pool,
                        int64_t ch1x1);

// The 3x3 / 5x5 branch's convolution without bias (the caller's epilogue adds it with the ReLU while copying
// into the output slice): the library convolution, cuDNN or oneDNN, on the channels-last reduction.
at::Tensor spatial_conv(const at::Tensor& reduced, const at::Tensor& weight);

// The CPU kernel's fp32 GEMMs with weights packed once for oneDNN, for the calls on this thread whose weight_1x1 and
// weight_pool are `source_1x1` and `source_pool` themselves (the same tensors, not equal ones). The packs are
// mkldnn::_reorder_linear_weight of the 2-D weights. The caller owns their validity: nn.Inception packs the folded
// weights of its fold cache once, so they are rebuilt exactly when the fold is, and sets them around its calls
// (classicnets_ext._inception); every other call packs per tile inside oneDNN, as before. Undefined tensors
// clear them.
void set_cpu_prepacked(const at::Tensor& source_1x1, const at::Tensor& packed_1x1, const at::Tensor& source_pool,
                       const at::Tensor& packed_pool);

}  // namespace cnx::inception
