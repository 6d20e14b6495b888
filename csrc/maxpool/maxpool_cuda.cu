// Max pooling on CUDA. The per-window math -- window bounds, the (kh, kw) scan with torch's update rule, the
// windows covering an input element, the flat index of an argmax -- is maxpool_math.h, shared with the CPU
// kernels (and so exercised by the CPU tests); this file only decides which thread computes what. All
// offsets are 64-bit.
//
// Every kernel is one thread per element of the tensor it writes, consecutive threads on consecutive
// elements of that dense tensor (w fastest channels-first, c fastest channels-last), so the writes
// coalesce, and in channels-last so does every tap's read.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>

#include "common/cuda_helpers.cuh"
#include "maxpool/maxpool.h"
#include "maxpool/maxpool_math.h"

namespace cnx::maxpool {
namespace {

using cuda::ceil_div;

constexpr int kThreads = 256;

// One thread per output element: the max (and, unless index_t is void, the argmax) of its window.
// Memory traffic per output element: the window's in-bounds taps read (each input element is read by about
// (kH / sH) * (kW / sW) windows; the repeats hit L1/L2, so DRAM sees the input about once), the output written,
// and -- only when the argmax is saved -- one argmax element written (1 byte up to 256 taps, else 4).
template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, index_t* __restrict__ argmax, Problem pb,
                   int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  using Index = std::conditional_t<std::is_void_v<index_t>, NoArgmax, int64_t>;
  for (int64_t e = cuda::global_thread(); e < total; e += cuda::grid_threads()) {
    acc_t max;
    Index arg;
    forward_element<kChannelsLast>(x, pb, e, max, arg);
    y[e] = static_cast<scalar_t>(max);
    if constexpr (!std::is_void_v<index_t>) argmax[e] = static_cast<index_t>(arg);
  }
}

// One thread per input element: a gather of the gradients of the windows whose argmax is the tap reading it,
// summed in torch's order in the accumulation type. No atomics: deterministic, bit for bit run to run.
// Memory traffic per input element: one argmax element read per covering window (about (kH / sH) * (kW / sW)
// of them, each shared by the inputs of its window, so mostly L1/L2 hits), one grad_output element read per
// window whose argmax matches (each read once overall), grad_input written once.
template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad, const index_t* __restrict__ argmax,
                    scalar_t* __restrict__ grad_input, Problem pb, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t e = cuda::global_thread(); e < total; e += cuda::grid_threads())
    grad_input[e] = static_cast<scalar_t>(gradient_element<kChannelsLast, acc_t>(grad, argmax, pb, e));
}

// One thread per output element: torch's flat index ih * W + iw of its window-local argmax.
// Memory traffic per element: the argmax read (1 or 4 bytes), 8 bytes written.
template <typename index_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    indices_kernel(const index_t* __restrict__ argmax, int64_t* __restrict__ indices, Problem pb, int64_t total) {
  for (int64_t e = cuda::global_thread(); e < total; e += cuda::grid_threads())
    indices[e] = index_element<kChannelsLast>(argmax, pb, e);
}

unsigned int grid_for(int64_t total) { return cuda::capped_grid(ceil_div<int64_t>(total, kThreads), kThreads); }

template <typename scalar_t, typename index_t>
void launch_forward(const scalar_t* x, scalar_t* y, index_t* argmax, const Problem& pb, cuda::Stream stream) {
  const int64_t total = pb.N * pb.C * pb.h.out * pb.w.out;
  if (pb.channels_last) {
    cuda::launch(forward_kernel<scalar_t, index_t, true>, grid_for(total), kThreads, 0, stream, x, y, argmax, pb,
                 total);
    CNX_CUDA_LAUNCH_CHECK();
  } else {
    cuda::launch(forward_kernel<scalar_t, index_t, false>, grid_for(total), kThreads, 0, stream, x, y, argmax, pb,
                 total);
    CNX_CUDA_LAUNCH_CHECK();
  }
}

