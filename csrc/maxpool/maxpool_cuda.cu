// Max pooling on CUDA. The per-window math -- window bounds, the (kh, kw) scan with torch's update rule, the
// windows covering an input element, the flat index of an argmax -- is maxpool_math.h, shared with the CPU
// kernels (and so exercised by the CPU tests); this file only decides which thread computes what. All
// offsets are 64-bit.
//
// Every kernel but one is one thread per element of the tensor it writes, consecutive threads on consecutive
// elements of that dense tensor (w fastest channels-first, c fastest channels-last), so the writes
// coalesce, and in channels-last so does every tap's read. On the fast path a channels-last "element" is a
// 16-byte pack of channels (Lanes), moved by one vector load or store. The channels-first fast-path forward
// (forward_tiles_kernel) stages a block's input rows in shared memory and gives each thread two neighbouring
// outputs of a row.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <initializer_list>
#include <optional>
#include <string_view>
#include <tuple>
#include <type_traits>

#include "common/cuda_helpers.cuh"
#include "maxpool/maxpool.h"
#include "maxpool/maxpool_math.h"

namespace cnx::maxpool {
namespace {

using cuda::ceil_div;

constexpr int kThreads = 256;

// A channels-first forward's tiles (forward_tiles_kernel): runs of `rows` output rows of the (N * C * OH)-row
// output, whole planes (bands == 0) or `bands` bands of each plane.
struct Tiles {
  int32_t rows, bands, count;
  int32_t shift;     // x's offset in elements from 16-byte alignment: (address / element size) % pack
  int32_t capacity;  // elements of shared memory per block
  IntDivider pairs;  // by the pairs of outputs a row, ceil(OW / 2)
};

// Shared memory a tile's input may take. The kernel's 45-48 registers a thread (sm_90) leave room for 5 blocks of
// 256 threads per SM, so 16 KB a block keeps up to 80 KB of each SM's loads in flight, over the ~40 KB that
// H200 bandwidth times DRAM latency asks of one SM.
constexpr int64_t kTileBytes = 16 * 1024;

// The tiles of a channels-first fast-path problem: as many whole planes as fit kTileBytes, else even bands of
// output rows whose input rows fit; none (the element kernel) when not even one output row's input rows fit.
// CNX_MAXPOOL_TILES=0 turns the tiles off, for comparing the two kernels on a GPU.
template <typename scalar_t, int K, int S>
std::optional<Tiles> plan_tiles(const FixedProblem<K, S>& pb, const scalar_t* x) {
  constexpr int64_t V = 16 / sizeof(scalar_t);
  if (const char* off = std::getenv("CNX_MAXPOOL_TILES"); off != nullptr && std::string_view(off) == "0")
    return std::nullopt;
  const int64_t budget = kTileBytes / int64_t(sizeof(scalar_t)) - V, H = pb.h.in, W = pb.w.in, OH = pb.h.out;
  const int64_t planes = int64_t(pb.N) * pb.C;
  Tiles t{};
  t.shift = int32_t((reinterpret_cast<uintptr_t>(x) / sizeof(scalar_t)) % V);
  t.pairs = IntDivider(uint32_t(ceil_div<int64_t>(pb.w.out, 2)));
  if (H * W <= budget) {
    const int64_t per = std::min(budget / (H * W), planes);
    t.rows = int32_t(per * OH), t.bands = 0, t.count = int32_t(ceil_div(planes, per));
    t.capacity = int32_t(per * H * W + V);
  } else {
    if (budget / W < K) return std::nullopt;
    const int64_t most = (budget / W - K) / S + 1;  // output rows whose input rows fit
    const int64_t bands = ceil_div(OH, std::min(most, OH)), rows = ceil_div(OH, bands);
    t.rows = int32_t(rows), t.bands = int32_t(bands), t.count = int32_t(planes * bands);
    t.capacity = int32_t(((rows - 1) * S + K) * W + V);
  }
  return t;
}

// Scalar elements per thread: on the fast path, as many as keep ~16-32 loads in flight, at most 4 -- forward:
// 2 outputs of 3x3 windows, 4 of 2x2; backward: 4 inputs of 3x3/2 or 2x2/2 (4 or 1 candidate windows, each
// an argmax and a gradient), 1 of 3x3/1 (9 windows). 1 on the generic path, whose runtime window loops read
// one tap or window after another anyway, and for 16-byte packs.
template <typename P>
constexpr int forward_unroll() {
  if constexpr (IsFixedDim<decltype(P::h)>::value)
    return std::clamp(16 / (decltype(P::h)::kernel * decltype(P::h)::kernel), 2, 4);
  return 1;
}
template <typename P>
constexpr int backward_unroll() {
  if constexpr (IsFixedDim<decltype(P::h)>::value) {
    constexpr int most = (decltype(P::h)::kernel + decltype(P::h)::stride - 1) / decltype(P::h)::stride;
    return std::clamp(16 / (most * most), 1, 4);
  }
  return 1;
}

// The accumulation type of an element type, and the scan's argmax type for coordinate type I: scalars, or
// lanes of them for a pack of channels (Lanes).
template <typename T>
struct Scan {
  using acc = at::opmath_type<T>;
  template <typename I>
  using index = I;
};
template <typename T, int N>
struct Scan<Lanes<T, N>> {
  using acc = Lanes<at::opmath_type<T>, N>;
  template <typename I>
  using index = Lanes<I, N>;
};

// T, or a pack of N of them (void stays void: no argmax).
template <typename T, int N>
using PackOf = std::conditional_t<N == 1 || std::is_void_v<T>, T, Lanes<T, N>>;

// Each kernel runs on a Problem (64-bit coordinates, any window) or, on the fast path, a FixedProblem: the
// window fixed at compile time and 32-bit coordinates with multiply-shift dividers -- the generic kernels
// spent their time on 64-bit divisions and multiplies, not on memory (H200, fp16 64x64x224x224 2x2: 20% of
// copy bandwidth, torch.compile's specialised kernel 86%). I is the coordinate type of P.

// The max (and, unless index_t is void, the argmax) of each output element's window; a thread takes kUnroll
// consecutive outputs (forward_unroll), their loads issued together.
// Memory traffic per output element: the window's in-bounds taps read (each input element is read by about
// (kH / sH) * (kW / sW) windows; the repeats hit L1/L2, so DRAM sees the input about once), the output written,
// and -- only when the argmax is saved -- one argmax element written (1 byte up to 256 taps, else 4).
template <typename scalar_t, typename index_t, bool kChannelsLast, typename P, typename I, int kUnroll>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, index_t* __restrict__ argmax, P pb,
                   int64_t total) {
  using acc_t = typename Scan<scalar_t>::acc;
  using Index = std::conditional_t<std::is_void_v<index_t>, NoArgmax, typename Scan<scalar_t>::template index<I>>;
  struct Window {
    acc_t max;
    Index arg;
  };
  cuda::for_each_element_unrolled<kUnroll>(
      total,
      [&](int64_t e) {
        Window w;
        forward_element<kChannelsLast>(x, pb, I(e), w.max, w.arg);
        return w;
      },
      [&](int64_t e, const Window& w) {
        y[e] = static_cast<scalar_t>(w.max);
        if constexpr (!std::is_void_v<index_t>) argmax[e] = static_cast<index_t>(w.arg);
      });
}

// s[i - base] = x[i] for i in [a, b), base <= a 16-byte aligned in x (and so in s): the 16-byte packs inside
// [a, b) by the block's threads together, kLoads each issued before any is stored (so a thread has them all in
// flight), and the ragged ends, under a pack each, element by element.
template <int V, typename scalar_t>
__device__ __forceinline__ void stage(const scalar_t* __restrict__ x, scalar_t* s, int64_t base, int64_t a, int64_t b) {
  using Pack = cuda::Pack<scalar_t, V>;
  constexpr int kLoads = 4;
  const int64_t first = a == base ? a : base + V, end = std::max(first, b - (b - base) % V);  // whole packs
  const int64_t head = std::min(first, b) - a, tail = b - end;
  if (threadIdx.x < head) s[a - base + threadIdx.x] = x[a + threadIdx.x];
  if (threadIdx.x < tail) s[end - base + threadIdx.x] = x[end + threadIdx.x];
  const int64_t step = int64_t(blockDim.x) * V;
  for (int64_t i = first + int64_t(threadIdx.x) * V; i < end; i += kLoads * step) {
    Pack r[kLoads];
CNX_UNROLL
    for (int u = 0; u < kLoads; ++u)
      if (i + u * step < end) r[u] = *reinterpret_cast<const Pack*>(x + i + u * step);
CNX_UNROLL
    for (int u = 0; u < kLoads; ++u)
      if (i + u * step < end) *reinterpret_cast<Pack*>(s + (i + u * step - base)) = r[u];
  }
}

// The channels-first fast path's forward: a block stages a tile's input in shared memory, then scans the
// windows there. A tile is a run of output rows [g0, g1) of the (N * C * OH)-row output -- whole planes where a
// plane's input fits (Tiles::bands == 0), else a band of one plane -- and the input rows they read are one
// contiguous run of x, loaded in 16-byte packs (its ragged ends element by element). forward_kernel read each
// tap from global memory: for AlexNet's 3x3/2 in fp16 a warp's tap load spans ~256 bytes at a 4-byte stride,
// 18 of them per thread, ~3 L1 wavefronts each, and it ran at ~40% of copy bandwidth on an H200, as did
// torch.compile's kernel (gpu_notes, leases 3-4). Here each input byte is read from DRAM once, in LDG.128s, and
// the taps are shared-memory reads; a thread scans two neighbouring windows (forward_pair_at), sharing their
// index arithmetic and the taps they overlap on (3x3/2: 15 reads for two windows, not 18), which were most of
// forward_kernel's ~130 instructions an output (sm_90 SASS, fp16 3x3/2).
// Memory traffic per output element: its share of the input (about S * S elements, each read once; whole-plane
// tiles also read the rows no window reaches), the output written and, unless index_t is void, one argmax byte.
template <typename scalar_t, typename index_t, typename P>
__global__ void __launch_bounds__(kThreads)
    forward_tiles_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, index_t* __restrict__ argmax,
                         P pb, Tiles t) {
  constexpr int V = 16 / sizeof(scalar_t), K = decltype(pb.h)::kernel, S = decltype(pb.h)::stride;
  using acc_t = at::opmath_type<scalar_t>;
  using Index = std::conditional_t<std::is_void_v<index_t>, NoArgmax, int32_t>;
  scalar_t* const s = cuda::dynamic_smem<scalar_t>();
  const int32_t H = pb.h.in, W = pb.w.in, OH = pb.h.out, OW = pb.w.out, rows = pb.N * pb.C * OH;
  for (int32_t tile = blockIdx.x; tile < t.count; tile += gridDim.x) {
    int32_t g0, g1;
    if (t.bands == 0) {
      g0 = tile * t.rows;
      g1 = std::min(rows, g0 + t.rows);
    } else {
      const int32_t plane = tile / t.bands;
      g0 = plane * OH + (tile - plane * t.bands) * t.rows;
      g1 = std::min(plane * OH + OH, g0 + t.rows);
    }
    // x[a, b): from the first window's first row inside the input to the last window's last one.
    const int32_t p0 = g0 / OH, p1 = (g1 - 1) / OH;
    const int64_t a = int64_t(p0 * H + std::max(0, (g0 - p0 * OH) * S - pb.h.pad)) * W;
    const int64_t b = int64_t(p1 * H + std::min(H, (g1 - 1 - p1 * OH) * S - pb.h.pad + K)) * W;
    const int64_t base = a - (a + t.shift) % V;  // s[i] holds x[base + i]; x + base is 16-byte aligned
    stage<V>(x, s, base, a, b);
    __syncthreads();
    // A thread per pair of neighbouring outputs of a row (t.pairs of them a row), consecutive threads on
    // consecutive pairs.
    const int32_t pairs = int32_t(t.pairs.divisor);
    for (int32_t r = threadIdx.x; r < (g1 - g0) * pairs; r += blockDim.x) {
      const int32_t q = int32_t(t.pairs.div(uint32_t(r))), g = g0 + q, ow = (r - q * pairs) * 2;
      const int32_t plane = int32_t(pb.out_div[2].div(uint32_t(g)));  // out_div[2]: OH
      const int32_t from = plane * H * W - int32_t(base);  // the plane's element 0 in s (offsets fit: fits_fixed)
      acc_t top[2];
      Index arg[2];
      forward_pair_at([s, from](int32_t offset) { return s[from + offset]; }, pb, g - plane * OH, ow, top, arg);
CNX_UNROLL
      for (int u = 0; u < 2; ++u) {
        if (u == 1 && ow + 1 == OW) break;
        const int64_t e = int64_t(g) * OW + ow + u;
        y[e] = static_cast<scalar_t>(top[u]);
        if constexpr (!std::is_void_v<index_t>) argmax[e] = static_cast<index_t>(arg[u]);
      }
    }
    __syncthreads();  // every scan of this tile done before the next tile is staged over it
  }
}

