// _C.max_pool2d_eager: the common eager call of classicnets_ext.ops.max_pool2d -- a plain tensor, int or pair
// arguments, nothing watching -- run in one C++ call, its autograd node included.
//
// Why: the Python path (argument rules, backend choice, our autograd.Function with its setup_context) costs
// ~0.1-0.2 ms per call when the caches are cold, as they are between the layers of a network: that made the
// channels-last training forward of 8x96x55x55 lose to eager F.max_pool2d on AVX2 although our kernel wins.
// Here the forward is the kernel's typed redispatch and, when a gradient is recorded, a torch::autograd::
// Function (CppNode) that saves the one-byte argmax and the input's size.
//
// The entry answers None -- and ops.max_pool2d takes its Python path, which raises torch's errors and knows
// every other case -- unless every argument has its plain form and is valid, and the call would reach our
// CPU/CUDA kernel with nothing in between (common/direct.h), no __torch_function__ mode, no jit trace, no
// forward-mode tangent on the input (the Python Function has the jvp). torch.compile never gets here: the
// Python side tests torch.compiler.is_compiling() first.
//
// The node's backward runs max_pool2d_backward's kernel directly, or, when the backward itself is being
// differentiated (create_graph: grad mode on), dispatches the op, whose Autograd kernel (_autograd.py)
// records its own derivative: double backward works as on the Python path.
#include <torch/extension.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <array>
#include <cstdint>
#include <tuple>
#include <vector>

#include "common/direct.h"
#include "maxpool/maxpool.h"

namespace cnx::maxpool {
namespace {

namespace py = pybind11;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Pair = std::array<int64_t, 2>;

struct Params {
  Pair kernel_size, stride, padding, dilation;
  bool ceil_mode;
};

using ForwardSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                                            at::IntArrayRef, at::IntArrayRef, bool, bool);
using BackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                     at::IntArrayRef, at::IntArrayRef, at::IntArrayRef);

template <typename Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

const c10::TypedOperatorHandle<ForwardSignature>& forward_op() {
  static const auto op = typed_op<ForwardSignature>("classicnets_ext::max_pool2d");
  return op;
}

const c10::TypedOperatorHandle<BackwardSignature>& backward_op() {
  static const auto op = typed_op<BackwardSignature>("classicnets_ext::max_pool2d_backward");
  return op;
}

std::tuple<at::Tensor, at::Tensor> run_forward(c10::DispatchKeySet keys, const at::Tensor& input, const Params& p,
                                               bool save_argmax) {
  const at::AutoDispatchBelowAutograd below_autograd;
  return forward_op().redispatch(keys, input, p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode,
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
    const c10::DispatchKeySet keys =
        at::GradMode::is_enabled() ? c10::DispatchKeySet() : backend_below_autograd(grad.key_set() | argmax.key_set());
    if (!keys.empty()) {
      const at::AutoDispatchBelowAutograd below_autograd;
      grad_input = backward_op().redispatch(keys, grad, argmax, input_size, kernel_size, stride, padding, dilation);
    } else {
      grad_input = backward_op().call(grad, argmax, input_size, kernel_size, stride, padding, dilation);
    }
    // The gradient in the input's layout, as torch's: the backward takes the layout from the argmax, which
    // cannot show it when the output's is ambiguous (a channels-last input pooled to 1x1). Not for a vmap
    // wrapper (autograd.grad's is_grads_batched, torch.func), which raises on a channels-last query.
    static const c10::DispatchKeySet batched{c10::DispatchKey::Batched, c10::DispatchKey::FuncTorchBatched,
                                             c10::DispatchKey::BatchedNestedTensor,
                                             c10::DispatchKey::FuncTorchGradWrapper};
    if (a[8] && !grad_input.key_set().has_any(batched) && !grad_input.is_contiguous(at::MemoryFormat::ChannelsLast))
      grad_input = grad_input.contiguous(at::MemoryFormat::ChannelsLast);
    return {grad_input, at::Tensor(), at::Tensor()};
  }
};

namespace {

// An int (not a bool) or a tuple / list of two: torch's int-or-pair argument in its plain forms.
bool int_pair(py::handle h, Pair& out) {
  PyObject* o = h.ptr();
  const auto as_int = [](PyObject* v, int64_t& x) {
    if (!PyLong_CheckExact(v)) return false;
    int overflow = 0;
    x = PyLong_AsLongLongAndOverflow(v, &overflow);
    return overflow == 0;
  };
  if (PyLong_CheckExact(o)) {
    if (!as_int(o, out[0])) return false;
    out[1] = out[0];
    return true;
  }
  if ((PyTuple_CheckExact(o) || PyList_CheckExact(o)) && PySequence_Fast_GET_SIZE(o) == 2)
    return as_int(PySequence_Fast_GET_ITEM(o, 0), out[0]) && as_int(PySequence_Fast_GET_ITEM(o, 1), out[1]);
  return false;
}

// devices: bit 0, CPU tensors take the C++ kernels under the backend setting; bit 1, CUDA tensors do.
py::object max_pool2d_eager(py::handle input, py::handle kernel_size, py::handle stride, py::handle padding,
                            py::handle dilation, py::handle ceil_mode, int64_t devices) {
  // A Tensor or a Parameter; not a subclass (fake, functional, __torch_function__...) nor an fx Proxy.
  if (!THPVariable_CheckExact(input.ptr())) return py::none();
  Params p;
  if (!int_pair(kernel_size, p.kernel_size) || !int_pair(padding, p.padding) || !int_pair(dilation, p.dilation))
    return py::none();
  if (stride.is_none()) p.stride = p.kernel_size;
  else if (!int_pair(stride, p.stride)) return py::none();
  if (ceil_mode.ptr() != Py_True && ceil_mode.ptr() != Py_False) return py::none();
  p.ceil_mode = ceil_mode.ptr() == Py_True;
  if (at::impl::torch_function_mode_enabled() || torch::jit::tracer::isTracing()) return py::none();
  const at::Tensor& x = THPVariable_Unpack(input.ptr());
  // torch's rules (ops._pool_args): only a valid call is served, so that the op's own checks pass.
  if (!forward_args_ok(x, p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode)) return py::none();
  const c10::DispatchKeySet keys = backend_below_autograd(x.key_set());
  if (keys.empty()) return py::none();
  const int64_t device_bit = keys.highestBackendKey() == c10::BackendComponent::CPUBit ? 1 : 2;
  if (!(devices & device_bit) || x._fw_grad(/*level=*/0).defined()) return py::none();
  at::Tensor output;
  {
    const py::gil_scoped_release no_gil;
    if (at::GradMode::is_enabled() && x.requires_grad()) output = MaxPool2dFunction::apply(x, p, keys);
    else output = std::get<0>(run_forward(keys, x, p, /*save_argmax=*/false));
  }
  return py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(output)));
}

}  // namespace

void define_eager(py::module_& m) {
  m.def("max_pool2d_eager", torch::wrap_pybind_function(max_pool2d_eager),
        "ops.max_pool2d's plain eager call (see csrc/maxpool/maxpool_autograd.cpp), or None for any other call.");
}

}  // namespace cnx::maxpool
