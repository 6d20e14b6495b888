#pragma once
// The layout test every op's host code shares: which memory order its kernels walk a tensor in.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/DimVector.h>
#include <c10/util/strides.h>

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

// `t`'s elements under `sizes` and `strides` as a tensor of its own over the same storage, not a view of `t`:
// autograd refuses an in-place change to a view that an op returned (and to one made under no_grad), where
// torch's layers return fresh tensors -- `Sequential(MaxPool2d, ReLU(inplace=True))` on a (C, H, W) input
// raised. For tensors the op allocated itself, or only reads.
inline at::Tensor alias_as(const at::Tensor& t, at::IntArrayRef sizes, at::IntArrayRef strides) {
  return at::empty({0}, t.options()).set_(t.storage(), t.storage_offset(), sizes, strides);
}

// `t`, dense contiguous or dense channels-last as `channels_last` says, with torch's strides for that layout.
// is_contiguous and is_channels_last let a size-1 dimension carry any stride, and an output allocated like such
// a tensor passed it on: (6, 1, 8, 8) with a channel stride of 1000 came back with it, where torch's layers and
// our fake kernels answer (64, 64, 8, 1). A size-1 dimension is only ever indexed at 0, so the restrided tensor
// (alias_as: not a view) addresses the same elements; it is made only when a stride differs.
inline at::Tensor with_dense_strides(const at::Tensor& t, bool channels_last) {
  const at::IntArrayRef sizes = t.sizes();
  c10::DimVector strides;
  if (channels_last) {  // order (N, *, C), without contiguous_strides' max(size, 1): torch's channels-last rule
    strides.resize(sizes.size());
    int64_t next = 1;
    const auto place = [&](size_t d) { strides[d] = next; next *= sizes[d]; };
    place(1);
    for (size_t d = sizes.size() - 1; d >= 2; --d) place(d);
    place(0);
  } else {
    strides = c10::contiguous_strides(sizes);
  }
  if (t.strides() == at::IntArrayRef(strides)) return t;
  return alias_as(t, sizes, strides);
}

}  // namespace cnx
