// Fused ReLU -> max-pool -> LRN on CUDA:
//     p = relu?(maxpool(x)),   y_c = p_c * (k + alpha/size * sum_{m = c - lo}^{c + hi} p_m^2)^(-beta),
//     dx = maxpool_gather(threshold_backward(lrn_backward(g, p), p, 0))   (the threshold only with relu),
// lo = size / 2, hi = (size - 1) / 2, windows clipped to [0, C). Each thread's work is a host-device
// function of pool_lrn_math.h (on top of maxpool_math.h and lrn_math.h, shared with the CPU kernels); this
// file only decides which thread computes what. All offsets are 64-bit.
//
// The forward never writes p to global memory unless it is saved for the backward: it reads x once (the
// window overlap hits L1/L2), writes y, and with save_for_backward also p and the 1-byte (or int32) argmax.
// The backward is the three steps of that formula on the saved p: LRN's own CUDA backward (lrn_cuda.cu) into
// gp, torch's threshold_backward in place for the ReLU, max-pool's gather (maxpool_cuda.cu) into dx. gp is a
// pooled-size tensor (a quarter of dx for 3x3/2 windows), written once and read once, mostly from L2. The
// kernel this replaced recomputed the LRN gradient at every window an element was the max of (size^2 reads
// each): forward and backward took 2.70 ms where our two ops in sequence took 0.63 ms (H200, fp16
// 64x96x55x55).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/threshold_backward.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "common/cuda_helpers.cuh"
#include "lrn/lrn.h"
#include "maxpool/maxpool.h"
#include "pool_lrn/pool_lrn.h"
#include "pool_lrn/pool_lrn_math.h"

namespace cnx::pool_lrn {
namespace {

using cuda::ceil_div;

constexpr int kThreads = 256;
// An explicit minimum of resident blocks: without one, ptxas (CUDA 13) spills registers of these kernels to
// reach an occupancy of its own choosing (16-40 bytes of spill loads in the loops); with it, none spill.
constexpr int kMinBlocks = 1;
constexpr int64_t kSmemBudget = 48 * 1024;  // dynamic shared memory per block without opting in
constexpr int64_t kRowElems = 2048;         // pooled values a row block stages: 8 per thread
constexpr int64_t kMinChunk = 8;            // fewest channels a column thread walks when columns are split
constexpr int64_t kColumnWaves = 2;         // waves of resident threads the column kernel aims for

// Channels-first (and channels-last with rows too wide for shared memory): one thread per pooled position
// (n, oh, ow) and chunk of `chunk` channels, walking them in order (forward_column_thread): each channel of
// the chunk plus its halo of lo + hi channels is pooled once into a ring in local memory, and y_c is the LRN
// of the ring's window. Consecutive threads take consecutive ow, so channels-first loads and stores coalesce.
// Memory traffic per output element: the window's taps read (each input element by about
// (kH / sH) * (kW / sW) windows, repeats from L1/L2: DRAM sees x about once), (size - 1) / chunk more
// pooled channels for the halo, y written; with save_for_backward, p and the argmax written. The ring costs
// one local store and up to `size` local loads (L1) per channel; a window wider than kRing pools its channels
// that have left the ring again, size - kRing of them per output (no network has such a window).
template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    forward_columns_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, scalar_t* __restrict__ pooled,
                           index_t* __restrict__ argmax, Problem pb, lrn::Params<at::opmath_type<scalar_t>> lp,
                           int64_t chunk, int64_t total) {
  for (int64_t t = cuda::global_thread(); t < total; t += cuda::grid_threads())
    forward_column_thread<kChannelsLast>(x, y, pooled, argmax, pb, lp, chunk, t);
}

// Channels-last: a block takes `rows_per_block` consecutive pooled positions -- contiguous rows of C channels
// in every tensor -- and its threads pool each (position, channel) into shared memory (pool_row_element,
// consecutive threads on consecutive channels, so every tap's load coalesces), then after a barrier compute
// y_c from the staged row with a direct window sum (lrn_staged_value: exact whatever the size, at `size`
// reads per channel, as lrn_cuda.cu's row kernels). Fast-path windows (3x3/2, 3x3/1, 2x2/2: every network
// here) pool with 32-bit coordinates from multiply-shift dividers; the generic form spends three 64-bit
// divisions per element and runtime-bounded window loops. Offsets inside a block are ints (a block's rows fit
// in 48 KB); offsets into the tensors are 64-bit.
// Memory traffic per output element: the window's taps read (repeats from L1/L2, DRAM sees x about once), y
// written (with save_for_backward, p and the argmax too); shared memory: one acc_t store and `size` loads.
// Pb: the Problem, or FixedRows<K, S> for a fast-path window (pool_row_element's 32-bit form).
template <typename scalar_t, typename index_t, typename Pb>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    forward_rows_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, scalar_t* __restrict__ pooled,
                        index_t* __restrict__ argmax, Pb pb, lrn::Params<at::opmath_type<scalar_t>> lp, int64_t rows,
                        int C, int64_t rows_per_block) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t* ps = cuda::dynamic_smem<acc_t>();
  for (int64_t row = blockIdx.x * rows_per_block; row < rows; row += gridDim.x * rows_per_block) {
    const int64_t offset = row * C;
    const int count = static_cast<int>(std::min<int64_t>(rows - row, rows_per_block)) * C;
    for (int e = threadIdx.x; e < count; e += blockDim.x)
      ps[e] = pool_row_element<acc_t>(x, pooled, argmax, pb, offset + e);
    __syncthreads();
    for (int e = threadIdx.x; e < count; e += blockDim.x) {
      const int c = e % C;
      y[offset + e] = static_cast<scalar_t>(lrn_staged_value(ps + (e - c), 1, 0, C, c, lp));
    }
    __syncthreads();
  }
}

