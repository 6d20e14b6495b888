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
// Offsets and coordinates are 64-bit: a tensor's offsets may exceed 2^31 whatever the pooling parameters.
#include <cmath>
#include <cstdint>

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

// The argmax is stored in one byte up to this many taps per window, in int32 beyond.
constexpr int64_t kByteArgmaxTaps = 256;

CNX_HOST_DEVICE bool byte_argmax(const Problem& pb) { return pb.h.kernel * pb.w.kernel <= kByteArgmaxTaps; }

CNX_HOST_DEVICE int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// a / b for b > 0, in 32 bits when a and b fit (a >= 0): a 64-bit division costs tens of cycles on a CPU and
// about a hundred instructions on a GPU, several times the 32-bit one. Exact either way.
CNX_HOST_DEVICE int64_t div_nonneg(int64_t a, int64_t b) {
  if (((a | b) >> 31) == 0) return static_cast<uint32_t>(a) / static_cast<uint32_t>(b);
  return a / b;
}

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
struct Taps {
  int64_t start, first, last;
};

CNX_HOST_DEVICE Taps taps_of(const Dim& d, int64_t o) {
  Taps t;
  t.start = o * d.stride - d.pad;
  const int64_t reach = d.in - t.start;  // taps k with k * dilation < reach are inside
  if (d.dilation == 1) {  // the common case, without divisions
    t.first = t.start < 0 ? -t.start : 0;
    t.last = reach > 0 ? reach : 0;
  } else {
    t.first = t.start < 0 ? div_nonneg(-t.start + d.dilation - 1, d.dilation) : 0;
    t.last = reach > 0 ? div_nonneg(reach + d.dilation - 1, d.dilation) : 0;
  }
  if (t.last > d.kernel) t.last = d.kernel;
  return t;
}

