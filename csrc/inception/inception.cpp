// The fused Inception op's schema and the checks every backend shares. Kernels: inception_cpu.cpp,
// inception_cuda.cu, and triton_kernels/inception.py (registered from Python as classicnets_ext::inception_triton).
// The backward is a composite of ATen ops registered from Python (_registrations.py): it is the six
// convolutions' backward, which the libraries already do well.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "inception/inception.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/macros.h"

namespace cnx::inception {
namespace {

constexpr const char* kOp = "inception";

// A weight of shape [out, in, k, k] (odd k); returns k.
int64_t check_conv_weight(const char* name, const at::Tensor& w, int64_t in_channels, bool one_by_one) {
  TORCH_CHECK_VALUE(w.dim() == 4, kOp, ": `", name, "` must be a 4-D convolution weight [out, in, kH, kW], got shape ",
                    w.sizes());
  TORCH_CHECK_VALUE(w.size(0) > 0 && w.size(1) > 0, kOp, ": `", name,
                    "` must have at least one output and one input channel, got shape ", w.sizes());
  if (in_channels >= 0)
    TORCH_CHECK_VALUE(w.size(1) == in_channels, kOp, ": `", name, "` expects ", w.size(1),
                      " input channels, but the block's input has ", in_channels, " (shape ", w.sizes(), ")");
  TORCH_CHECK_VALUE(w.size(2) == w.size(3) && w.size(2) % 2 == 1, kOp, ": `", name,
                    "` must have a square, odd kernel (padding is kernel // 2), got shape ", w.sizes());
  if (one_by_one)
    TORCH_CHECK_VALUE(w.size(2) == 1, kOp, ": `", name, "` must be a 1x1 convolution weight, got shape ", w.sizes());
  return w.size(2);
}

void check_bias(const char* name, const at::Tensor& b, int64_t channels) {
  TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == channels, kOp, ": `", name, "` must have shape [", channels,
                    "], got ", b.sizes());
}

void check_like_input(const char* name, const at::Tensor& t, const at::Tensor& input) {
  TORCH_CHECK_TYPE(t.scalar_type() == input.scalar_type(), kOp, ": `", name, "` dtype ", t.scalar_type(),
                   " differs from `input` dtype ", input.scalar_type());
  TORCH_CHECK(t.device() == input.device(), kOp, ": `", name, "` is on ", t.device(), " but `input` is on ",
              input.device());
}

}  // namespace

