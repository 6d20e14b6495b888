// Fused ReLU -> max-pool -> LRN CPU kernels. setup.py compiles this file once per instruction set; the
// vector code is max pooling's and LRN's own (maxpool_cpu_vec.h, lrn_cpu_vec.h), run back to back on
// tiles of whole pooled rows of one sample (see pool_lrn_cpu_kernel.h), with the ReLU folded in as
// pool_lrn_math.h explains.
//
// Forward, per tile: pool every channel's rows (RowPooler, or the channels-last row scan) into the tile,
// ReLU it, then LRN across the tile's channels into y. The tile is scratch in inference, and the saved
// `pooled` tensor itself when training. Memory traffic per element: x read once (plus the rows two tiles
// share), y written once; in training, pooled and the argmax written once more. Unfused, pooled would be
// written and read back, and ReLU would read and write x once more.
// Backward, per block of input rows: the LRN backward of the pooled rows that cover them (from grad_output
// and pooled, into a tile, the ReLU mask applied as it is stored), then the scatter (channels-first) or gather
// (channels-last) into grad_input, the next channel's rows of grad_input prefetched for writing
// (prefetch_rows_for_write). Memory traffic per element: grad_output, pooled and the argmax read (a pooled row at
// a block boundary twice), grad_input written once. Unfused, the LRN gradient would be written and read back.
#include "pool_lrn/pool_lrn_cpu_kernel.h"

#include <ATen/Dispatch.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "lrn/lrn_cpu_vec.h"
#include "maxpool/maxpool_cpu_vec.h"