// Channels-first with a fast-path window (3x3/2, 3x3/1, 2x2/2) and size <= kTileMaxSize (AlexNet, GoogLeNet):
// a block takes a tile of kTilePositions consecutive pooled positions x `cc` channels [c0, c0 + cc). Step 1:
// its threads pool every channel the tile's LRN windows need -- [c0 - lo, c0 + cc + hi) clipped to [0, C) --
// into shared memory, one window per thread (pool_fixed_window: its K x K loads issue together), consecutive
// threads on consecutive positions, so each tap's loads coalesce; the tile's own channels also store p and the
// argmax. Step 2, after a barrier: each output is its channel's direct window sum over the staged column
// (lrn_staged_value; conflict-free, consecutive threads read consecutive words).
// Memory traffic per output element: the window's taps (DRAM sees x about once; repeats from L1/L2), the
// (size - 1) / cc halo channels pooled again (from L2), y written (with save_for_backward, p and the argmax
// too); shared memory: one acc_t store per staged channel and `size` loads per output.
// The kernel it replaced (lease 3: 0.093 ms inference for fp16 64x96x55x55, 2x the predicted ~0.05) had a
// thread pool 8 channels plus a 4-channel halo in registers, 108 loads and ~2,600 instructions per thread at
// 74 registers: 1.5x the pooling for the halo, and an occupancy of 3 blocks per SM.
constexpr int kTilePositions = 64;  // a divisor of kThreads: a thread keeps one position in both steps
constexpr int kTileChannels = 32;   // the halo of a size-5 window then adds 4 / 32 pooled channels
constexpr int64_t kTileMaxSize = lrn::kDirectWindow;
static_assert(kThreads % kTilePositions == 0, "each thread owns one position of the tile");

template <typename scalar_t, typename index_t, int K, int S>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    forward_tiles_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, scalar_t* __restrict__ pooled,
                         index_t* __restrict__ argmax, maxpool::FixedProblem<K, S> fp, bool with_relu,
                         lrn::Params<at::opmath_type<scalar_t>> lp, int32_t cc) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t* ps = cuda::dynamic_smem<acc_t>();  // staged channel j, position s at ps[j * kTilePositions + s]
  const int64_t positions = int64_t(fp.N) * fp.h.out * fp.w.out;
  const int64_t in_plane = int64_t(fp.h.in) * fp.w.in, out_plane = int64_t(fp.h.out) * fp.w.out;
  const int32_t channel_tiles = ceil_div(fp.C, cc);
  const int64_t tiles = ceil_div<int64_t>(positions, kTilePositions) * channel_tiles;
  const int s = threadIdx.x % kTilePositions, lane_rows = kThreads / kTilePositions;
  const int32_t row0 = int32_t(threadIdx.x / kTilePositions);
  // Channel tiles of the same positions take consecutive blocks: a tile's halo is its neighbours' own
  // channels, pooled from input they have just brought into L2.
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t position_tile = div_nonneg(tile, int64_t(channel_tiles));
    const int32_t c0 = int32_t(tile - position_tile * channel_tiles) * cc;
    const int32_t end = c0 + cc < fp.C ? c0 + cc : fp.C;
    const int32_t first = c0 - int32_t(lp.lo) > 0 ? c0 - int32_t(lp.lo) : 0;
    const int32_t last = end + int32_t(lp.hi) < fp.C ? end + int32_t(lp.hi) : fp.C;  // staged: [first, last)
    const int64_t pos = position_tile * kTilePositions + s;
    const bool live = pos < positions;  // the last tile's spare threads only join the barriers
    int64_t out_base = 0;
    if (live) {
      const uint32_t rest = fp.out_div[1].div(uint32_t(pos)), n = fp.out_div[2].div(rest);
      const int32_t ow = int32_t(pos) - int32_t(rest) * fp.w.out, oh = int32_t(rest) - int32_t(n) * fp.h.out;
      const maxpool::Taps<int32_t> th = maxpool::taps_of(fp.h, oh), tw = maxpool::taps_of(fp.w, ow);
      const scalar_t* xn = x + int64_t(n) * fp.C * in_plane;
      out_base = int64_t(n) * fp.C * out_plane + int64_t(oh) * fp.w.out + ow;
      for (int32_t c = first + row0; c < last; c += lane_rows) {
        IndexOf<index_t> arg;
        const acc_t p = pool_fixed_window<K, acc_t>(xn + int64_t(c) * in_plane, fp.w.in, 1, th, tw, with_relu, arg);
        ps[(c - first) * kTilePositions + s] = p;
        if constexpr (!std::is_void_v<index_t>) {
          if (c >= c0 && c < end) {  // the tile's own channels; the halo is only read
            pooled[out_base + int64_t(c) * out_plane] = static_cast<scalar_t>(p);
            argmax[out_base + int64_t(c) * out_plane] = static_cast<index_t>(arg);
          }
        }
      }
    }
    __syncthreads();
    if (live) {
      for (int32_t c = c0 + row0; c < end; c += lane_rows)
        y[out_base + int64_t(c) * out_plane] =
            static_cast<scalar_t>(lrn_staged_value(ps + s, kTilePositions, first, fp.C, c, lp));
    }
    __syncthreads();  // the next tile overwrites the staged values
  }
}

