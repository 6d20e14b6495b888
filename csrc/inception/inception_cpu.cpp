// The fused Inception op on the CPU. Two stages:
//  1. per tile of pixels (at::parallel_for over tiles): the three 1x1 convolutions as one GEMM into an L2 tile,
//     whose epilogue (bias + ReLU) scatters its columns to the output's ch1x1 slice and the two reductions;
//     then the tile's 3x3 max-pool into a second L2 tile, its GEMM with the pool projection, and the epilogue
//     into the output's last slice. The input tile is read from memory once and the pooled values never are.
//  2. the 3x3 and 5x5 convolutions on the reductions (oneDNN, channels-last), each followed by the epilogue
//     that adds the bias, applies the ReLU and writes the output slice. oneDNN cannot write into a strided
//     channel slice, so the copy stays; it is the pass eager would spend on ReLU anyway, and it replaces the cat.
// The GEMMs inside the parallel region run single-threaded (neither BLAS nor oneDNN nests threads), one tile per
// task.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mkldnn_convolution.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <optional>
#include <utility>

#include "inception/inception.h"
#include "inception/inception_cpu_kernel.h"

namespace cnx::inception {
namespace {

// Element `i` of the buffer at p, of elements `size` bytes wide.
template <typename P>
P* at_element(P* p, int64_t i, int64_t size) {
  using Byte = std::conditional_t<std::is_const_v<P>, const char, char>;
  return reinterpret_cast<P*>(reinterpret_cast<Byte*>(p) + i * size);
}

// a [rows, K] (contiguous rows: pixels of a channels-last input) times w^T (w: [N, K]): [rows, N], row-major.
// fp32 goes through oneDNN, which returns its own buffer; other dtypes through at::mm into `scratch` (allocated on
// first use; double has no oneDNN kernel; bf16 and fp16 at::mm already runs on oneDNN). MKL's sgemm, which at::mm
// calls for fp32, runs its AVX2 code on AMD CPUs where oneDNN runs AVX-512.
//  - With `packed` (set_cpu_prepacked), oneDNN's matmul on the weight in its own blocked layout. One thread of an
//    AMD EPYC Zen 5, AVX-512: 4b's 196 x 512 x 296 tile 276 us (210 GF/s) where the 1x1 convolution below takes
//    413 us and at::mm 671 us; 5b's 98 x 832 x 624 465 / 720 / 1217 us; at 25-49 rows still 1.2-2.5x at::mm.
//  - Without, a 1x1 convolution over the tile's rows (channels-last (1, N, 1, rows): the same rows), which
//    reorders the weight to that layout on every call: tiles under kMinOneDnnRows rows (batch 1 from 14 x 14 down)
//    stay on at::mm, where in `make bench` the convolution's tiles were no faster (GoogLeNet's 14 x 14 and 7 x 7
//    blocks at batch 1: 0.83-1.19x the at::mm ones, 0.95x at the median). Packing per call instead costs more than
//    it saves (mkldnn::_reorder_linear_weight of 4b's weight: 319 us).
constexpr int64_t kMinOneDnnRows = 128;

at::Tensor packed_matmul(const at::Tensor& a, const at::Tensor& packed) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               c10::string_view, c10::List<std::optional<at::Scalar>>,
                                               std::optional<c10::string_view>)>();
  return op.call(a, packed, std::nullopt, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
}

at::Tensor gemm_rows(const at::Tensor& a, const at::Tensor& w, const at::Tensor& packed, at::Tensor& scratch,
                     int64_t max_rows) {
  if (packed.defined()) return packed_matmul(a, packed);
  if (a.scalar_type() == at::kFloat && a.size(0) >= kMinOneDnnRows && at::hasMKLDNN()) {
    const int64_t rows = a.size(0), K = a.size(1);
    const at::Tensor image = a.reshape({1, 1, rows, K}).permute({0, 3, 1, 2});  // (1, K, 1, rows) channels-last
    return at::mkldnn_convolution(image, w.reshape({w.size(0), K, 1, 1}), /*bias=*/{}, /*padding=*/{0, 0},
                                  /*stride=*/{1, 1}, /*dilation=*/{1, 1}, /*groups=*/1)
        .contiguous(at::MemoryFormat::ChannelsLast);
  }
  if (!scratch.defined()) scratch = at::empty({max_rows, w.size(0)}, a.options());
  at::Tensor out = scratch.narrow(0, 0, a.size(0));
  at::mm_out(out, a, w.t());
  return out;
}

struct Prepacked {
  at::Tensor source_1x1, packed_1x1, source_pool, packed_pool;
};
thread_local Prepacked prepacked;

// This call's packs: both, when its weights are the very tensors they were packed from and the dtype is fp32.
std::pair<at::Tensor, at::Tensor> packs_for(const at::Tensor& weight_1x1, const at::Tensor& weight_pool) {
  const Prepacked& p = prepacked;
  if (!p.packed_1x1.defined() || weight_1x1.scalar_type() != at::kFloat ||
      weight_1x1.unsafeGetTensorImpl() != p.source_1x1.unsafeGetTensorImpl() ||
      weight_pool.unsafeGetTensorImpl() != p.source_pool.unsafeGetTensorImpl())
    return {};
  return {p.packed_1x1, p.packed_pool};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> inception_cpu(const at::Tensor& input, const at::Tensor& weight_1x1,
                                                             const at::Tensor& bias_1x1, const at::Tensor& weight_3x3,
                                                             const at::Tensor& bias_3x3, const at::Tensor& weight_5x5,
                                                             const at::Tensor& bias_5x5, const at::Tensor& weight_pool,
                                                             const at::Tensor& bias_pool, int64_t ch1x1) {
  const Forward f = prepare_forward(input, weight_1x1, bias_1x1, weight_3x3, bias_3x3, weight_5x5, bias_5x5,
                                    weight_pool, bias_pool, ch1x1);
  const Problem& pb = f.pb;
  const std::pair<at::Tensor, at::Tensor> packs = packs_for(weight_1x1, weight_pool);
  const int64_t M = pb.pixels();
  if (M == 0) return f.result();
  const auto dtype = f.x.scalar_type();
  const int64_t es = f.x.element_size(), CO = pb.out_channels();
  const auto epilogue = CNX_CPU_DISPATCH(inception_bias_relu_kernel);
  const auto pool = CNX_CPU_DISPATCH(inception_pool_rows_kernel);
  void* out = f.out.mutable_data_ptr();

  // Stage 1: the 1x1 GEMM and the pool projection, tile by tile.
  const at::Tensor X = f.x.permute({0, 2, 3, 1}).reshape({M, pb.C});  // a view: x is channels-last
  const int64_t rows = tile_rows(pb, at::get_num_threads()), tiles = (M + rows - 1) / rows;
  const void *b1 = f.b1.const_data_ptr(), *bp = f.bp.const_data_ptr();
  void *red3 = f.red3.mutable_data_ptr(), *red5 = f.red5.mutable_data_ptr();
  // The GEMMs are ATen calls made from the pool's threads, which do not inherit this thread's dispatch state
  // (autograd is already handled above this kernel): carry it over.
  const at::ThreadLocalState state;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard guard(state);
    at::Tensor pooled = at::empty({rows, pb.C}, f.x.options()), gemm, proj;  // the last two: at::mm's outputs
    for (int64_t t = begin; t < end; ++t) {
      const int64_t m0 = t * rows, mb = std::min(rows, M - m0);
      const at::Tensor a = pooled.narrow(0, 0, mb);
      const at::Tensor g = gemm_rows(X.narrow(0, m0, mb), f.w1, packs.first, gemm, rows);
      const void* gp = g.const_data_ptr();
      const int64_t n1 = pb.n1();
      epilogue(dtype, gp, n1, mb, pb.ch1x1, b1, at_element(out, m0 * CO, es), CO);
      epilogue(dtype, at_element(gp, pb.ch1x1, es), n1, mb, pb.r3, at_element(b1, pb.ch1x1, es),
               at_element(red3, m0 * pb.r3, es), pb.r3);
      epilogue(dtype, at_element(gp, pb.ch1x1 + pb.r3, es), n1, mb, pb.r5, at_element(b1, pb.ch1x1 + pb.r3, es),
               at_element(red5, m0 * pb.r5, es), pb.r5);
      pool(dtype, f.x.const_data_ptr(), pb, m0, m0 + mb, a.mutable_data_ptr());
      const at::Tensor p = gemm_rows(a, f.wp, packs.second, proj, rows);
      epilogue(dtype, p.const_data_ptr(), pb.cp, mb, pb.cp, bp, at_element(out, m0 * CO + pb.offp(), es), CO);
    }
  });

  // Stage 2: the spatial convolutions, each with its epilogue into the output slice.
  const std::tuple<const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t> spatial[] = {
      {f.red3, f.w3, f.b3, pb.off3()}, {f.red5, f.w5, f.b5, pb.off5()}};
  for (const auto& [red, w, b, offset] : spatial) {
    const at::Tensor y = spatial_conv(red, w).contiguous(at::MemoryFormat::ChannelsLast);
    const int64_t c = w.size(0);
    const void *yp = y.const_data_ptr(), *bias = b.const_data_ptr();
    at::parallel_for(0, M, rows, [&](int64_t begin, int64_t end) {
      epilogue(dtype, at_element(yp, begin * c, es), c, end - begin, c, bias, at_element(out, begin * CO + offset, es),
               CO);
    });
  }
  return f.result();
}

}  // namespace

void set_cpu_prepacked(const at::Tensor& source_1x1, const at::Tensor& packed_1x1, const at::Tensor& source_pool,
                       const at::Tensor& packed_pool) {
  prepacked = {source_1x1, packed_1x1, source_pool, packed_pool};
}

}  // namespace cnx::inception

TORCH_LIBRARY_IMPL(classicnets_ext, CPU, m) { m.impl("inception", &cnx::inception::inception_cpu); }
