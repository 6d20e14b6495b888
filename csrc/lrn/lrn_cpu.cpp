// LRN on the CPU: splits the work with at::parallel_for and calls the kernel built for this CPU's
// instruction set (lrn_cpu_kernel.cpp).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "lrn/lrn.h"
#include "lrn/lrn_cpu_kernel.h"

namespace cnx::lrn {
namespace {

CpuProblem problem_of(const Layout& l, int64_t size, double alpha, double beta, double k) {
  const Window w = kernel_window(size, alpha, l.C);
  return {l.N, l.C, l.S, l.channels_last, w.size, w.alpha, beta, k};
}

// Items are column blocks or channel rows; aim for ~32K elements per task so small tensors stay serial.
int64_t grain_of(const CpuProblem& pb, int64_t items) {
  const int64_t per_item = items == 0 ? 1 : std::max<int64_t>(1, pb.N * pb.C * pb.S / items);
  return std::max<int64_t>(1, 32768 / per_item);
}

at::Tensor lrn_cpu(const at::Tensor& input, int64_t size, double alpha, double beta, double k) {
  check_forward_args(input, size, alpha, beta, k, at::kCPU);
  const Layout l = layout_of(input);
  at::Tensor out = at::empty_like(l.input);
  if (out.numel() == 0) return out;
  CpuProblem pb = problem_of(l, size, alpha, beta, k);
  pb.block = direct_column_block(pb, at::get_num_threads());
  const auto kernel = CNX_CPU_DISPATCH(lrn_forward_kernel);
  const int64_t items = cpu_work_items(pb);
  at::parallel_for(0, items, grain_of(pb, items), [&](int64_t begin, int64_t end) {
    kernel(l.input.scalar_type(), l.input.const_data_ptr(), out.mutable_data_ptr(), pb, begin, end);
  });
  return out;
}

at::Tensor lrn_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input, int64_t size, double alpha,
                            double beta, double k) {
  check_backward_args(grad_output, input, size, alpha, beta, k, at::kCPU);
  const Layout l = layout_of(input);
  const at::Tensor grad = to_layout(grad_output, l);
  at::Tensor grad_input = at::empty_like(l.input);
  if (grad_input.numel() == 0) return grad_input;
  CpuProblem pb = problem_of(l, size, alpha, beta, k);
  pb.block = backward_column_block(pb, at::get_num_threads(), l.input.scalar_type() == at::kDouble ? 8 : 4);
  const auto kernel = CNX_CPU_DISPATCH(lrn_backward_kernel);
  const int64_t items = cpu_work_items(pb);
  at::parallel_for(0, items, grain_of(pb, items), [&](int64_t begin, int64_t end) {
    kernel(l.input.scalar_type(), grad.const_data_ptr(), l.input.const_data_ptr(), grad_input.mutable_data_ptr(), pb,
           begin, end);
  });
  return grad_input;
}

}  // namespace
}  // namespace cnx::lrn

TORCH_LIBRARY_IMPL(classicnets_ext, CPU, m) {
  m.impl("lrn", &cnx::lrn::lrn_cpu);
  m.impl("lrn_backward", &cnx::lrn::lrn_backward_cpu);
}
