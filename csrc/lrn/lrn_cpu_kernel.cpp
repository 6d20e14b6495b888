// LRN CPU kernels. setup.py compiles this file once per instruction set (-DCPU_CAPABILITY=DEFAULT|AVX2|
// AVX512); at::vec::Vectorized then maps to 256- or 512-bit registers and its sqrt/pow to native
// instructions or Sleef. Only raw pointers cross this file's boundary (see lrn_cpu_kernel.h).
//
// Memory traffic, per element: forward reads x once and writes y once; backward reads x and grad once and
// writes grad_input once. The window's other reads hit rows loaded a few channels earlier, still in L1.
//
// Channels-first (x[n][c][s]): a block of kColumnBlock columns slides along C together, vectorised across
// the columns, keeping one running sum per column. Backward streams the same way with a lag of `lo`
// channels and keeps the last min(size, C) terms (t, g*p) per column in a small ring.
// Channels-last (x[n][s][c]): each position's C channels are a contiguous row; its window sums are built
// in a row buffer (vectorised direct sums for small windows, a running sum otherwise) and the elementwise
// power -- the expensive part -- is vectorised along the row.
#include "lrn/lrn_cpu_kernel.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "lrn/lrn_math.h"

namespace cnx::lrn {

// Lets the shared math in lrn_math.h run on whole vectors.
template <typename T>
struct MathOps<at::vec::Vectorized<T>> {
  using Vec = at::vec::Vectorized<T>;
  static constexpr int kAllLanes = (1 << Vec::size()) - 1;

  static Vec sqrt(const Vec& x) { return x.sqrt(); }
  static bool all_finite(const Vec& x) { return (x - x).zero_mask() == kAllLanes; }
  // True when every lane is a positive normal number (not 0, subnormal, Inf or NaN).
  static bool all_positive_normal(const Vec& x) {
    const Vec ok = (x >= Vec(std::numeric_limits<T>::min())) & (x <= Vec(std::numeric_limits<T>::max()));
    return ok.zero_mask() == 0;
  }

  // x^y as exp(y * log(x)): Sleef's pow is ~4x slower than its exp + log. Valid for positive normal x;
  // any other lane (0, Inf, NaN, negative -- where pow has its own rules) takes pow for the whole vector.
  static Vec pow(const Vec& x, const Vec& y) {
    if (all_positive_normal(x)) return (y * x.log()).exp();
    return x.pow(y);
  }

  // 1/sqrt(x). On AVX2/AVX-512 floats: the hardware estimate plus one Newton step (~2 ulp), falling back
  // to the exact 1/sqrt when a lane is 0, Inf, NaN or subnormal, where the Newton step would give NaN.
  static Vec rsqrt(const Vec& x) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) {
      if (all_positive_normal(x)) {
#if defined(CPU_CAPABILITY_AVX512)
        const Vec r(_mm512_rsqrt14_ps(x));
#else
        const Vec r(_mm256_rsqrt_ps(x));
#endif
        // r' = r * (1.5 - 0.5 * x * r^2)
        return r * at::vec::fmadd(Vec(T(-0.5)) * x, r * r, Vec(T(1.5)));
      }
    }
#endif
    return Vec(T(1)) / x.sqrt();
  }
};

}  // namespace cnx::lrn

namespace cnx::cpu::CPU_CAPABILITY {
namespace {

using lrn::CpuProblem;
using lrn::Params;

// Load / store `count` elements of scalar_t as a vector of the accumulation type (zero-filled tail).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
at::vec::Vectorized<acc_t> load(const scalar_t* p, int64_t count) {
  using Vec = at::vec::Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return Vec::loadu(p, count);
  } else {
    acc_t tmp[Vec::size()] = {};
    for (int64_t i = 0; i < count; ++i) tmp[i] = static_cast<acc_t>(p[i]);
    return Vec::loadu(tmp);
  }
}

template <typename scalar_t, typename acc_t>
void store(scalar_t* p, const at::vec::Vectorized<acc_t>& v, int64_t count) {
  using Vec = at::vec::Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    v.store(p, count);
  } else {
    acc_t tmp[Vec::size()];
    v.store(tmp);
    for (int64_t i = 0; i < count; ++i) p[i] = static_cast<scalar_t>(tmp[i]);
  }
}

