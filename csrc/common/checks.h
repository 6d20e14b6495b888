#pragma once
// Argument checks shared by every op's host code.
#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

namespace cnx {

// The dtypes every op's kernels dispatch on. Not at::isFloatingType, which also admits the float8 types: those
// would pass the checks and fail later, in the kernels' dtype dispatch, with a message naming no argument.
inline bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// The backend a kernel belongs to must be the device of each tensor it is given. The dispatcher picks the
// CUDA kernel when any argument is a CUDA tensor, so a CPU tensor can reach it beside a CUDA one. Part of
// the ops' shared checks, which run before a backend touches its device (guard, stream, properties).
inline void check_device(const char* op, const char* name, const at::Tensor& t, c10::DeviceType device) {
  TORCH_CHECK(t.device().type() == device, op, " (", c10::DeviceTypeName(device), "): expected `", name, "` on a ",
              c10::DeviceTypeName(device), " device, got ", t.device());
}

}  // namespace cnx
