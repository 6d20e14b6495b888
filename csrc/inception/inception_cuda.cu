// The fused Inception op on CUDA tensors. The same two stages as on the CPU (inception_cpu.cpp):
//  1. the three 1x1 convolutions as one cuBLAS GEMM [N*H*W, C] x [C, n1] into a workspace, then one epilogue
//     kernel that adds the bias, applies the ReLU and scatters the columns to the output's ch1x1 slice and the
//     two reductions; the pool branch as max-pool's own 3x3/s1/p1 kernel (16-byte channel packs), the projection
//     GEMM and its epilogue into the last slice;
//  2. the 3x3 and 5x5 convolutions (cuDNN, channels-last), each followed by the epilogue into its output slice:
//     cuDNN cannot write into a strided channel slice, so the copy stays, and replaces the ReLU's pass and the cat.
// The CPU pools tiles inside its projection GEMM, from L2. Here a kernel of ours did that (a SIMT GEMM whose A
// tile was pooled while loaded): no tensor cores, and for every A element two 64-bit divisions and nine loads
// per K step. The pooled tensor's round trip costs less (32x192x28x28 fp16: 9.6 MB written and read again).
// Geometry comes from the functions below; the kernel lives in inception_cuda_kernels.cuh. The CPU emulator
// (tests/emu) compiles this whole file, launchers included.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include "common/cuda_helpers.cuh"
#include "inception/inception.h"
#include "inception/inception_cuda_kernels.cuh"
#include "maxpool/maxpool.h"

