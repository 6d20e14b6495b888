#pragma once
// The dispatcher's decision for a call made from below autograd, taken in C++: which backend kernel it would
// end at, or that it would run something else first. The direct entries of module.cpp and the eager autograd
// paths (maxpool_autograd.cpp) run a kernel by typed redispatch to the key set this returns -- past the boxing
// of a torch.ops call -- and only where it is not empty.
#include <ATen/record_function.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

namespace cnx {

// The backend key set a call with these tensor keys would end at, below autograd -- or an empty set where
// the dispatcher would run anything before (or instead of) the backend kernel: a tensor subclass or dispatch
// mode (Python key), functorch wrappers and transforms, a jit trace (Tracer), functionalization, meta /
// sparse / nested tensors, negative or conjugate views, or a RecordFunction callback (the profiler).
inline c10::DispatchKeySet backend_below_autograd(c10::DispatchKeySet keys) {
  // BackendSelect is always included (for factory functions) and, like autocast, falls through for ops
  // without a kernel there, as ours are.
  static const c10::DispatchKeySet skipped = c10::autograd_dispatch_keyset_with_ADInplaceOrView |
                                             c10::autocast_dispatch_keyset |
                                             c10::DispatchKeySet(c10::DispatchKey::BackendSelect);
  const c10::impl::LocalDispatchKeySet local = c10::impl::tls_local_dispatch_key_set();
  // Subtraction takes away functionality bits (Dense, AutogradFunctionality, Python...) and keeps the
  // backend bits (CPUBit, CUDABit, MetaBit...).
  keys = ((keys | local.included_) - local.excluded_) - skipped;
  // Dense is the lowest functionality: the highest is Dense when there is no other (Python, Tracer,
  // Functionalize, Negative, Sparse...).
  if (keys.highestFunctionalityKey() != c10::DispatchKey::Dense) return {};
  // CPUBit and CUDABit are the two lowest backend bits: the highest is one of them when there is no other.
  const c10::BackendComponent backend = keys.highestBackendKey();
  if (backend != c10::BackendComponent::CPUBit && backend != c10::BackendComponent::CUDABit) return {};
  if (at::getStepCallbacksUnlessEmpty(at::RecordScope::FUNCTION).has_value()) return {};  // the profiler
  return keys;
}

}  // namespace cnx
