#pragma once
// The channels-first forward: rows split into stride phases, pooled horizontally into a ring of row
// maxima, combined vertically (RowPooler); PlanePooler hands whole-window 3 x 3 stride-2 planes to
// maxpool_cpu_3x3s2.h. See maxpool_cpu_vec.h.

#include "maxpool/maxpool_cpu_3x3s2.h"

namespace cnx::cpu::CPU_CAPABILITY {
namespace {

// ---- Forward, channels-first ----

// Splits input row x[0..W) into `stride` phases of length M: phase r holds the padded row's elements
// m * stride + r at phases[r * M + m]. Input element i lands in phase (i + pad) % stride at index
// (i + pad) / stride, so the elements i = stride * j + t (one residue t) go to consecutive places; the
// padding's places are the same for every row and hold -inf, written once. kStride > 0 fixes the stride at
// compile time (1 and 2, the common ones) so that the copies vectorise: for stride 2 both residues move in
// one loop, an even/odd de-interleave.
template <int64_t kStride, typename scalar_t, typename acc_t>
void split_row(const scalar_t* x, int64_t W, int64_t pad, int64_t stride, int64_t M, acc_t* phases) {
  const int64_t s = kStride > 0 ? kStride : stride;
  const auto phase_of = [&](int64_t t) { return phases + ((t + pad) % s) * M + (t + pad) / s; };
  if constexpr (kStride == 2) {
    acc_t* even = phase_of(0);
    acc_t* odd = phase_of(1);
    const int64_t pairs = W / 2;
    int64_t j = 0;
    // gcc leaves the strided loop scalar: de-interleave by hand (bf16 and fp16 widened a vector at a time)
    using V = at::vec::Vectorized<acc_t>;
    for (; j + V::size() <= pairs; j += V::size()) {
      const auto [e, o] = at::vec::deinterleave2(load<scalar_t, acc_t>(x + 2 * j, V::size()),
                                                 load<scalar_t, acc_t>(x + 2 * j + V::size(), V::size()));
      e.store(even + j);
      o.store(odd + j);
    }
    for (; j < pairs; ++j) {
      even[j] = static_cast<acc_t>(x[2 * j]);
      odd[j] = static_cast<acc_t>(x[2 * j + 1]);
    }
    if (W % 2 != 0) even[pairs] = static_cast<acc_t>(x[W - 1]);
  } else {
    for (int64_t t = 0; t < s && t < W; ++t) {
      acc_t* dst = phase_of(t);
      const int64_t count = (W - t + s - 1) / s;
      for (int64_t j = 0; j < count; ++j) dst[j] = static_cast<acc_t>(x[s * j + t]);
    }
  }
}

// One task's scratch for the channels-first forward, reused across its items.
template <typename scalar_t, typename index_t>
struct RowPooler {
  using acc_t = acc_type<scalar_t>;
  using int_t = at::vec::int_same_size_t<acc_t>;
  using V = Vec<scalar_t>;
  using Index = ArgmaxLanes<scalar_t, index_t>;
  static constexpr bool kArgmax = !std::is_void_v<index_t>;

  const Problem& pb;
  int64_t OWv;               // output columns rounded up to whole vectors
  int64_t M;                 // phase length: OWv plus the furthest tap's offset, or the whole row if longer
  int64_t R;                 // ring rows: a power of two >= the rows one window spans (or H if fewer)
  std::vector<acc_t> phases;
  std::vector<int64_t> tap;  // tap kw of output column 0 lies at phases[tap[kw]]
  std::vector<int_t> first_kw;  // per output column, its first tap at or past column 0: the initial argmax
  std::vector<acc_t> ring;      // R rows of OWv horizontal maxima
  std::vector<int_t> ring_kw;   // and their kw
  std::vector<int64_t> ring_row;  // the input row each ring slot holds (-1: none)
  std::vector<int64_t> slot;      // the ring slot of each row (kh) of the current window
  std::vector<acc_t> acc;         // an output row's running maxima
  std::vector<int_t> acc_kw;      // and argmax (kh * kW + kw)
  std::vector<acc_t> column_max;  // inference: rows of vertical maxima, kGroup of them (direct) or one
  int64_t column_stride = 0;      // and the distance between those rows
  bool direct = false;            // inference: the horizontal pass reads column_max itself (stride 1 or 2)
  // Inference, direct: output rows whose vertical passes all run before their horizontal passes. The
  // horizontal loads straddle the vertical pass's vector stores (tap kw of column ow is element
  // stride * ow + kw); one issued right behind the store it straddles misses store forwarding and waits for
  // the store to reach the cache -- on 13-column rows (AlexNet's pool5) that wait was the kernel's largest
  // cost. A group of rows puts the other rows' work between each store and its loads.
  static constexpr int64_t kGroup = 8;

