#pragma once
// Host-side pieces of the LRN op shared by the CPU and CUDA backends: argument checks and the layout rule.
#include <algorithm>
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

namespace cnx::lrn {

// The (N, C, S) view a kernel walks: S is the product of the spatial sizes. Kernels handle two dense
// layouts -- channels-first (strides C*S, S, 1) and channels-last (strides S*C, 1, C) -- so a slice of a
// channels-last tensor is first copied dense channels-last (torch answers it so), any other strided input
// channels-first.
struct Layout {
  at::Tensor input;  // the tensor the kernel reads (the caller's, or a dense copy)
  int64_t N, C, S;
  bool channels_last;
};

// Every check of the op (tensors on `device`, the backend's): a backend calls it before anything else, the
// CUDA one before it touches its device (guard, stream, properties).
void check_forward_args(const at::Tensor& input, int64_t size, double alpha, double beta, double k,
                        c10::DeviceType device);
void check_backward_args(const at::Tensor& grad_output, const at::Tensor& input, int64_t size, double alpha,
                         double beta, double k, c10::DeviceType device);

// The window's settings, checked by LRN and the fused pool->LRN alike: a positive size, and finite alpha, beta
// and k. A non-finite one is a degenerate LRN that ops.py answers with torch's composite: the kernels' power
// (exp2 of a log2) gives NaN where torch's pow gives 1 ** inf = 1.
void check_settings(const char* op, int64_t size, double alpha, double beta, double k);

// The window the kernels run for `size` over C channels. Clipped to [0, C), every window of size 2C - 1 or
// wider covers all C channels wherever it is centred, so all such sizes sum the same squares: the kernels run
// the narrowest, 2C - 1, with alpha scaled by (2C - 1) / size, which keeps alpha / size, the sums' weight (to a
// rounding of the double). Their scratch and loops then grow with min(size, 2C - 1), not with whatever size
// torch takes (a size of 2^31 made the channels-last kernels allocate 16 GiB; 2^40 ran for minutes).
struct Window {
  int64_t size;
  double alpha;
};

inline Window kernel_window(int64_t size, double alpha, int64_t C) {
  const int64_t widest = 2 * std::max<int64_t>(C, 1) - 1;
  if (size <= widest) return {size, alpha};
  return {widest, alpha * static_cast<double>(widest) / static_cast<double>(size)};
}

// Picks the kernel layout for `t` (copying only when neither dense layout fits).
Layout layout_of(const at::Tensor& t);

// `t` in exactly the layout `like` describes: a no-op when the strides already agree.
at::Tensor to_layout(const at::Tensor& t, const Layout& like);

// The CUDA backend's lrn_backward (lrn_cuda.cu; built only with CUDA): the fused pool->LRN op's CUDA
// backward runs it on the pooled values.
at::Tensor lrn_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input, int64_t size, double alpha,
                             double beta, double k);

}  // namespace cnx::lrn
