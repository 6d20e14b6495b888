// _C.max_pool2d_lrn_eager: the common eager call of classicnets_ext.ops.max_pool2d_lrn -- a plain tensor, int or
// pair pooling arguments, an int size, finite float (or int) alpha, beta and k, a bool relu, nothing watching --
// run in one C++ call, its autograd node included (why, and when it declines: common/eager.h).
//
// The node is the Python MaxPool2dLRN Function's twin (_autograd/pool_lrn.py): the forward saves the pooled values
// (LRN's input) and the one-byte argmax, and returns them as outputs beside y -- the argmax non-differentiable, the
// pooled values differentiable, so that a double backward reaches x through them. Its backward runs
// max_pool2d_lrn_backward's kernel directly; when the backward is itself being differentiated (create_graph) it
// dispatches the op, whose Autograd kernel records its derivative; a gradient reaching the pooled values (only a
// double backward sends one) is added through LRN's backward and max-pool's gather, dispatched.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/utils/pybind.h>

#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "common/eager.h"
#include "maxpool/maxpool.h"

namespace cnx::pool_lrn {
namespace {

namespace py = pybind11;
using eager::Pair;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Params {
  Pair kernel_size, stride, padding;
  bool ceil_mode, relu;
  int64_t size;
  double alpha, beta, k;
};

using ForwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, at::IntArrayRef,
                                                                        at::IntArrayRef, at::IntArrayRef, bool,
                                                                        int64_t, double, double, double, bool, bool);
using BackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                     at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t, double, double,
                                     double, bool);
using LRNBackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double, double, double);
using PoolBackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef, at::IntArrayRef);

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_forward(c10::DispatchKeySet keys, const at::Tensor& input,
                                                           const Params& p, bool save) {
  static const auto op = eager::typed_op<ForwardSignature>("classicnets_ext::max_pool2d_lrn");
  const at::AutoDispatchBelowAutograd below_autograd;
  return op.redispatch(keys, input, p.kernel_size, p.stride, p.padding, p.ceil_mode, p.size, p.alpha,
                                 p.beta, p.k, p.relu, save);
}

// The double backward's term for a gradient `grad_pooled` reaching the pooled values, plus the usual one for
// grad_output (if defined): maxpool_backward(relu_mask(grad_pooled + lrn_backward(grad_output, pooled))), each
// op dispatched so that its own derivative is recorded -- as the Python Function's backward does it.
at::Tensor backward_through_pooled(const at::Tensor& grad_output, const at::Tensor& grad_pooled,
                                   const at::Tensor& pooled, const at::Tensor& argmax, at::IntArrayRef input_size,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                   int64_t size, double alpha, double beta, double k, bool relu) {
  static const auto lrn_backward = eager::typed_op<LRNBackwardSignature>("classicnets_ext::lrn_backward");
  static const auto pool_backward = eager::typed_op<PoolBackwardSignature>("classicnets_ext::max_pool2d_backward");
  at::Tensor grad = grad_pooled;
  if (grad_output.defined()) {
    const bool unbatched = pooled.dim() == 3;  // LRN reads (N, C, *): a (C, H, W) tensor is one sample
    at::Tensor term = lrn_backward.call(unbatched ? grad_output.unsqueeze(0) : grad_output,
                                        unbatched ? pooled.unsqueeze(0) : pooled, size, alpha, beta, k);
    grad = grad + (unbatched ? term.squeeze(0) : term);
  }
  if (relu) grad = grad.masked_fill(pooled <= 0, 0);  // torch's threshold_backward: NaN passes
  const int64_t no_dilation[] = {1, 1};
  return pool_backward.call(grad, argmax, input_size, kernel_size, stride, padding, no_dilation);
}

}  // namespace

// Outside the anonymous namespace: its name is the autograd node's (grad_fn.name(): CppNode<...>).
// saved_data keys: the input's size; the pairs (6 values), size, relu and the channels-last flag; alpha, beta, k.
constexpr const char* kInputSize = "input_size";
constexpr const char* kInts = "ints";
constexpr const char* kScalars = "scalars";