  explicit RowPooler(const Problem& p) : pb(p) {
    const Dim& w = pb.w;
    OWv = (w.out + V::size() - 1) / V::size() * V::size();
    M = std::max(OWv + (w.kernel - 1) * w.dilation / w.stride, (w.in + w.pad + w.stride - 1) / w.stride);
    const int64_t span = std::min((pb.h.kernel - 1) * pb.h.dilation + 1, pb.h.in);
    for (R = 1; R < span; R *= 2) {
    }
    phases.assign(w.stride * M, static_cast<acc_t>(-INFINITY));  // the padding; split_row fills the rest
    tap.resize(w.kernel);
    for (int64_t kw = 0; kw < w.kernel; ++kw) {
      const int64_t offset = kw * w.dilation;
      tap[kw] = (offset % w.stride) * M + offset / w.stride;
    }
    ring.resize(R * OWv);
    ring_row.resize(R);
    slot.resize(pb.h.kernel);
    acc.resize(OWv);
    if constexpr (!kArgmax) {
      direct = w.dilation == 1 && (w.stride == 1 || w.stride == 2);
      const int64_t Wv = (w.in + V::size() - 1) / V::size() * V::size();
      // Direct: each row at offset pad, -inf before it and after it as far as a horizontal load reaches (the
      // last one ends at element stride * OWv + kernel - 2: stride 2 loads two vectors per tap pair) or the
      // vertical pass's whole-vector stores do (pad + Wv).
      const int64_t reach = std::max(w.pad + Wv, w.stride * OWv + w.kernel - 1);
      column_stride = direct ? (reach + V::size() - 1) / V::size() * V::size() : Wv;
      column_max.assign((direct ? kGroup : 1) * column_stride, static_cast<acc_t>(-INFINITY));
    }
    if constexpr (kArgmax) {
      acc_kw.resize(OWv);
      first_kw.resize(OWv);
      for (int64_t ow = 0; ow < OWv; ++ow) first_kw[ow] = static_cast<int_t>(maxpool::taps_of(w, ow).first);
      ring_kw.resize(R * OWv);
    }
  }

  // The horizontal maxima of input row ih of plane x, into its ring slot unless already there. Row ih goes
  // to slot ih mod R (a mask: R is a power of two). The rows one window needs are fewer than R apart, hence
  // in distinct slots, and a row evicted is below the current window's first, so no later window needs it:
  // windows only move down.
  // The loops run tap by tap over the whole row, the running maxima in the ring slot: every step of the
  // inner loop is independent, where a loop over taps per vector would be one chain of dependent blends.
  int64_t ring_slot(const scalar_t* x, int64_t ih) {
    const int64_t slot = ih & (R - 1);
    if (ring_row[slot] == ih) return slot;
    ring_row[slot] = ih;
    pool_horizontally(x + ih * pb.w.in, ring.data() + slot * OWv, kArgmax ? ring_kw.data() + slot * OWv : nullptr);
    return slot;
  }

  // The horizontal maxima (and, with the argmax, their kw) of one input row, of scalar_t or acc_t: the row
  // split into phases, then one pass per tap.
  template <typename T>
  void pool_horizontally(const T* row, acc_t* hv, int_t* hk) {
    const Dim& w = pb.w;
    if (w.stride == 1) split_row<1>(row, w.in, w.pad, w.stride, M, phases.data());
    else if (w.stride == 2) split_row<2>(row, w.in, w.pad, w.stride, M, phases.data());
    else split_row<0>(row, w.in, w.pad, w.stride, M, phases.data());
    // Loop bounds in locals: the stores through acc_t* could otherwise alias pb, reloaded every iteration.
    const int64_t OW = w.out, kW = w.kernel;
    for (int64_t kw = 0; kw < kW; ++kw) {
      const acc_t* src = phases.data() + tap[kw];
      for (int64_t ow = 0; ow < OW; ow += V::size()) {
        const V value = V::loadu(src + ow);
        if (!kArgmax && kw == 0) {
          // The first tap replaces the initial -inf unless it is -inf itself, which leaves the same bits: the
          // max is the tap, no comparison needed (the argmax does need it).
          value.store(hv + ow);
          continue;
        }
        // The scan starts at -inf and the first tap at or past column 0.
        V max = kw == 0 ? V(static_cast<acc_t>(-INFINITY)) : V::loadu(hv + ow);
        Index arg;
        if constexpr (kArgmax) arg = Index::loadu((kw == 0 ? first_kw.data() : hk) + ow);
        maxpool::update(max, arg, value, Index(kw));
        max.store(hv + ow);
        if constexpr (kArgmax) arg.store(hk + ow);
      }
    }
  }

