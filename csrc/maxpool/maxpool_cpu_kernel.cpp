// Max-pool CPU kernels. setup.py compiles this file once per instruction set (-DCPU_CAPABILITY=DEFAULT|AVX2|
// AVX512), so at::vec::Vectorized maps to 256- or 512-bit registers. Only raw pointers cross this file's
// boundary (see maxpool_cpu_kernel.h); the vector code and its design are maxpool_cpu_vec.h, and this file
// splits the work items among them.
#include "maxpool/maxpool_cpu_kernel.h"

#include <ATen/Dispatch.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <optional>

#include "maxpool/maxpool_cpu_vec.h"

namespace cnx::cpu::CPU_CAPABILITY {
namespace {

// Memory traffic: each input row that some window reads is read once from memory (and once more from L1, by
// the horizontal pass over its phases), each output element written once, plus its argmax when saved (1 or
// 4 bytes). Rows shared by two row blocks are read twice, a few percent with kRowBlock rows per block.
template <typename scalar_t, typename index_t>
void forward_channels_first(const scalar_t* x, scalar_t* y, index_t* argmax, const Problem& pb, int64_t begin,
                            int64_t end) {
  const int64_t blocks = (pb.h.out + maxpool::kRowBlock - 1) / maxpool::kRowBlock;
  const int64_t in_plane = pb.h.in * pb.w.in, out_plane = pb.h.out * pb.w.out;
  const auto rows_of = [&](int64_t item) {
    const int64_t oh = (item % blocks) * maxpool::kRowBlock;
    return std::pair{oh, std::min(pb.h.out, oh + maxpool::kRowBlock)};
  };
  // No software prefetch for pool_full_3x3_stride2: with it, AlexNet's pool5 and pool2 ran 1.1-1.2x slower (AVX2).
  PlanePooler<scalar_t, index_t> pooler(pb, /*prefetch_full=*/false);
  // pool_full_3x3_stride2's stores may run into the next rows, up to the end of this task's last item.
  scalar_t* const y_end = y + (end < pb.N * pb.C * blocks ? end / blocks * out_plane + rows_of(end).first * pb.w.out
                                                          : pb.N * pb.C * out_plane);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t plane = item / blocks;
    const auto [oh, oh_end] = rows_of(item);
    const int64_t out = plane * out_plane + oh * pb.w.out;
    index_t* block_argmax = nullptr;
    if constexpr (!std::is_void_v<index_t>) block_argmax = argmax + out;
    PrefetchStream ahead;
    if (item + 1 < end && pooler.uses_row_pooler(oh, oh_end)) {
      const auto [next_oh, next_end] = rows_of(item + 1);
      ahead = rows_ahead(x, pb.h, in_plane, pb.w.in, {plane, oh, oh_end}, {(item + 1) / blocks, next_oh, next_end},
                         oh_end - oh);
    }
    pooler.pool_rows(x + plane * in_plane, x + pb.N * pb.C * in_plane, y + out, y_end, block_argmax, oh, oh_end,
                     &ahead);
  }
}

// Memory traffic: every window reads its taps' rows of C channels; an input element is read by about
// (kH / sH) * (kW / sW) windows, the repeats from cache (the rows of one output row's windows span kH input
// rows, W * C elements each), so memory sees the input about once. Each output element written once, plus
// its argmax when saved.
template <typename scalar_t, typename index_t>
void forward_channels_last(const scalar_t* x, scalar_t* y, index_t* argmax, const Problem& pb, int64_t begin,
                           int64_t end) {
  const int64_t C = pb.C, H = pb.h.in, W = pb.w.in, OH = pb.h.out, OW = pb.w.out;
  auto arg_row = argmax_lanes<scalar_t, index_t>(C);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / OH, oh = item % OH;
    const int64_t out = (n * OH + oh) * OW * C;
    index_t* ar = nullptr;
    if constexpr (!std::is_void_v<index_t>) ar = argmax + out;
    PrefetchStream ahead = next_rows_channels_last(x, pb, item, end);
    pool_row_channels_last<scalar_t, index_t>(x + n * H * W * C, y + out, ar, arg_row.data(), pb, oh, &ahead);
  }
}

// Memory traffic: grad_input written once per element (zeroed and added to while its plane is in cache);
// grad_output and the argmax read once.
template <typename scalar_t, typename index_t>
void backward_channels_first(const scalar_t* grad, const index_t* argmax, scalar_t* grad_input, const Problem& pb,
                             int64_t begin, int64_t end) {
  RowScatterer<scalar_t, index_t> scatterer(pb);
  const int64_t in_plane = pb.h.in * pb.w.in, out_plane = pb.h.out * pb.w.out;
  for (int64_t plane = begin; plane < end; ++plane)
    scatterer.scatter_rows(grad + plane * out_plane, 0, argmax + plane * out_plane, grad_input + plane * in_plane, 0,
                           pb.h.in);
}

template <typename scalar_t, typename index_t>
void backward_channels_last(const scalar_t* grad, const index_t* argmax, scalar_t* grad_input, const Problem& pb,
                            int64_t begin, int64_t end) {
  ChannelsLastGatherer<scalar_t, index_t> gatherer(pb);
  const int64_t C = pb.C, H = pb.h.in, W = pb.w.in, out_sample = pb.h.out * pb.w.out * C;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / H, ih = item % H;
    gatherer.gather_row(grad + n * out_sample, 0, argmax + n * out_sample, grad_input + (n * H + ih) * W * C, ih);
  }
}

}  // namespace

void max_pool2d_forward_kernel(c10::ScalarType dtype, const void* x, void* y, void* argmax, const Problem& pb,
                               int64_t begin, int64_t end) {
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, dtype, "max_pool2d_cpu", [&] {
    const auto run = [&](auto* a) {
      using index_t = std::remove_pointer_t<decltype(a)>;
      auto* xp = static_cast<const scalar_t*>(x);
      auto* yp = static_cast<scalar_t*>(y);
      if (pb.channels_last) forward_channels_last<scalar_t, index_t>(xp, yp, a, pb, begin, end);
      else forward_channels_first<scalar_t, index_t>(xp, yp, a, pb, begin, end);
    };
    if (argmax == nullptr) run(static_cast<void*>(nullptr));
    else dispatch_argmax(pb, [&](auto tag) { run(static_cast<decltype(tag)*>(argmax)); });
  });
}

void max_pool2d_backward_kernel(c10::ScalarType dtype, const void* grad, const void* argmax, void* grad_input,
                                const Problem& pb, int64_t begin, int64_t end) {
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, dtype, "max_pool2d_backward_cpu", [&] {
    dispatch_argmax(pb, [&](auto tag) {
      using index_t = decltype(tag);
      auto* gp = static_cast<const scalar_t*>(grad);
      auto* ap = static_cast<const index_t*>(argmax);
      auto* dp = static_cast<scalar_t*>(grad_input);
      if (pb.channels_last) backward_channels_last(gp, ap, dp, pb, begin, end);
      else backward_channels_first(gp, ap, dp, pb, begin, end);
    });
  });
}

}  // namespace cnx::cpu::CPU_CAPABILITY