// Channels per tile (all C up to kTileChannels) and the shared memory its staged channels take.
int32_t tile_channels(const Problem& pb) { return int32_t(std::min<int64_t>(pb.pool.C, kTileChannels)); }

template <typename acc_t>
int64_t tile_smem(const Problem& pb) {
  return std::min<int64_t>(pb.pool.C, tile_channels(pb) + pb.size - 1) * kTilePositions * int64_t(sizeof(acc_t));
}

// ---- Launchers ----

int64_t resident_threads() {
  const auto& prop = cuda::device_properties();
  return int64_t(prop.multiProcessorCount) * prop.maxThreadsPerMultiProcessor;
}

// Channels per column thread: all C, unless the N * OH * OW columns alone leave the GPU short of
// kColumnWaves waves of threads (small batches); then chunks of at least max(kMinChunk, 4 * (size - 1))
// channels, so that the halo -- size - 1 channels pooled twice -- adds at most a quarter.
int64_t column_chunk(const Problem& pb, int64_t columns) {
  const int64_t chunks = ceil_div(kColumnWaves * resident_threads(), columns);
  const int64_t chunk = std::max({kMinChunk, 4 * (pb.size - 1), ceil_div(pb.pool.C, chunks)});
  return std::min(chunk, pb.pool.C);
}

// Row kernel for channels-last rows that fit shared memory, as acc_t: up to kRowElems pooled values per
// block, fewer when that would leave an SM idle. 0: the column kernel.
template <typename acc_t>
int64_t rows_per_block(const Problem& pb, int64_t rows) {
  const int64_t row_bytes = pb.pool.C * int64_t(sizeof(acc_t));
  if (!pb.pool.channels_last || row_bytes > kSmemBudget) return 0;
  const int64_t sms = cuda::device_properties().multiProcessorCount;
  return std::max<int64_t>(1, std::min({kSmemBudget / row_bytes, kRowElems / pb.pool.C, ceil_div(rows, sms)}));
}