  // Inference: the max alone does not depend on the scan order (a NaN wins wherever it is, and equal values
  // are equal -- only a tie of -0 and +0 may keep the other zero), so each output row first takes the
  // vertical max of its window's input rows, kH vector passes over whole rows, and pools that one row
  // horizontally: one split and kW passes per output row, where the argmax scan needs them per input row
  // plus kH passes to combine. Planes of small rows (AlexNet's 55 columns) are dominated by those per-row
  // costs.
  void pool_rows_inference(const scalar_t* x, scalar_t* y, int64_t oh_begin, int64_t oh_end, PrefetchStream* ahead) {
    const int64_t OW = pb.w.out;
    maxpool::Taps<> th[kGroup];  // each row's vertical taps, for both passes
    for (int64_t oh = oh_begin; oh < oh_end;) {
      const int64_t group_end = direct ? std::min(oh + kGroup, oh_end) : oh + 1;
      for (int64_t g = oh; g < group_end; ++g) {
        th[g - oh] = maxpool::taps_of(pb.h, g);
        pool_vertically(x, th[g - oh], column_max.data() + (g - oh) * column_stride);
        if (ahead != nullptr) ahead->advance();
      }
      for (int64_t g = oh; g < group_end; ++g) {
        scalar_t* yr = y + (g - oh_begin) * OW;
        // Stores may run into the next output rows, which this call writes next -- not past its last row.
        const int64_t row_end = std::min<int64_t>(OW + V::size(), (oh_end - g) * OW);
        const acc_t* cm = column_max.data() + (g - oh) * column_stride;
        if (th[g - oh].first >= th[g - oh].last) {  // no row inside the input
          for (int64_t ow = 0; ow < OW; ow += V::size())
            store_exact(yr + ow, V(static_cast<acc_t>(-INFINITY)), std::min<int64_t>(V::size(), OW - ow));
        } else if (direct) {
          pool_horizontally_direct(cm, yr, row_end);
        } else {
          pool_horizontally(cm, acc.data(), nullptr);
          for (int64_t ow = 0; ow < OW; ow += V::size())
            store_exact(yr + ow, V::loadu(acc.data() + ow), std::min<int64_t>(V::size(), row_end - ow));
        }
      }
      oh = group_end;
    }
  }

  // The vertical maxima of the window rows th (an output row's) into cm (direct: at cm + pad, the lanes past
  // the row -inf; else at cm); nothing when no row is inside the input. Whole vectors wherever they stay
  // inside the plane (the lanes past a row's end read the next row and land in cm's padding, which split_row
  // ignores): a partial load or store costs a copy through memory.
  void pool_vertically(const scalar_t* x, const maxpool::Taps<>& th, acc_t* cm) {
    const Dim h = pb.h;  // a copy: stores through acc_t* could otherwise alias pb
    const int64_t W = pb.w.in;
    if (th.first >= th.last) return;
    const scalar_t* plane_end = x + h.in * W;
    const scalar_t* top = x + (th.start + th.first * h.dilation) * W;
    const int64_t rows = th.last - th.first, step = h.dilation * W;
    acc_t* out = cm + (direct ? pb.w.pad : 0);
    // Vector iw of the row, cnt lanes, over kRows rows (0: `rows`, known at run time).
    const auto column = [&](int64_t iw, int64_t cnt, auto kRows) CNX_LAMBDA_INLINE {
      V max = load(top + iw, cnt);
      const int64_t n = decltype(kRows)::value > 0 ? decltype(kRows)::value : rows;
      for (int64_t r = 1; r < n; ++r) {
        NoArgmax none;
        maxpool::update(max, none, load(top + r * step + iw, cnt), NoArgmax());
      }
      // Direct: the lanes past the row's end (the next rows' values) become -inf here, in the register, so
      // that the windows clipped at the right edge ignore them and nothing after this store writes into its
      // lanes (a later store there, too, made the horizontal loads of them miss store forwarding).
      if (direct && iw + V::size() > W) max = V::set(V(static_cast<acc_t>(-INFINITY)), max, W - iw);
      max.store(out + iw);
    };
    // Whole vectors while the last row read stays inside the plane, with the count and the common row counts
    // known at compile time: a run-time count made every bf16/fp16 tap test it (and the row loop its bound).
    const int64_t whole_limit = (plane_end - (top + (rows - 1) * step)) - V::size();
    const auto sweep = [&](auto kRows) {
      int64_t iw = 0;
      for (; iw < W && iw <= whole_limit; iw += V::size()) column(iw, V::size(), kRows);
      for (; iw < W; iw += V::size()) column(iw, std::min<int64_t>(V::size(), W - iw), kRows);
    };
    if (rows == 3) sweep(std::integral_constant<int, 3>{});
    else if (rows == 2) sweep(std::integral_constant<int, 2>{});
    else sweep(std::integral_constant<int, 0>{});
  }