// A gather: input element e gets the sum of the gradients of the windows whose argmax is the tap reading it,
// summed in torch's order in the accumulation type. No atomics: deterministic, bit for bit run to run.
// A thread takes kUnroll consecutive elements (one, for 16-byte packs), whose loads -- argmax and gradient
// of every candidate window (gradient_element's fast path) -- all issue before any is used. With one element
// per thread, each waiting on its argmax and then on its gradient, the kernel was bound by memory latency:
// lease 3 ran the 64x96x55x55 fp16 backward in ~0.17 ms, ~7% of copy bandwidth and 6x the forward.
// Memory traffic per input element: the argmax and gradient of each covering window (about (kH / sH) *
// (kW / sW) of them, each shared by the inputs of its window, so mostly L1/L2 hits: DRAM sees each once),
// grad_input written once.
// (The minimum of 3 resident blocks lets ptxas take up to 80 registers: left to itself it held the 32 loads in
// flight to 32 registers, and spilled.)
template <typename scalar_t, typename index_t, bool kChannelsLast, typename P, typename I, int kUnroll>
__global__ void __launch_bounds__(kThreads, 3)
    backward_kernel(const scalar_t* __restrict__ grad, const index_t* __restrict__ argmax,
                    scalar_t* __restrict__ grad_input, P pb, int64_t total) {
  using acc_t = typename Scan<scalar_t>::acc;
  cuda::for_each_element_unrolled<kUnroll>(
      total, [&](int64_t e) { return gradient_element<kChannelsLast, acc_t>(grad, argmax, pb, I(e)); },
      [&](int64_t e, const acc_t& sum) { grad_input[e] = static_cast<scalar_t>(sum); });
}

