// Max pooling on the CPU: splits the work with at::parallel_for and calls the kernels built for this CPU's
// instruction set (maxpool_cpu_kernel.cpp). The indices conversion -- a table lookup and an add per element,
// nothing an instruction set would speed up -- is compiled once, here.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
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
  Problem pb = check_forward_args(input, kernel_size, stride, padding, dilation, ceil_mode);
  pb.channels_last = is_channels_last(input);
  const at::Tensor x = as_kernel_layout(input, pb.channels_last);
  at::Tensor out = empty_4d(pb, pb.h.out, pb.w.out, input.options());
  at::Tensor argmax = save_argmax ? empty_4d(pb, pb.h.out, pb.w.out, input.options().dtype(argmax_dtype(pb)))
                                  : at::empty({0}, input.options().dtype(at::kByte));
  if (out.numel() > 0) {
    const auto kernel = CNX_CPU_DISPATCH(max_pool2d_forward_kernel);
    const int64_t items = forward_work_items(pb);
    void* argmax_data = save_argmax ? argmax.mutable_data_ptr() : nullptr;
    at::parallel_for(0, items, grain_of(x.numel() + out.numel(), items), [&](int64_t begin, int64_t end) {
      kernel(x.scalar_type(), x.const_data_ptr(), out.mutable_data_ptr(), argmax_data, pb, begin, end);
    });
  }
  return {unbatch(out, input.dim()), save_argmax ? unbatch(argmax, input.dim()) : argmax};
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& argmax,
                                   at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation) {
  Problem pb = check_argmax_args("max_pool2d_backward", grad_output, argmax, input_size, kernel_size, stride,
                                 padding, dilation);
  pb.channels_last = is_channels_last(argmax);
  const at::Tensor a = as_kernel_layout(argmax, pb.channels_last);
  const at::Tensor g = as_kernel_layout(grad_output, pb.channels_last);
  at::Tensor grad_input = empty_4d(pb, pb.h.in, pb.w.in, grad_output.options());
  if (grad_input.numel() > 0) {
    const auto kernel = CNX_CPU_DISPATCH(max_pool2d_backward_kernel);
    const int64_t items = backward_work_items(pb);
    at::parallel_for(0, items, grain_of(grad_input.numel() + g.numel(), items), [&](int64_t begin, int64_t end) {
      kernel(g.scalar_type(), g.const_data_ptr(), a.const_data_ptr(), grad_input.mutable_data_ptr(), pb, begin, end);
    });
  }
  return unbatch(grad_input, static_cast<int64_t>(input_size.size()));
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
  Problem pb = check_argmax_args("max_pool2d_indices", at::Tensor(), argmax, input_size, kernel_size, stride,
                                 padding, dilation);
  pb.channels_last = is_channels_last(argmax);
  const at::Tensor a = as_kernel_layout(argmax, pb.channels_last);
  at::Tensor indices = empty_4d(pb, pb.h.out, pb.w.out, argmax.options().dtype(at::kLong));
  if (indices.numel() > 0) {
    const int64_t rows = pb.channels_last ? pb.N * pb.h.out : pb.N * pb.C * pb.h.out;
    at::parallel_for(0, rows, grain_of(indices.numel(), rows), [&](int64_t begin, int64_t end) {
      int64_t* out = indices.mutable_data_ptr<int64_t>();
      if (byte_argmax(pb)) indices_rows(a.const_data_ptr<uint8_t>(), out, pb, begin, end);
      else indices_rows(a.const_data_ptr<int32_t>(), out, pb, begin, end);
    });
  }
  return unbatch(indices, static_cast<int64_t>(input_size.size()));
}

}  // namespace
}  // namespace cnx::maxpool

TORCH_LIBRARY_IMPL(classicnets_ext, CPU, m) {
  m.impl("max_pool2d", &cnx::maxpool::max_pool2d_cpu);
  m.impl("max_pool2d_backward", &cnx::maxpool::max_pool2d_backward_cpu);
  m.impl("max_pool2d_indices", &cnx::maxpool::max_pool2d_indices_cpu);
}
