// LRN on CUDA. The per-element math is lrn_math.h, shared with the CPU kernels; this file decides which
// thread computes which element and where it finds the window:
//     s_c  = k + (alpha / size) * sum_{m = c - lo}^{c + hi} x_m^2,     y_c = x_c * s_c^(-beta),
//     dx_j = g_j * p_j - (2 * alpha * beta / size) * x_j * sum_{i = j - hi}^{j + lo} t_i,
// with p_c = s_c^(-beta), t_i = g_i * x_i * p_i / s_i, lo = size / 2, hi = (size - 1) / 2, every window
// clipped to [0, C).
//
// Both passes are bandwidth-bound, so DRAM sees each element once: the forward reads x and writes y
// (2 * sizeof(scalar_t) bytes per element: 8 for fp32, 4 for fp16/bf16), the backward reads x and grad and
// writes grad_input (3 * sizeof(scalar_t)), recomputing the window sums from x instead of reading a saved
// scale. Every other read of a window must hit L1 or shared memory:
//  * channels-first (x[n][c][s]): for size 5 (and, forward, any size up to 16) a thread owns a chunk of 8
//    channels of one column (n, s) and loads all its windows need at once (the direct column kernels); other
//    sizes walk one thread per column along C, summing each window directly (lrn_math.h). A warp reads 32
//    consecutive s of one channel (coalesced); re-reads of a row come from L1/L2.
//  * channels-last (x[n][s][c]): a block stages a few whole rows of C channels in shared memory with 16-byte
//    loads and sums each window directly there -- exact, so it needs no Inf/NaN recompute.
// The one exception is the column backward's global-memory ring (size in the thousands, see
// backward_columns_kernel): 4 accumulator-sized accesses per element more, mostly served by L2.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>

#include "common/cuda_helpers.cuh"
#include "common/int_divider.h"
#include "lrn/lrn.h"
#include "lrn/lrn_math.h"