// Sum of squares of rows [first, last] of a channels-first block: the recompute after Inf/NaN.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
at::vec::Vectorized<acc_t> window_sum_sq(const scalar_t* col, int64_t S, int64_t first, int64_t last,
                                         int64_t count) {
  at::vec::Vectorized<acc_t> s(acc_t(0));
  for (int64_t m = first; m <= last; ++m) {
    auto v = load(col + m * S, count);
    s = at::vec::fmadd(v, v, s);
  }
  return s;
}

// Prefetch distance, in channels, for the row entering the window: rows are S elements apart, too far for
// the hardware prefetcher to follow from one column block.
constexpr int64_t kPrefetchRows = 4;

// The window sum of squares of channel c for `count` columns: summed directly for small windows, else the
// running sum `s` (channel c - 1's) advanced by one channel.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
C10_ALWAYS_INLINE at::vec::Vectorized<acc_t> slide_sum_sq(at::vec::Vectorized<acc_t> s, const scalar_t* col, int64_t S,
                                                           int64_t C, int64_t c, const Params<acc_t>& p, int64_t count) {
  const int64_t enter = c + p.hi, leave = c - p.lo - 1;
  if (enter + kPrefetchRows < C) __builtin_prefetch(col + (enter + kPrefetchRows) * S);
  if (p.size <= lrn::kDirectWindow)
    return window_sum_sq(col, S, std::max<int64_t>(c - p.lo, 0), std::min(enter, C - 1), count);
  if (enter < C) {
    auto v = load(col + enter * S, count);
    s = at::vec::fmadd(v, v, s);
  }
  if (leave >= 0) {
    auto v = load(col + leave * S, count);
    s = s - v * v;
  }
  if (C10_UNLIKELY(!lrn::MathOps<at::vec::Vectorized<acc_t>>::all_finite(s)))
    s = window_sum_sq(col, S, std::max<int64_t>(c - p.lo, 0), std::min(enter, C - 1), count);
  return s;
}

template <typename scalar_t>
void forward_channels_first(const scalar_t* x, scalar_t* y, const CpuProblem& pb, const Params<at::opmath_type<scalar_t>>& p,
                            int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  const int64_t C = pb.C, S = pb.S, blocks = (S + lrn::kColumnBlock - 1) / lrn::kColumnBlock;
  acc_t sum[lrn::kColumnBlock];
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / blocks, s0 = (item % blocks) * lrn::kColumnBlock;
    const int64_t width = std::min(lrn::kColumnBlock, S - s0);
    const scalar_t* xb = x + n * C * S + s0;
    scalar_t* yb = y + n * C * S + s0;
    for (int64_t j = 0; j < width; j += Vec::size()) {
      const int64_t cnt = std::min<int64_t>(Vec::size(), width - j);
      window_sum_sq(xb + j, S, 0, std::min(p.hi, C) - 1, cnt).store(sum + j, cnt);
    }
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t j = 0; j < width; j += Vec::size()) {
        const int64_t cnt = std::min<int64_t>(Vec::size(), width - j);
        Vec s = slide_sum_sq(Vec::loadu(sum + j, cnt), xb + j, S, C, c, p, cnt);
        s.store(sum + j, cnt);
        store(yb + c * S + j, lrn::forward_value(load(xb + c * S + j, cnt), s, p), cnt);
      }
    }
  }
}