namespace cnx::inception {
namespace {

constexpr int kEpilogueThreads = 256;

template <typename scalar_t, int kPack>
void launch_epilogue_in(const scalar_t* src, int64_t src_ld, int64_t rows, const scalar_t* bias,
                        const kernels::Scatter<scalar_t>& scatter, cuda::Stream stream) {
  using P = cuda::Pack<scalar_t, kPack>;
  kernels::Scatter<P> packed;
  for (int i = 0; i < 3; ++i) {
    packed.dst[i] = reinterpret_cast<P*>(scatter.dst[i]);
    packed.ld[i] = scatter.ld[i] / kPack;
    packed.end[i] = scatter.end[i] / kPack;
  }
  const int64_t total = rows * packed.end[2];
  const unsigned int grid = cuda::capped_grid(cuda::ceil_div<int64_t>(total, kEpilogueThreads), kEpilogueThreads);
  cuda::launch(kernels::bias_relu_scatter_kernel<scalar_t, kPack>, grid, kEpilogueThreads, 0, stream,
               reinterpret_cast<const P*>(src), src_ld / kPack, rows, reinterpret_cast<const P*>(bias), packed);
  CNX_CUDA_LAUNCH_CHECK();
}

// rows x (scatter.end[2]) elements of src into the scatter's destinations, bias + ReLU on the way: in 16-byte
// packs of columns where every pointer, leading dimension and column boundary allows (GoogLeNet's widths are
// multiples of 8), else column by column.
template <typename scalar_t>
void launch_epilogue(const scalar_t* src, int64_t src_ld, int64_t rows, const scalar_t* bias,
                     const kernels::Scatter<scalar_t>& scatter, cuda::Stream stream) {
  if (rows * scatter.end[2] == 0) return;
  constexpr int kPack = 16 / sizeof(scalar_t);
  bool packs = src_ld % kPack == 0 && cuda::is_aligned(src, 16) && cuda::is_aligned(bias, 16);
  for (int i = 0; i < 3; ++i)
    packs = packs && scatter.ld[i] % kPack == 0 && scatter.end[i] % kPack == 0 && cuda::is_aligned(scatter.dst[i], 16);
  if (packs) launch_epilogue_in<scalar_t, kPack>(src, src_ld, rows, bias, scatter, stream);
  else launch_epilogue_in<scalar_t, 1>(src, src_ld, rows, bias, scatter, stream);
}

template <typename scalar_t>
kernels::Scatter<scalar_t> one_destination(at::Tensor& out, int64_t offset, int64_t cols) {
  scalar_t* dst = out.mutable_data_ptr<scalar_t>() + offset;
  return {{dst, dst, dst}, {out.size(1), out.size(1), out.size(1)}, {cols, cols, cols}};
}

// [N, C, H, W] channels-last (or any layout: reshape copies then) as the GEMM's [N*H*W, C] rows.
at::Tensor pixel_rows(const at::Tensor& t) { return t.permute({0, 2, 3, 1}).reshape({-1, t.size(1)}); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> inception_cuda(const at::Tensor& input, const at::Tensor& weight_1x1,
                                                              const at::Tensor& bias_1x1, const at::Tensor& weight_3x3,
                                                              const at::Tensor& bias_3x3, const at::Tensor& weight_5x5,
                                                              const at::Tensor& bias_5x5, const at::Tensor& weight_pool,
                                                              const at::Tensor& bias_pool, int64_t ch1x1) {
  // The checks run before any CUDA call: a bad argument raises, it never reaches a kernel.
  Forward f = prepare_forward(input, weight_1x1, bias_1x1, weight_3x3, bias_3x3, weight_5x5, bias_5x5, weight_pool,
                              bias_pool, ch1x1);
  const Problem& pb = f.pb;
  const int64_t M = pb.pixels();
  if (M == 0) return f.result();
  const cuda::DeviceGuard guard(input.device());
  const cuda::Stream stream = cuda::current_stream();
  // torch's max_pool2d(x, 3, 1, 1): max-pool's checks pass for any input this op accepts.
  const maxpool::Forward pool = maxpool::prepare_forward(f.x, {3, 3}, {1, 1}, {1, 1}, {1, 1}, /*ceil_mode=*/false,
                                                         /*save_argmax=*/false, cuda::device_type());
  maxpool::forward_cuda(pool.x, pool.out, pool.pb);
  const at::Tensor gemm = at::mm(pixel_rows(f.x), f.w1.t());          // [M, n1]
  const at::Tensor proj = at::mm(pixel_rows(pool.out), f.wp.t());     // [M, cp]
  const int64_t CO = pb.out_channels();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.x.scalar_type(), "inception_cuda", [&] {
    scalar_t* out = f.out.mutable_data_ptr<scalar_t>();
    const kernels::Scatter<scalar_t> heads{{out, f.red3.mutable_data_ptr<scalar_t>(), f.red5.mutable_data_ptr<scalar_t>()},
                                        {CO, pb.r3, pb.r5},
                                        {pb.ch1x1, pb.ch1x1 + pb.r3, pb.n1()}};
    launch_epilogue(gemm.const_data_ptr<scalar_t>(), pb.n1(), M, f.b1.const_data_ptr<scalar_t>(), heads, stream);
    launch_epilogue(proj.const_data_ptr<scalar_t>(), pb.cp, M, f.bp.const_data_ptr<scalar_t>(),
                    one_destination<scalar_t>(f.out, pb.offp(), pb.cp), stream);
  });
  // The spatial convolutions read the reductions the epilogue above wrote: queued after it on the same stream.
  const at::Tensor y3 = spatial_conv(f.red3, f.w3).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor y5 = spatial_conv(f.red5, f.w5).contiguous(at::MemoryFormat::ChannelsLast);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.x.scalar_type(), "inception_cuda_spatial", [&] {
    const std::tuple<const at::Tensor&, const at::Tensor&, int64_t> branches[] = {
        {y3, f.b3, pb.off3()}, {y5, f.b5, pb.off5()}};
    for (const auto& [y, b, offset] : branches) {
      const int64_t c = y.size(1);
      launch_epilogue(y.const_data_ptr<scalar_t>(), c, M, b.const_data_ptr<scalar_t>(),
                      one_destination<scalar_t>(f.out, offset, c), stream);
    }
  });
  return f.result();
}

}  // namespace
}  // namespace cnx::inception

TORCH_LIBRARY_IMPL(CNX_OPS, CNX_CUDA_KEY, m) { m.impl("inception", &cnx::inception::inception_cuda); }