template <typename scalar_t, typename index_t>
void launch_backward(const scalar_t* grad, const index_t* argmax, scalar_t* grad_input, const Problem& pb,
                     cuda::Stream stream) {
  const int64_t total = pb.N * pb.C * pb.h.in * pb.w.in;
  if (pb.channels_last) {
    cuda::launch(backward_kernel<scalar_t, index_t, true>, grid_for(total), kThreads, 0, stream, grad, argmax,
                 grad_input, pb, total);
    CNX_CUDA_LAUNCH_CHECK();
  } else {
    cuda::launch(backward_kernel<scalar_t, index_t, false>, grid_for(total), kThreads, 0, stream, grad, argmax,
                 grad_input, pb, total);
    CNX_CUDA_LAUNCH_CHECK();
  }
}

template <typename index_t>
void launch_indices(const index_t* argmax, int64_t* indices, const Problem& pb, cuda::Stream stream) {
  const int64_t total = pb.N * pb.C * pb.h.out * pb.w.out;
  if (pb.channels_last) {
    cuda::launch(indices_kernel<index_t, true>, grid_for(total), kThreads, 0, stream, argmax, indices, pb, total);
    CNX_CUDA_LAUNCH_CHECK();
  } else {
    cuda::launch(indices_kernel<index_t, false>, grid_for(total), kThreads, 0, stream, argmax, indices, pb, total);
    CNX_CUDA_LAUNCH_CHECK();
  }
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, bool ceil_mode, bool save_argmax) {
  // Every check first (prepare_forward): nothing below runs for arguments the op rejects.
  const Forward f = prepare_forward(input, kernel_size, stride, padding, dilation, ceil_mode, save_argmax, cuda::device_type());
  const Problem& pb = f.pb;
  if (f.out.numel() > 0) {
    const cuda::DeviceGuard guard(f.x.device());
    const cuda::Stream stream = cuda::current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.x.scalar_type(), "max_pool2d_cuda", [&] {
      const scalar_t* xp = f.x.const_data_ptr<scalar_t>();
      scalar_t* yp = f.out.mutable_data_ptr<scalar_t>();
      if (!f.save) launch_forward<scalar_t, void>(xp, yp, nullptr, pb, stream);
      else if (byte_argmax(pb)) launch_forward(xp, yp, f.argmax.mutable_data_ptr<uint8_t>(), pb, stream);
      else launch_forward(xp, yp, f.argmax.mutable_data_ptr<int32_t>(), pb, stream);
    });
  }
  return f.result();
}

at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& argmax,
                                    at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation) {
  const FromArgmax b =
      prepare_backward(grad_output, argmax, input_size, kernel_size, stride, padding, dilation, cuda::device_type());
  const Problem& pb = b.pb;
  if (b.out.numel() > 0) {
    const cuda::DeviceGuard guard(b.argmax.device());
    const cuda::Stream stream = cuda::current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.grad.scalar_type(), "max_pool2d_backward_cuda", [&] {
      const scalar_t* gp = b.grad.const_data_ptr<scalar_t>();
      scalar_t* dp = b.out.mutable_data_ptr<scalar_t>();
      if (byte_argmax(pb)) launch_backward(gp, b.argmax.const_data_ptr<uint8_t>(), dp, pb, stream);
      else launch_backward(gp, b.argmax.const_data_ptr<int32_t>(), dp, pb, stream);
    });
  }
  return b.result();
}

at::Tensor max_pool2d_indices_cuda(const at::Tensor& argmax, at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const FromArgmax b = prepare_indices(argmax, input_size, kernel_size, stride, padding, dilation, cuda::device_type());
  if (b.out.numel() > 0) {
    const cuda::DeviceGuard guard(b.argmax.device());
    const cuda::Stream stream = cuda::current_stream();
    int64_t* out = b.out.mutable_data_ptr<int64_t>();
    if (byte_argmax(b.pb)) launch_indices(b.argmax.const_data_ptr<uint8_t>(), out, b.pb, stream);
    else launch_indices(b.argmax.const_data_ptr<int32_t>(), out, b.pb, stream);
  }
  return b.result();
}

}  // namespace
}  // namespace cnx::maxpool

TORCH_LIBRARY_IMPL(CNX_OPS, CNX_CUDA_KEY, m) {
  m.impl("max_pool2d", &cnx::maxpool::max_pool2d_cuda);
  m.impl("max_pool2d_backward", &cnx::maxpool::max_pool2d_backward_cuda);
  m.impl("max_pool2d_indices", &cnx::maxpool::max_pool2d_indices_cuda);
}
