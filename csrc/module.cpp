// classicnets_ext._C: importing it runs the static op registrations (TORCH_LIBRARY_FRAGMENT in each
// <op>.cpp). It exports how the library was built and, for each op, a "direct" entry: the op's CPU or
// CUDA kernel reached from Python without the Python -> IValue boxing of a torch.ops call.
//
// Why: below autograd, a torch.ops call of a small max-pool took ~17 us on the 2-core CI CPU (every argument
// converted against the schema into a boxed stack, then unboxed for the kernel), a typed redispatch from
// here ~6 us, F.max_pool2d's whole call ~6 us. On a GPU, where kernels take tens of microseconds, host time
// like that is the op's time.
//
// A direct entry runs the kernel only where the dispatcher would run nothing else (common/direct.h). It
// computes the key set the dispatcher would (the tensors' keys, plus the thread's included keys, minus its
// excluded ones), takes away what `_AutoDispatchBelowAutograd` skips (autograd, ADInplaceOrView) and the keys
// that fall through for custom ops (autocast, BackendSelect), and redispatches only when what is left is the
// dense CPU or CUDA backend and no RecordFunction callback (the profiler) is active. Anything else -- a tensor subclass or
// dispatch mode (Python key), functorch wrappers, a jit trace (Tracer), functionalization, meta / sparse /
// nested tensors, negative or conjugate views -- returns None, and the caller takes the dispatcher path.
// The Python-side checks (torch.compile, __torch_function__) are the caller's: _autograd._below_autograd.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/autocast_mode.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <string>
#include <tuple>

#include "common/cpu_dispatch.h"
#include "common/direct.h"
#include "inception/inception.h"

// The one-call eager entries (common/eager.h), each in its op's <op>_autograd.cpp.
namespace cnx::lrn {
void define_eager(pybind11::module_& m);
}
namespace cnx::maxpool {
void define_eager(pybind11::module_& m);
}
namespace cnx::pool_lrn {
void define_eager(pybind11::module_& m);
}

namespace {

namespace py = pybind11;

py::str cpu_capability() { return cnx::cpu::capability_name(cnx::cpu::capability()); }

py::dict build_info() {
#ifdef WITH_CUDA
  constexpr bool cuda = true;
#else
  constexpr bool cuda = false;
#endif
#ifdef CNX_CUDA_ARCHS
  const char* archs = CNX_CUDA_ARCHS;
#else
  const char* archs = "";
#endif
  py::dict info;
  info["version"] = CLASSICNETS_VERSION;
  info["cuda"] = cuda;
  info["cuda_archs"] = archs;
  return info;
}

template <typename T>
c10::DispatchKeySet keys_of(const T&) {
  return {};
}

c10::DispatchKeySet keys_of(const at::Tensor& t) { return t.defined() ? t.key_set() : c10::DispatchKeySet(); }

c10::DispatchKeySet keys_of(const std::optional<at::Tensor>& t) {
  return t.has_value() ? keys_of(*t) : c10::DispatchKeySet();
}

template <typename Signature>
struct Direct;

template <typename Return, typename... Args>
struct Direct<Return(Args...)> {
  // Exports _C.<name>(*args): classicnets_ext::<name>'s backend kernel, or None (see the top of the file).
  // typed<> checks Signature against the registered kernels' C++ signature when _C is imported.
  static void def(py::module_& m, const char* name) {
    const auto op = c10::Dispatcher::singleton()
                        .findSchemaOrThrow((std::string("classicnets_ext::") + name).c_str(), "")
                        .typed<Return(Args...)>();
    m.def(name, torch::wrap_pybind_function([op](Args... args) -> py::object {
            const c10::DispatchKeySet keys = cnx::backend_below_autograd((keys_of(args) | ...));
            if (keys.empty()) return py::none();
            Return result;
            {
              const py::gil_scoped_release no_gil;
              const at::AutoDispatchBelowAutograd below_autograd;
              result = op.redispatch(keys, args...);
            }
            return py::cast(std::move(result));
          }),
          "The op's CPU/CUDA kernel for a call the dispatcher would send straight there, else None.");
    // Arguments the signature cannot take (SymInts in a size, say, while a graph is traced) fall through to
    // this overload: None, and the dispatcher, which knows what to do with them, takes the call.
    m.def(name, [](const py::args&) { return py::none(); });
  }
};

using Tensor = const at::Tensor&;
using Ints = at::IntArrayRef;

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "classicnets_ext compiled kernels";
  m.def("cpu_capability", &cpu_capability, "Instruction set the CPU kernels run with.");
  m.def("cpu_avx512_bf16", &cnx::cpu::has_avx512_bf16,
        "Whether bf16 linear uses AVX512-BF16's dot products (see csrc/common/cpu_dispatch.h).");
  m.def("cpu_vendor", &cnx::cpu::vendor_name, "The CPU's vendor: amd, intel or other.");
  m.def("cpu_avx512_full_width", &cnx::cpu::avx512_full_width,
        "Whether the AVX-512 kernels run on a core with full-width 512-bit units (see csrc/common/cpu_dispatch.h).");
  m.def("build_info", &build_info, "How this extension was compiled.");
  // What torch.autocast's F.linear does to each operand on the CPU, its cache included (a parameter is cast
  // once per autocast region): ops.linear's autocast path. No Python function reaches that cache.
  m.def(
      "autocast_cached_cast",
      [](const at::Tensor& t, at::ScalarType dtype) {
        return at::autocast::cached_cast(dtype, t, c10::DeviceType::CPU);
      },
      "torch.autocast's cached cast of a CPU tensor to dtype.", py::call_guard<py::gil_scoped_release>());