namespace cnx::cpu::CPU_CAPABILITY {
namespace {

// pool_lrn::relu on vectors of the accumulation type, bf16 and fp16 widened by cpu_vec.h's load and store
// (element by element, c10::Half's conversions made the fp16 fused op slower than the two ops). Comparisons with
// NaN are false, so NaN passes, as in torch.
template <typename scalar_t>
void relu_inplace(scalar_t* v, int64_t count) {
  using V = at::vec::Vectorized<at::opmath_type<scalar_t>>;
  const V zero(0);
  for (int64_t i = 0; i < count; i += V::size()) {
    const int64_t n = std::min<int64_t>(V::size(), count - i);
    const V a = load(v + i, n);
    store_exact(v + i, V::blendv(a, zero, a < zero), n);
  }
}

// Input planes this small (AlexNet's 27 x 27 before pool2: 2.9 KiB in fp32) are pooled without the software
// prefetch when a tile holds whole planes. Its cost there, raw ops interleaved in one process, 2 threads, AMD EPYC
// Zen 5, 8x256x27x27 fp32 against the two separate ops, with -> without: training forward (cold cache) 1.12-1.20x ->
// 1.19-1.27x on AVX-512 and 1.12x -> 1.21x on avx2, inference 1.34-1.38x -> 1.37-1.39x (avx2 1.24x -> 1.30x), warm
// caches 0.93x -> 1.02-1.05x. At 3.8-12 KiB planes the prefetch still paid in cold-cache inference (31x31, 41x41,
// 55x55: 1.35-1.47x with, 1.17-1.40x without).
constexpr int64_t kSmallPlaneBytes = 4096;

template <typename scalar_t, typename index_t>
void forward_channels_first(const scalar_t* x, scalar_t* y, scalar_t* pooled, index_t* argmax, const pool_lrn::Problem& pb,
                            pool_lrn::Tiling tiling, const lrn::Params<at::opmath_type<scalar_t>>& p, int64_t begin,
                            int64_t end) {
  const maxpool::Problem& pool = pb.pool;
  const int64_t C = pool.C, OH = pool.h.out, OW = pool.w.out, in_plane = pool.h.in * pool.w.in, out_plane = OH * OW;
  const int64_t rows = tiling.rows, blocks = tiling.blocks;
  std::vector<scalar_t> scratch(pooled == nullptr ? C * rows * OW : 0);
  // A tile reads a few KiB of each channel's plane, one channel after another: each jump to the next plane
  // would restart the hardware prefetcher, so the next channel's rows are prefetched while this one pools.
  // In `make bench` (AVX-512 EPYC, cold cache), AlexNet's 8x96x55x55 NCHW inference went from 1.02x to
  // 1.3x the two separate ops. Not where tiles are whole planes of at most kSmallPlaneBytes: the next
  // channel's rows then follow this one's in memory, the hardware's stream runs on into them, and the
  // prefetches only cost (kSmallPlaneBytes' measurements).
  const bool prefetch = !(rows >= OH && in_plane * int64_t(sizeof(scalar_t)) <= kSmallPlaneBytes);
  PlanePooler<scalar_t, index_t> pooler(pool, /*prefetch_full=*/prefetch);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / blocks, oh0 = (item % blocks) * rows, oh1 = std::min(OH, oh0 + rows);
    const int64_t width = (oh1 - oh0) * OW, first = n * C * out_plane + oh0 * OW;
    // The tile: channel c's rows at tile[c * ts], in the saved tensor when training.
    scalar_t* tile = pooled == nullptr ? scratch.data() : pooled + first;
    const int64_t ts = pooled == nullptr ? width : out_plane;
    const scalar_t* xn = x + n * C * in_plane;
    for (int64_t c = 0; c < C; ++c) {
      PrefetchStream ahead;
      if (c + 1 < C && prefetch)
        ahead = rows_ahead(xn, pool.h, in_plane, pool.w.in, {c, oh0, oh1}, {c + 1, oh0, oh1}, oh1 - oh0);
      index_t* arg = nullptr;
      if constexpr (!std::is_void_v<index_t>) arg = argmax + first + c * out_plane;
      // Its stores may run past a row's end: in the scratch tile into the next channel's rows, written next;
      // in the saved tensor (training) not past this block's rows, which end where another task's begin.
      pooler.pool_rows(xn + c * in_plane, x + pool.N * C * in_plane, tile + c * ts,
                       pooled == nullptr ? tile + C * ts : tile + c * ts + width, arg, oh0, oh1, &ahead);
      if (pb.relu) relu_inplace(tile + c * ts, width);
    }
    for (int64_t j = 0; j < width; j += lrn::kColumnBlock)
      forward_columns(tile + j, ts, y + first + j, out_plane, C, std::min(lrn::kColumnBlock, width - j), p);
  }
}

template <typename scalar_t, typename index_t>
void forward_channels_last(const scalar_t* x, scalar_t* y, scalar_t* pooled, index_t* argmax, const pool_lrn::Problem& pb,
                           const lrn::Params<at::opmath_type<scalar_t>>& p, int64_t begin, int64_t end) {
  const maxpool::Problem& pool = pb.pool;
  const int64_t C = pool.C, OH = pool.h.out, OW = pool.w.out, in_sample = pool.h.in * pool.w.in * C;
  auto lanes = argmax_lanes<scalar_t, index_t>(C);
  Rows<at::opmath_type<scalar_t>> rows(C, p);
  std::vector<scalar_t> scratch(pooled == nullptr ? OW * C : 0);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / OH, oh = item % OH, first = (n * OH + oh) * OW * C;
    scalar_t* tile = pooled == nullptr ? scratch.data() : pooled + first;
    index_t* arg = nullptr;
    if constexpr (!std::is_void_v<index_t>) arg = argmax + first;
    PrefetchStream ahead = next_rows_channels_last(x, pool, item, end);
    // The ReLU on each position's C pooled values as they are written, rather than in a second pass over the
    // row: alternated processes, 2 threads, cold cache, 8x96x55x55 fp32, Intel Xeon, the channels-last
    // training forward 0.57-0.79 -> 0.52-0.63 ms on AVX-512 (the ReLU had cost it ~35%), unchanged on AVX2.
    pool_row_channels_last<scalar_t, index_t>(x + n * in_sample, tile, arg, lanes.data(), pool, oh, &ahead,
                                              [C, relu = pb.relu](scalar_t* yo) {
                                                if (relu) relu_inplace(yo, C);
                                              });
    rows.forward(tile, y + first, OW, C, p);
  }
}

template <typename scalar_t, typename index_t>
void backward_channels_first(const scalar_t* grad, const scalar_t* pooled, const index_t* argmax, scalar_t* dx,
                             const pool_lrn::Problem& pb, pool_lrn::Tiling tiling,
                             const lrn::Params<at::opmath_type<scalar_t>>& p, int64_t begin, int64_t end) {
  const maxpool::Problem& pool = pb.pool;
  const int64_t C = pool.C, H = pool.h.in, W = pool.w.in, OH = pool.h.out, OW = pool.w.out, in_plane = H * W;
  const int64_t out_plane = OH * OW, rows = tiling.rows, blocks = tiling.blocks;
  BackwardColumns<at::opmath_type<scalar_t>> columns(pb.size, C);
  RowScatterer<scalar_t, index_t> scatterer(pool);
  std::vector<scalar_t> tile;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / blocks, i0 = (item % blocks) * rows, i1 = std::min(H, i0 + rows);
    const auto [lo, hi] = covering_rows(pool.h, i0, i1);
    const int64_t width = (hi - lo) * OW, first = n * C * out_plane + lo * OW;
    tile.resize(C * width);
    for (int64_t j = 0; j < width; j += lrn::kColumnBlock)
      columns.run(grad + first + j, out_plane, pooled + first + j, out_plane, tile.data() + j, width, C,
                  std::min(lrn::kColumnBlock, width - j), p, pb.relu);
    for (int64_t c = 0; c < C; ++c) {
      if (c + 1 < C)
        prefetch_rows_for_write(dx + (n * C + c + 1) * in_plane + i0 * W, (i1 - i0) * W * int64_t(sizeof(scalar_t)));
      scatterer.scatter_rows(tile.data() + c * width, lo, argmax + (n * C + c) * out_plane,
                             dx + (n * C + c) * in_plane, i0, i1);
    }
  }
}

