#pragma once
// Fused ReLU -> max-pool -> LRN (AlexNet's CONV -> ReLU -> POOL -> NORM, GoogLeNet's stem):
//     p = maxpool(relu(x))  (relu optional),   y = lrn(p)
// with the exact semantics of F.local_response_norm(F.max_pool2d(F.relu(x), ...), ...). The pieces are the
// two ops' own shared math (maxpool_math.h, lrn_math.h); this header adds how ReLU folds in, for the CPU
// and CUDA kernels alike.
//
// ReLU commutes with the max (it is monotone, and NaN stays NaN either way), so the kernels pool x itself
// and apply ReLU to the pooled value: 1 op per output instead of one per input. The argmax may then differ
// from that of pool(relu(x)) -- only where the window's max is <= 0 and several taps tie at 0 after ReLU --
// and there the gradient is 0 whichever tap it names (relu'(x) = 0 for x <= 0), so the backward is the
// same. That backward needs neither x nor y:
//     gp = lrn_backward(g, p)          (LRN's gradient w.r.t. its input p)
//     gp = 0 where relu and p <= 0     (torch's threshold_backward on the ReLU output: NaN passes)
//     dx = maxpool_backward(gp, argmax)   (the gather)
#include <cstdint>
#include <type_traits>

#include "common/macros.h"
#include "lrn/lrn_math.h"
#include "maxpool/maxpool_math.h"

