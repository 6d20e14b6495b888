// linear and its backward's two products on the CPU: checks, splits the weight's rows among threads with
// at::parallel_for, and calls the kernels built for this CPU's instruction set (linear_cpu_kernel.cpp).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "common/checks.h"
#include "common/cpu_dispatch.h"
#include "linear/linear_cpu_kernel.h"

namespace cnx::linear {
namespace {

// The dtypes the kernels read: fp32, and bf16 / fp16 weights (linear and linear_grad_input).
void check_kernel_dtype(const char* op, const char* name, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op, ": `", name,
                   "` must be float32, bfloat16 or float16, got ", dtype);
}

void check_args(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_device("linear", "input", input, at::kCPU);
  check_device("linear", "weight", weight, at::kCPU);
  TORCH_CHECK_VALUE(input.dim() == 2, "linear: expected a 2-D `input` (rows, in_features), got ", input.dim(),
                    " dimensions");
  TORCH_CHECK_VALUE(weight.dim() == 2, "linear: expected a 2-D `weight` (out_features, in_features), got ",
                    weight.dim(), " dimensions");
  const auto dtype = input.scalar_type();
  check_kernel_dtype("linear", "input", dtype);
  // A bf16 / fp16 input may come with an fp32 weight and bias, taken as if cast to its dtype first (rounded to
  // nearest even as they are read): torch.autocast's linear without the copy of the weight.
  const auto params = dtype != at::kFloat && weight.scalar_type() == at::kFloat ? at::kFloat : dtype;
  if (dtype == at::kFloat) {
    TORCH_CHECK_TYPE(weight.scalar_type() == dtype, "linear: `weight` must have `input`'s dtype (", dtype, "), got ",
                     weight.scalar_type());
  } else {
    TORCH_CHECK_TYPE(weight.scalar_type() == params, "linear: `weight` must have `input`'s dtype (", dtype, ", or ",
                     at::kFloat, "), got ", weight.scalar_type());
  }
  TORCH_CHECK_VALUE(input.size(1) == weight.size(1), "linear: `input` has ", input.size(1),
                    " features but `weight` takes ", weight.size(1), " (shapes ", input.sizes(), " and ",
                    weight.sizes(), ")");
  if (bias.has_value()) {
    check_device("linear", "bias", *bias, at::kCPU);
    TORCH_CHECK_TYPE(bias->scalar_type() == params, "linear: `bias` must have `weight`'s dtype (", params,
                     "), got ", bias->scalar_type());
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), "linear: expected `bias` of shape (",
                      weight.size(0), "), got ", bias->sizes());
  }
}

// The least work items (kRowsPerItem weight rows each) a task takes: >= ~1 MB of the weight, or of the weight's
// gradient, so that small layers stay serial. K > 0.
int64_t items_per_task(const CpuProblem& pb) { return std::max<int64_t>(1, (1 << 18) / (kRowsPerItem * pb.K)); }

// run(kernel, w's data) with the kernel of w's dtype: fp32, bf16 or fp16 (the ISA's build of each).
template <typename F32, typename BF16, typename F16, typename Run>
void by_weight_dtype(const at::Tensor& w, F32 f32, BF16 bf16, F16 f16, Run&& run) {
  switch (w.scalar_type()) {
    case at::kBFloat16: return run(bf16, w.const_data_ptr<c10::BFloat16>());
    case at::kHalf: return run(f16, w.const_data_ptr<c10::Half>());
    default: return run(f32, w.const_data_ptr<float>());
  }
}

// In bf16 and fp16 only the weight is read in its dtype (it is nearly all the bytes); the few rows of x and the
// bias are converted to fp32 here, and the fp32 sums rounded once at the end. On a CPU with AVX512-BF16, bf16
// x stays bf16 for the dot-product kernel (its products are exact in fp32 as well). An fp32 weight with a
// bf16 / fp16 input is rounded to the input's dtype as the kernel reads it, the bias here.
at::Tensor linear_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_args(input, weight, bias);
  const bool rounded = input.scalar_type() != weight.scalar_type();
  const CpuProblem pb{input.size(0), weight.size(0), weight.size(1)};
  if (pb.M * pb.N == 0) return at::empty({pb.M, pb.N}, input.options());
  if (pb.K == 0) {
    at::Tensor out = at::empty({pb.M, pb.N}, input.options());
    return bias.has_value() ? out.copy_(bias->unsqueeze(0)) : out.zero_();
  }
  const bool bf16_dot = input.scalar_type() == at::kBFloat16 && !rounded && cnx::cpu::has_avx512_bf16();
  const at::Tensor x = (bf16_dot ? input : input.to(at::kFloat)).contiguous(), w = weight.contiguous();
  const at::Tensor b = !bias.has_value() ? at::Tensor()
                       : (rounded ? bias->to(input.scalar_type()) : *bias).to(at::kFloat).contiguous();
  at::Tensor out = at::empty({pb.M, pb.N}, input.options().dtype(at::kFloat));
  const float* bias_ptr = b.defined() ? b.const_data_ptr<float>() : nullptr;
  const auto run = [&](auto kernel, const auto* x_ptr, const auto* w_ptr) {
    at::parallel_for(0, cpu_work_items(pb), items_per_task(pb), [&](int64_t begin, int64_t end) {
      kernel(x_ptr, w_ptr, bias_ptr, out.mutable_data_ptr<float>(), pb, begin, end);
    });
  };
  if (rounded) {
    run(input.scalar_type() == at::kBFloat16 ? CNX_CPU_DISPATCH(linear_forward_fp32_as_bf16_kernel)
                                             : CNX_CPU_DISPATCH(linear_forward_fp32_as_fp16_kernel),
        x.const_data_ptr<float>(), w.const_data_ptr<float>());
  } else if (bf16_dot) {
    run(CNX_CPU_DISPATCH(linear_forward_bf16_dot_kernel), x.const_data_ptr<c10::BFloat16>(),
        w.const_data_ptr<c10::BFloat16>());
  } else {
    by_weight_dtype(w, CNX_CPU_DISPATCH(linear_forward_kernel), CNX_CPU_DISPATCH(linear_forward_bf16_kernel),
                    CNX_CPU_DISPATCH(linear_forward_fp16_kernel),
                    [&](auto kernel, const auto* w_ptr) { run(kernel, x.const_data_ptr<float>(), w_ptr); });
  }
  return out.to(input.scalar_type());
}