namespace cnx::lrn {
namespace {

using cuda::ceil_div;

constexpr int kThreads = 256;               // block size (the column backward's upper bound)
constexpr int kWarp = 32;
constexpr int64_t kSmemBudget = 48 * 1024;  // dynamic shared memory per block without opting in
constexpr int64_t kRowElems = 2048;         // elements a row-kernel block stages: 8 per thread
constexpr int64_t kForwardRowBuffers = 1;   // x
constexpr int64_t kBackwardRowBuffers = 3;  // x, g (overwritten by g * p), t

template <typename scalar_t>
constexpr int kVec = 16 / sizeof(scalar_t);

// ---- Column kernels: channels-first, one thread per (n, s) ----

// Calls f(offset of x[n][0][s]) for every column this thread owns. Consecutive threads take consecutive s,
// so each channel's loads coalesce.
template <typename F>
__device__ __forceinline__ void for_each_column(int64_t C, int64_t S, int64_t cols, F f) {
  for (int64_t col = cuda::global_thread(); col < cols; col += cuda::grid_threads()) {
    const int64_t n = col / S;
    f(n * C * S + (col - n * S));
  }
}

template <typename acc_t, typename scalar_t>
__device__ __forceinline__ auto squares(const scalar_t* column, int64_t S) {
  return [=](int64_t m) {
    const acc_t v = column[m * S];
    return v * v;
  };
}

// Windows over kDirectWindow (the direct kernel below takes the rest): one thread per (chunk of `chunk`
// channels, column), consecutive threads on consecutive columns of the same chunk, each walking its chunk
// and summing every window with window_sums (`size` loads per output, all but one re-reads from L1/L2). A
// walk is a chain of steps, each waiting on its load; the chunks multiply the walks in flight.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    forward_columns_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t C, int64_t S,
                           int64_t cols, int64_t chunk, Params<acc_t> p) {
  const int64_t walks = cols * ceil_div(C, chunk);
  for (int64_t t = cuda::global_thread(); t < walks; t += cuda::grid_threads()) {
    const int64_t q = div_nonneg(t, cols), col = t - q * cols, n = div_nonneg(col, S);
    const int64_t base = n * C * S + (col - n * S), begin = q * chunk;
    const scalar_t* xc = x + base;
    scalar_t* yc = y + base;
    window_sums<acc_t>(
        C, p.lo, p.hi, squares<acc_t>(xc, S),
        [&](int64_t i, acc_t sum) {
          yc[i * S] = static_cast<scalar_t>(forward_value(static_cast<acc_t>(xc[i * S]), sum, p));
        },
        begin, std::min(C, begin + chunk));
  }
}

// ---- Direct column kernels: channels-first, a thread per (column, chunk of kColumnChannels channels) ----
// A thread loads every value its chunk's sums need -- the chunk and its windows' neighbours -- before it
// uses any. Those loads do not wait on each other, so they are in flight together: one memory latency per
// thread. The walks of the kernels above chain their loads, one latency per channel: at AlexNet's
// 64x96x55x55 on the H200 the running forward ran at 11% of copy bandwidth whether its walks were 96
// channels long (lease 1) or 8 (lease 2) -- the chains, not the wave count, set its time. Sums are the
// direct ones of window_sums (forward) and of the ring backward, in their orders; neighbours outside [0, C)
// load as +0 and add nothing.
constexpr int kColumnChannels = 8;

// Calls f(offset of x[n][0][s], first channel of the chunk) for every (column, chunk) this thread owns
// (cuda::for_each_unit_chunk: the chunks of a block's columns run in neighbouring blocks).
template <typename F>
__device__ __forceinline__ void for_each_column_chunk(int64_t C, int64_t S, int64_t cols, F f) {
  cuda::for_each_unit_chunk(cols, ceil_div<int64_t>(C, kColumnChannels), [&](int64_t col, int64_t q) {
    const int64_t n = div_nonneg(col, S);
    f(n * C * S + (col - n * S), q * kColumnChannels);
  });
}

// The usual LRN window (AlexNet, GoogLeNet), compiled exactly in the direct kernels.
constexpr int kUsualSize = 5;

// Forward for windows up to kDirectWindow: W = kUsualSize exactly, the other sizes W = kDirectWindow masked
// to `size`.
template <int W, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    forward_columns_direct_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t C, int64_t S,
                                  int64_t cols, Params<acc_t> p) {
  constexpr int CH = kColumnChannels, L = CH + W - 1;
  constexpr bool any_size = W == kDirectWindow;  // else size == W
  for_each_column_chunk(C, S, cols, [&](int64_t base, int64_t begin) {
    const scalar_t* xc = x + base;
    const int64_t first = begin - p.lo;  // v[j], sq[j]: channel first + j
    acc_t v[L], sq[L];
#pragma unroll
    for (int j = 0; j < L; ++j) {
      const int64_t c = first + j;
      const bool inside = c >= 0 && c < C && (!any_size || j < CH + p.size - 1);
      v[j] = inside ? static_cast<acc_t>(xc[c * S]) : acc_t(0);
      sq[j] = v[j] * v[j];
    }
    // For size W the chunk's own values are kept from those loads (v[i + W / 2]: a register), not read again;
    // the masked sizes' lo is known only at run time, and indexing v with it would put v in local memory.
    // A short last chunk skips its missing channels' stores without leaving the unrolled loop.
#pragma unroll
    for (int i = 0; i < CH; ++i) {
      const int64_t c = begin + i;
      acc_t sum = acc_t(0);
#pragma unroll
      for (int m = 0; m < W; ++m)
        if (!any_size || m < p.size) sum += sq[i + m];
      if (c < C) {
        acc_t xi;
        if constexpr (any_size) xi = static_cast<acc_t>(xc[c * S]);
        else xi = v[i + W / 2];
        y[base + c * S] = static_cast<scalar_t>(forward_value(xi, sum, p));
      }
    }
  });
}