template <typename scalar_t>
void backward_channels_first(const scalar_t* g, const scalar_t* x, scalar_t* dx, const CpuProblem& pb,
                             const Params<at::opmath_type<scalar_t>>& p, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t B = lrn::kColumnBlock;
  const int64_t C = pb.C, S = pb.S, blocks = (S + B - 1) / B;
  // Ring of the last L channels' terms: t_i (summed over the transposed window) and g_i * p_i (needed
  // again `lo` channels later, when dx_i is written). L = min(size, C) always suffices (see the proof in
  // the CUDA kernel's comment).
  const int64_t L = std::min(p.size, C);
  std::vector<acc_t> ring_t(L * B), ring_gp(L * B);
  acc_t sum[B], tsum[B];
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / blocks, s0 = (item % blocks) * B;
    const int64_t width = std::min(B, S - s0);
    const int64_t off = n * C * S + s0;
    const scalar_t *xb = x + off, *gb = g + off;
    scalar_t* db = dx + off;
    for (int64_t j = 0; j < width; j += Vec::size()) {
      const int64_t cnt = std::min<int64_t>(Vec::size(), width - j);
      window_sum_sq(xb + j, S, 0, std::min(p.hi, C) - 1, cnt).store(sum + j, cnt);
      Vec(acc_t(0)).store(tsum + j, cnt);
    }
    for (int64_t i = 0; i < C + p.lo; ++i) {
      const int64_t leave = i - p.size, out = i - p.lo;
      for (int64_t j = 0; j < width; j += Vec::size()) {
        const int64_t cnt = std::min<int64_t>(Vec::size(), width - j);
        Vec T = Vec::loadu(tsum + j, cnt);
        if (leave >= 0 && leave < C) T = T - Vec::loadu(ring_t.data() + (leave % L) * B + j, cnt);
        if (i < C) {
          Vec s = slide_sum_sq(Vec::loadu(sum + j, cnt), xb + j, S, C, i, p, cnt);
          s.store(sum + j, cnt);
          Vec gp, t;
          lrn::backward_terms(load(xb + i * S + j, cnt), load(gb + i * S + j, cnt), s, p, gp, t);
          t.store(ring_t.data() + (i % L) * B + j, cnt);
          gp.store(ring_gp.data() + (i % L) * B + j, cnt);
          T = T + t;
        }
        if (p.size <= lrn::kDirectWindow || !lrn::MathOps<Vec>::all_finite(T)) {
          T = Vec(acc_t(0));
          for (int64_t m = std::max<int64_t>(0, i - p.size + 1); m <= std::min(i, C - 1); ++m)
            T = T + Vec::loadu(ring_t.data() + (m % L) * B + j, cnt);
        }
        T.store(tsum + j, cnt);
        if (out >= 0) {
          Vec gp = Vec::loadu(ring_gp.data() + (out % L) * B + j, cnt);
          store(db + out * S + j, lrn::backward_value(load(xb + out * S + j, cnt), gp, T, p), cnt);
        }
      }
    }
  }
}

// dst[i] = sum_{m = i - before}^{i + after} v[m] over a row v[0..C) stored at padded[before + m], with
// zeros in padded[0..before) and padded[before + C .. C + before + after).
template <typename acc_t>
void row_window_sums(const acc_t* padded, int64_t C, int64_t before, int64_t after, acc_t* dst) {
  using Vec = at::vec::Vectorized<acc_t>;
  const int64_t size = before + after + 1;
  if (size > lrn::kDirectWindow) {
    lrn::window_sums<acc_t>(
        C, before, after, [&](int64_t m) { return padded[before + m]; }, [&](int64_t i, acc_t s) { dst[i] = s; });
    return;
  }
  for (int64_t c = 0; c < C; c += Vec::size()) {
    const int64_t cnt = std::min<int64_t>(Vec::size(), C - c);
    Vec s = Vec::loadu(padded + c, cnt);
    for (int64_t d = 1; d < size; ++d) s = s + Vec::loadu(padded + c + d, cnt);
    s.store(dst + c, cnt);
  }
}

// A row buffer with `before` and `after` zeros around C values (the zeros are written once).
template <typename acc_t>
struct PaddedRow {
  std::vector<acc_t> data;
  int64_t before;
  PaddedRow(int64_t C, int64_t before, int64_t after) : data(C + before + after, acc_t(0)), before(before) {}
  acc_t* row() { return data.data() + before; }
  const acc_t* padded() const { return data.data(); }
};