struct MaxPool2dLRNFunction : public torch::autograd::Function<MaxPool2dLRNFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const Params& p,
                               c10::DispatchKeySet keys) {
    auto [output, pooled, argmax] = run_forward(keys, input, p, /*save=*/true);
    ctx->mark_non_differentiable({argmax});
    // The backward needs neither x nor y: LRN's input (the pooled values) and the argmax.
    ctx->save_for_backward({pooled, argmax});
    ctx->saved_data[kInputSize] = input.sizes();
    ctx->saved_data[kInts] = std::vector<int64_t>{p.kernel_size[0], p.kernel_size[1], p.stride[0], p.stride[1],
                                                  p.padding[0],     p.padding[1],     p.size,      p.relu ? 1 : 0,
                                                  maxpool::is_channels_last(input) ? 1 : 0};
    ctx->saved_data[kScalars] = std::vector<double>{p.alpha, p.beta, p.k};
    ctx->set_materialize_grads(false);
    return {output, pooled, argmax};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor& grad = grad_outputs[0];
    const at::Tensor& grad_pooled = grad_outputs[1];
    if (!grad.defined() && !grad_pooled.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &pooled = saved[0], &argmax = saved[1];
    const std::vector<int64_t> input_size = ctx->saved_data[kInputSize].toIntVector();
    const std::vector<int64_t> a = ctx->saved_data[kInts].toIntVector();
    const std::vector<double> s = ctx->saved_data[kScalars].toDoubleVector();
    const at::IntArrayRef kernel_size(&a[0], 2), stride(&a[2], 2), padding(&a[4], 2);
    const int64_t size = a[6];
    const bool relu = a[7] != 0;
    at::Tensor grad_input;
    if (grad_pooled.defined()) {
      grad_input = backward_through_pooled(grad, grad_pooled, pooled, argmax, input_size, kernel_size, stride,
                                           padding, size, s[0], s[1], s[2], relu);
    } else {
      static const auto backward_op = eager::typed_op<BackwardSignature>("classicnets_ext::max_pool2d_lrn_backward");
      const c10::DispatchKeySet keys = eager::backward_keys(grad.key_set() | pooled.key_set() | argmax.key_set());
      if (!keys.empty()) {
        const at::AutoDispatchBelowAutograd below_autograd;
        grad_input = backward_op.redispatch(keys, grad, pooled, argmax, input_size, kernel_size, stride, padding,
                                            size, s[0], s[1], s[2], relu);
      } else {
        grad_input = backward_op.call(grad, pooled, argmax, input_size, kernel_size, stride, padding, size, s[0],
                                      s[1], s[2], relu);
      }
    }
    return {eager::in_input_layout(std::move(grad_input), a[8] != 0), at::Tensor(), at::Tensor()};
  }
};

namespace {

// devices: see eager::input_keys (the bits of _backend.cpp_devices("max_pool2d_lrn")).
py::object max_pool2d_lrn_eager(py::handle input, py::handle kernel_size, py::handle stride, py::handle padding,
                                py::handle ceil_mode, py::handle size, py::handle alpha, py::handle beta, py::handle k,
                                py::handle relu, int64_t devices) {
  Params p;
  if (!eager::int_pair(kernel_size, p.kernel_size) || !eager::int_pair(padding, p.padding) ||
      !eager::bool_arg(ceil_mode, p.ceil_mode) || !eager::bool_arg(relu, p.relu) || !eager::int_arg(size, p.size) ||
      p.size < 1 || !eager::finite_arg(alpha, p.alpha) || !eager::finite_arg(beta, p.beta) ||
      !eager::finite_arg(k, p.k))
    return py::none();
  if (stride.is_none()) p.stride = p.kernel_size;
  else if (!eager::int_pair(stride, p.stride)) return py::none();
  const c10::DispatchKeySet keys = eager::input_keys(input, devices);
  if (keys.empty()) return py::none();
  const at::Tensor& x = THPVariable_Unpack(input.ptr());
  // Only a valid call is served, so that the op's own checks pass (ops._pool_args: torch's rules).
  static const int64_t no_dilation[] = {1, 1};
  if (eager::autocast_may_cast(x) ||
      !maxpool::forward_args_ok(x, p.kernel_size, p.stride, p.padding, no_dilation, p.ceil_mode))
    return py::none();
  return eager::serve(
      x, [&] { return MaxPool2dLRNFunction::apply(x, p, keys)[0]; },
      [&] { return std::get<0>(run_forward(keys, x, p, /*save=*/false)); });
}

}  // namespace

void define_eager(py::module_& m) {
  m.def("max_pool2d_lrn_eager", torch::wrap_pybind_function(max_pool2d_lrn_eager),
        "ops.max_pool2d_lrn's plain eager call (see csrc/pool_lrn/pool_lrn_autograd.cpp), or None for any other "
        "call.");
}

}  // namespace cnx::pool_lrn