// Backward for a window of exactly W (kUsualSize; other sizes take the ring kernel below).
// dx of channel o needs t over [o - hi, o + lo], and each t_i the squares over [i - lo, i + hi]: a chunk of
// CH channels loads CH + 2 (W - 1) values of x and CH + W - 1 of g (16 and 12 for W = 5), computes the
// CH + W - 1 terms, and sums each transposed window newest first, as the ring kernel does.
template <int W, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_columns_direct_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                   scalar_t* __restrict__ dx, int64_t C, int64_t S, int64_t cols, Params<acc_t> p) {
  constexpr int CH = kColumnChannels, lo = W / 2, hi = (W - 1) / 2, LT = CH + W - 1, LX = LT + W - 1;
  for_each_column_chunk(C, S, cols, [&](int64_t base, int64_t begin) {
    const scalar_t *xc = x + base, *gc = g + base;
    const int64_t t_first = begin - hi, x_first = t_first - lo;  // t[j]: channel t_first + j; xs[j]: x_first + j
    acc_t xs[LX], gs[LT];
#pragma unroll
    for (int j = 0; j < LX; ++j) {
      const int64_t c = x_first + j;
      xs[j] = c >= 0 && c < C ? static_cast<acc_t>(xc[c * S]) : acc_t(0);
    }
#pragma unroll
    for (int j = 0; j < LT; ++j) {
      const int64_t c = t_first + j;
      gs[j] = c >= 0 && c < C ? static_cast<acc_t>(gc[c * S]) : acc_t(0);
    }
    acc_t t[LT], gp_own[CH];
#pragma unroll
    for (int j = 0; j < LT; ++j) {
      const int64_t c = t_first + j;
      acc_t sum = acc_t(0);
#pragma unroll
      for (int m = 0; m < W; ++m) {
        const acc_t v = xs[j + m];
        sum += v * v;
      }
      acc_t gp, tj;
      backward_terms(xs[j + lo], gs[j], sum, p, gp, tj);
      t[j] = c >= 0 && c < C ? tj : acc_t(0);
      if (j >= hi && j < hi + CH) gp_own[j - hi] = gp;
    }
#pragma unroll
    for (int o = 0; o < CH; ++o) {
      const int64_t c = begin + o;
      if (c >= C) break;
      acc_t T = acc_t(0);
#pragma unroll
      for (int d = W - 1; d >= 0; --d) T += t[o + d];  // channels c + lo down to c - hi
      dx[base + c * S] = static_cast<scalar_t>(backward_value(xs[o + hi + lo], gp_own[o], T, p));
    }
  });
}

// One streaming pass per column, i = 0 .. C - 1 + lo, lagging the output by lo channels: step i computes
// (gp_i, t_i) from s_i, sums T = sum of t over [i - size + 1, i] -- the transposed window of channel i - lo
// -- from the ring and writes dx_{i-lo}. The last L = min(size, C) channels' (t, gp) wait in a ring.
// L slots suffice: channel i's slot is next written at step i + L, by a channel < C. Its t is last read at
// step i + size - 1 (the oldest term of T) and its gp at step i + lo <= i + size - 1;
// so with L = size the overwrite comes after the last read, and with L = C < size it never comes.
// The ring is [slot][thread] -- bank-conflict free in shared memory, coalesced in the global fallback: t of
// slot j at ring[j * stride], its gp at ring[(L + j) * stride]. `global_ring` is null for shared memory.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_columns_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                            scalar_t* __restrict__ dx, int64_t C, int64_t S, int64_t cols, Params<acc_t> p,
                            acc_t* __restrict__ global_ring) {
  const int64_t L = std::min<int64_t>(p.size, C);
  const int64_t stride = global_ring ? cuda::grid_threads() : int64_t(blockDim.x);
  acc_t* ring_t = global_ring ? global_ring + cuda::global_thread() : cuda::dynamic_smem<acc_t>() + threadIdx.x;
  acc_t* ring_gp = ring_t + L * stride;
  const auto next = [L](int64_t& slot) {
    if (++slot == L) slot = 0;
  };
  for_each_column(C, S, cols, [&](int64_t base) {
    const scalar_t *xc = x + base, *gc = g + base;
    scalar_t* dc = dx + base;
    int64_t in = 0, out = 0;  // ring slots of channels i and i - lo
    const auto step = [&](int64_t i, bool has_terms, acc_t gp, acc_t t) {
      if (has_terms) {
        ring_t[in * stride] = t;
        ring_gp[in * stride] = gp;
        next(in);
      }
      // T over channels max(0, i - size + 1) .. min(i, C - 1), summed directly (exact, lrn_math.h), newest
      // first: the newest sits just before `in`.
      acc_t T = acc_t(0);
      int64_t slot = in == 0 ? L - 1 : in - 1;
      for (int64_t m = std::min<int64_t>(i, C - 1); m >= 0 && m > i - p.size; --m) {
        T += ring_t[slot * stride];
        slot = slot == 0 ? L - 1 : slot - 1;
      }
      if (i >= p.lo) {
        const int64_t j = i - p.lo;
        dc[j * S] = static_cast<scalar_t>(backward_value(static_cast<acc_t>(xc[j * S]), ring_gp[out * stride], T, p));
        next(out);
      }
    };
    window_sums<acc_t>(C, p.lo, p.hi, squares<acc_t>(xc, S), [&](int64_t i, acc_t sum) {
      acc_t gp, t;
      backward_terms(static_cast<acc_t>(xc[i * S]), static_cast<acc_t>(gc[i * S]), sum, p, gp, t);
      step(i, true, gp, t);
    });
    for (int64_t i = C; i < C + p.lo; ++i) step(i, false, acc_t(0), acc_t(0));
  });
}