// One thread per output element: torch's flat index ih * W + iw of its window-local argmax.
// Memory traffic per element: the argmax read (1 or 4 bytes), 8 bytes written.
template <typename index_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    indices_kernel(const index_t* __restrict__ argmax, int64_t* __restrict__ indices, Problem pb, int64_t total) {
  for (int64_t e = cuda::global_thread(); e < total; e += cuda::grid_threads())
    indices[e] = index_element<kChannelsLast>(argmax, pb, e);
}

unsigned int grid_for(int64_t total) { return cuda::capped_grid(ceil_div<int64_t>(total, kThreads), kThreads); }

// Calls launch(problem, I{}, Pack, ChannelsLast) with the fast path's FixedProblem where pb has one of its
// windows (AlexNet's / ZFNet's / GoogLeNet's 3x3/2, VGG's 2x2/2, Inception's 3x3/1) and fits 32-bit offsets,
// else with pb itself. kFast = false skips the fast path (int32 argmax: windows over 256 taps never have one).
// ChannelsLast: std::bool_constant of pb's layout. Pack: std::integral_constant<int, N>, the channels per thread. On
// the fast path, channels-last rows that split into 16-byte packs (C * sizeof(scalar_t) a multiple of 16, every
// tensor 16-byte aligned) give each thread N = 16 / sizeof(scalar_t) channels: pb's C counts packs then. Without it
// a warp's load of one tap moves 32 x 2 bytes in fp16; with it 32 x 16, so a thread has its window's whole 16-byte
// rows in flight.
template <typename scalar_t, bool kFast = true, typename Launch>
void with_problem(const Problem& pb, std::initializer_list<const void*> data, Launch launch) {
  constexpr int N = 16 / sizeof(scalar_t);
  const auto with_layout = [&](const auto& p, auto i, auto pack) {  // packs only ever hold channels-last rows
    if constexpr (decltype(pack)::value > 1) launch(p, i, pack, std::true_type{});
    else if (pb.channels_last) launch(p, i, pack, std::true_type{});
    else launch(p, i, pack, std::false_type{});
  };
  const auto fixed = [&](const Problem& p, auto pack) {
    return with_fixed_window(p, [&](const auto& fp) { with_layout(fp, int32_t{}, pack); });
  };
  if constexpr (kFast) {
    if (pb.channels_last && (pb.C * int64_t(sizeof(scalar_t))) % 16 == 0 &&
        std::all_of(data.begin(), data.end(), [](const void* d) { return cuda::is_aligned(d, 16); })) {
      Problem packed = pb;
      packed.C /= N;
      if (fixed(packed, std::integral_constant<int, N>{})) return;
    }
    if (fixed(pb, std::integral_constant<int, 1>{})) return;
  }
  with_layout(pb, int64_t{}, std::integral_constant<int, 1>{});
}

