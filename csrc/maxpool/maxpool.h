#pragma once
// Host-side pieces of the max-pool ops shared by the CPU and CUDA backends: argument checks, the problem
// geometry and the layout rule.
//
// Layouts (mirrored by classicnets_ext/_layouts.py, which the fake kernels use): kernels walk dense
// (N, C, H, W) tensors, channels-first or channels-last. A 4-D channels-last input (C innermost, the rest
// dense) is answered channels-last -- output, argmax, indices -- and any other input (every 3-D one, as in
// torch) contiguous, after a copy if it is not. The backward and the indices op know the input only by its
// size, so they take the layout from the argmax, which the forward wrote in the input's.
#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <tuple>

#include "common/layout.h"
#include "maxpool/maxpool_math.h"

namespace cnx::maxpool {

// Checks the forward's arguments (as torch's max_pool2d does; `input` on `device`, the backend's) and returns
// its problem, layout not yet set.
Problem check_forward_args(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode, c10::DeviceType device,
                           const char* op = "max_pool2d");

// Whether check_forward_args would pass (device aside): the same rules as a test, for callers that hand any
// other call to a path that raises torch's own error (maxpool_autograd.cpp). Keep the two in step.
bool forward_args_ok(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode);

// Checks the arguments of max_pool2d_backward (grad_output) or max_pool2d_indices (undefined grad_output)
// and returns the problem, layout not yet set; the pooled size is the argmax's.
Problem check_argmax_args(const char* op, const at::Tensor& grad_output, const at::Tensor& argmax,
                          at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, c10::DeviceType device);

// The argmax dtype: uint8 up to kByteArgmaxTaps taps per window, int32 beyond.
at::ScalarType argmax_dtype(const Problem& pb);

// Whether the kernels walk `t` channels-last: 4-D only (a 3-D input is one sample, read channels-first), and
// exactly where torch's max_pool2d answers channels-last (its suggest_memory_format, read off the strides'
// order): a dense channels-last tensor, or a view of one (a channel or spatial slice), which as_kernel_layout
// then copies dense. A size-1 dimension's stride can make a dense channels-last tensor one that torch takes as
// contiguous, e.g. (1, 3, 1, 5) with strides (1, 1, 3, 3): that one is walked channels-first; and one can make a
// contiguous tensor channels-last to torch, e.g. a channels-last 1x1 map (2, 3, 1, 1) with strides (3, 1, 3, 3).
// Python's _layouts.max_pool2d_is_channels_last is the same rule (the fake kernels' layout).
inline bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

// `t` as the dense 4-D tensor a kernel reads: batched (3-D gains a leading 1) and in the given layout,
// copied only when it is not already.
at::Tensor as_kernel_layout(const at::Tensor& t, bool channels_last);

// A new dense (N, C, H, W) tensor in pb's layout.
at::Tensor empty_4d(const Problem& pb, int64_t H, int64_t W, const at::TensorOptions& options);

// A kernel's 4-D result as the caller's `dim`-D tensor: 3-D inputs drop the batch dimension again.
at::Tensor unbatch(const at::Tensor& t, int64_t dim);

// Each op's operands after all of its checks (the one place they run, for every backend): the tensors in
// the kernels' layout and the result allocated, on the inputs' device (a copy or an allocation needs no
// device guard). A CUDA backend sets its guard, and touches its device, only after these.
struct Forward {
  Problem pb;
  at::Tensor x, out, argmax;  // argmax: an empty uint8 tensor unless saved
  int64_t dim;                // the input's (3 or 4)
  bool save;

  std::tuple<at::Tensor, at::Tensor> result() const;
};

Forward prepare_forward(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode, bool save_argmax,
                        c10::DeviceType device);

// max_pool2d_backward (out: the gradient; grad set) and max_pool2d_indices (out: the int64 indices; grad
// undefined), in the argmax's layout.
struct FromArgmax {
  Problem pb;
  at::Tensor grad, argmax, out;
  int64_t dim;  // input_size's (3 or 4)

  at::Tensor result() const { return unbatch(out, dim); }
};

FromArgmax prepare_backward(const at::Tensor& grad_output, const at::Tensor& argmax, at::IntArrayRef input_size,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, c10::DeviceType device);

// The CUDA backend's gather (maxpool_cuda.cu; built only with CUDA): grad_input = the max-pool gradient of
// grad through argmax, all three dense in pb's layout on the current device. max_pool2d_backward runs it, and
// so does the fused pool->LRN op's CUDA backward after the LRN's backward.
void gather_backward_cuda(const at::Tensor& grad, const at::Tensor& argmax, const at::Tensor& grad_input,
                          const Problem& pb);

// The CUDA backend's forward without an argmax (maxpool_cuda.cu; built only with CUDA): out = the max-pool of x,
// both dense in pb's layout on the current device. max_pool2d runs it when nothing is saved, and so does the
// Inception op's CUDA pool branch.
void forward_cuda(const at::Tensor& x, const at::Tensor& out, const Problem& pb);

FromArgmax prepare_indices(const at::Tensor& argmax, at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                           c10::DeviceType device);

}  // namespace cnx::maxpool