// ---- Row kernels: channels-last, a block stages rows of C channels in shared memory ----
// A block's rows fit in 48 KB of shared memory, so offsets inside a block (and C) are ints; offsets into
// the tensor are 64-bit.

// Calls f(offset, count) for every chunk of rows_per_block rows this block owns -- `count` contiguous
// elements from `offset` -- with a barrier after each, so f may reuse shared memory.
template <typename F>
__device__ __forceinline__ void for_each_row_chunk(int64_t rows, int C, int64_t rows_per_block, F f) {
  for (int64_t row = blockIdx.x * rows_per_block; row < rows; row += gridDim.x * rows_per_block) {
    f(row * C, static_cast<int>(std::min<int64_t>(rows - row, rows_per_block) * C));
    __syncthreads();
  }
}

// Copies `count` contiguous elements into shared memory as acc_t, VEC per load (the caller guarantees
// alignment and count % VEC == 0).
template <int VEC, typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage(const scalar_t* __restrict__ src, acc_t* dst, int count) {
  using Pack = cuda::Pack<scalar_t, VEC>;
  for (int v = threadIdx.x; v < count / VEC; v += blockDim.x) {
    const Pack pk = reinterpret_cast<const Pack*>(src)[v];
#pragma unroll
    for (int j = 0; j < VEC; ++j) dst[v * VEC + j] = static_cast<acc_t>(pk.v[j]);
  }
}

// sum of f(row[m]) over m in [c - before, c + after] clipped to [0, C).
template <typename acc_t, typename F>
__device__ __forceinline__ acc_t window_sum(const acc_t* row, int C, int c, int64_t before, int64_t after, F f) {
  const int first = static_cast<int>(std::max<int64_t>(0, c - before));
  const int last = static_cast<int>(std::min<int64_t>(C - 1, c + after));
  acc_t sum = acc_t(0);
  for (int m = first; m <= last; ++m) sum += f(row[m]);
  return sum;
}

// The row kernels' load width, also passed as an (empty) argument: a launch's parameter types then name the
// variant that ran, which the emulator's launch log shows (tests/test_cuda_emu.py checks the 16-byte loads).
template <int VEC>
using Loads = std::integral_constant<int, VEC>;