template <typename scalar_t, typename index_t>
void launch_forward(const scalar_t* x, scalar_t* y, index_t* argmax, const Problem& pb, cuda::Stream stream) {
  constexpr bool kFast = !std::is_same_v<index_t, int32_t>;
  with_problem<scalar_t, kFast>(pb, {x, y, argmax}, [&](const auto& p, auto i, auto pack, auto cl) {
    using S = PackOf<scalar_t, decltype(pack)::value>;
    using A = PackOf<index_t, decltype(pack)::value>;
    if constexpr (!decltype(cl)::value && IsFixedDim<decltype(p.h)>::value) {
      if (const std::optional<Tiles> t = plan_tiles(p, x)) {
        const auto kernel = forward_tiles_kernel<scalar_t, index_t, std::decay_t<decltype(p)>>;
        cuda::launch(kernel, cuda::capped_grid(t->count, kThreads), kThreads, size_t(t->capacity) * sizeof(scalar_t),
                     stream, x, y, argmax, p, *t);
        CNX_CUDA_LAUNCH_CHECK();
        return;
      }
    }
    constexpr int kUnroll = decltype(pack)::value == 1 ? forward_unroll<std::decay_t<decltype(p)>>() : 1;
    const int64_t total = int64_t(p.N) * p.C * p.h.out * p.w.out;
    const auto kernel = forward_kernel<S, A, decltype(cl)::value, std::decay_t<decltype(p)>, decltype(i), kUnroll>;
    cuda::launch(kernel, grid_for(ceil_div<int64_t>(total, kUnroll)), kThreads, 0, stream,
                 reinterpret_cast<const S*>(x), reinterpret_cast<S*>(y), reinterpret_cast<A*>(argmax), p, total);
    CNX_CUDA_LAUNCH_CHECK();
  });
}