  // The horizontal pass of the inference for strides 1 and 2, straight from the row of vertical maxima (at
  // cm + pad, -inf around it): tap kw of output column ow is element stride * ow + kw, so stride 1
  // loads its taps as shifted vectors, and stride 2 de-interleaves two vectors into the even and odd taps of
  // 16 (AVX-512) consecutive outputs. No phase copy: its scalar stores, read back by vector loads, stalled
  // the loads (store forwarding cannot combine them) and were most of the time of small rows.
  void pool_horizontally_direct(const acc_t* cm, scalar_t* yr, int64_t row_end) {
    const Dim w = pb.w;
    const int64_t OW = w.out, K = w.kernel;
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<acc_t, float>) {
      if (w.stride == 2 && K == 3) {
        for (int64_t ow = 0; ow < OW; ow += V::size())
          store_exact(yr + ow, max3_stride2(cm + 2 * ow), std::min<int64_t>(V::size(), row_end - ow));
        return;
      }
    }
#endif
    for (int64_t ow = 0; ow < OW; ow += V::size()) {
      V max;
      NoArgmax none;
      if (w.stride == 1) {
        max = V::loadu(cm + ow);
        for (int64_t kw = 1; kw < K; ++kw) maxpool::update(max, none, V::loadu(cm + ow + kw), NoArgmax());
      } else {
        const acc_t* p = cm + 2 * ow;
        for (int64_t kw = 0; kw < K; kw += 2) {
          const auto [even, odd] = at::vec::deinterleave2(V::loadu(p + kw), V::loadu(p + kw + V::size()));
          if (kw == 0) max = even;
          else maxpool::update(max, none, even, NoArgmax());
          if (kw + 1 < K) maxpool::update(max, none, odd, NoArgmax());
        }
      }
      store_exact(yr + ow, max, std::min<int64_t>(V::size(), row_end - ow));
    }
  }

  // Output rows [oh_begin, oh_end) of one plane: x points at the plane, y and argmax at output row
  // oh_begin (a whole plane, or a tile of rows). The window's rows of maxima combine in kh order, row by row
  // over the whole output row (running values in `acc`/`acc_kw` until the last row, which writes the
  // output). `ahead`, when given, advances once per output row: what the caller reads next. Out of line:
  // inlined into the fused op's tile loop, its pooling ran ~7% slower (single thread, AlexNet's 8x96x55x55).
  [[gnu::noinline]] void pool_rows(const scalar_t* x, scalar_t* y, index_t* argmax, int64_t oh_begin, int64_t oh_end,
                 PrefetchStream* ahead = nullptr) {
    if constexpr (!kArgmax) {
      pool_rows_inference(x, y, oh_begin, oh_end, ahead);
      return;
    }
    const Dim h = pb.h, w = pb.w;  // copies: stores through acc_t* could otherwise alias pb
    std::fill(ring_row.begin(), ring_row.end(), -1);
    for (int64_t oh = oh_begin; oh < oh_end; ++oh) {
      if (ahead != nullptr) ahead->advance();
      const maxpool::Taps th = maxpool::taps_of(h, oh);
      scalar_t* yr = y + (oh - oh_begin) * w.out;
      index_t* ar = nullptr;
      if constexpr (kArgmax) ar = argmax + (oh - oh_begin) * w.out;
      if (th.first >= th.last) {
        // No row inside the input: -inf, and torch's initial argmax (the first taps at or past row and
        // column 0).
        for (int64_t ow = 0; ow < w.out; ow += V::size()) {
          store_exact(yr + ow, V(static_cast<acc_t>(-INFINITY)), std::min<int64_t>(V::size(), w.out - ow));
          if constexpr (kArgmax) (Index::loadu(first_kw.data() + ow) + Index(th.first * w.kernel)).store(acc_kw.data() + ow);
        }
        if constexpr (kArgmax) narrow(acc_kw.data(), ar, w.out);
        continue;
      }
      for (int64_t kh = th.first; kh < th.last; ++kh) slot[kh] = ring_slot(x, th.start + kh * h.dilation);
      for (int64_t kh = th.first; kh < th.last; ++kh) {
        const acc_t* rv = ring.data() + slot[kh] * OWv;
        const int_t* rk = kArgmax ? ring_kw.data() + slot[kh] * OWv : nullptr;
        const bool first = kh == th.first, last = kh + 1 == th.last;
        for (int64_t ow = 0; ow < w.out; ow += V::size()) {
          V max = V::loadu(rv + ow);
          Index arg;
          if constexpr (kArgmax) arg = Index::loadu(rk + ow) + Index(kh * w.kernel);
          if (!first) {
            V running = V::loadu(acc.data() + ow);
            Index running_arg;
            if constexpr (kArgmax) running_arg = Index::loadu(acc_kw.data() + ow);
            maxpool::update(running, running_arg, max, arg);
            max = running;
            arg = running_arg;
          }
          if (last) store_exact(yr + ow, max, std::min<int64_t>(V::size(), w.out - ow));
          else max.store(acc.data() + ow);
          if constexpr (kArgmax) arg.store(acc_kw.data() + ow);
        }
      }
      if constexpr (kArgmax) narrow(acc_kw.data(), ar, w.out);
    }
  }
};

// The channels-first forward's pooling of one task, output rows of a plane at a time: pool_full_3x3_stride2
// for the rows it takes (takes_full_3x3_stride2, full_windows_of), RowPooler for every other row -- padded or
// clipped first and last rows, or every row of other problems. RowPooler's scratch (seven heap vectors) only
// where some row needs it: a small pool's whole call is a few microseconds.
template <typename scalar_t, typename index_t>
struct PlanePooler {
  const Problem& pb;
  const bool full;
  const FullWindows rows, cols;  // full_windows_of of the problem, once per call rather than per row block
  const bool prefetch_full;  // whether pool_full_3x3_stride2 gets the caller's prefetch stream
  std::optional<RowPooler<scalar_t, index_t>> pooler;
  std::vector<int32_t> arg_row;  // pool_full_3x3_stride2's argmax lanes (full_3x3_arg_row)

