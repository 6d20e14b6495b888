// The max-pool ops' schemas and the checks every backend shares. Kernels: maxpool_cpu.cpp, maxpool_cuda.cu,
// and triton_kernels/maxpool.py (registered from Python as classicnets_ext::max_pool2d_triton*).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "maxpool/maxpool.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <cstdint>
#include <torch/library.h>

#include "common/checks.h"

namespace cnx::maxpool {
namespace {

// The four int[2] pooling arguments, checked as torch checks them, as the problem's two dimensions (sizes
// not yet set).
std::pair<Dim, Dim> check_params(const char* op, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation) {
  const std::pair<const char*, at::IntArrayRef> args[] = {
      {"kernel_size", kernel_size}, {"stride", stride}, {"padding", padding}, {"dilation", dilation}};
  for (const auto& [name, value] : args) {
    TORCH_CHECK_VALUE(value.size() == 2, op, ": `", name, "` must have 2 values (height, width), got ", value);
    // torch keeps these in 32-bit ints; so do the kernels' fast paths, and it bounds the window arithmetic.
    TORCH_CHECK_VALUE(value[0] <= INT32_MAX && value[1] <= INT32_MAX, op, ": `", name,
                      "` values must fit in 32 bits (at most 2147483647, as in torch), got ", value);
  }
  TORCH_CHECK_VALUE(kernel_size[0] > 0 && kernel_size[1] > 0, op, ": `kernel_size` must be positive, got ",
                    kernel_size);
  TORCH_CHECK_VALUE(stride[0] > 0 && stride[1] > 0, op, ": `stride` must be positive, got ", stride);
  TORCH_CHECK_VALUE(dilation[0] > 0 && dilation[1] > 0, op, ": `dilation` must be positive, got ", dilation);
  TORCH_CHECK_VALUE(padding[0] >= 0 && padding[1] >= 0, op, ": `padding` must be non-negative, got ", padding);
  // torch requires padding <= ((kernel - 1) * dilation + 1) / 2 (half the effective kernel) and then
  // padding <= kernel / 2, which implies it; so does this. Every window then starts inside the input or
  // the left padding and has its first tap inside unless dilation skips over the whole input.
  TORCH_CHECK_VALUE(padding[0] <= kernel_size[0] / 2 && padding[1] <= kernel_size[1] / 2, op,
                    ": `padding` must be at most half of `kernel_size` (as in torch), got padding ", padding,
                    " for kernel_size ", kernel_size);
  // The argmax kh * kW + kw must fit the int32 argmax (and the kernels' int32 index lanes).
  TORCH_CHECK_VALUE(kernel_size[0] <= (int64_t(1) << 31) / kernel_size[1], op,
                    ": `kernel_size` may cover at most 2^31 taps, got ", kernel_size);
  return {Dim{0, 0, kernel_size[0], stride[0], padding[0], dilation[0]},
          Dim{0, 0, kernel_size[1], stride[1], padding[1], dilation[1]}};
}

// A dimension pooled by a single window: its stride is never used, so make it 1. The CPU kernels size their
// scratch rows by stride * (output columns), which a stride of 2^31 - 1 (valid: torch answers one window)
// would make gigabytes.
void single_window_stride(Dim& d) {
  if (d.out == 1) d.stride = 1;
}

void check_dtype(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_supported_dtype(t.scalar_type()), op, ": `", name,
                   "` must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
}

}  // namespace

bool forward_args_ok(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const int64_t dim = input.dim();
  if ((dim != 3 && dim != 4) || !is_supported_dtype(input.scalar_type()) || input.size(dim - 3) == 0) return false;
  for (const at::IntArrayRef pair : {kernel_size, stride, padding, dilation})
    if (pair.size() != 2) return false;
  for (int i = 0; i < 2; ++i) {
    const int64_t k = kernel_size[i], s = stride[i], pad = padding[i], d = dilation[i];
    if (k <= 0 || k > INT32_MAX || s <= 0 || s > INT32_MAX || d <= 0 || d > INT32_MAX || pad < 0 || pad > k / 2)
      return false;
    const int64_t in = input.size(dim - 2 + i);
    if (in == 0 || output_size(in, k, s, pad, d, ceil_mode) < 1) return false;
  }
  return kernel_size[0] <= (int64_t(1) << 31) / kernel_size[1];
}

Problem check_forward_args(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode, c10::DeviceType device,
                           const char* op) {
  check_device(op, "input", input, device);
  const int64_t dim = input.dim();
  TORCH_CHECK_VALUE(dim == 3 || dim == 4, op, ": `input` must be 3-D (C, H, W) or 4-D (N, C, H, W), got ",
                    dim, " dimensions");
  TORCH_CHECK_VALUE(input.size(dim - 3) != 0 && input.size(dim - 2) != 0 && input.size(dim - 1) != 0, op,
                    ": `input` must have non-zero C, H and W, got shape ", input.sizes());
  check_dtype(op, "input", input);
  auto [h, w] = check_params(op, kernel_size, stride, padding, dilation);
  h.in = input.size(dim - 2);
  w.in = input.size(dim - 1);
  h.out = output_size(h.in, h.kernel, h.stride, h.pad, h.dilation, ceil_mode);
  w.out = output_size(w.in, w.kernel, w.stride, w.pad, w.dilation, ceil_mode);
  TORCH_CHECK_VALUE(h.out >= 1 && w.out >= 1, op, ": the output would be empty: input size (", h.in, ", ", w.in,
                    ") pools to (", h.out, ", ", w.out, ") with kernel_size ", kernel_size, ", stride ", stride,
                    ", padding ", padding, ", dilation ", dilation, " and ceil_mode=", ceil_mode ? "True" : "False");
  single_window_stride(h);
  single_window_stride(w);
  return {dim == 4 ? input.size(0) : 1, input.size(dim - 3), h, w, false};
}

Problem check_argmax_args(const char* op, const at::Tensor& grad_output, const at::Tensor& argmax,
                          at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, c10::DeviceType device) {
  check_device(op, "argmax", argmax, device);
  const int64_t dim = static_cast<int64_t>(input_size.size());
  TORCH_CHECK_VALUE(dim == 3 || dim == 4, op, ": `input_size` must have 3 (C, H, W) or 4 (N, C, H, W) values, got ",
                    input_size);
  TORCH_CHECK_VALUE(input_size[0] >= 0 && input_size[dim - 3] > 0 && input_size[dim - 2] > 0 &&
                        input_size[dim - 1] > 0,
                    op, ": `input_size` must have positive C, H and W, got ", input_size);
  auto [h, w] = check_params(op, kernel_size, stride, padding, dilation);
  h.in = input_size[dim - 2];
  w.in = input_size[dim - 1];
  Problem pb{dim == 4 ? input_size[0] : 1, input_size[dim - 3], h, w, false};

  TORCH_CHECK_VALUE(argmax.dim() == dim, op, ": `argmax` must have as many dimensions as `input_size` (", dim,
                    "), got shape ", argmax.sizes());
  TORCH_CHECK_TYPE(argmax.scalar_type() == argmax_dtype(pb), op, ": `argmax` must be ", argmax_dtype(pb),
                   " for kernel_size ", kernel_size, " (as max_pool2d writes it), got ", argmax.scalar_type());
  pb.h.out = argmax.size(dim - 2);
  pb.w.out = argmax.size(dim - 1);
  // The pooled size is either mode's: the backward does not need ceil_mode, only the windows' count.
  for (const Dim* d : {&pb.h, &pb.w}) {
    const bool pooled = d->out >= 1 && (d->out == output_size(d->in, d->kernel, d->stride, d->pad, d->dilation, false) ||
                                        d->out == output_size(d->in, d->kernel, d->stride, d->pad, d->dilation, true));
    TORCH_CHECK_VALUE(pooled, op, ": `argmax` of shape ", argmax.sizes(), " is not the pooled size of input_size ",
                      input_size, " with kernel_size ", kernel_size, ", stride ", stride, ", padding ", padding,
                      " and dilation ", dilation);
  }
  single_window_stride(pb.h);
  single_window_stride(pb.w);
  TORCH_CHECK_VALUE(argmax.size(dim - 3) == pb.C && (dim == 3 || argmax.size(0) == pb.N), op,
                    ": `argmax` of shape ", argmax.sizes(), " does not match input_size ", input_size);
  if (grad_output.defined()) {
    TORCH_CHECK_VALUE(grad_output.sizes() == argmax.sizes(), op, ": `grad_output` shape ", grad_output.sizes(),
                      " differs from `argmax` shape ", argmax.sizes());
    check_dtype(op, "grad_output", grad_output);
    check_device(op, "grad_output", grad_output, device);
    TORCH_CHECK(grad_output.device() == argmax.device(), op, ": `grad_output` is on ", grad_output.device(),
                " but `argmax` is on ", argmax.device());
  }
  return pb;
}

at::ScalarType argmax_dtype(const Problem& pb) { return byte_argmax(pb) ? at::kByte : at::kInt; }

at::Tensor as_kernel_layout(const at::Tensor& t, bool channels_last) {
  const at::Tensor t4 = t.dim() == 3 ? t.unsqueeze(0) : t;
  return t4.contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

at::Tensor empty_4d(const Problem& pb, int64_t H, int64_t W, const at::TensorOptions& options) {
  return at::empty({pb.N, pb.C, H, W},
                   options.memory_format(pb.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
}

at::Tensor unbatch(const at::Tensor& t, int64_t dim) {
  // The (C, H, W) sample: the batch dimension's size and stride dropped, not a view of the 4-D tensor (alias_as).
  return dim == 3 ? alias_as(t, t.sizes().slice(1), t.strides().slice(1)) : t;
}

Forward prepare_forward(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode, bool save_argmax,
                        c10::DeviceType device) {
  Forward f;
  f.pb = check_forward_args(input, kernel_size, stride, padding, dilation, ceil_mode, device);
  f.pb.channels_last = is_channels_last(input);
  f.x = as_kernel_layout(input, f.pb.channels_last);
  f.out = empty_4d(f.pb, f.pb.h.out, f.pb.w.out, input.options());
  f.argmax = save_argmax ? empty_4d(f.pb, f.pb.h.out, f.pb.w.out, input.options().dtype(argmax_dtype(f.pb)))
                         : at::empty({0}, input.options().dtype(at::kByte));
  f.dim = input.dim();
  f.save = save_argmax;
  return f;
}

std::tuple<at::Tensor, at::Tensor> Forward::result() const {
  return {unbatch(out, dim), save ? unbatch(argmax, dim) : argmax};
}

FromArgmax prepare_backward(const at::Tensor& grad_output, const at::Tensor& argmax, at::IntArrayRef input_size,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, c10::DeviceType device) {
  FromArgmax b;
  b.pb = check_argmax_args("max_pool2d_backward", grad_output, argmax, input_size, kernel_size, stride, padding,
                           dilation, device);
  b.pb.channels_last = is_channels_last(argmax);
  b.argmax = as_kernel_layout(argmax, b.pb.channels_last);
  b.grad = as_kernel_layout(grad_output, b.pb.channels_last);
  b.out = empty_4d(b.pb, b.pb.h.in, b.pb.w.in, grad_output.options());
  b.dim = static_cast<int64_t>(input_size.size());
  return b;
}

FromArgmax prepare_indices(const at::Tensor& argmax, at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                           c10::DeviceType device) {
  FromArgmax b;
  b.pb = check_argmax_args("max_pool2d_indices", at::Tensor(), argmax, input_size, kernel_size, stride, padding,
                           dilation, device);
  b.pb.channels_last = is_channels_last(argmax);
  b.argmax = as_kernel_layout(argmax, b.pb.channels_last);
  b.out = empty_4d(b.pb, b.pb.h.out, b.pb.w.out, argmax.options().dtype(at::kLong));
  b.dim = static_cast<int64_t>(input_size.size());
  return b;
}

}  // namespace cnx::maxpool

// max_pool2d returns (output, argmax); the argmax is the window-local kh * kW + kw (uint8 up to 256 taps,
// int32 beyond), or an empty uint8 tensor when save_argmax is false -- the inference forward then writes
// the output alone. The backward sums the gradient through the argmax and never needs the input, only
// its size; max_pool2d_indices turns an argmax into torch's int64 flat indices (return_indices=True).
TORCH_LIBRARY_FRAGMENT(CNX_OPS, m) {
  m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
        "bool ceil_mode, bool save_argmax) -> (Tensor, Tensor)");
  m.def("max_pool2d_backward(Tensor grad_output, Tensor argmax, SymInt[] input_size, int[2] kernel_size, "
        "int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def("max_pool2d_indices(Tensor argmax, SymInt[] input_size, int[2] kernel_size, int[2] stride, "
        "int[2] padding, int[2] dilation) -> Tensor");
}