template <typename scalar_t, typename index_t>
void launch_backward(const scalar_t* grad, const index_t* argmax, scalar_t* grad_input, const Problem& pb,
                     cuda::Stream stream) {
  constexpr bool kFast = !std::is_same_v<index_t, int32_t>;
  with_problem<scalar_t, kFast>(pb, {grad, argmax, grad_input}, [&](const auto& p, auto i, auto pack, auto cl) {
    using S = PackOf<scalar_t, decltype(pack)::value>;
    using A = PackOf<index_t, decltype(pack)::value>;
    constexpr int kUnroll = decltype(pack)::value == 1 ? backward_unroll<std::decay_t<decltype(p)>>() : 1;
    const int64_t total = int64_t(p.N) * p.C * p.h.in * p.w.in;
    const auto kernel = backward_kernel<S, A, decltype(cl)::value, std::decay_t<decltype(p)>, decltype(i), kUnroll>;
    cuda::launch(kernel, grid_for(ceil_div<int64_t>(total, kUnroll)), kThreads, 0, stream,
                 reinterpret_cast<const S*>(grad), reinterpret_cast<const A*>(argmax), reinterpret_cast<S*>(grad_input),
                 p, total);
    CNX_CUDA_LAUNCH_CHECK();
  });
}

template <typename index_t>
void launch_indices(const index_t* argmax, int64_t* indices, const Problem& pb, cuda::Stream stream) {
  const int64_t total = pb.N * pb.C * pb.h.out * pb.w.out;
  const auto kernel = pb.channels_last ? indices_kernel<index_t, true> : indices_kernel<index_t, false>;
  cuda::launch(kernel, grid_for(total), kThreads, 0, stream, argmax, indices, pb, total);
  CNX_CUDA_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, bool ceil_mode, bool save_argmax) {
  // Every check first (prepare_forward): nothing below runs for arguments the op rejects.
  const Forward f = prepare_forward(input, kernel_size, stride, padding, dilation, ceil_mode, save_argmax, cuda::device_type());
  const Problem& pb = f.pb;
  if (f.out.numel() == 0) return f.result();
  const cuda::DeviceGuard guard(f.x.device());
  if (!f.save) {
    forward_cuda(f.x, f.out, pb);
    return f.result();
  }
  const cuda::Stream stream = cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.x.scalar_type(), "max_pool2d_cuda", [&] {
    const scalar_t* xp = f.x.const_data_ptr<scalar_t>();
    scalar_t* yp = f.out.mutable_data_ptr<scalar_t>();
    if (byte_argmax(pb)) launch_forward(xp, yp, f.argmax.mutable_data_ptr<uint8_t>(), pb, stream);
    else launch_forward(xp, yp, f.argmax.mutable_data_ptr<int32_t>(), pb, stream);
  });
  return f.result();
}