// Stands in for the argmax where only the max is wanted (the inference forward); it compiles away.
struct NoArgmax {
  NoArgmax() = default;
  CNX_HOST_DEVICE explicit NoArgmax(int64_t) {}
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

// One step of the scan: (max, argmax) = (value, index) if value replaces max.
template <typename Value, typename Index>
CNX_HOST_DEVICE void update(Value& max, Index& argmax, const Value& value, const Index& index) {
  using Ops = MaxOps<Value>;
  const auto take = Ops::replaces(value, max);
  max = Ops::select(take, max, value);
  argmax = Ops::select(take, argmax, index);
}

// The max and argmax of window (oh, ow). load(ih, iw) reads input element (ih, iw) as a Value: a scalar in
// the accumulation type, or on the CPU a vector of channels. Index is int64_t, NoArgmax, or a vector of
// integers when Value is a vector.
template <typename Value, typename Index, typename Load>
CNX_HOST_DEVICE void window_max(const Dim& h, const Dim& w, int64_t oh, int64_t ow, Load load, Value& max,
                                Index& argmax) {
  const Taps th = taps_of(h, oh), tw = taps_of(w, ow);
  max = Value(-INFINITY);
  argmax = Index(th.first * w.kernel + tw.first);
  for (int64_t kh = th.first; kh < th.last; ++kh) {
    const int64_t ih = th.start + kh * h.dilation;
    for (int64_t kw = tw.first; kw < tw.last; ++kw)
      update(max, argmax, load(ih, tw.start + kw * w.dilation), Index(kh * w.kernel + kw));
  }
}

// Calls f(o, k) for every window o whose tap k reads input index i (o * stride - pad + k * dilation == i,
// 0 <= o < out, 0 <= k < kernel), in increasing o (so decreasing k). The candidates are the windows whose
// span holds i -- two divisions -- and each takes the tap at i if i falls on one (a third, with dilation).
// The windows whose span holds input index i: o in [first, end), clipped to [0, out) (empty when
// first >= end). With dilation 1 each of them reads i, with tap k = i + pad - o * stride.
struct Span {
  int64_t first, end;
};

CNX_HOST_DEVICE Span covering_span(const Dim& d, int64_t i) {
  const int64_t u = i + d.pad;  // = o * stride + k * dilation
  // Windows starting in [u - (kernel - 1) * dilation, u] span i.
  const int64_t lowest = u - (d.kernel - 1) * d.dilation;
  const int64_t first = lowest > 0 ? div_nonneg(lowest + d.stride - 1, d.stride) : 0;
  const int64_t end = div_nonneg(u, d.stride) + 1;
  return {first, end < d.out ? end : d.out};
}

template <typename F>
CNX_HOST_DEVICE void for_each_covering_window(const Dim& d, int64_t i, F f) {
  const Span span = covering_span(d, i);
  for (int64_t o = span.first; o < span.end; ++o) {
    const int64_t t = i + d.pad - o * d.stride;  // k * dilation, in [0, (kernel - 1) * dilation]
    if (d.dilation == 1) {
      f(o, t);
    } else {
      const int64_t k = div_nonneg(t, d.dilation);
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
template <typename Rows, typename Cols, typename F>
CNX_HOST_DEVICE void for_each_gradient_source(Rows rows, Cols cols, int64_t kW, F f) {
  rows([&](int64_t oh, int64_t kh) { cols([&](int64_t ow, int64_t kw) { f(oh, ow, kh * kW + kw); }); });
}

// torch's index of a window-local argmax: the flat position ih * W + iw of the tap within its plane.
CNX_HOST_DEVICE int64_t flat_index(const Dim& h, const Dim& w, int64_t oh, int64_t ow, int64_t argmax) {
  const int64_t kh = div_nonneg(argmax, w.kernel), kw = argmax - kh * w.kernel;
  return (oh * h.stride - h.pad + kh * h.dilation) * w.in + (ow * w.stride - w.pad + kw * w.dilation);
}

// Element e of a dense (N, C, rows, cols) tensor, and where its plane lives in such a tensor.
struct Element {
  int64_t n, c, y, x;
};

template <bool channels_last>
CNX_HOST_DEVICE Element element_of(int64_t e, int64_t C, int64_t rows, int64_t cols) {
  Element el;
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
struct Plane {
  int64_t base, row_stride, col_stride;
};

template <bool channels_last>
CNX_HOST_DEVICE Plane plane_of(int64_t n, int64_t c, int64_t C, int64_t rows, int64_t cols) {
  if (channels_last) return {n * rows * cols * C + c, cols * C, C};
  return {(n * C + c) * rows * cols, cols, 1};
}

// ---- One element's work: what one CUDA thread computes (pb's layout is kChannelsLast) ----

// Output element e: its window's max and argmax (Index: int64_t, or NoArgmax for the max alone).
template <bool kChannelsLast, typename acc_t, typename Index, typename scalar_t>
CNX_HOST_DEVICE void forward_element(const scalar_t* x, const Problem& pb, int64_t e, acc_t& max, Index& argmax) {
  const Element o = element_of<kChannelsLast>(e, pb.C, pb.h.out, pb.w.out);
  const Plane in = plane_of<kChannelsLast>(o.n, o.c, pb.C, pb.h.in, pb.w.in);
  window_max(
      pb.h, pb.w, o.y, o.x,
      [&](int64_t ih, int64_t iw) { return static_cast<acc_t>(x[in.base + ih * in.row_stride + iw * in.col_stride]); },
      max, argmax);
}

// Input element e: the sum of the gradients of the windows whose argmax is the tap reading it. grad is read
// only where the argmax matches.
template <bool kChannelsLast, typename acc_t, typename scalar_t, typename index_t>
CNX_HOST_DEVICE acc_t gradient_element(const scalar_t* grad, const index_t* argmax, const Problem& pb, int64_t e) {
  const Element i = element_of<kChannelsLast>(e, pb.C, pb.h.in, pb.w.in);
  const Plane out = plane_of<kChannelsLast>(i.n, i.c, pb.C, pb.h.out, pb.w.out);
  acc_t sum = acc_t(0);
  for_each_gradient_source(
      [&](auto f) { for_each_covering_window(pb.h, i.y, f); },
      [&](auto f) { for_each_covering_window(pb.w, i.x, f); }, pb.w.kernel,
      [&](int64_t oh, int64_t ow, int64_t tap) {
        const int64_t o = out.base + oh * out.row_stride + ow * out.col_stride;
        if (argmax[o] == tap) sum += static_cast<acc_t>(grad[o]);
      });
  return sum;
}

// Output element e: torch's flat index of its argmax.
template <bool kChannelsLast, typename index_t>
CNX_HOST_DEVICE int64_t index_element(const index_t* argmax, const Problem& pb, int64_t e) {
  const Element o = element_of<kChannelsLast>(e, pb.C, pb.h.out, pb.w.out);
  return flat_index(pb.h, pb.w, o.y, o.x, static_cast<int64_t>(argmax[e]));
}

}  // namespace cnx::maxpool
