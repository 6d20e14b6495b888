// The LRN op's schema and the checks every backend shares. Kernels: lrn_cpu.cpp, lrn_cuda.cu, and
// triton_kernels/lrn.py (registered from Python as classicnets_ext::lrn_triton).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "lrn/lrn.h"

#include <cmath>
#include <utility>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/layout.h"
#include "common/macros.h"

namespace cnx::lrn {

void check_settings(const char* op, int64_t size, double alpha, double beta, double k) {
  TORCH_CHECK_VALUE(size > 0, op, ": `size` must be positive, got ", size);
  for (const auto& [name, value] : {std::pair<const char*, double>{"alpha", alpha}, {"beta", beta}, {"k", k}})
    TORCH_CHECK_VALUE(std::isfinite(value), op, ": `", name, "` must be finite, got ", value);
}

void check_forward_args(const at::Tensor& input, int64_t size, double alpha, double beta, double k,
                        c10::DeviceType device) {
  check_device("local_response_norm", "input", input, device);
  TORCH_CHECK_VALUE(input.dim() >= 3, "local_response_norm: expected `input` of 3 or more dimensions (N, C, *), got ",
                    input.dim(), " dimensions");
  TORCH_CHECK_TYPE(is_supported_dtype(input.scalar_type()),
                   "local_response_norm: `input` must be float32, float64, float16 or bfloat16, got ",
                   input.scalar_type());
  check_settings("local_response_norm", size, alpha, beta, k);
}

void check_backward_args(const at::Tensor& grad_output, const at::Tensor& input, int64_t size, double alpha,
                         double beta, double k, c10::DeviceType device) {
  check_forward_args(input, size, alpha, beta, k, device);
  check_device("local_response_norm backward", "grad_output", grad_output, device);
  TORCH_CHECK_VALUE(grad_output.sizes() == input.sizes(), "local_response_norm backward: `grad_output` shape ",
                    grad_output.sizes(), " differs from `input` shape ", input.sizes());
  TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(),
                   "local_response_norm backward: `grad_output` dtype ", grad_output.scalar_type(),
                   " differs from `input` dtype ", input.scalar_type());
  TORCH_CHECK(grad_output.device() == input.device(), "local_response_norm backward: `grad_output` is on ",
              grad_output.device(), " but `input` is on ", input.device());
}

Layout layout_of(const at::Tensor& t) {
  const int64_t N = t.size(0), C = t.size(1);
  const int64_t S = C == 0 || N == 0 ? 0 : t.numel() / (N * C);
  // No elements: nothing runs, and the output keeps the input's strides, as torch's composite answers.
  if (t.numel() == 0) return {t, N, C, S, false};
  // The caller's dense tensor as it is, with torch's strides in its size-1 dimensions: outputs are allocated
  // like l.input.
  if (is_channels_last(t)) return {with_dense_strides(t, true), N, C, S, true};
  if (t.is_contiguous()) return {with_dense_strides(t, false), N, C, S, false};
  // A channels-last view becomes dense channels-last (or, with one channel, contiguous) as in torch.
  const at::Tensor d = is_channels_last_view(t) ? t.contiguous(t.suggest_memory_format()) : t.contiguous();
  return {d, N, C, S, is_channels_last(d)};
}

at::Tensor to_layout(const at::Tensor& t, const Layout& like) {
  // The kernels address (N, C, S) from the layout alone, so strides in size-1 dimensions do not matter.
  if (like.channels_last ? is_channels_last(t) : t.is_contiguous()) return t;
  return at::empty_like(like.input).copy_(t);
}

}  // namespace cnx::lrn

// One schema per op. `lrn_backward` takes the forward's input, not its output: the kernels recompute the
// window sums (cheap, data already in cache) instead of saving a scale tensor, so the forward writes y only.
TORCH_LIBRARY_FRAGMENT(CNX_OPS, m) {
  m.def("lrn(Tensor input, int size, float alpha=1e-4, float beta=0.75, float k=1.0) -> Tensor");
  m.def("lrn_backward(Tensor grad_output, Tensor input, int size, float alpha, float beta, float k) -> Tensor");
}