  Direct<at::Tensor(Tensor, int64_t, double, double, double)>::def(m, "lrn");
  Direct<at::Tensor(Tensor, Tensor, int64_t, double, double, double)>::def(m, "lrn_backward");
  Direct<std::tuple<at::Tensor, at::Tensor>(Tensor, Ints, Ints, Ints, Ints, bool, bool)>::def(m, "max_pool2d");
  Direct<at::Tensor(Tensor, Tensor, Ints, Ints, Ints, Ints, Ints)>::def(m, "max_pool2d_backward");
  Direct<at::Tensor(Tensor, Ints, Ints, Ints, Ints, Ints)>::def(m, "max_pool2d_indices");
  Direct<std::tuple<at::Tensor, at::Tensor, at::Tensor>(Tensor, Ints, Ints, Ints, bool, int64_t, double, double,
                                                        double, bool, bool)>::def(m, "max_pool2d_lrn");
  Direct<at::Tensor(Tensor, Tensor, Tensor, Ints, Ints, Ints, Ints, int64_t, double, double, double, bool)>::def(
      m, "max_pool2d_lrn_backward");
  Direct<std::tuple<at::Tensor, at::Tensor, at::Tensor>(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                        Tensor, int64_t)>::def(m, "inception");
  Direct<at::Tensor(Tensor, Tensor, const std::optional<at::Tensor>&)>::def(m, "linear");
  Direct<at::Tensor(Tensor, Tensor)>::def(m, "linear_grad_input");
  Direct<at::Tensor(Tensor, Tensor)>::def(m, "linear_grad_weight");
  cnx::lrn::define_eager(m);
  cnx::maxpool::define_eager(m);
  cnx::pool_lrn::define_eager(m);
  m.def(
      "inception_set_cpu_prepacked",
      [](const std::optional<at::Tensor>& source_1x1, const std::optional<at::Tensor>& packed_1x1,
         const std::optional<at::Tensor>& source_pool, const std::optional<at::Tensor>& packed_pool) {
        const auto get = [](const std::optional<at::Tensor>& t) { return t.value_or(at::Tensor()); };
        cnx::inception::set_cpu_prepacked(get(source_1x1), get(packed_1x1), get(source_pool), get(packed_pool));
      },
      "The inception op's oneDNN-packed 1x1 and pool-projection weights for this thread's calls with these very "
      "weight tensors (csrc/inception/inception.h); all None clears them.",
      py::arg("source_1x1") = py::none(), py::arg("packed_1x1") = py::none(), py::arg("source_pool") = py::none(),
      py::arg("packed_pool") = py::none());
}