  PlanePooler(const Problem& p, bool prefetch_full)
      : pb(p), full(takes_full_3x3_stride2<scalar_t, index_t>(p)), rows(full_windows_of(p.h)),
        cols(full_windows_of(p.w)), prefetch_full(prefetch_full) {
    if (uses_row_pooler(0, pb.h.out)) pooler.emplace(pb);
    if (full) arg_row = full_3x3_arg_row<index_t>(pb);
  }

  // Whether rows [oh_begin, oh_end) go through RowPooler, in part or whole (which reads the caller's prefetch).
  bool uses_row_pooler(int64_t oh_begin, int64_t oh_end) const {
    return !full || oh_begin < rows.begin || oh_end > rows.end;
  }

  // Output rows [oh_begin, oh_end) of the plane at x into y (at row oh_begin), and argmax likewise (when
  // index_t is not void). x_end and y_end bound pool_full_3x3_stride2's loads and stores. The rows after the
  // full ones come last, so they overwrite what the full rows' stores wrote past their end.
  void pool_rows(const scalar_t* x, const scalar_t* x_end, scalar_t* y, scalar_t* y_end, index_t* argmax,
                 int64_t oh_begin, int64_t oh_end, PrefetchStream* ahead) {
    if (!full) return pooler->pool_rows(x, y, argmax, oh_begin, oh_end, ahead);
    const int64_t mid_begin = std::clamp(rows.begin, oh_begin, oh_end);
    const int64_t mid_end = std::clamp(rows.end, mid_begin, oh_end);
    const auto y_at = [&](int64_t oh) { return y + (oh - oh_begin) * pb.w.out; };
    const auto argmax_at = [&](int64_t oh) {
      if constexpr (std::is_void_v<index_t>) return argmax;
      else return argmax + (oh - oh_begin) * pb.w.out;
    };
    if (oh_begin < mid_begin) pooler->pool_rows(x, y, argmax, oh_begin, mid_begin, ahead);
    if (mid_begin < mid_end)
      pool_full_3x3_stride2<index_t>(x, x_end, y_at(mid_begin), y_end, pb, cols, mid_begin, mid_end,
                                     prefetch_full ? ahead : nullptr, argmax_at(mid_begin), arg_row.data());
    if (mid_end < oh_end) pooler->pool_rows(x, y_at(mid_end), argmax_at(mid_end), mid_end, oh_end, ahead);
  }
};

}  // namespace
}  // namespace cnx::cpu::CPU_CAPABILITY