at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& argmax,
                                    at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation) {
  const FromArgmax b =
      prepare_backward(grad_output, argmax, input_size, kernel_size, stride, padding, dilation, cuda::device_type());
  if (b.out.numel() > 0) {
    const cuda::DeviceGuard guard(b.argmax.device());
    gather_backward_cuda(b.grad, b.argmax, b.out, b.pb);
  }
  return b.result();
}

at::Tensor max_pool2d_indices_cuda(const at::Tensor& argmax, at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const FromArgmax b = prepare_indices(argmax, input_size, kernel_size, stride, padding, dilation, cuda::device_type());
  if (b.out.numel() > 0) {
    const cuda::DeviceGuard guard(b.argmax.device());
    const cuda::Stream stream = cuda::current_stream();
    int64_t* out = b.out.mutable_data_ptr<int64_t>();
    if (byte_argmax(b.pb)) launch_indices(b.argmax.const_data_ptr<uint8_t>(), out, b.pb, stream);
    else launch_indices(b.argmax.const_data_ptr<int32_t>(), out, b.pb, stream);
  }
  return b.result();
}

}  // namespace

void forward_cuda(const at::Tensor& x, const at::Tensor& out, const Problem& pb) {
  const cuda::Stream stream = cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d_cuda", [&] {
    launch_forward<scalar_t, void>(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), nullptr, pb, stream);
  });
}

void gather_backward_cuda(const at::Tensor& grad, const at::Tensor& argmax, const at::Tensor& grad_input,
                          const Problem& pb) {
  const cuda::Stream stream = cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "max_pool2d_backward_cuda", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    scalar_t* dp = grad_input.mutable_data_ptr<scalar_t>();
    if (byte_argmax(pb)) launch_backward(gp, argmax.const_data_ptr<uint8_t>(), dp, pb, stream);
    else launch_backward(gp, argmax.const_data_ptr<int32_t>(), dp, pb, stream);
  });
}

}  // namespace cnx::maxpool

TORCH_LIBRARY_IMPL(CNX_OPS, CNX_CUDA_KEY, m) {
  m.impl("max_pool2d", &cnx::maxpool::max_pool2d_cuda);
  m.impl("max_pool2d_backward", &cnx::maxpool::max_pool2d_backward_cuda);
  m.impl("max_pool2d_indices", &cnx::maxpool::max_pool2d_indices_cuda);
}