template <int VEC, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    forward_rows_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t rows, int C,
                        int64_t rows_per_block, Params<acc_t> p, Loads<VEC>) {
  acc_t* xs = cuda::dynamic_smem<acc_t>();
  for_each_row_chunk(rows, C, rows_per_block, [&](int64_t offset, int count) {
    stage<VEC>(x + offset, xs, count);
    __syncthreads();
    for (int e = threadIdx.x; e < count; e += blockDim.x) {
      const int c = e % C;
      const acc_t sum = window_sum(xs + (e - c), C, c, p.lo, p.hi, [](acc_t v) { return v * v; });
      y[offset + e] = static_cast<scalar_t>(forward_value(xs[e], sum, p));
    }
  });
}

template <int VEC, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_rows_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                         scalar_t* __restrict__ dx, int64_t rows, int C, int64_t rows_per_block, Params<acc_t> p,
                         Loads<VEC>) {
  const int64_t capacity = rows_per_block * C;
  acc_t* xs = cuda::dynamic_smem<acc_t>();
  acc_t* gs = xs + capacity;  // g, then g * p
  acc_t* ts = gs + capacity;
  for_each_row_chunk(rows, C, rows_per_block, [&](int64_t offset, int count) {
    stage<VEC>(x + offset, xs, count);
    stage<VEC>(g + offset, gs, count);
    __syncthreads();
    for (int e = threadIdx.x; e < count; e += blockDim.x) {
      const int c = e % C;
      const acc_t sum = window_sum(xs + (e - c), C, c, p.lo, p.hi, [](acc_t v) { return v * v; });
      acc_t gp, t;
      backward_terms(xs[e], gs[e], sum, p, gp, t);
      gs[e] = gp;
      ts[e] = t;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < count; e += blockDim.x) {
      const int c = e % C;
      const acc_t t_sum = window_sum(ts + (e - c), C, c, p.hi, p.lo, [](acc_t v) { return v; });
      dx[offset + e] = static_cast<scalar_t>(backward_value(xs[e], gs[e], t_sum, p));
    }
  });
}

// ---- Launchers ----

struct Plan {
  Layout layout;           // what the kernels walk: the caller's layout or a channels-first copy
  int64_t rows_per_block;  // > 0: row kernels; 0: column kernels
};

// Row kernels for channels-last, and for S == 1, where both layouts are the same memory and a column
// thread would stride through it alone, uncoalesced. A block stages up to kRowElems elements (but leaves
// every SM a block) within kSmemBudget. A channels-last row too long for that -- more than 4096 fp32 channels
// in the backward -- goes through the column kernels on a channels-first copy, and the caller copies the
// result back to channels-last.
Plan plan_of(const Layout& l, int64_t buffers) {
  const int64_t row_bytes = l.C * buffers * int64_t(c10::elementSize(at::toOpMathType(l.input.scalar_type())));
  if ((l.channels_last || l.S == 1) && row_bytes <= kSmemBudget) {
    const int64_t sms = cuda::device_properties().multiProcessorCount;
    const int64_t rows = l.N * l.S;
    return {l, std::max<int64_t>(1, std::min({kSmemBudget / row_bytes, kRowElems / l.C, ceil_div(rows, sms)}))};
  }
  if (!l.channels_last) return {l, 0};
  return {Layout{l.input.contiguous(), l.N, l.C, l.S, false}, 0};
}

// 16-byte loads need every staged chunk to start 16-byte aligned: aligned data, rows a multiple of 16 bytes.
template <typename scalar_t>
bool vectorisable(int64_t C, std::initializer_list<const void*> data) {
  return (C * int64_t(sizeof(scalar_t))) % 16 == 0 &&
         std::all_of(data.begin(), data.end(), [](const void* d) { return cuda::is_aligned(d, 16); });
}

// Channels per walk of the forward column kernel: all of C when the columns alone give kWalkWaves waves of
// resident threads, else chunks small enough for that many walks, but at least kMinChunk channels. (Every
// output sums its whole window, so a chunk costs the same per channel whatever its length.)
constexpr int64_t kWalkWaves = 8, kMinChunk = 8;

