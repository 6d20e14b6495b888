// The fused Inception op on CUDA tensors. The same two stages as on the CPU (inception_cpu.cpp):
//  1. the three 1x1 convolutions as one cuBLAS GEMM [N*H*W, C] x [C, n1] into a workspace, then one epilogue
//     kernel that adds the bias, applies the ReLU and scatters the columns to the output's ch1x1 slice and the
//     two reductions; the pool projection as one kernel of ours that pools its A tile while loading it;
//  2. the 3x3 and 5x5 convolutions (cuDNN, channels-last), each followed by the epilogue into its output slice:
//     cuDNN cannot write into a strided channel slice, so the copy stays, and replaces the ReLU's pass and the cat.
// Geometry comes from the functions below; kernels live in inception_cuda_kernels.cuh. The CPU emulator
// (tests/emu) compiles this whole file, launchers included.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common/cuda_helpers.cuh"
#include "inception/inception.h"
#include "inception/inception_cuda_kernels.cuh"

namespace cnx::inception {
namespace {

constexpr int kEpilogueThreads = 256;

// rows x (scatter.end[2]) elements of src into the scatter's destinations, bias + ReLU on the way.
template <typename scalar_t>
void launch_epilogue(const scalar_t* src, int64_t src_ld, int64_t rows, const scalar_t* bias,
                     const kernels::Scatter<scalar_t>& scatter, cuda::Stream stream) {
  const int64_t total = rows * scatter.end[2];
  if (total == 0) return;
  const unsigned int grid = cuda::capped_grid(cuda::ceil_div<int64_t>(total, kEpilogueThreads), kEpilogueThreads);
  cuda::launch(kernels::bias_relu_scatter_kernel<scalar_t>, grid, kEpilogueThreads, 0, stream, src, src_ld, rows,
               bias, scatter);
  CNX_CUDA_LAUNCH_CHECK();
}

// x: pixel tiles; y: projection-channel tiles, at most the device's gridDim.y (the kernel strides over the rest).
dim3 pool_projection_grid(const Problem& pb) {
  const int64_t channel_tiles = cuda::ceil_div<int64_t>(pb.cp, kernels::kPoolBN);
  return dim3(static_cast<unsigned int>(cuda::ceil_div<int64_t>(pb.pixels(), kernels::kPoolBM)),
              static_cast<unsigned int>(std::min<int64_t>(channel_tiles, cuda::device_properties().maxGridSize[1])));
}

template <typename scalar_t>
kernels::Scatter<scalar_t> one_destination(at::Tensor& out, int64_t offset, int64_t cols) {
  scalar_t* dst = out.mutable_data_ptr<scalar_t>() + offset;
  return {{dst, dst, dst}, {out.size(1), out.size(1), out.size(1)}, {cols, cols, cols}};
}

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
  const at::Tensor X = f.x.permute({0, 2, 3, 1}).reshape({M, pb.C});  // a view: x is channels-last
  const at::Tensor gemm = at::mm(X, f.w1.t());                       // [M, n1]
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.x.scalar_type(), "inception_cuda", [&] {
    const int64_t CO = pb.out_channels();
    scalar_t* out = f.out.mutable_data_ptr<scalar_t>();
    const kernels::Scatter<scalar_t> heads{{out, f.red3.mutable_data_ptr<scalar_t>(), f.red5.mutable_data_ptr<scalar_t>()},
                                        {CO, pb.r3, pb.r5},
                                        {pb.ch1x1, pb.ch1x1 + pb.r3, pb.n1()}};
    launch_epilogue(gemm.const_data_ptr<scalar_t>(), pb.n1(), M, f.b1.const_data_ptr<scalar_t>(), heads, stream);
    cuda::launch(kernels::pool_projection_kernel<scalar_t>, pool_projection_grid(pb), kernels::kPoolThreads, 0, stream,
                 f.x.const_data_ptr<scalar_t>(), f.wp.const_data_ptr<scalar_t>(), f.bp.const_data_ptr<scalar_t>(),
                 out + pb.offp(), CO, pb);
    CNX_CUDA_LAUNCH_CHECK();
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