// Two 2-D CPU operands of one dtype: float32, or with `reduced` bfloat16 or float16 too.
void check_grad_args(const char* op, const at::Tensor& grad, const char* other_name, const at::Tensor& other,
                     bool reduced) {
  check_device(op, "grad_output", grad, at::kCPU);
  check_device(op, other_name, other, at::kCPU);
  TORCH_CHECK_VALUE(grad.dim() == 2 && other.dim() == 2, op, ": expected 2-D `grad_output` and `", other_name,
                    "`, got ", grad.dim(), " and ", other.dim(), " dimensions");
  const auto dtype = grad.scalar_type();
  if (reduced) {
    check_kernel_dtype(op, "grad_output", dtype);
  } else {
    TORCH_CHECK_TYPE(dtype == at::kFloat, op, ": `grad_output` must be float32, got ", dtype);
  }
  TORCH_CHECK_TYPE(other.scalar_type() == dtype, op, ": `", other_name, "` must have `grad_output`'s dtype (", dtype,
                   "), got ", other.scalar_type());
}

// grad_output (M, N) @ weight (N, K): the weight's rows are cut into one contiguous share per thread, each
// streamed into its own (M, K) partial sum, and the partials are added in share order: the result does not
// depend on which thread ran which share. In bf16 and fp16, as in the forward, the weight is read in its dtype
// and the few rows of grad_output and the sums are fp32, rounded once.
at::Tensor linear_grad_input_cpu(const at::Tensor& grad, const at::Tensor& weight) {
  constexpr const char* op = "linear_grad_input";
  check_grad_args(op, grad, "weight", weight, /*reduced=*/true);
  TORCH_CHECK_VALUE(grad.size(1) == weight.size(0), op, ": `grad_output` has ", grad.size(1),
                    " features but `weight` has ", weight.size(0), " rows");
  const CpuProblem pb{grad.size(0), weight.size(0), weight.size(1)};
  if (pb.M * pb.K == 0 || pb.N == 0) return at::zeros({pb.M, pb.K}, grad.options());
  const at::Tensor g = grad.to(at::kFloat).contiguous(), w = weight.contiguous();
  const int64_t items = cpu_work_items(pb);
  const int64_t shares = std::clamp<int64_t>(items / items_per_task(pb), 1, at::get_num_threads());
  const at::Tensor partials = at::zeros({shares, pb.M, pb.K}, g.options());
  float* partial = partials.mutable_data_ptr<float>();
  const auto run = [&](auto kernel, const auto* w_ptr) {
    at::parallel_for(0, shares, 1, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s)
        kernel(g.const_data_ptr<float>(), w_ptr, partial + s * pb.M * pb.K, pb, items * s / shares,
               items * (s + 1) / shares);
    });
  };
  by_weight_dtype(w, CNX_CPU_DISPATCH(linear_grad_input_kernel), CNX_CPU_DISPATCH(linear_grad_input_bf16_kernel),
                  CNX_CPU_DISPATCH(linear_grad_input_fp16_kernel), run);
  return (shares == 1 ? partials[0] : partials.sum(0)).to(grad.scalar_type());
}

// grad_output.T (N, M) @ input (M, K), written row block by row block. fp32 only: in bf16 at::mm writes the
// gradient as fast as its fresh pages can be touched, which is all this product's time (AlexNet's FC6, batch 8:
// 38 ms, empty + fill_ 34); in fp16 it is 8x slower, but so are fp16 convolutions on the CPU (VGG-16's
// inference 15x bf16's), which leave fp16 training there out of reach anyway.
at::Tensor linear_grad_weight_cpu(const at::Tensor& grad, const at::Tensor& input) {
  constexpr const char* op = "linear_grad_weight";
  check_grad_args(op, grad, "input", input, /*reduced=*/false);
  TORCH_CHECK_VALUE(grad.size(0) == input.size(0), op, ": `grad_output` has ", grad.size(0),
                    " rows but `input` has ", input.size(0));
  const CpuProblem pb{grad.size(0), grad.size(1), input.size(1)};
  if (pb.M == 0) return at::zeros({pb.N, pb.K}, grad.options());
  at::Tensor out = at::empty({pb.N, pb.K}, grad.options());
  if (out.numel() == 0) return out;
  const at::Tensor g = grad.contiguous(), x = input.contiguous();
  const auto kernel = CNX_CPU_DISPATCH(linear_grad_weight_kernel);
  at::parallel_for(0, cpu_work_items(pb), items_per_task(pb), [&](int64_t begin, int64_t end) {
    kernel(g.const_data_ptr<float>(), x.const_data_ptr<float>(), out.mutable_data_ptr<float>(), pb, begin, end);
  });
  return out;
}

}  // namespace
}  // namespace cnx::linear

TORCH_LIBRARY_IMPL(classicnets_ext, CPU, m) {
  m.impl("linear", &cnx::linear::linear_cpu);
  m.impl("linear_grad_input", &cnx::linear::linear_grad_input_cpu);
  m.impl("linear_grad_weight", &cnx::linear::linear_grad_weight_cpu);
}
