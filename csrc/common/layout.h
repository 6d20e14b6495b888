#pragma once
// The layout test every op's host code shares: which memory order its kernels walk a tensor in.
#include <ATen/core/Tensor.h>

namespace cnx {

// Whether `t`, of shape (N, C, *), is dense with its channels innermost but not plain contiguous: the
// channels-last (or channels-last-3d) tensors the kernels walk in that order. A tensor that is both (C == 1,
// or one spatial element) counts as contiguous. Read off the strides -- the order (N, *, C) must be that of a
// contiguous tensor, size-1 dimensions taking any stride -- rather than from a permuted view: this runs on
// every op call, where a view's allocation is a measurable part of a small op.
inline bool is_channels_last(const at::Tensor& t) {
  if (t.dim() < 3 || t.is_contiguous()) return false;
  const at::IntArrayRef sizes = t.sizes(), strides = t.strides();
  int64_t expected = 1;
  const auto next = [&](int64_t d) {
    if (sizes[d] != 1 && strides[d] != expected) return false;
    expected *= sizes[d];
    return true;
  };
  if (!next(1)) return false;
  for (int64_t d = t.dim() - 1; d >= 2; --d)
    if (!next(d)) return false;
  return next(0);
}

// Whether torch answers the 4-D or 5-D `t` channels-last (suggest_memory_format: the strides' order, cached on
// the tensor), contiguous tensors aside: dense channels-last, or a view of such a tensor whose strides keep the
// channels innermost (a channel or spatial slice). The kernels copy such a view dense channels-last, and
// answer in that layout as torch's do. _layouts.is_channels_last_view is the same rule.
inline bool is_channels_last_view(const at::Tensor& t) {
  return (t.dim() == 4 || t.dim() == 5) && !t.is_contiguous() &&
         t.suggest_memory_format() != at::MemoryFormat::Contiguous;
}

}  // namespace cnx