template <typename scalar_t>
void forward_channels_last(const scalar_t* x, scalar_t* y, const CpuProblem& pb,
                           const Params<at::opmath_type<scalar_t>>& p, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  const int64_t C = pb.C;
  PaddedRow<acc_t> sq(C, p.lo, p.hi);
  std::vector<acc_t> sum(C);
  for (int64_t pos = begin; pos < end; ++pos) {
    const scalar_t* xr = x + pos * C;
    scalar_t* yr = y + pos * C;
    for (int64_t c = 0; c < C; c += Vec::size()) {
      const int64_t cnt = std::min<int64_t>(Vec::size(), C - c);
      const Vec v = load(xr + c, cnt);
      (v * v).store(sq.row() + c, cnt);
    }
    row_window_sums(sq.padded(), C, p.lo, p.hi, sum.data());
    for (int64_t c = 0; c < C; c += Vec::size()) {
      const int64_t cnt = std::min<int64_t>(Vec::size(), C - c);
      store(yr + c, lrn::forward_value(load(xr + c, cnt), Vec::loadu(sum.data() + c, cnt), p), cnt);
    }
  }
}

template <typename scalar_t>
void backward_channels_last(const scalar_t* g, const scalar_t* x, scalar_t* dx, const CpuProblem& pb,
                            const Params<at::opmath_type<scalar_t>>& p, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  const int64_t C = pb.C;
  PaddedRow<acc_t> sq(C, p.lo, p.hi);
  PaddedRow<acc_t> t(C, p.hi, p.lo);  // the transposed window: channel j collects t_i, i in [j - hi, j + lo]
  std::vector<acc_t> sum(C), gp_row(C);
  for (int64_t pos = begin; pos < end; ++pos) {
    const scalar_t *xr = x + pos * C, *gr = g + pos * C;
    scalar_t* dr = dx + pos * C;
    for (int64_t c = 0; c < C; c += Vec::size()) {
      const int64_t cnt = std::min<int64_t>(Vec::size(), C - c);
      const Vec v = load(xr + c, cnt);
      (v * v).store(sq.row() + c, cnt);
    }
    row_window_sums(sq.padded(), C, p.lo, p.hi, sum.data());
    for (int64_t c = 0; c < C; c += Vec::size()) {
      const int64_t cnt = std::min<int64_t>(Vec::size(), C - c);
      Vec gp, tv;
      lrn::backward_terms(load(xr + c, cnt), load(gr + c, cnt), Vec::loadu(sum.data() + c, cnt), p, gp, tv);
      gp.store(gp_row.data() + c, cnt);
      tv.store(t.row() + c, cnt);
    }
    row_window_sums(t.padded(), C, p.hi, p.lo, sum.data());
    for (int64_t c = 0; c < C; c += Vec::size()) {
      const int64_t cnt = std::min<int64_t>(Vec::size(), C - c);
      store(dr + c,
            lrn::backward_value(load(xr + c, cnt), Vec::loadu(gp_row.data() + c, cnt), Vec::loadu(sum.data() + c, cnt), p),
            cnt);
    }
  }
}

template <typename scalar_t>
Params<at::opmath_type<scalar_t>> params_of(const CpuProblem& pb) {
  return Params<at::opmath_type<scalar_t>>::make(pb.size, pb.alpha, pb.beta, pb.k);
}

}  // namespace

void lrn_forward_kernel(c10::ScalarType dtype, const void* x, void* y, const CpuProblem& pb, int64_t begin,
                        int64_t end) {
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, dtype, "lrn_forward_cpu", [&] {
    const auto p = params_of<scalar_t>(pb);
    auto* xp = static_cast<const scalar_t*>(x);
    auto* yp = static_cast<scalar_t*>(y);
    if (pb.channels_last) forward_channels_last(xp, yp, pb, p, begin, end);
    else forward_channels_first(xp, yp, pb, p, begin, end);
  });
}

void lrn_backward_kernel(c10::ScalarType dtype, const void* grad, const void* x, void* dx, const CpuProblem& pb,
                         int64_t begin, int64_t end) {
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, dtype, "lrn_backward_cpu", [&] {
    const auto p = params_of<scalar_t>(pb);
    auto* gp = static_cast<const scalar_t*>(grad);
    auto* xp = static_cast<const scalar_t*>(x);
    auto* dp = static_cast<scalar_t*>(dx);
    if (pb.channels_last) backward_channels_last(gp, xp, dp, pb, p, begin, end);
    else backward_channels_first(gp, xp, dp, pb, p, begin, end);
  });
}

}  // namespace cnx::cpu::CPU_CAPABILITY
