#pragma once
// What the one-call eager entries share (_C.lrn_eager in lrn_autograd.cpp, _C.max_pool2d_eager in
// maxpool_autograd.cpp, _C.max_pool2d_lrn_eager in pool_lrn_autograd.cpp): reading Python arguments in their plain
// forms, deciding whether a call may skip the Python path, running it, and the backward's dispatch choice.
//
// Why the entries exist: the Python path of an op (argument rules, backend choice, our autograd.Function with
// its setup_context) costs ~0.1-0.2 ms per call when the caches are cold, as they are between the layers of a
// network -- about a third of the fused pool -> LRN's training forward on AlexNet's 8x256x27x27. An entry
// answers None, and the Python path serves the call (raising torch's errors, knowing every other case), unless
// every argument has its plain form and is valid.
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/utils/pybind.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <array>
#include <cmath>
#include <cstdint>

#include "common/direct.h"

namespace cnx::eager {

namespace py = pybind11;
using Pair = std::array<int64_t, 2>;

template <typename Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// A Python int (not a bool) that fits in 64 bits.
inline bool int_arg(py::handle h, int64_t& out) {
  if (!PyLong_CheckExact(h.ptr())) return false;
  int overflow = 0;
  out = PyLong_AsLongLongAndOverflow(h.ptr(), &overflow);
  return overflow == 0;
}

// An int or a tuple / list of two: torch's int-or-pair argument in its plain forms.
inline bool int_pair(py::handle h, Pair& out) {
  PyObject* o = h.ptr();
  if (PyLong_CheckExact(o)) {
    if (!int_arg(h, out[0])) return false;
    out[1] = out[0];
    return true;
  }
  if ((PyTuple_CheckExact(o) || PyList_CheckExact(o)) && PySequence_Fast_GET_SIZE(o) == 2)
    return int_arg(PySequence_Fast_GET_ITEM(o, 0), out[0]) && int_arg(PySequence_Fast_GET_ITEM(o, 1), out[1]);
  return false;
}

inline bool bool_arg(py::handle h, bool& out) {
  if (h.ptr() != Py_True && h.ptr() != Py_False) return false;
  out = h.ptr() == Py_True;
  return true;
}

// A finite Python float, or an int that converts exactly (k=2): the scalars our kernels take. A tensor (a
// learned alpha), NaN or inf take the Python path, which runs torch's composite for them.
inline bool finite_arg(py::handle h, double& out) {
  if (PyFloat_CheckExact(h.ptr())) {
    out = PyFloat_AS_DOUBLE(h.ptr());
  } else {
    int64_t i;
    if (!int_arg(h, i) || i > (int64_t(1) << 53) || i < -(int64_t(1) << 53)) return false;
    out = static_cast<double>(i);
  }
  return std::isfinite(out);
}

// The backend keys at which a plain eager call with this input runs our kernel directly, or an empty set where
// the Python path must serve it: `input` is not a Tensor or Parameter (a subclass, an fx Proxy), a
// __torch_function__ mode or a jit trace is active, the dispatcher would run anything before our kernel
// (common/direct.h), the input's device is not in `devices` (bit 0: CPU tensors take our C++ kernels under the
// backend setting; bit 1: CUDA tensors do), or the input carries a forward-mode tangent (the Python Functions
// have the jvp). torch.compile never gets here: the Python side tests torch.compiler.is_compiling() first.
inline c10::DispatchKeySet input_keys(py::handle input, int64_t devices) {
  if (!THPVariable_CheckExact(input.ptr())) return {};
  if (at::impl::torch_function_mode_enabled() || torch::jit::tracer::isTracing()) return {};
  const at::Tensor& x = THPVariable_Unpack(input.ptr());
  const c10::DispatchKeySet keys = backend_below_autograd(x.key_set());
  if (keys.empty()) return {};
  const int64_t device_bit = keys.highestBackendKey() == c10::BackendComponent::CPUBit ? 1 : 2;
  if (!(devices & device_bit) || x._fw_grad(/*level=*/0).defined()) return {};
  return keys;
}

// Under torch.autocast, ops whose torch counterpart changes a reduced-precision dtype (F.local_response_norm
// answers fp32) take the Python path, which knows each op's rule.
inline bool autocast_may_cast(const at::Tensor& x) {
  const c10::ScalarType t = x.scalar_type();
  return (t == at::kHalf || t == at::kBFloat16) && at::autocast::is_autocast_enabled(x.device().type());
}

// The keys for a node's backward to run a kernel directly, or an empty set where it must dispatch the op: when
// the backward is itself being differentiated (create_graph: grad mode on), the op's Autograd kernel
// (_autograd/) records its derivative.
inline c10::DispatchKeySet backward_keys(c10::DispatchKeySet tensors) {
  return at::GradMode::is_enabled() ? c10::DispatchKeySet() : backend_below_autograd(tensors);
}

// The gradient in the input's layout, as torch's: a backward takes the layout from the argmax, which cannot show
// it when the output's is ambiguous (a channels-last input pooled to 1x1). Not for a vmap wrapper (autograd.grad's
// is_grads_batched, torch.func), which raises on a channels-last query.
inline at::Tensor in_input_layout(at::Tensor grad_input, bool channels_last) {
  static const c10::DispatchKeySet batched{c10::DispatchKey::Batched, c10::DispatchKey::FuncTorchBatched,
                                           c10::DispatchKey::BatchedNestedTensor,
                                           c10::DispatchKey::FuncTorchGradWrapper};
  if (channels_last && !grad_input.key_set().has_any(batched) &&
      !grad_input.is_contiguous(at::MemoryFormat::ChannelsLast))
    return grad_input.contiguous(at::MemoryFormat::ChannelsLast);
  return grad_input;
}

// An accepted call's output as a Python tensor, the GIL released while it runs: `with_node()` (the op's autograd
// Function applied) when a gradient is recorded for `x`, else `without_node()` (the kernel alone).
template <typename WithNode, typename WithoutNode>
py::object serve(const at::Tensor& x, WithNode with_node, WithoutNode without_node) {
  at::Tensor output;
  {
    const py::gil_scoped_release no_gil;
    output = at::GradMode::is_enabled() && x.requires_grad() ? with_node() : without_node();
  }
  return py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(output)));
}

}  // namespace cnx::eager