Forward prepare_forward(const at::Tensor& input, const at::Tensor& weight_1x1, const at::Tensor& bias_1x1,
                        const at::Tensor& weight_3x3, const at::Tensor& bias_3x3, const at::Tensor& weight_5x5,
                        const at::Tensor& bias_5x5, const at::Tensor& weight_pool, const at::Tensor& bias_pool,
                        int64_t ch1x1) {
  TORCH_CHECK_VALUE(input.dim() == 4, kOp, ": `input` must be 4-D (N, C, H, W), got ", input.dim(), " dimensions");
  TORCH_CHECK_TYPE(is_supported_dtype(input.scalar_type()), kOp,
                   ": `input` must be float32, float64, float16 or bfloat16, got ", input.scalar_type());
  TORCH_CHECK_VALUE(input.size(1) > 0 && input.size(2) > 0 && input.size(3) > 0, kOp,
                    ": `input` must have non-zero C, H and W, got shape ", input.sizes());
  const std::pair<const char*, const at::Tensor*> tensors[] = {
      {"weight_1x1", &weight_1x1}, {"bias_1x1", &bias_1x1}, {"weight_3x3", &weight_3x3}, {"bias_3x3", &bias_3x3},
      {"weight_5x5", &weight_5x5}, {"bias_5x5", &bias_5x5}, {"weight_pool", &weight_pool}, {"bias_pool", &bias_pool}};
  for (const auto& [name, t] : tensors) check_like_input(name, *t, input);

  Problem pb{};
  pb.N = input.size(0);
  pb.C = input.size(1);
  pb.H = input.size(2);
  pb.W = input.size(3);
  check_conv_weight("weight_1x1", weight_1x1, pb.C, true);
  check_conv_weight("weight_pool", weight_pool, pb.C, true);
  pb.k3 = check_conv_weight("weight_3x3", weight_3x3, -1, false);
  pb.k5 = check_conv_weight("weight_5x5", weight_5x5, -1, false);
  pb.ch1x1 = ch1x1;
  pb.r3 = weight_3x3.size(1);
  pb.r5 = weight_5x5.size(1);
  pb.c3 = weight_3x3.size(0);
  pb.c5 = weight_5x5.size(0);
  pb.cp = weight_pool.size(0);
  TORCH_CHECK_VALUE(ch1x1 > 0, kOp, ": `ch1x1` must be positive, got ", ch1x1);
  TORCH_CHECK_VALUE(weight_1x1.size(0) == pb.n1(), kOp, ": `weight_1x1` must stack ch1x1 + ch3x3red + ch5x5red = ",
                    ch1x1, " + ", pb.r3, " + ", pb.r5, " = ", pb.n1(), " output channels (ch3x3red and ch5x5red are ",
                    "`weight_3x3`'s and `weight_5x5`'s input channels), got ", weight_1x1.size(0));
  check_bias("bias_1x1", bias_1x1, pb.n1());
  check_bias("bias_3x3", bias_3x3, pb.c3);
  check_bias("bias_5x5", bias_5x5, pb.c5);
  check_bias("bias_pool", bias_pool, pb.cp);

  Forward f;
  f.pb = pb;
  f.x = input.contiguous(at::MemoryFormat::ChannelsLast);
  f.w1 = weight_1x1.reshape({pb.n1(), pb.C}).contiguous();
  f.wp = weight_pool.reshape({pb.cp, pb.C}).contiguous();
  f.b1 = bias_1x1.contiguous();
  f.bp = bias_pool.contiguous();
  f.w3 = weight_3x3;
  f.b3 = bias_3x3.contiguous();
  f.w5 = weight_5x5;
  f.b5 = bias_5x5.contiguous();
  const auto options = input.options().memory_format(at::MemoryFormat::ChannelsLast);
  f.out = at::empty({pb.N, pb.out_channels(), pb.H, pb.W}, options);
  f.red3 = at::empty({pb.N, pb.r3, pb.H, pb.W}, options);
  f.red5 = at::empty({pb.N, pb.r5, pb.H, pb.W}, options);
  return f;
}

at::Tensor spatial_conv(const at::Tensor& reduced, const at::Tensor& weight) {
  const int64_t pad = weight.size(2) / 2;
  return at::convolution(reduced, weight, /*bias=*/{}, /*stride=*/{1, 1}, /*padding=*/{pad, pad},
                         /*dilation=*/{1, 1}, /*transposed=*/false, /*output_padding=*/{0, 0}, /*groups=*/1);
}

}  // namespace cnx::inception

// inception returns (output, reduced_3x3, reduced_5x5), all channels-last: the block's output and the two
// ReLU'd 1x1 reductions, which the backward needs (the 3x3 / 5x5 weights' gradients read them) and which the
// forward computes anyway. weight_1x1 stacks the three 1x1 convolutions that read the input (ch1x1, then
// ch3x3red, then ch5x5red output channels); the reductions' widths are weight_3x3's and weight_5x5's input
// channels. BatchNorm, when the block has it, is folded into the weights and biases by the caller.
TORCH_LIBRARY_FRAGMENT(CNX_OPS, m) {
  m.def("inception(Tensor input, Tensor weight_1x1, Tensor bias_1x1, Tensor weight_3x3, Tensor bias_3x3, "
        "Tensor weight_5x5, Tensor bias_5x5, Tensor weight_pool, Tensor bias_pool, int ch1x1) "
        "-> (Tensor, Tensor, Tensor)");
}