int64_t forward_chunk(int64_t cols, int64_t C) {
  const auto& prop = cuda::device_properties();
  const int64_t target = kWalkWaves * prop.multiProcessorCount * prop.maxThreadsPerMultiProcessor;
  if (cols >= target) return C;
  const int64_t chunk = ceil_div(C, ceil_div(target, cols));
  return std::min(C, std::max(chunk, kMinChunk));
}

template <typename scalar_t, typename acc_t>
void forward(const scalar_t* x, scalar_t* y, const Plan& plan, const Params<acc_t>& p, cuda::Stream stream) {
  const Layout& l = plan.layout;
  if (plan.rows_per_block > 0) {
    const int64_t rows = l.N * l.S, rpb = plan.rows_per_block;
    const size_t smem = rpb * l.C * kForwardRowBuffers * sizeof(acc_t);
    const auto launch = [&](auto loads) {
      cuda::launch(forward_rows_kernel<decltype(loads)::value, scalar_t, acc_t>,
                   cuda::capped_grid(ceil_div(rows, rpb), kThreads), kThreads, smem, stream, x, y, rows,
                   static_cast<int>(l.C), rpb, p, loads);
    };
    if (vectorisable<scalar_t>(l.C, {x}))
      launch(Loads<kVec<scalar_t>>{});
    else
      launch(Loads<1>{});
    CNX_CUDA_LAUNCH_CHECK();
  } else if (p.size <= kDirectWindow) {
    const int64_t cols = l.N * l.S;
    const auto kernel = p.size == kUsualSize ? forward_columns_direct_kernel<kUsualSize, scalar_t, acc_t>
                                             : forward_columns_direct_kernel<kDirectWindow, scalar_t, acc_t>;
    cuda::launch(kernel, cuda::chunk_grid(cols, ceil_div<int64_t>(l.C, kColumnChannels), kThreads), kThreads, 0,
                 stream, x, y, l.C, l.S, cols, p);
    CNX_CUDA_LAUNCH_CHECK();
  } else {
    const int64_t cols = l.N * l.S, chunk = forward_chunk(cols, l.C);
    const unsigned int grid = cuda::capped_grid(ceil_div<int64_t>(cols * ceil_div(l.C, chunk), kThreads), kThreads);
    cuda::launch(forward_columns_kernel<scalar_t, acc_t>, grid, kThreads, 0, stream, x, y, l.C, l.S, cols, chunk, p);
    CNX_CUDA_LAUNCH_CHECK();
  }
}

