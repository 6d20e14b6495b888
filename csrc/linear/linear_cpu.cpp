// linear on the CPU: checks, splits the output features among threads with at::parallel_for, and calls the
// kernel built for this CPU's instruction set (linear_cpu_kernel.cpp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>

#include "common/checks.h"
#include "linear/linear_cpu_kernel.h"

namespace cnx::linear {
namespace {

void check_args(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_device("linear", "input", input, at::kCPU);
  check_device("linear", "weight", weight, at::kCPU);
  TORCH_CHECK_VALUE(input.dim() == 2, "linear: expected a 2-D `input` (rows, in_features), got ", input.dim(),
                    " dimensions");
  TORCH_CHECK_VALUE(weight.dim() == 2, "linear: expected a 2-D `weight` (out_features, in_features), got ",
                    weight.dim(), " dimensions");
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat, "linear: `input` must be float32, got ", input.scalar_type());
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kFloat, "linear: `weight` must be float32, got ",
                   weight.scalar_type());
  TORCH_CHECK_VALUE(input.size(1) == weight.size(1), "linear: `input` has ", input.size(1),
                    " features but `weight` takes ", weight.size(1), " (shapes ", input.sizes(), " and ",
                    weight.sizes(), ")");
  if (bias.has_value()) {
    check_device("linear", "bias", *bias, at::kCPU);
    TORCH_CHECK_TYPE(bias->scalar_type() == at::kFloat, "linear: `bias` must be float32, got ", bias->scalar_type());
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), "linear: expected `bias` of shape (",
                      weight.size(0), "), got ", bias->sizes());
  }
}

at::Tensor linear_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_args(input, weight, bias);
  const CpuProblem pb{input.size(0), weight.size(0), weight.size(1)};
  at::Tensor out = at::empty({pb.M, pb.N}, input.options());
  if (out.numel() == 0) return out;
  if (pb.K == 0) return bias.has_value() ? out.copy_(bias->unsqueeze(0)) : out.zero_();
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const auto kernel = CNX_CPU_DISPATCH(linear_forward_kernel);
  const float* bias_ptr = b.defined() ? b.const_data_ptr<float>() : nullptr;
  // One item is kRowsPerItem weight rows; a task gets >= ~1 MB of weights, so small layers stay serial.
  const int64_t grain = std::max<int64_t>(1, (1 << 18) / (kRowsPerItem * pb.K));
  at::parallel_for(0, cpu_work_items(pb), grain, [&](int64_t begin, int64_t end) {
    kernel(x.const_data_ptr<float>(), w.const_data_ptr<float>(), bias_ptr, out.mutable_data_ptr<float>(), pb, begin,
           end);
  });
  return out;
}

}  // namespace
}  // namespace cnx::linear

TORCH_LIBRARY_IMPL(classicnets_ext, CPU, m) { m.impl("linear", &cnx::linear::linear_cpu); }
