// _C.max_pool2d_eager: the common eager call of classicnets_ext.ops.max_pool2d -- a plain tensor, int or pair
// arguments, nothing watching -- run in one C++ call, its autograd node included (why, and when an entry
// declines: common/eager.h).
//
// Why here first: the Python path's cold-cache cost made the channels-last training forward of 8x96x55x55 lose
// to eager F.max_pool2d on AVX2 although our kernel wins. The forward is the kernel's typed redispatch and, when
// a gradient is recorded, a torch::autograd::Function (CppNode) that saves the one-byte argmax and the input's
// size.
//
// The node's backward runs max_pool2d_backward's kernel directly, or, when the backward itself is being
// differentiated (create_graph: grad mode on), dispatches the op, whose Autograd kernel (_autograd/)
// records its own derivative: double backward works as on the Python path.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/utils/pybind.h>

#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "common/eager.h"
#include "maxpool/maxpool.h"

namespace cnx::maxpool {
namespace {

namespace py = pybind11;
using eager::Pair;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Params {
  Pair kernel_size, stride, padding, dilation;
  bool ceil_mode;
};

using ForwardSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                                            at::IntArrayRef, at::IntArrayRef, bool, bool);
using BackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                     at::IntArrayRef, at::IntArrayRef, at::IntArrayRef);

std::tuple<at::Tensor, at::Tensor> run_forward(c10::DispatchKeySet keys, const at::Tensor& input, const Params& p,
                                               bool save_argmax) {
  static const auto op = eager::typed_op<ForwardSignature>("classicnets_ext::max_pool2d");
  const at::AutoDispatchBelowAutograd below_autograd;
  return op.redispatch(keys, input, p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode,
                                 save_argmax);
}

}  // namespace

// Outside the anonymous namespace: its name is the autograd node's (grad_fn.name(): CppNode<...>).
// saved_data keys: the input's size, and the pairs (8 values) then the channels-last flag.
constexpr const char* kInputSize = "input_size";
constexpr const char* kArgs = "args";

struct MaxPool2dFunction : public torch::autograd::Function<MaxPool2dFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const Params& p,
                            c10::DispatchKeySet keys) {
    auto [output, argmax] = run_forward(keys, input, p, /*save_argmax=*/true);
    // The backward gathers through the argmax and never reads the input: only its size is kept.
    ctx->save_for_backward({argmax});
    ctx->saved_data[kInputSize] = input.sizes();
    ctx->saved_data[kArgs] = std::vector<int64_t>{p.kernel_size[0], p.kernel_size[1], p.stride[0], p.stride[1],
                                                  p.padding[0],     p.padding[1],     p.dilation[0], p.dilation[1],
                                                  is_channels_last(input) ? 1 : 0};
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor argmax = ctx->get_saved_variables()[0];
    const std::vector<int64_t> input_size = ctx->saved_data[kInputSize].toIntVector();
    const std::vector<int64_t> a = ctx->saved_data[kArgs].toIntVector();
    const at::IntArrayRef kernel_size(&a[0], 2), stride(&a[2], 2), padding(&a[4], 2), dilation(&a[6], 2);
    const at::Tensor& grad = grad_outputs[0];
    at::Tensor grad_input;
    static const auto backward_op = eager::typed_op<BackwardSignature>("classicnets_ext::max_pool2d_backward");
    const c10::DispatchKeySet keys = eager::backward_keys(grad.key_set() | argmax.key_set());
    if (!keys.empty()) {
      const at::AutoDispatchBelowAutograd below_autograd;
      grad_input = backward_op.redispatch(keys, grad, argmax, input_size, kernel_size, stride, padding, dilation);
    } else {
      grad_input = backward_op.call(grad, argmax, input_size, kernel_size, stride, padding, dilation);
    }
    grad_input = eager::in_input_layout(std::move(grad_input), a[8] != 0);
    return {grad_input, at::Tensor(), at::Tensor()};
  }
};

namespace {

// devices: see eager::input_keys.
py::object max_pool2d_eager(py::handle input, py::handle kernel_size, py::handle stride, py::handle padding,
                            py::handle dilation, py::handle ceil_mode, int64_t devices) {
  Params p;
  if (!eager::int_pair(kernel_size, p.kernel_size) || !eager::int_pair(padding, p.padding) ||
      !eager::int_pair(dilation, p.dilation) || !eager::bool_arg(ceil_mode, p.ceil_mode))
    return py::none();
  if (stride.is_none()) p.stride = p.kernel_size;
  else if (!eager::int_pair(stride, p.stride)) return py::none();
  const c10::DispatchKeySet keys = eager::input_keys(input, devices);
  if (keys.empty()) return py::none();
  const at::Tensor& x = THPVariable_Unpack(input.ptr());
  // torch's rules (ops._pool_args): only a valid call is served, so that the op's own checks pass.
  if (!forward_args_ok(x, p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode)) return py::none();
  return eager::serve(
      x, [&] { return MaxPool2dFunction::apply(x, p, keys); },
      [&] { return std::get<0>(run_forward(keys, x, p, /*save_argmax=*/false)); });
}

}  // namespace

void define_eager(py::module_& m) {
  m.def("max_pool2d_eager", torch::wrap_pybind_function(max_pool2d_eager),
        "ops.max_pool2d's plain eager call (see csrc/maxpool/maxpool_autograd.cpp), or None for any other call.");
}

}  // namespace cnx::maxpool