// The column backward's ring takes 2 * min(size, C) accumulators per thread. Up to kThreads threads whose
// rings fit in kSmemBudget; if a warp's do not, shared memory up to the device's opt-in limit; beyond that
// (size and C in the thousands) a global scratch ring, with one wave of threads so that it stays small.
template <typename scalar_t, typename acc_t>
void backward_columns(const scalar_t* g, const scalar_t* x, scalar_t* dx, const Layout& l, const Params<acc_t>& p,
                      cuda::Stream stream) {
  const int64_t cols = l.N * l.S;
  const int64_t ring_bytes = 2 * std::min(p.size, l.C) * int64_t(sizeof(acc_t));
  const auto kernel = backward_columns_kernel<scalar_t, acc_t>;
  int64_t threads = std::min<int64_t>(kThreads, kSmemBudget / ring_bytes / kWarp * kWarp);
  bool global_ring = false;
  if (threads < kWarp) {
    threads = kWarp;
    const int64_t smem = threads * ring_bytes;
    global_ring = smem > int64_t(cuda::device_properties().sharedMemPerBlockOptin);
    if (!global_ring) cuda::allow_dynamic_smem(kernel, smem);
  }
  const unsigned int grid = cuda::capped_grid(ceil_div(cols, threads), static_cast<int>(threads), global_ring ? 1 : 4);
  at::Tensor scratch;  // on the current device, which the caller's guard set
  if (global_ring)
    scratch = at::empty({int64_t(grid) * threads * ring_bytes / int64_t(sizeof(acc_t))},
                        at::device(cuda::device_type()).dtype(c10::CppTypeToScalarType<acc_t>::value));
  cuda::launch(kernel, grid, static_cast<unsigned int>(threads), global_ring ? 0 : threads * ring_bytes, stream, g, x,
               dx, l.C, l.S, cols, p, global_ring ? scratch.mutable_data_ptr<acc_t>() : nullptr);
  CNX_CUDA_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t>
void backward(const scalar_t* g, const scalar_t* x, scalar_t* dx, const Plan& plan, const Params<acc_t>& p,
              cuda::Stream stream) {
  const Layout& l = plan.layout;
  if (plan.rows_per_block == 0 && p.size == kUsualSize) {
    const int64_t cols = l.N * l.S;
    cuda::launch(backward_columns_direct_kernel<kUsualSize, scalar_t, acc_t>,
                 cuda::chunk_grid(cols, ceil_div<int64_t>(l.C, kColumnChannels), kThreads), kThreads, 0, stream, g,
                 x, dx, l.C, l.S, cols, p);
    CNX_CUDA_LAUNCH_CHECK();
  } else if (plan.rows_per_block > 0) {
    const int64_t rows = l.N * l.S, rpb = plan.rows_per_block;
    const size_t smem = rpb * l.C * kBackwardRowBuffers * sizeof(acc_t);
    const auto launch = [&](auto loads) {
      cuda::launch(backward_rows_kernel<decltype(loads)::value, scalar_t, acc_t>,
                   cuda::capped_grid(ceil_div(rows, rpb), kThreads), kThreads, smem, stream, g, x, dx, rows,
                   static_cast<int>(l.C), rpb, p, loads);
    };
    if (vectorisable<scalar_t>(l.C, {x, g}))
      launch(Loads<kVec<scalar_t>>{});
    else
      launch(Loads<1>{});
    CNX_CUDA_LAUNCH_CHECK();
  } else {
    backward_columns(g, x, dx, l, p, stream);
  }
}

at::Tensor lrn_cuda(const at::Tensor& input, int64_t size, double alpha, double beta, double k) {
  // Every check first: nothing below runs for rejected arguments.
  check_forward_args(input, size, alpha, beta, k, cuda::device_type());
  const cuda::DeviceGuard guard(input.device());
  const Layout l = layout_of(input);
  if (input.numel() == 0) return at::empty_like(l.input);
  const Plan plan = plan_of(l, kForwardRowBuffers);
  at::Tensor out = at::empty_like(plan.layout.input);
  const cuda::Stream stream = cuda::current_stream();
  const Window w = kernel_window(size, alpha, l.C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lrn_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward(plan.layout.input.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), plan,
            Params<acc_t>::make(w.size, w.alpha, beta, k), stream);
  });
  return to_layout(out, l);
}

}  // namespace

at::Tensor lrn_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input, int64_t size, double alpha,
                             double beta, double k) {
  check_backward_args(grad_output, input, size, alpha, beta, k, cuda::device_type());
  const cuda::DeviceGuard guard(input.device());
  const Layout l = layout_of(input);
  if (input.numel() == 0) return at::empty_like(l.input);
  const Plan plan = plan_of(l, kBackwardRowBuffers);
  const at::Tensor grad = to_layout(grad_output, plan.layout);
  at::Tensor grad_input = at::empty_like(plan.layout.input);
  const cuda::Stream stream = cuda::current_stream();
  const Window w = kernel_window(size, alpha, l.C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lrn_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward(grad.const_data_ptr<scalar_t>(), plan.layout.input.const_data_ptr<scalar_t>(),
             grad_input.mutable_data_ptr<scalar_t>(), plan, Params<acc_t>::make(w.size, w.alpha, beta, k), stream);
  });
  return to_layout(grad_input, l);
}

}  // namespace cnx::lrn

TORCH_LIBRARY_IMPL(CNX_OPS, CNX_CUDA_KEY, m) {
  m.impl("lrn", &cnx::lrn::lrn_cuda);
  m.impl("lrn_backward", &cnx::lrn::lrn_backward_cuda);
}