template <typename scalar_t, typename index_t>
void backward_channels_last(const scalar_t* grad, const scalar_t* pooled, const index_t* argmax, scalar_t* dx,
                            const pool_lrn::Problem& pb, pool_lrn::Tiling tiling,
                            const lrn::Params<at::opmath_type<scalar_t>>& p, int64_t begin, int64_t end) {
  const maxpool::Problem& pool = pb.pool;
  const int64_t C = pool.C, H = pool.h.in, W = pool.w.in, OH = pool.h.out, OW = pool.w.out;
  const int64_t rows = tiling.rows, blocks = tiling.blocks;
  Rows<at::opmath_type<scalar_t>> lrn_rows(C, p);
  ChannelsLastGatherer<scalar_t, index_t> gatherer(pool);
  std::vector<scalar_t> tile;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / blocks, i0 = (item % blocks) * rows, i1 = std::min(H, i0 + rows);
    const auto [lo, hi] = covering_rows(pool.h, i0, i1);
    const int64_t count = (hi - lo) * OW * C, first = (n * OH + lo) * OW * C;
    tile.resize(count);
    lrn_rows.backward(grad + first, pooled + first, tile.data(), count / C, C, p, pb.relu);
    for (int64_t ih = i0; ih < i1; ++ih)
      gatherer.gather_row(tile.data(), lo, argmax + n * OH * OW * C, dx + (n * H + ih) * W * C, ih);
  }
}

}  // namespace

void max_pool2d_lrn_forward_kernel(c10::ScalarType dtype, const void* x, void* y, void* pooled, void* argmax,
                                   const pool_lrn::Problem& pb, pool_lrn::Tiling tiling, int64_t begin, int64_t end) {
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, dtype, "max_pool2d_lrn_cpu", [&] {
    const auto p = lrn::Params<at::opmath_type<scalar_t>>::make(pb.size, pb.alpha, pb.beta, pb.k);
    const auto run = [&](auto* a) {
      using index_t = std::remove_pointer_t<decltype(a)>;
      auto* xp = static_cast<const scalar_t*>(x);
      auto* yp = static_cast<scalar_t*>(y);
      auto* pp = static_cast<scalar_t*>(pooled);
      if (pb.pool.channels_last) forward_channels_last<scalar_t, index_t>(xp, yp, pp, a, pb, p, begin, end);
      else forward_channels_first<scalar_t, index_t>(xp, yp, pp, a, pb, tiling, p, begin, end);
    };
    if (argmax == nullptr) run(static_cast<void*>(nullptr));
    else dispatch_argmax(pb.pool, [&](auto tag) { run(static_cast<decltype(tag)*>(argmax)); });
  });
}

void max_pool2d_lrn_backward_kernel(c10::ScalarType dtype, const void* grad, const void* pooled, const void* argmax,
                                    void* grad_input, const pool_lrn::Problem& pb, pool_lrn::Tiling tiling,
                                    int64_t begin, int64_t end) {
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, dtype, "max_pool2d_lrn_backward_cpu", [&] {
    const auto p = lrn::Params<at::opmath_type<scalar_t>>::make(pb.size, pb.alpha, pb.beta, pb.k);
    dispatch_argmax(pb.pool, [&](auto tag) {
      using index_t = decltype(tag);
      auto* gp = static_cast<const scalar_t*>(grad);
      auto* pp = static_cast<const scalar_t*>(pooled);
      auto* ap = static_cast<const index_t*>(argmax);
      auto* dp = static_cast<scalar_t*>(grad_input);
      if (pb.pool.channels_last) backward_channels_last(gp, pp, ap, dp, pb, tiling, p, begin, end);
      else backward_channels_first(gp, pp, ap, dp, pb, tiling, p, begin, end);
    });
  });
}

}  // namespace cnx::cpu::CPU_CAPABILITY
