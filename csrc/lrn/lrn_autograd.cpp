// _C.lrn_eager: the common eager call of classicnets_ext.ops.local_response_norm -- a plain tensor of 3 or more
// dimensions, an int size, finite float (or int) alpha, beta and k, nothing watching -- run in one C++ call, its
// autograd node included (why, and when it declines: common/eager.h).
//
// The node is the Python LRN Function's twin (_autograd/lrn.py): it saves the input alone -- the backward recomputes
// the window sums from it, less traffic than saving them -- and its backward runs lrn_backward's kernel directly,
// or, when the backward is itself being differentiated (create_graph), dispatches the op, whose Autograd kernel
// records its derivative with respect to the gradient and to the input.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/utils/pybind.h>

#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>
#include <vector>

#include "common/checks.h"
#include "common/eager.h"

namespace cnx::lrn {
namespace {

namespace py = pybind11;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Params {
  int64_t size;
  double alpha, beta, k;
};

using ForwardSignature = at::Tensor(const at::Tensor&, int64_t, double, double, double);
using BackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double, double, double);

at::Tensor run_forward(c10::DispatchKeySet keys, const at::Tensor& input, const Params& p) {
  static const auto op = eager::typed_op<ForwardSignature>("classicnets_ext::lrn");
  const at::AutoDispatchBelowAutograd below_autograd;
  return op.redispatch(keys, input, p.size, p.alpha, p.beta, p.k);
}

}  // namespace

// Outside the anonymous namespace: its name is the autograd node's (grad_fn.name(): CppNode<...>).
constexpr const char* kSize = "size";
constexpr const char* kScalars = "scalars";  // alpha, beta, k

struct LRNFunction : public torch::autograd::Function<LRNFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const Params& p, c10::DispatchKeySet keys) {
    at::Tensor output = run_forward(keys, input, p);
    ctx->save_for_backward({input});
    ctx->saved_data[kSize] = p.size;
    ctx->saved_data[kScalars] = std::vector<double>{p.alpha, p.beta, p.k};
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor input = ctx->get_saved_variables()[0];
    const int64_t size = ctx->saved_data[kSize].toInt();
    const std::vector<double> s = ctx->saved_data[kScalars].toDoubleVector();
    const at::Tensor& grad = grad_outputs[0];
    at::Tensor grad_input;
    static const auto backward_op = eager::typed_op<BackwardSignature>("classicnets_ext::lrn_backward");
    const c10::DispatchKeySet keys = eager::backward_keys(grad.key_set() | input.key_set());
    if (!keys.empty()) {
      const at::AutoDispatchBelowAutograd below_autograd;
      grad_input = backward_op.redispatch(keys, grad, input, size, s[0], s[1], s[2]);
    } else {
      grad_input = backward_op.call(grad, input, size, s[0], s[1], s[2]);
    }
    return {grad_input, at::Tensor(), at::Tensor()};
  }
};

namespace {

// devices: see eager::input_keys (the bits of _backend.cpp_devices("lrn")).
py::object lrn_eager(py::handle input, py::handle size, py::handle alpha, py::handle beta, py::handle k,
                     int64_t devices) {
  Params p;
  if (!eager::int_arg(size, p.size) || p.size < 1 || !eager::finite_arg(alpha, p.alpha) ||
      !eager::finite_arg(beta, p.beta) || !eager::finite_arg(k, p.k))
    return py::none();
  const c10::DispatchKeySet keys = eager::input_keys(input, devices);
  if (keys.empty()) return py::none();
  const at::Tensor& x = THPVariable_Unpack(input.ptr());
  // Only a valid call is served, so that the op's own checks pass (ops.local_response_norm's rules).
  if (x.dim() < 3 || !is_supported_dtype(x.scalar_type()) || eager::autocast_may_cast(x)) return py::none();
  return eager::serve(
      x, [&] { return LRNFunction::apply(x, p, keys); }, [&] { return run_forward(keys, x, p); });
}

}  // namespace

void define_eager(py::module_& m) {
  m.def("lrn_eager", torch::wrap_pybind_function(lrn_eager),
        "ops.local_response_norm's plain eager call (see csrc/lrn/lrn_autograd.cpp), or None for any other call.");
}

}  // namespace cnx::lrn
