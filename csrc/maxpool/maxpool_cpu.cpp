// Max pooling on the CPU: splits the work with at::parallel_for and calls the kernels built for this CPU's
// instruction set (maxpool_cpu_kernel.cpp). The indices conversion -- a table lookup and an add per element,
// nothing an instruction set would speed up -- is compiled once, here.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>

#include "maxpool/maxpool.h"
#include "maxpool/maxpool_cpu_kernel.h"

namespace cnx::maxpool {
namespace {

// Aim for ~32K elements of work per task so that small tensors stay serial.
int64_t grain_of(int64_t work, int64_t items) {
  const int64_t per_item = std::max<int64_t>(1, work / std::max<int64_t>(1, items));
  return std::max<int64_t>(1, 32768 / per_item);
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, bool ceil_mode, bool save_argmax) {
  const Forward f = prepare_forward(input, kernel_size, stride, padding, dilation, ceil_mode, save_argmax, at::kCPU);
  if (f.out.numel() > 0) {
    const auto kernel = CNX_CPU_DISPATCH(max_pool2d_forward_kernel);
    const Problem pb = cpu_kernel_problem(f.pb);
    const int64_t items = forward_work_items(pb);
    void* argmax_data = f.save ? f.argmax.mutable_data_ptr() : nullptr;
    at::parallel_for(0, items, grain_of(f.x.numel() + f.out.numel(), items), [&](int64_t begin, int64_t end) {
      kernel(f.x.scalar_type(), f.x.const_data_ptr(), f.out.mutable_data_ptr(), argmax_data, pb, begin, end);
    });
  }
  return f.result();
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& argmax,
                                   at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation) {
  const FromArgmax b =
      prepare_backward(grad_output, argmax, input_size, kernel_size, stride, padding, dilation, at::kCPU);
  if (b.out.numel() > 0) {
    const auto kernel = CNX_CPU_DISPATCH(max_pool2d_backward_kernel);
    const Problem pb = cpu_kernel_problem(b.pb);
    const int64_t items = backward_work_items(pb);
    at::parallel_for(0, items, grain_of(b.out.numel() + b.grad.numel(), items), [&](int64_t begin, int64_t end) {
      kernel(b.grad.scalar_type(), b.grad.const_data_ptr(), b.argmax.const_data_ptr(), b.out.mutable_data_ptr(), pb,
             begin, end);
    });
  }
  return b.result();
}

// indices[e] = flat_index(argmax[e]) over one output row per item: (n, c, oh) channels-first, (n, oh)
// channels-last, where a row holds OW * C elements. flat_index is linear in (oh, ow) for a given tap, so a
// one-byte argmax (at most 256 taps) looks its tap's part up in a table -- flat_index of window (0, 0) --
// instead of dividing by kW for every element; a wider one calls flat_index.
// Memory traffic per element: the argmax read (1 or 4 bytes), the index written (8 bytes).
template <typename index_t>
void indices_rows(const index_t* argmax, int64_t* indices, const Problem& pb, int64_t begin, int64_t end) {
  // Copies: the int64_t stores could otherwise alias pb, whose fields would be reloaded for every element.
  const Dim h = pb.h, w = pb.w;
  const int64_t C = pb.channels_last ? pb.C : 1;
  // Every byte value, not only the taps: an argmax not written by max_pool2d still maps as flat_index maps it.
  int64_t tap_offset[256];
  if constexpr (std::is_same_v<index_t, uint8_t>)
    for (int64_t t = 0; t < 256; ++t) tap_offset[t] = flat_index(h, w, 0, 0, t);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t oh = row % h.out;
    for (int64_t ow = 0; ow < w.out; ++ow) {
      const int64_t e = (row * w.out + ow) * C;
      if constexpr (std::is_same_v<index_t, uint8_t>) {
        const int64_t window = oh * h.stride * w.in + ow * w.stride;
        for (int64_t c = 0; c < C; ++c) indices[e + c] = window + tap_offset[argmax[e + c]];
      } else {
        for (int64_t c = 0; c < C; ++c) indices[e + c] = flat_index(h, w, oh, ow, argmax[e + c]);
      }
    }
  }
}

at::Tensor max_pool2d_indices_cpu(const at::Tensor& argmax, at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const FromArgmax b = prepare_indices(argmax, input_size, kernel_size, stride, padding, dilation, at::kCPU);
  const Problem& pb = b.pb;
  if (b.out.numel() > 0) {
    const int64_t rows = pb.channels_last ? pb.N * pb.h.out : pb.N * pb.C * pb.h.out;
    at::parallel_for(0, rows, grain_of(b.out.numel(), rows), [&](int64_t begin, int64_t end) {
      int64_t* out = b.out.mutable_data_ptr<int64_t>();
      if (byte_argmax(pb)) indices_rows(b.argmax.const_data_ptr<uint8_t>(), out, pb, begin, end);
      else indices_rows(b.argmax.const_data_ptr<int32_t>(), out, pb, begin, end);
    });
  }
  return b.result();
}

}  // namespace
}  // namespace cnx::maxpool

TORCH_LIBRARY_IMPL(classicnets_ext, CPU, m) {
  m.impl("max_pool2d", &cnx::maxpool::max_pool2d_cpu);
  m.impl("max_pool2d_backward", &cnx::maxpool::max_pool2d_backward_cpu);
  m.impl("max_pool2d_indices", &cnx::maxpool::max_pool2d_indices_cpu);
}
