#pragma once
// 2-D max pooling (torch.nn.functional.max_pool2d semantics): the geometry and per-window math shared by the
// CPU kernels and the CUDA kernels, so that CPU tests exercise what the GPU runs. The CPU kernels call the
// window scan (window_max / update, on vectors of channels or columns), the covering windows of the gather
// and flat_index; the CUDA kernels call the same through the per-element functions at the end, one thread's
// work each.
//
// Along each spatial dimension, window o starts at o * stride - pad and its tap k reads index
// start + k * dilation; taps outside [0, size) are skipped. A window is scanned in (kh, kw) order from
// max = -inf, argmax = the first tap at or past index 0 in both dimensions, and a tap replaces them when
// `value > max || isnan(value)`: ties keep the first max, and a NaN wins and stays (the last NaN in scan
// order is the one reported), exactly as torch's kernels do. The argmax is window-local, kh * kW + kw.
//
// Offsets and coordinates are 64-bit (Dim, Problem): a tensor's offsets may exceed 2^31 whatever the pooling
// parameters. The CUDA kernels' fast path runs the same functions on FixedDim / FixedProblem: the common
// windows (2x2/2, 3x3/2, 3x3/1, no dilation) known at compile time and 32-bit coordinates, for tensors whose
// offsets fit -- index arithmetic, not memory, was what bounded the generic kernels on a GPU.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/int_divider.h"
#include "common/macros.h"