namespace cnx::pool_lrn {

struct Problem {
  maxpool::Problem pool;  // dilation 1; pool.channels_last is the layout of every tensor
  int64_t size;
  double alpha, beta, k;
  bool relu;
};

// relu(v) with torch's NaN rule: NaN stays NaN (v < 0 is false for NaN).
template <typename T>
CNX_HOST_DEVICE T relu(T v) {
  return v < T(0) ? T(0) : v;
}

// ---- One thread's work in the CUDA kernels (pool_lrn_cuda.cu), callable on the host too ----
// index_t is the argmax's storage type (uint8_t or int32_t), or void when the forward saves neither the
// pooled values nor the argmax (inference). Tensors are dense (N, C, rows, cols) in pb.pool's layout
// (kChannelsLast); offsets are 64-bit.

// Where the channels of one spatial position (n, y, x) of a dense (N, C, rows, cols) tensor live: channel
// m at base + m * stride.
struct Column {
  int64_t base, stride;
};

template <bool kChannelsLast>
CNX_HOST_DEVICE Column column_of(int64_t n, int64_t y, int64_t x, int64_t C, int64_t rows, int64_t cols) {
  const maxpool::Plane pl = maxpool::plane_of<kChannelsLast>(n, int64_t(0), C, rows, cols);
  return {pl.base + y * pl.row_stride + x * pl.col_stride, kChannelsLast ? 1 : rows * cols};
}

// The input plane of channel c of sample n, as pooled_value reads it.
struct InputPlane {
  int64_t base, channel_stride, row_stride, col_stride;  // channel c's plane at base + c * channel_stride
};

template <bool kChannelsLast>
CNX_HOST_DEVICE InputPlane input_plane(const maxpool::Problem& pp, int64_t n) {
  const maxpool::Plane pl = maxpool::plane_of<kChannelsLast>(n, int64_t(0), pp.C, pp.h.in, pp.w.in);
  return {pl.base, kChannelsLast ? 1 : pp.h.in * pp.w.in, pl.row_stride, pl.col_stride};
}

// p = relu?(max of window (oh, ow) of channel c of sample n: `in` is input_plane(n)), and its window-local
// argmax. The max of scalar_t values and the ReLU are exact in acc_t, so p is already the scalar_t the
// composite stores.
template <typename acc_t, typename scalar_t, typename Index>
CNX_HOST_DEVICE acc_t pooled_value(const scalar_t* x, const Problem& pb, const InputPlane& in, int64_t c, int64_t oh,
                                   int64_t ow, Index& argmax) {
  const scalar_t* plane = x + (in.base + c * in.channel_stride);
  acc_t max;
  maxpool::window_max(
      pb.pool.h, pb.pool.w, oh, ow,
      [&](int64_t ih, int64_t iw) { return static_cast<acc_t>(plane[ih * in.row_stride + iw * in.col_stride]); }, max,
      argmax);
  return pb.relu ? relu(max) : max;
}

template <typename index_t>
using IndexOf = std::conditional_t<std::is_void_v<index_t>, maxpool::NoArgmax, int64_t>;

// Forward, column form: output channels [begin, end) of pooled position (n, oh, ow) for column thread t,
// where t % (N * OH * OW) is the position (ow fastest) and t / (N * OH * OW) the chunk of `chunk` channels.
// Channels [begin - lo, end + hi) (clipped to [0, C)) are pooled once each, in order, into a ring of the last
// kRing pooled values; y_c = lrn::forward_value(p_c, sum of p_m^2 over [c - lo, c + hi]) with lrn_math.h's
// window_sums (exact direct sums; a window wider than the ring pools its older channels again from x). The
// chunk's own channels also store p and the argmax when index_t is not void; the halo channels are only read.
constexpr int64_t kRing = lrn::kDirectWindow;
static_assert((kRing & (kRing - 1)) == 0, "the ring is indexed with a mask");

template <bool kChannelsLast, typename acc_t, typename index_t, typename scalar_t>
CNX_HOST_DEVICE void forward_column_thread(const scalar_t* x, scalar_t* y, scalar_t* pooled, index_t* argmax,
                                           const Problem& pb, const lrn::Params<acc_t>& lp, int64_t chunk, int64_t t) {
  const maxpool::Problem& pp = pb.pool;
  const int64_t columns = pp.N * pp.h.out * pp.w.out;
  const int64_t q = maxpool::div_nonneg(t, columns);
  const maxpool::Element pos = maxpool::element_of<false>(t - q * columns, 1, pp.h.out, pp.w.out);
  const Column out = column_of<kChannelsLast>(pos.n, pos.y, pos.x, pp.C, pp.h.out, pp.w.out);
  const InputPlane in = input_plane<kChannelsLast>(pp, pos.n);
  const int64_t begin = q * chunk, end = begin + chunk < pp.C ? begin + chunk : pp.C;
  const int64_t first = begin - lp.lo > 0 ? begin - lp.lo : 0;
  const int64_t last = end + lp.hi < pp.C ? end + lp.hi : pp.C;  // channels [first, last) are pooled
  acc_t ring[kRing];  // channel m at ring[m % kRing] while next - kRing <= m < next
  int64_t next = first;
  // p_m: from the ring, else pooled -- in order up to m, each into the ring (and stored if the chunk's own),
  // or, for a channel that has left the ring (windows wider than kRing only), again.
  const auto get = [&](int64_t m) -> acc_t {
    for (;;) {
      if (m < next && m >= next - kRing) return ring[m & (kRing - 1)];
      const int64_t ch = m < next ? m : next;
      IndexOf<index_t> arg;
      const acc_t p = pooled_value<acc_t>(x, pb, in, ch, pos.y, pos.x, arg);
      if (ch != next) return p;
      if constexpr (!std::is_void_v<index_t>) {
        if (ch >= begin && ch < end) {  // the chunk's own channels; the halo is only read
          pooled[out.base + ch * out.stride] = static_cast<scalar_t>(p);
          argmax[out.base + ch * out.stride] = static_cast<index_t>(arg);
        }
      }
      ring[ch & (kRing - 1)] = p;
      if (++next > m) return p;
    }
  };
  lrn::window_sums<acc_t>(
      last - first, lp.lo, lp.hi,
      [&](int64_t i) {
        const acc_t p = get(first + i);
        return p * p;
      },
      [&](int64_t i, acc_t sum) {
        const int64_t c = first + i;
        if (c >= begin && c < end) y[out.base + c * out.stride] = static_cast<scalar_t>(lrn::forward_value(get(c), sum, lp));
      });
}

// The fast-path (K x K window, stride S, dilation 1) pooled value of one channel plane (tap (h, w) at
// plane[h * row_stride + w * col_stride], offsets below 2^31 as maxpool::fits_fixed ensures): relu?(max over
// the window's taps), with its window-local argmax, by max-pool's own fast-path scan (scan_fixed_window).
template <int K, typename acc_t, typename Index, typename scalar_t>
CNX_HOST_DEVICE acc_t pool_fixed_window(const scalar_t* plane, int32_t row_stride, int32_t col_stride,
                                        const maxpool::Taps<int32_t>& th, const maxpool::Taps<int32_t>& tw,
                                        bool with_relu, Index& argmax) {
  acc_t max;
  maxpool::scan_fixed_window<K>(
      th, tw, [&](int32_t ih, int32_t iw) { return static_cast<acc_t>(plane[ih * row_stride + iw * col_stride]); },
      max, argmax);
  return with_relu ? relu(max) : max;
}

// Forward, row form, step 1 (channels-last): pooled element e of the dense (N, OH, OW, C) output -- p, stored
// with its argmax when index_t is not void. The caller stages p for step 2.
template <typename acc_t, typename index_t, typename scalar_t>
CNX_HOST_DEVICE acc_t pool_row_element(const scalar_t* x, scalar_t* pooled, index_t* argmax, const Problem& pb,
                                       int64_t e) {
  const maxpool::Element o = maxpool::element_of<true>(e, pb.pool.C, pb.pool.h.out, pb.pool.w.out);
  IndexOf<index_t> arg;
  const acc_t p = pooled_value<acc_t>(x, pb, input_plane<true>(pb.pool, o.n), o.c, o.y, o.x, arg);
  if constexpr (!std::is_void_v<index_t>) {
    pooled[e] = static_cast<scalar_t>(p);
    argmax[e] = static_cast<index_t>(arg);
  }
  return p;
}

// pool_row_element for a fast-path window: the same value and argmax (pool_fixed_window scans as
// maxpool::window_max does), with 32-bit coordinates from multiply-shift dividers instead of 64-bit divisions.
template <int K, int S>
struct FixedRows {
  maxpool::FixedProblem<K, S> pool;
  bool relu;
};

template <int K, int S>
FixedRows<K, S> fixed_rows(const maxpool::FixedProblem<K, S>& fp, bool relu) {  // (no CTAD in C++17)
  return {fp, relu};
}

template <typename acc_t, typename index_t, typename scalar_t, int K, int S>
CNX_HOST_DEVICE acc_t pool_row_element(const scalar_t* x, scalar_t* pooled, index_t* argmax,
                                       const FixedRows<K, S>& fr, int64_t e) {
  const maxpool::FixedProblem<K, S>& fp = fr.pool;
  const maxpool::Element<int32_t> o = maxpool::output_element<true>(fp, int32_t(e));
  const int32_t row_stride = fp.w.in * fp.C;
  const scalar_t* plane = x + (int64_t(o.n) * fp.h.in * row_stride + o.c);
  IndexOf<index_t> arg;
  const acc_t p = pool_fixed_window<K, acc_t>(plane, row_stride, fp.C, maxpool::taps_of(fp.h, o.y),
                                              maxpool::taps_of(fp.w, o.x), fr.relu, arg);
  if constexpr (!std::is_void_v<index_t>) {
    pooled[e] = static_cast<scalar_t>(p);
    argmax[e] = static_cast<index_t>(arg);
  }
  return p;
}

// Forward, step 2 of the staged forms: y_c from the pooled values p_m of channels m in [first, C) staged at
// staged[(m - first) * stride] (a channels-last row: stride 1, first 0; a channels-first tile: a column of
// shared memory), the window [c - lo, c + hi] clipped to [0, C) summed directly (exact, whatever its size) in
// increasing channel order, as lrn::window_sums does. The caller has staged every channel of that window.
template <typename acc_t>
CNX_HOST_DEVICE acc_t lrn_staged_value(const acc_t* staged, int64_t stride, int64_t first, int64_t C, int64_t c,
                                       const lrn::Params<acc_t>& lp) {
  const int64_t lo = c - lp.lo > 0 ? c - lp.lo : 0;
  const int64_t hi = c + lp.hi < C - 1 ? c + lp.hi : C - 1;
  acc_t sum = acc_t(0);
  for (int64_t m = lo; m <= hi; ++m) {
    const acc_t p = staged[(m - first) * stride];
    sum += p * p;
  }
  return lrn::forward_value(staged[(c - first) * stride], sum, lp);
}

}  // namespace cnx::pool_lrn