template <typename scalar_t, typename index_t>
void launch_forward(const scalar_t* x, scalar_t* y, scalar_t* pooled, index_t* argmax, const Problem& pb,
                    const lrn::Params<at::opmath_type<scalar_t>>& lp, cuda::Stream stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = pb.pool.N * pb.pool.h.out * pb.pool.w.out;  // pooled positions
  if (const int64_t rpb = rows_per_block<acc_t>(pb, rows); rpb > 0) {
    const auto rows_kernel = [&](const auto& problem) {
      cuda::launch(forward_rows_kernel<scalar_t, index_t, std::decay_t<decltype(problem)>>,
                   cuda::capped_grid(ceil_div(rows, rpb), kThreads), kThreads, rpb * pb.pool.C * sizeof(acc_t), stream,
                   x, y, pooled, argmax, problem, lp, rows, int(pb.pool.C), rpb);
      CNX_CUDA_LAUNCH_CHECK();
    };
    if constexpr (!std::is_same_v<index_t, int32_t>) {  // (fast-path windows have byte argmaxes)
      if (maxpool::with_fixed_window(pb.pool, [&](const auto& fp) { rows_kernel(fixed_rows(fp, pb.relu)); })) return;
    }
    rows_kernel(pb);
    return;
  }
  if constexpr (!std::is_same_v<index_t, int32_t>) {  // (fast-path windows have byte argmaxes)
    const auto tiled = [&](auto fp) {
      constexpr int K = decltype(fp.h)::kernel, S = decltype(fp.h)::stride;
      const int64_t tiles = ceil_div<int64_t>(rows, kTilePositions) * ceil_div(pb.pool.C, int64_t(tile_channels(pb)));
      cuda::launch(forward_tiles_kernel<scalar_t, index_t, K, S>, cuda::capped_grid(tiles, kThreads), kThreads,
                   tile_smem<acc_t>(pb), stream, x, y, pooled, argmax, fp, pb.relu, lp, tile_channels(pb));
      CNX_CUDA_LAUNCH_CHECK();
    };
    if (!pb.pool.channels_last && pb.size <= kTileMaxSize && maxpool::with_fixed_window(pb.pool, tiled)) return;
  }
  const int64_t chunk = column_chunk(pb, rows);
  const int64_t total = rows * ceil_div(pb.pool.C, chunk);
  const auto kernel = pb.pool.channels_last ? forward_columns_kernel<scalar_t, index_t, true>
                                            : forward_columns_kernel<scalar_t, index_t, false>;
  cuda::launch(kernel, cuda::capped_grid(ceil_div<int64_t>(total, kThreads), kThreads), kThreads, 0, stream, x, y,
               pooled, argmax, pb, lp, chunk, total);
  CNX_CUDA_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> max_pool2d_lrn_cuda(
    const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    bool ceil_mode, int64_t size, double alpha, double beta, double k, bool relu, bool save_for_backward) {
  // Every check first (prepare_forward): the guard and all below run only for arguments the op accepts.
  const Forward f = prepare_forward(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu,
                                    save_for_backward, cuda::device_type());
  if (f.out.numel() > 0) {
    const cuda::DeviceGuard guard(f.x.device());
    const cuda::Stream stream = cuda::current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.x.scalar_type(), "max_pool2d_lrn_cuda", [&] {
      const auto lp = lrn::Params<at::opmath_type<scalar_t>>::make(f.pb.size, f.pb.alpha, beta, k);
      const scalar_t* xp = f.x.const_data_ptr<scalar_t>();
      scalar_t* yp = f.out.mutable_data_ptr<scalar_t>();
      if (!f.save) {
        launch_forward<scalar_t, void>(xp, yp, nullptr, nullptr, f.pb, lp, stream);
      } else {
        scalar_t* pp = f.pooled.mutable_data_ptr<scalar_t>();
        if (maxpool::byte_argmax(f.pb.pool))
          launch_forward(xp, yp, pp, f.argmax.mutable_data_ptr<uint8_t>(), f.pb, lp, stream);
        else
          launch_forward(xp, yp, pp, f.argmax.mutable_data_ptr<int32_t>(), f.pb, lp, stream);
      }
    });
  }
  return f.result();
}

at::Tensor max_pool2d_lrn_backward_cuda(const at::Tensor& grad_output, const at::Tensor& pooled,
                                        const at::Tensor& argmax, at::IntArrayRef input_size,
                                        at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                        int64_t size, double alpha, double beta, double k, bool relu) {
  const Backward b = prepare_backward(grad_output, pooled, argmax, input_size, kernel_size, stride, padding, size,
                                      alpha, beta, k, relu, cuda::device_type());
  if (b.grad_input.numel() > 0) {
    const cuda::DeviceGuard guard(b.argmax.device());
    // Autograd must not see this kernel's own ATen call: above it, an out= call on tensors that require
    // grad is refused. gp comes back in p's layout, which is the argmax's; threshold_backward in place
    // keeps it there.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor gp = lrn::lrn_backward_cuda(b.grad, b.pooled, b.pb.size, b.pb.alpha, beta, k);
    if (b.pb.relu) at::threshold_backward_out(gp, gp, b.pooled, 0);
    maxpool::gather_backward_cuda(gp, b.argmax, b.grad_input, b.pb.pool);
  }
  return b.result();
}

}  // namespace
}  // namespace cnx::pool_lrn

TORCH_LIBRARY_IMPL(CNX_OPS, CNX_CUDA_KEY, m) {
  m.impl("max_pool2d_lrn", &cnx::pool_lrn::max_pool2d_lrn_cuda);
  m.impl("max_pool2d_lrn_backward", &cnx::pool_lrn::max_pool2d_lrn_backward_cuda);
}