namespace cnx::maxpool {

// One spatial dimension of a pooling problem.
struct Dim {
  int64_t in;        // input size
  int64_t out;       // pooled size
  int64_t kernel, stride, pad, dilation;
};

// A whole call: dense (N, C, H, W) tensors, all channels-first or all channels-last.
struct Problem {
  int64_t N, C;
  Dim h, w;
  bool channels_last;
};

// One spatial dimension with the window known at compile time (dilation 1) and 32-bit sizes: the CUDA fast
// path's Dim. Every function below that takes a Dim takes a FixedDim too, computing in its int32_t.
template <int K, int S>
struct FixedDim {
  static constexpr int32_t kernel = K, stride = S, dilation = 1;
  int32_t in, out, pad;
};

template <typename D>
struct IsFixedDim : std::false_type {};
template <int K, int S>
struct IsFixedDim<FixedDim<K, S>> : std::true_type {};

// The argmax is stored in one byte up to this many taps per window, in int32 beyond.
constexpr int64_t kByteArgmaxTaps = 256;

CNX_HOST_DEVICE bool byte_argmax(const Problem& pb) { return pb.h.kernel * pb.w.kernel <= kByteArgmaxTaps; }

CNX_HOST_DEVICE int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

using cnx::div_nonneg;

// torch's pooling_output_shape (ATen/native/Pool.h): the number of windows; with ceil_mode the last one may
// hang over the end but must start inside the input or the left padding. Can be < 1 (the caller rejects it).
CNX_HOST_DEVICE int64_t output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation,
                                    bool ceil_mode) {
  int64_t out = floor_div(in + 2 * pad - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0), stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

// The taps of window o along one dimension: index start + k * dilation for k in [first, last) is inside
// [0, in). `first` is the first tap at or past index 0 even when no tap is inside (first >= last, possible
// only with dilation): torch's initial argmax.
template <typename I = int64_t>
struct Taps {
  I start, first, last;
};

template <typename D, typename I = decltype(D::in)>
CNX_HOST_DEVICE Taps<I> taps_of(const D& d, I o) {
  Taps<I> t;
  t.start = o * d.stride - d.pad;
  const int64_t reach = d.in - t.start;  // taps k with k * dilation < reach are inside
  if (d.dilation == 1) {  // the common case, without divisions
    t.first = t.start < 0 ? -t.start : 0;
    t.last = reach > 0 ? reach : 0;
  } else {
    t.first = t.start < 0 ? I(div_nonneg(-t.start + d.dilation - 1, d.dilation)) : 0;
    t.last = reach > 0 ? I(div_nonneg(reach + d.dilation - 1, d.dilation)) : 0;
  }
  if (t.last > d.kernel) t.last = d.kernel;
  return t;
}

// Stands in for the argmax where only the max is wanted (the inference forward); it compiles away.
struct NoArgmax {
  NoArgmax() = default;
  template <typename I>
  CNX_HOST_DEVICE explicit NoArgmax(I) {}
};

// The update rule on scalars: does `value` replace the running `max`? (NaN != NaN tests for NaN on host and
// device.) The CPU kernels specialise MaxOps for at::vec::Vectorized, where `take` is a lane mask and
// select a blend.
template <typename T>
struct MaxOps {
  static CNX_HOST_DEVICE bool replaces(T value, T max) { return value > max || value != value; }
  template <typename U>
  static CNX_HOST_DEVICE U select(bool take, U current, U candidate) {
    return take ? candidate : current;
  }
};

// N consecutive channels of one channels-last position, scanned as one value: a CUDA thread that owns a
// 16-byte pack of channels reads each tap with one load instead of N narrow ones. Every lane follows the
// scalar rule on its own, so the results are the scalar kernel's bit for bit. Also the pack type in memory
// (alignas: a pack of 16 bytes moves in one LDG.128 / STG.128) and of the argmax lanes.
template <typename T, int N>
struct alignas(sizeof(T) * N) Lanes {
  T v[N];
  Lanes() = default;
  CNX_HOST_DEVICE explicit Lanes(T s) {  // every lane s: the scan's -inf and its tap indices
    for (int i = 0; i < N; ++i) v[i] = s;
  }
  // Lane by lane static_cast: loads into the accumulation type, stores back. Copy a pack out of memory
  // first (one vector load); converting it where it lies reads it lane by lane, N narrow loads.
  template <typename U>
  CNX_HOST_DEVICE explicit Lanes(const Lanes<U, N>& o) {
    for (int i = 0; i < N; ++i) v[i] = static_cast<T>(o.v[i]);
  }
};

template <typename T, int N>
struct MaxOps<Lanes<T, N>> {
  using Mask = Lanes<bool, N>;
  static CNX_HOST_DEVICE Mask replaces(const Lanes<T, N>& value, const Lanes<T, N>& max) {
    Mask take;
    for (int i = 0; i < N; ++i) take.v[i] = MaxOps<T>::replaces(value.v[i], max.v[i]);
    return take;
  }
  template <typename U>
  static CNX_HOST_DEVICE Lanes<U, N> select(const Mask& take, const Lanes<U, N>& current,
                                            const Lanes<U, N>& candidate) {
    Lanes<U, N> out;
    for (int i = 0; i < N; ++i) out.v[i] = take.v[i] ? candidate.v[i] : current.v[i];
    return out;
  }
  template <typename U>  // NoArgmax
  static CNX_HOST_DEVICE U select(const Mask&, U current, U) {
    return current;
  }
};

// One step of the scan: (max, argmax) = (value, index) if value replaces max.
template <typename Value, typename Index>
CNX_HOST_DEVICE void update(Value& max, Index& argmax, const Value& value, const Index& index) {
  using Ops = MaxOps<Value>;
  const auto take = Ops::replaces(value, max);
  max = Ops::select(take, max, value);
  argmax = Ops::select(take, argmax, index);
}

// Taps of a window of K taps that all lie inside the input: what taps_of gives then, with the bounds known at
// compile time, so that the scan unrolls. The CPU channels-last kernels use it for the common kernel sizes.
template <int K, typename I = int64_t>
struct FullTaps {
  static constexpr I first = 0, last = K;
  I start;
};

// The window's width in taps, which numbers its taps (kh * width + kw): a compile-time constant for full taps,
// so that a vectorised scan's tap numbers are constants (AVX-512 training forward: a masked move from a
// register where a run-time number was broadcast from a general register at every tap). FullTaps<K> stand
// for a dimension whose kernel is K: every caller passes them only then.
template <typename D, typename T>
CNX_HOST_DEVICE auto window_width(const D& d, const T&) {
  return d.kernel;
}
template <typename D, int K, typename I>
CNX_HOST_DEVICE constexpr I window_width(const D&, const FullTaps<K, I>&) {
  return K;
}

// The max and argmax of window (oh, ow). load(ih, iw) reads input element (ih, iw) as a Value: a scalar in
// the accumulation type, or on the CPU a vector of channels. Index is int64_t, NoArgmax, or a vector of
// integers when Value is a vector.
// The scan itself, on taps already found (TH / TW: Taps, or FullTaps when the window lies inside the input).
template <typename Value, typename Index, typename Load, typename DH, typename DW, typename TH, typename TW>
CNX_HOST_DEVICE void scan_window(const DH& h, const DW& w, const TH& th, const TW& tw, Load load, Value& max,
                                 Index& argmax) {
  using I = decltype(th.start);
  max = Value(-INFINITY);
  const auto width = window_width(w, tw);
  argmax = Index(th.first * width + tw.first);
  for (I kh = th.first; kh < th.last; ++kh) {
    const I ih = th.start + kh * h.dilation;
    for (I kw = tw.first; kw < tw.last; ++kw)
      update(max, argmax, load(ih, tw.start + kw * w.dilation), Index(kh * width + kw));
  }
}

// The fast path's scan of a K x K window (dilation 1): every tap with compile-time bounds, one straight run
// of loads whether or not the window crosses the border. A tap outside the input is not read and counts as
// -inf, which never replaces the max, and the argmax starts at the window's first tap inside: scan_window's
// result over the inside taps. (Border windows scanned by their own loops, behind a branch, put a thread's
// loads in blocks that issue one after another.)
template <int K, typename Value, typename Index, typename I, typename Load>
CNX_HOST_DEVICE void scan_fixed_window(const Taps<I>& th, const Taps<I>& tw, Load load, Value& max, Index& argmax) {
  max = Value(-INFINITY);
  argmax = Index(th.first * K + tw.first);
CNX_UNROLL
  for (int kh = 0; kh < K; ++kh)
CNX_UNROLL
    for (int kw = 0; kw < K; ++kw) {
      const bool inside = kh >= th.first && kh < th.last && kw >= tw.first && kw < tw.last;
      update(max, argmax, inside ? load(I(th.start + kh), I(tw.start + kw)) : Value(-INFINITY), Index(kh * K + kw));
    }
}

template <typename Value, typename Index, typename Load, typename DH, typename DW, typename I>
CNX_HOST_DEVICE void window_max(const DH& h, const DW& w, I oh, I ow, Load load, Value& max, Index& argmax) {
  scan_window(h, w, taps_of(h, oh), taps_of(w, ow), load, max, argmax);
}

// Calls f(o, k) for every window o whose tap k reads input index i (o * stride - pad + k * dilation == i,
// 0 <= o < out, 0 <= k < kernel), in increasing o (so decreasing k). The candidates are the windows whose
// span holds i -- two divisions -- and each takes the tap at i if i falls on one (a third, with dilation).
// The windows whose span holds input index i: o in [first, end), clipped to [0, out) (empty when
// first >= end). With dilation 1 each of them reads i, with tap k = i + pad - o * stride.
template <typename I = int64_t>
struct Span {
  I first, end;
};

template <typename D, typename I = decltype(D::in)>
CNX_HOST_DEVICE Span<I> covering_span(const D& d, I i) {
  const I u = i + d.pad;  // = o * stride + k * dilation
  // Windows starting in [u - (kernel - 1) * dilation, u] span i.
  const I lowest = u - (d.kernel - 1) * d.dilation;
  const I first = lowest > 0 ? I(div_nonneg(lowest + d.stride - 1, d.stride)) : I(0);
  const I end = I(div_nonneg(u, d.stride)) + 1;
  return {first, end < d.out ? end : d.out};
}

template <typename D, typename I, typename F>
CNX_HOST_DEVICE void for_each_covering_window(const D& d, I i, F f) {
  const Span<I> span = covering_span(d, i);
  for (I o = span.first; o < span.end; ++o) {
    const I t = i + d.pad - o * d.stride;  // k * dilation, in [0, (kernel - 1) * dilation]
    if (d.dilation == 1) {
      f(o, t);
    } else {
      const I k = I(div_nonneg(t, d.dilation));
      if (k * d.dilation == t) f(o, k);
    }
  }
}

// The gradient sources of one input element: calls f(oh, ow, tap) for every window (oh, ow) whose tap
// kh * kW + kw reads the element -- its gradient is the sum of grad(oh, ow) over those with
// argmax(oh, ow) == tap. rows(g) and cols(g) call g(o, k) for the covering windows along each dimension, in
// increasing o, as for_each_covering_window does (the channels-last CPU kernel passes precomputed lists of
// its results).
// The visits come in increasing (oh, ow), the order in which torch's CPU kernel scatters, so a sum in this
// order matches torch bit for bit in fp32.
template <typename Rows, typename Cols, typename I, typename F>
CNX_HOST_DEVICE void for_each_gradient_source(Rows rows, Cols cols, I kW, F f) {
  rows([&](auto oh, auto kh) { cols([&](auto ow, auto kw) { f(oh, ow, kh * kW + kw); }); });
}

// torch's index of a window-local argmax: the flat position ih * W + iw of the tap within its plane.
template <typename DH, typename DW, typename I>
CNX_HOST_DEVICE int64_t flat_index(const DH& h, const DW& w, I oh, I ow, int64_t argmax) {
  const int64_t kh = div_nonneg(argmax, w.kernel), kw = argmax - kh * w.kernel;
  return (oh * int64_t(h.stride) - h.pad + kh * h.dilation) * w.in + (ow * int64_t(w.stride) - w.pad + kw * w.dilation);
}

// Element e of a dense (N, C, rows, cols) tensor, and where its plane lives in such a tensor.
template <typename I = int64_t>
struct Element {
  I n, c, y, x;
};

template <bool channels_last>
CNX_HOST_DEVICE Element<> element_of(int64_t e, int64_t C, int64_t rows, int64_t cols) {
  Element<> el;
  // Peels one dimension off e: its coordinate, e / size left.
  const auto peel = [&e](int64_t size) {
    const int64_t q = div_nonneg(e, size), r = e - q * size;
    e = q;
    return r;
  };
  if (channels_last) {
    el.c = peel(C);
    el.x = peel(cols);
    el.y = peel(rows);
  } else {
    el.x = peel(cols);
    el.y = peel(rows);
    el.c = peel(C);
  }
  el.n = e;
  return el;
}

// Offset of (n, c, 0, 0) and the strides of y and x in a dense (N, C, rows, cols) tensor.
template <typename I = int64_t>
struct Plane {
  I base, row_stride, col_stride;
};

template <bool channels_last, typename I>
CNX_HOST_DEVICE Plane<I> plane_of(I n, I c, I C, I rows, I cols) {
  if (channels_last) return {n * rows * cols * C + c, cols * C, C};
  return {(n * C + c) * rows * cols, cols, I(1)};
}

// A whole call on the fast path: (N, C, H, W) dense tensors with every offset below 2^31, the window fixed
// at compile time, and dividers for the shape of each tensor a kernel walks element by element.
template <int K, int S>
struct FixedProblem {
  int32_t N, C;
  FixedDim<K, S> h, w;
  IntDivider in_div[3], out_div[3];  // C, cols, rows of the input / of the output
};

template <int K, int S>
FixedProblem<K, S> fixed_problem(const Problem& pb) {
  const auto dim = [](const Dim& d) { return FixedDim<K, S>{int32_t(d.in), int32_t(d.out), int32_t(d.pad)}; };
  FixedProblem<K, S> f{int32_t(pb.N), int32_t(pb.C), dim(pb.h), dim(pb.w), {}, {}};
  const auto dividers = [&](IntDivider* div, int64_t rows, int64_t cols) {
    div[0] = IntDivider(uint32_t(pb.C));
    div[1] = IntDivider(uint32_t(cols));
    div[2] = IntDivider(uint32_t(rows));
  };
  dividers(f.in_div, pb.h.in, pb.w.in);
  dividers(f.out_div, pb.h.out, pb.w.out);
  return f;
}

// Whether fixed_problem<K, S>(pb) describes pb: its window, and offsets of both tensors below 2^31.
template <int K, int S>
bool fits_fixed(const Problem& pb) {
  const auto fits = [](const Dim& d) { return d.kernel == K && d.stride == S && d.dilation == 1; };
  const int64_t limit = int64_t(1) << 31;
  return fits(pb.h) && fits(pb.w) && pb.N * pb.C * pb.h.in * pb.w.in < limit &&
         pb.N * pb.C * pb.h.out * pb.w.out < limit;
}

// The fast path's dispatch: f(fixed_problem<K, S>(pb)) for the window pb has -- 3x3/2 (AlexNet, ZFNet,
// GoogLeNet), 2x2/2 (VGG), 3x3/1 (Inception) -- when its offsets fit, and true; false for every other problem.
template <typename F>
bool with_fixed_window(const Problem& pb, F&& f) {
  if (fits_fixed<3, 2>(pb)) f(fixed_problem<3, 2>(pb));
  else if (fits_fixed<2, 2>(pb)) f(fixed_problem<2, 2>(pb));
  else if (fits_fixed<3, 1>(pb)) f(fixed_problem<3, 1>(pb));
  else return false;
  return true;
}

// Element e of a dense (N, C, rows, cols) tensor with the three dividers of its shape.
template <bool channels_last>
CNX_HOST_DEVICE Element<int32_t> element_of(int32_t e, const IntDivider* div) {
  Element<int32_t> el;
  const auto peel = [&e](const IntDivider& d) {
    const int32_t q = int32_t(d.div(uint32_t(e))), r = e - q * int32_t(d.divisor);
    e = q;
    return r;
  };
  if (channels_last) {
    el.c = peel(div[0]);
    el.x = peel(div[1]);
    el.y = peel(div[2]);
  } else {
    el.x = peel(div[1]);
    el.y = peel(div[2]);
    el.c = peel(div[0]);
  }
  el.n = e;
  return el;
}

// The output / input element e of either kind of problem.
template <bool kChannelsLast>
CNX_HOST_DEVICE Element<> output_element(const Problem& pb, int64_t e) {
  return element_of<kChannelsLast>(e, pb.C, pb.h.out, pb.w.out);
}
template <bool kChannelsLast>
CNX_HOST_DEVICE Element<> input_element(const Problem& pb, int64_t e) {
  return element_of<kChannelsLast>(e, pb.C, pb.h.in, pb.w.in);
}
template <bool kChannelsLast, int K, int S>
CNX_HOST_DEVICE Element<int32_t> output_element(const FixedProblem<K, S>& pb, int32_t e) {
  return element_of<kChannelsLast>(e, pb.out_div);
}
template <bool kChannelsLast, int K, int S>
CNX_HOST_DEVICE Element<int32_t> input_element(const FixedProblem<K, S>& pb, int32_t e) {
  return element_of<kChannelsLast>(e, pb.in_div);
}

// ---- One element's work: what one CUDA thread computes (pb's layout is kChannelsLast) ----
// P is Problem (I = int64_t) or FixedProblem (I = int32_t).

// Output element e: its window's max and argmax (Index: int64_t, or NoArgmax for the max alone).
// On the fast path (FixedDim) every window is scanned with its bounds known at compile time
// (scan_fixed_window): the scan unrolls and a thread issues its K * K loads together instead of one per trip
// of a loop (a thread's memory-level parallelism, what a memory-bound GPU kernel lives on).
template <bool kChannelsLast, typename acc_t, typename Index, typename scalar_t, typename P, typename I>
CNX_HOST_DEVICE void forward_element(const scalar_t* x, const P& pb, I e, acc_t& max, Index& argmax) {
  const Element<I> o = output_element<kChannelsLast>(pb, e);
  const Plane<I> in = plane_of<kChannelsLast>(o.n, o.c, I(pb.C), I(pb.h.in), I(pb.w.in));
  const auto load = [&](I ih, I iw) {
    const scalar_t v = x[in.base + ih * in.row_stride + iw * in.col_stride];  // a pack: one vector load
    return static_cast<acc_t>(v);
  };
  const Taps<I> th = taps_of(pb.h, o.y), tw = taps_of(pb.w, o.x);
  if constexpr (IsFixedDim<decltype(pb.h)>::value)
    scan_fixed_window<decltype(pb.h)::kernel>(th, tw, load, max, argmax);
  else
    scan_window(pb.h, pb.w, th, tw, load, max, argmax);
}

// Output elements (oh, ow) and (oh, ow + 1) of one channels-first plane on the fast path, at(offset) reading
// element offset of the plane (from where a block staged it: the channels-first tiles kernel). Where both
// windows lie inside the input, each is one unrolled scan with no test per tap (FullTaps), so that the taps they
// share -- window ow + 1's first K - S columns are window ow's last -- are read once (a compiler sees the same
// offsets); otherwise each is scanned as scan_fixed_window does. The same taps in the same order either way: the
// results are forward_element's. Window ow + 1 may lie past the last output (ow + 1 == out): it is then never
// wholly inside the input (it would be an output), reads only its taps inside, and the caller drops it.
template <typename acc_t, typename Index, typename At, int K, int S>
CNX_HOST_DEVICE void forward_pair_at(At at, const FixedProblem<K, S>& pb, int32_t oh, int32_t ow, acc_t (&max)[2],
                                     Index (&argmax)[2]) {
  const int32_t W = pb.w.in;
  const auto load = [&](int32_t ih, int32_t iw) { return static_cast<acc_t>(at(ih * W + iw)); };
  const Taps<int32_t> th = taps_of(pb.h, oh), tw0 = taps_of(pb.w, ow), tw1 = taps_of(pb.w, ow + 1);
  const auto full = [](const Taps<int32_t>& t) { return t.first == 0 && t.last == K; };
  if (full(th) && full(tw0) && full(tw1)) {
    const FullTaps<K, int32_t> rows{th.start};
    scan_window(pb.h, pb.w, rows, FullTaps<K, int32_t>{tw0.start}, load, max[0], argmax[0]);
    scan_window(pb.h, pb.w, rows, FullTaps<K, int32_t>{tw1.start}, load, max[1], argmax[1]);
  } else {
    scan_fixed_window<K>(th, tw0, load, max[0], argmax[0]);
    scan_fixed_window<K>(th, tw1, load, max[1], argmax[1]);
  }
}

// sum += g where the window exists and its argmax is tap; on lanes, lane by lane. Written as an add of g or
// +0, never skipped, so that a compiler cannot sink the loads of argmax and g into a branch (it did, and then a
// thread's loads waited on each other); sum starts at +0 and so is never -0, and sum + 0 is sum bit for bit.
template <typename acc_t, typename index_t, typename scalar_t, typename I>
CNX_HOST_DEVICE void add_if_match(acc_t& sum, index_t argmax, I tap, scalar_t g, bool window = true) {
  sum += window && argmax == tap ? static_cast<acc_t>(g) : acc_t(0);
}
template <typename acc_t, typename index_t, typename scalar_t, int N, typename I>
CNX_HOST_DEVICE void add_if_match(Lanes<acc_t, N>& sum, const Lanes<index_t, N>& argmax, I tap,
                                  const Lanes<scalar_t, N>& g, bool window = true) {
  for (int l = 0; l < N; ++l) sum.v[l] += window && argmax.v[l] == tap ? static_cast<acc_t>(g.v[l]) : acc_t(0);
}

// sum += *grad where argmax is tap. A scalar is read whether or not it matches, so that its load issues
// beside the argmax's instead of after it; a 16-byte pack of lanes only when a lane matches.
template <typename acc_t, typename index_t, typename scalar_t, typename I>
CNX_HOST_DEVICE void add_if_argmax(acc_t& sum, index_t argmax, I tap, const scalar_t* grad) {
  add_if_match(sum, argmax, tap, *grad);
}
template <typename acc_t, typename index_t, typename scalar_t, int N, typename I>
CNX_HOST_DEVICE void add_if_argmax(Lanes<acc_t, N>& sum, const Lanes<index_t, N> argmax, I tap,
                                   const Lanes<scalar_t, N>* grad) {
  bool any = false;
  for (int l = 0; l < N; ++l) any |= argmax.v[l] == tap;
  if (any) add_if_match(sum, argmax, tap, *grad);
}

// Input element e: the sum of the gradients of the windows whose argmax is the tap reading it, in increasing
// (oh, ow), the order in which torch's CPU kernel scatters.
// On the fast path (FixedProblem: K x K windows, stride S) the ceil(K / S)^2 candidate windows are a
// compile-time grid, and each one's argmax and gradient are read before any is compared -- from the nearest
// window inside the output where a candidate does not exist, so no branch stands between a thread's loads and
// they all issue together. The generic path's runtime loops read window after window, each waiting on the
// last: on a GPU that made the backward bound by memory latency (lease 3: 64x96x55x55 fp16 in ~0.17 ms, 6x
// its forward, ~7% of copy bandwidth).
template <bool kChannelsLast, typename acc_t, typename scalar_t, typename index_t, typename P, typename I>
CNX_HOST_DEVICE acc_t gradient_element(const scalar_t* grad, const index_t* argmax, const P& pb, I e) {
  const Element<I> i = input_element<kChannelsLast>(pb, e);
  const Plane<I> out = plane_of<kChannelsLast>(i.n, i.c, I(pb.C), I(pb.h.out), I(pb.w.out));
  acc_t sum = acc_t(0);
  if constexpr (IsFixedDim<decltype(pb.h)>::value) {
    constexpr int K = decltype(pb.h)::kernel, S = decltype(pb.h)::stride, M = (K + S - 1) / S;
    const Span<I> sh = covering_span(pb.h, i.y), sw = covering_span(pb.w, i.x);
CNX_UNROLL
    for (int a = 0; a < M; ++a) {
      const I oh = sh.first + a;
CNX_UNROLL
      for (int b = 0; b < M; ++b) {
        const I ow = sw.first + b;
        const I o = out.base + (oh < pb.h.out ? oh : pb.h.out - 1) * out.row_stride +
                    (ow < pb.w.out ? ow : pb.w.out - 1) * out.col_stride;
        const index_t window_argmax = argmax[o];
        const scalar_t g = grad[o];
        const I tap = (i.y + pb.h.pad - oh * S) * K + (i.x + pb.w.pad - ow * S);
        add_if_match(sum, window_argmax, tap, g, oh < sh.end && ow < sw.end);
      }
    }
    return sum;
  }
  for_each_gradient_source(
      [&](auto f) { for_each_covering_window(pb.h, i.y, f); },
      [&](auto f) { for_each_covering_window(pb.w, i.x, f); }, I(pb.w.kernel),
      [&](I oh, I ow, I tap) {
        const I o = out.base + oh * out.row_stride + ow * out.col_stride;
        add_if_argmax(sum, argmax[o], tap, grad + o);
      });
  return sum;
}

// Output element e: torch's flat index of its argmax.
template <bool kChannelsLast, typename index_t>
CNX_HOST_DEVICE int64_t index_element(const index_t* argmax, const Problem& pb, int64_t e) {
  const Element<> o = output_element<kChannelsLast>(pb, e);
  return flat_index(pb.h, pb.w, o.y, o.x, static_cast<int64_t>(argmax[e]));
}

}  // namespace cnx::maxpool
