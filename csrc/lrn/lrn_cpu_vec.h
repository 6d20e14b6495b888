#pragma once
// The LRN CPU building blocks, vectorised with at::vec: included by the per-instruction-set kernel files
// (lrn_cpu_kernel.cpp, and pool_lrn_cpu_kernel.cpp, which runs them on tiles of pooled values), so they are
// compiled once per CPU_CAPABILITY. Nothing here may see -ffast-math.
//
// Memory traffic, per element: forward reads x once and writes y once; backward reads x and grad once and
// writes grad_input once. The window's other reads hit rows loaded a few channels earlier, still in L1 (in
// L2 for the direct windows' wide blocks: five rows of a 55x55 plane are 60 KB; the backward's ring of 2 x 5
// rows of 4096 columns, 160 KB).
//
// Channels-first (x[c * stride + j]): a block of columns slides along C together, vectorised across the
// columns, each channel's window summed afresh (lrn_math.h: no running sums), in blocks as wide as the
// threads allow (direct_column_block; the backward's capped by its ring, backward_column_block). The
// backward streams the same way with a lag of `lo` channels and keeps the last min(size, C) channels' terms
// (t, g*p) per column in a ring.
// Channels-last (x[s][c]): each position's C channels are a contiguous row; its window sums are built in a
// row buffer (vectorised direct sums of shifted loads of the padded squares) and the elementwise power -- the
// expensive part -- is vectorised along the row. On AVX2/AVX-512 a window of up to kDirectWindow channels
// (any float accumulation: fp32, bf16, fp16) skips the squares' buffer: DirectRows sums shifted loads of the
// row itself (of its float copy for bf16/fp16), forward and backward.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/cpu_vec.h"
#include "lrn/lrn_cpu_kernel.h"
#include "lrn/lrn_math.h"

namespace cnx::lrn {

// Lets the shared math in lrn_math.h run on whole vectors.
template <typename T>
struct MathOps<at::vec::Vectorized<T>> {
  using Vec = at::vec::Vectorized<T>;

  static Vec sqrt(const Vec& x) { return x.sqrt(); }
  // True when every lane of every x[u] is a positive normal number (not 0, subnormal, Inf or NaN). Checked on
  // every vector: on AVX2/AVX-512 floats two compares per vector and one mask test for all N (at::vec's
  // comparisons widen the AVX-512 masks into vectors and back).
  template <int N>
  static C10_ALWAYS_INLINE bool all_positive_normal(const Vec (&x)[N]) {
    const Vec lo(std::numeric_limits<T>::min()), hi(std::numeric_limits<T>::max());
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) {
      __mmask16 ok = 0xffff;
      for (int u = 0; u < N; ++u)
        ok &= _mm512_cmp_ps_mask(x[u], lo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(x[u], hi, _CMP_LE_OQ);
      return ok == 0xffff;
    }
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<T, float>) {
      __m256 ok = _mm256_and_ps(_mm256_cmp_ps(x[0], lo, _CMP_GE_OQ), _mm256_cmp_ps(x[0], hi, _CMP_LE_OQ));
      for (int u = 1; u < N; ++u)
        ok = _mm256_and_ps(ok, _mm256_and_ps(_mm256_cmp_ps(x[u], lo, _CMP_GE_OQ), _mm256_cmp_ps(x[u], hi, _CMP_LE_OQ)));
      return _mm256_movemask_ps(ok) == 0xff;
    }
#endif
    Vec ok = (x[0] >= lo) & (x[0] <= hi);
    for (int u = 1; u < N; ++u) ok = ok & (x[u] >= lo) & (x[u] <= hi);
    return ok.zero_mask() == 0;
  }
  static bool all_positive_normal(const Vec& x) {
    const Vec one[1] = {x};
    return all_positive_normal(one);
  }

  // x^y as exp(y * log(x)): Sleef's pow is ~4x slower than its exp + log. Valid for positive normal x;
  // any other lane (0, Inf, NaN, negative -- where pow has its own rules) takes pow for the whole vector.
  static Vec pow(const Vec& x, const Vec& y) {
    if (all_positive_normal(x)) return (y * x.log()).exp();
    return x.pow(y);
  }

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  static constexpr bool kFastRsqrt = std::is_same_v<T, float>;
  // 1/sqrt(x) for a positive normal x: the hardware estimate plus one Newton step, ~2 ulp.
  static Vec refined_rsqrt(const Vec& x) {
#if defined(CPU_CAPABILITY_AVX512)
    const Vec r(_mm512_rsqrt14_ps(x));
#else
    const Vec r(_mm256_rsqrt_ps(x));
#endif
    // r' = r * (1.5 - 0.5 * x * r^2)
    return r * at::vec::fmadd(Vec(T(-0.5)) * x, r * r, Vec(T(1.5)));
  }
#else
  static constexpr bool kFastRsqrt = false;
  static Vec refined_rsqrt(const Vec& x) { return Vec(T(1)) / x.sqrt(); }
#endif

  // 1/sqrt(x). On AVX2/AVX-512 floats refined_rsqrt, falling back to the exact 1/sqrt when a lane is 0, Inf,
  // NaN or subnormal, where the Newton step would give NaN.
  static Vec rsqrt(const Vec& x) {
    if constexpr (kFastRsqrt) {
      if (all_positive_normal(x)) return refined_rsqrt(x);
    }
    return Vec(T(1)) / x.sqrt();
  }

  // s^-3/4, and 1/s in `inv`. On AVX2/AVX-512 floats q^2 / sqrt(q) with q = 1/sqrt(s), both square roots
  // refined estimates (~4 ulp): the exact sqrt of r * sqrt(r) has a throughput of one vector per 6 (AVX2) to
  // 12 (AVX-512) cycles, and was most of the time of an LRN whose input is in cache -- the fused pool -> LRN's
  // tiles. 1/s is then q^2, which the backward takes instead of a division (another of those slow units:
  // in-process A/B, 2 threads, 8x96x55x55 fp32, the backward 1.2x faster). q is normal whenever s is
  // (2^-126 <= s < 2^128 gives 2^-64 < q <= 2^63). Other lanes: r * sqrt(r) and 1 / s, whose answers for 0,
  // Inf, NaN and negative s are pow's and the division's.
  static Vec pow_neg_three_quarters(const Vec& s, Vec& inv) {
    if constexpr (kFastRsqrt) {
      if (all_positive_normal(s)) {
        const Vec q = refined_rsqrt(s);
        inv = q * q;
        return inv * refined_rsqrt(q);
      }
    }
    inv = Vec(T(1)) / s;
    const Vec r = rsqrt(s);
    return r * r.sqrt();
  }
  static Vec pow_neg_three_quarters(const Vec& s) {
    Vec unused;
    return pow_neg_three_quarters(s, unused);
  }

  // pow_neg_three_quarters for N vectors side by side, s[u] replaced by s[u]^-3/4: on AVX2/AVX-512 floats one
  // check of all N vectors' lanes, then N chains with no branch between them. With a check per vector each
  // chain (~35 cycles of latency in the two refined square roots) sat in its own block and the core overlapped
  // too few of them. In-process A/B of the two versions, AMD Zen 3, AVX2, one thread, in cache, fp32, the same
  // bits: channels-first forward (96x55x55, 64x56x56) 1.12-1.25x faster, backward 1.01-1.07x, channels-last
  // forward and backward 1.02-1.09x.
  template <int N>
  static C10_ALWAYS_INLINE void pow_neg_three_quarters(Vec (&s)[N], Vec (&inv)[N]) {
    if constexpr (kFastRsqrt) {
      if (all_positive_normal(s)) {
        for (int u = 0; u < N; ++u) {
          const Vec q = refined_rsqrt(s[u]);
          inv[u] = q * q;
          s[u] = inv[u] * refined_rsqrt(q);
        }
        return;
      }
    }
    // Each vector on its own here, not all N on the exact path: a vector's bits must not depend on which
    // others share its block, since channels-first and channels-last group vectors differently and give the
    // same bits (test_lrn).
    for (int u = 0; u < N; ++u) s[u] = pow_neg_three_quarters(s[u], inv[u]);
  }
};

}  // namespace cnx::lrn

namespace cnx::cpu::CPU_CAPABILITY {
namespace {

using lrn::CpuProblem;
using lrn::Params;

// lrn::forward_value for N vectors side by side: sum[u] (the window sums of squares) replaced by
// y[u] = x(u) * scale(sum[u])^-beta. With beta = 3/4 the powers go through MathOps' N-vector
// pow_neg_three_quarters (one check, N branch-free chains), the same bits as one vector at a time. x(u) loads
// the inputs after the powers: held in registers across them, they spilled (AVX2 has 16).
template <lrn::Beta kBeta, int N, typename acc_t, typename LoadX>
C10_ALWAYS_INLINE void forward_values(at::vec::Vectorized<acc_t> (&sum)[N], const Params<acc_t>& p, LoadX x) {
  using Vec = at::vec::Vectorized<acc_t>;
  if constexpr (kBeta == lrn::Beta::kThreeQuarters) {
    Vec inv[N];
    for (int u = 0; u < N; ++u) sum[u] = lrn::scale(sum[u], p);
    lrn::MathOps<Vec>::pow_neg_three_quarters(sum, inv);
    for (int u = 0; u < N; ++u) sum[u] = x(u) * sum[u];
  } else {
    for (int u = 0; u < N; ++u) sum[u] = lrn::forward_value<kBeta>(x(u), sum[u], p);
  }
}

// lrn::backward_terms for N vectors side by side, as forward_values: gp[u] = g(u) s^-beta and
// t[u] = gp[u] x(u) / s, s = scale(sum[u]).
template <lrn::Beta kBeta, int N, typename acc_t, typename LoadX, typename LoadG>
C10_ALWAYS_INLINE void backward_terms(const at::vec::Vectorized<acc_t> (&sum)[N], const Params<acc_t>& p, LoadX x,
                                      LoadG g, at::vec::Vectorized<acc_t> (&gp)[N],
                                      at::vec::Vectorized<acc_t> (&t)[N]) {
  using Vec = at::vec::Vectorized<acc_t>;
  if constexpr (kBeta == lrn::Beta::kThreeQuarters) {
    for (int u = 0; u < N; ++u) gp[u] = lrn::scale(sum[u], p);
    lrn::MathOps<Vec>::pow_neg_three_quarters(gp, t);  // t[u] = 1/s for now
    for (int u = 0; u < N; ++u) {
      gp[u] = g(u) * gp[u];
      t[u] = gp[u] * x(u) * t[u];
    }
  } else {
    for (int u = 0; u < N; ++u) lrn::backward_terms<kBeta>(x(u), g(u), sum[u], p, gp[u], t[u]);
  }
}

// Sum of squares of rows [first, last] of a channels-first block, for `count` columns.
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

// window_sum_sq for N vectors of columns side by side: sum[u] for columns [j + u V, j + u V + count), N
// independent chains (forward_columns and BackwardColumns' direct windows). Always inlined, with N known: it
// must be inlined before scalar replacement, or sum[] stays in memory.
template <int N, typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void window_sums_sq(const scalar_t* xb, int64_t xs, int64_t j, int64_t first, int64_t last,
                                      int64_t count, at::vec::Vectorized<acc_t> (&sum)[N]) {
  using Vec = at::vec::Vectorized<acc_t>;
  for (int u = 0; u < N; ++u) sum[u] = Vec(acc_t(0));
  for (int64_t m = first; m <= last; ++m)
    for (int u = 0; u < N; ++u) {
      const Vec v = load(xb + m * xs + j + u * Vec::size(), count);
      sum[u] = at::vec::fmadd(v, v, sum[u]);
    }
}

// Prefetch distance, in channels, of forward_columns' and the backward's rows entering the window (rows are
// S elements apart, too far for the hardware prefetcher to follow from one column block), issued along the
// row's columns as they are summed.
constexpr int64_t kPrefetchAhead = 2;

// forward_columns: each channel's window summed afresh, nothing carried between channels, so the loop over
// columns runs on registers alone, whole vectors with their count known at compile time, then one partial
// vector.
template <lrn::Beta kBeta, typename scalar_t>
void forward_columns_direct(const scalar_t* xb, int64_t xs, scalar_t* yb, int64_t ys, int64_t C, int64_t width,
                            const Params<at::opmath_type<scalar_t>>& p) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  // Four vectors at a time: one vector's chain (the window's fmadds, the scale, the power) is ~70 cycles
  // of latency and little work, so independent chains side by side are what keeps the units busy.
  constexpr int U = 4;
  constexpr int64_t kLine = 64 / sizeof(scalar_t);
  for (int64_t c = 0; c < C; ++c) {
    const int64_t first = std::max<int64_t>(c - p.lo, 0), last = std::min(c + p.hi, C - 1);
    // The row that enters the window kPrefetchAhead channels from now, prefetched at the columns being
    // summed, so the prefetches are spread over the row's work instead of issued in a burst per channel (a
    // whole plane's row is ~190 lines). Interleaved A/B against the burst 4 rows ahead, 2 threads, cold
    // cache, 8x96x55x55 fp32: 1.10x faster at 256-column blocks, 1.27x at whole planes.
    const scalar_t* ahead = last + kPrefetchAhead < C ? xb + (last + kPrefetchAhead) * xs : nullptr;
    // And the row of y written kPrefetchAhead channels from now, for writing: its lines' read-for-ownership
    // otherwise starts only when the stores reach them and holds up the store queue. A/B as above: 1.07-1.12x
    // faster on AVX-512, 1.17-1.21x on AVX2 (8x96x55x55, 8x64x56x56, 8x192x56x56).
    scalar_t* y_ahead = c + kPrefetchAhead < C ? yb + (c + kPrefetchAhead) * ys : nullptr;
    const scalar_t* xc = xb + c * xs;
    scalar_t* yc = yb + c * ys;
    int64_t j = 0;
    for (; j + U * V <= width; j += U * V) {
      if (ahead != nullptr)
        for (int64_t q = 0; q < U * V; q += kLine) __builtin_prefetch(ahead + j + q);
      if (y_ahead != nullptr)
        for (int64_t q = 0; q < U * V; q += kLine) __builtin_prefetch(y_ahead + j + q, 1);
      Vec sum[U];
      window_sums_sq(xb, xs, j, first, last, V, sum);
      forward_values<kBeta>(sum, p, [&](int u) CNX_LAMBDA_INLINE { return load(xc + j + u * V, V); });
      for (int u = 0; u < U; ++u) store(yc + j + u * V, sum[u], V);
    }
    for (; j + V <= width; j += V)
      store(yc + j, lrn::forward_value<kBeta>(load(xc + j, V), window_sum_sq(xb + j, xs, first, last, V), p), V);
    if (j < width) {
      const int64_t cnt = width - j;
      store(yc + j, lrn::forward_value<kBeta>(load(xc + j, cnt), window_sum_sq(xb + j, xs, first, last, cnt), p), cnt);
    }
  }
}

// The forward over one block of `width` columns: x[c * xs + j] -> y[c * ys + j] for c < C, j < width (channel
// strides xs, ys). The fused pool -> LRN kernel calls it on a tile of pooled rows.
template <typename scalar_t>
void forward_columns(const scalar_t* xb, int64_t xs, scalar_t* yb, int64_t ys, int64_t C, int64_t width,
                     const Params<at::opmath_type<scalar_t>>& p) {
  // The two instances (lrn::Beta), here and in DirectRows::forward: in L2 on one thread (1x96x32x32 fp32,
  // Intel Xeon) channels-first 1.06x (AVX-512) and 1.11x (AVX2) faster, channels-last 1.07x and 1.19x;
  // alternated processes, 2 threads, cold cache, 8x192x56x56 channels-first 0.96-1.13 -> 0.93-0.99 ms and
  // 1.27-1.33 -> 1.10-1.19 ms, channels-last 0.99-1.05 -> 0.81-0.82 and 1.25-1.26 -> 1.08-1.09 ms.
  if (p.three_quarters) return forward_columns_direct<lrn::Beta::kThreeQuarters>(xb, xs, yb, ys, C, width, p);
  forward_columns_direct<lrn::Beta::kAnyBeta>(xb, xs, yb, ys, C, width, p);
}

// A gradient d at the LRN's input x, taken on through the ReLU that x came out of (the fused ReLU -> pool -> LRN
// backward, pool_lrn_math.h): 0 where x <= 0, NaN passing as in torch's threshold_backward. In the store of d
// itself, where the fused kernels had a second pass over the tile (the same bits).
template <typename Vec>
Vec through_relu(Vec d, Vec x) {
  return Vec::blendv(d, Vec(0), x <= Vec(0));
}

// One task's scratch for the channels-first backward: the ring of the last L = min(size, C) channels' terms
// t_i (summed over the transposed window) and g_i * p_i (needed again `lo` channels later, when dx_i is
// written) -- L always suffices (see the proof in the CUDA kernel's comment).
template <typename acc_t>
struct BackwardColumns {
  int64_t L, B;  // ring rows, and columns per row: the widest block run() takes
  std::vector<acc_t> ring_t, ring_gp;
  std::vector<const acc_t*> t_rows;  // a transposed window's ring rows, oldest first
  BackwardColumns(int64_t size, int64_t C, int64_t block = lrn::kColumnBlock)
      : L(std::min(size, C)), B(block), ring_t(L * B), ring_gp(L * B), t_rows(L) {}

  // The backward over one block of `width` <= B columns, channel strides gs, xs, ds (the fused
  // pool -> LRN backward calls it on a tile of pooled rows). Streams along C with a lag of `lo` channels:
  // step i computes channel i's terms into the ring and writes dx of channel i - lo, whose transposed window
  // [i - size + 1, i] is then complete.
  // relu: the fused op's ReLU mask in the same store (through_relu).
  template <typename scalar_t>
  void run(const scalar_t* gb, int64_t gs, const scalar_t* xb, int64_t xs, scalar_t* db, int64_t ds, int64_t C,
           int64_t width, const Params<acc_t>& p, bool relu = false) {
    TORCH_INTERNAL_ASSERT(width <= B);
    // The two instances (lrn::Beta): alternated processes, 2 threads, cold cache, fp32, Intel Xeon, 8x96x55x55,
    // the channels-first backward 1.12-1.15 -> 1.01 ms (AVX-512), 1.25-1.30 -> 1.08 ms (AVX2); in L2 on one
    // thread (1x96x32x32) 1.10x faster on both.
    if (p.three_quarters) return run_direct<lrn::Beta::kThreeQuarters>(gb, gs, xb, xs, db, ds, C, width, p, relu);
    run_direct<lrn::Beta::kAnyBeta>(gb, gs, xb, xs, db, ds, C, width, p, relu);
  }

 private:
  acc_t* ring_row(std::vector<acc_t>& ring, int64_t channel) { return ring.data() + (channel % L) * B; }

  // Both window sums direct (exact, as the forward's), nothing carried between channels but the ring. As in
  // forward_columns, U vectors side by side (one vector's chain -- the window's fmadds, the power, the
  // transposed sum -- is long in latency and short in work), whole vectors with their count known at compile
  // time, the ring rows' addresses worked out once per channel (not a 64-bit modulo per ring row and vector).
  // Against the running-sum loop it replaced, in L2 on one thread (1x96x32x32 fp32, AVX-512, size 5): 2.1 ->
  // 1.0-1.1 ns per element.
  template <lrn::Beta kBeta, typename scalar_t>
  void run_direct(const scalar_t* gb, int64_t gs, const scalar_t* xb, int64_t xs, scalar_t* db, int64_t ds,
                  int64_t C, int64_t width, const Params<acc_t>& p, bool relu) {
    using Vec = at::vec::Vectorized<acc_t>;
    constexpr int64_t V = Vec::size();
    constexpr int U = 4;
    const acc_t** t_rows = this->t_rows.data();
    for (int64_t i = 0; i < C + p.lo; ++i) {
      const int64_t out = i - p.lo;
      const int64_t first = std::max<int64_t>(i - p.lo, 0), last = std::min(i + p.hi, C - 1);
      // The transposed window of `out`, [out - hi, out + lo] = [i - size + 1, i], clipped to the channels.
      const int64_t t_first = std::max<int64_t>(i - p.size + 1, 0), t_count = std::min(i, C - 1) - t_first + 1;
      for (int64_t m = 0; m < t_count; ++m) t_rows[m] = ring_row(ring_t, t_first + m);
      acc_t* t_in = i < C ? ring_row(ring_t, i) : nullptr;
      acc_t* gp_in = i < C ? ring_row(ring_gp, i) : nullptr;
      const acc_t* gp_out = out >= 0 ? ring_row(ring_gp, out) : nullptr;
      // The rows of x and grad that enter kPrefetchAhead channels from now, prefetched along the columns as in
      // forward_columns (interleaved A/B, 2 threads, cold cache, 8x96x55x55 fp32 at whole-plane blocks: 1.15x
      // faster than none; 1 or 4 rows ahead no better than 2).
      const scalar_t* x_ahead = last + kPrefetchAhead < C ? xb + (last + kPrefetchAhead) * xs : nullptr;
      const scalar_t* g_ahead = i + kPrefetchAhead < C ? gb + (i + kPrefetchAhead) * gs : nullptr;
      // The row of dx written kPrefetchAhead channels from now, for writing, as forward_columns does with y:
      // in-process A/B, 2 threads, cold cache, 8x96x55x55 / 8x64x56x56 / 8x192x56x56 fp32, 1.22-1.40x faster
      // on AVX-512, 1.14-1.22x on AVX2.
      const int64_t d_next = out + kPrefetchAhead;
      scalar_t* d_ahead = d_next >= 0 && d_next < C ? db + d_next * ds : nullptr;
      auto step = [&](auto unroll, int64_t j, int64_t cnt) {
        constexpr int N = decltype(unroll)::value;
        if constexpr (N == U) {
          constexpr int64_t kLine = 64 / sizeof(scalar_t);
          for (int64_t q = 0; q < U * V; q += kLine) {
            if (x_ahead != nullptr) __builtin_prefetch(x_ahead + j + q);
            if (g_ahead != nullptr) __builtin_prefetch(g_ahead + j + q);
            if (d_ahead != nullptr) __builtin_prefetch(d_ahead + j + q, 1);
          }
        }
        if (t_in != nullptr) {
          Vec sq[N], gp[N], t[N];
          window_sums_sq(xb, xs, j, first, last, cnt, sq);
          backward_terms<kBeta>(
              sq, p, [&](int u) CNX_LAMBDA_INLINE { return load(xb + i * xs + j + u * V, cnt); },
              [&](int u) CNX_LAMBDA_INLINE { return load(gb + i * gs + j + u * V, cnt); }, gp, t);
          for (int u = 0; u < N; ++u) {
            t[u].store(t_in + j + u * V, cnt);
            gp[u].store(gp_in + j + u * V, cnt);
          }
        }
        if (gp_out != nullptr) {
          Vec T[N];
          for (int u = 0; u < N; ++u) T[u] = Vec(acc_t(0));
          for (int64_t m = 0; m < t_count; ++m)
            for (int u = 0; u < N; ++u) T[u] = T[u] + Vec::loadu(t_rows[m] + j + u * V, cnt);
          for (int u = 0; u < N; ++u) {
            const Vec x = load(xb + out * xs + j + u * V, cnt);
            const Vec d = lrn::backward_value(x, Vec::loadu(gp_out + j + u * V, cnt), T[u], p);
            store(db + out * ds + j + u * V, relu ? through_relu(d, x) : d, cnt);
          }
        }
      };
      int64_t j = 0;
      for (; j + U * V <= width; j += U * V) step(std::integral_constant<int, U>{}, j, V);
      for (; j + V <= width; j += V) step(std::integral_constant<int, 1>{}, j, V);
      if (j < width) step(std::integral_constant<int, 1>{}, j, width - j);
    }
  }
};

// dst[i] = sum_{m = i - before}^{i + after} v[m] over a row v[0..C) stored at padded[before + m], with
// zeros in padded[0..before) and padded[before + C .. C + before + after).
template <typename acc_t>
void row_window_sums(const acc_t* padded, int64_t C, int64_t before, int64_t after, acc_t* dst) {
  using Vec = at::vec::Vectorized<acc_t>;
  const int64_t size = before + after + 1;
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

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// The channels-last float forward and backward for windows of up to kDirectWindow channels, a row of C
// channels at a time: each vector's window of squares is summed from loads of the row itself shifted by
// -lo..hi channels, so no square or sum goes through a buffer. Through a buffer, each shifted load
// straddles two vectors stored a few instructions earlier and cannot be forwarded from the store buffer: it
// waits for both stores to reach L1 (on 8x96x55x55 that made channels-last ~40% slower than channels-first). The
// vectors whose window reaches past either end of the row -- the first, and the last one or two -- use masked loads
// (masked-off lanes read no memory, so they never fault) with masks made once per task, not per row: with C = 96,
// working them out per row cost ~15%. Same summation order as forward_columns and the backward's
// BackwardColumns::run_direct: both layouts give the same bits.
// bf16 and fp16 rows take the same path: the shifted loads read a float copy of the row, widened one row
// ahead (WideRows) so that its stores have reached L1 when they are read. Through Rows' buffers, bf16
// channels-last ran 1.3-1.7x slower than fp32 on half the bytes.
struct DirectRows {
  using Vec = at::vec::Vectorized<float>;
  static constexpr int64_t V = Vec::size();
  using Mask = FloatLaneMask;
#if defined(CPU_CAPABILITY_AVX512)
  static Vec masked_load(const float* q, Mask m) { return _mm512_maskz_loadu_ps(m, q); }
#else
  static Vec masked_load(const float* q, Mask m) { return _mm256_maskload_ps(q, m); }
#endif
  int64_t C, lo, hi;
  int64_t left_end, right_begin;  // vectors [0, left_end) and [right_begin, ceil(C / V)) are edges
  std::vector<Mask> masks;        // per edge vector, per shift d + lo: lanes with c + d + lane in [0, C)

  DirectRows(int64_t C, const Params<float>& p)
      : C(C), lo(p.lo), hi(p.hi), t_rows{std::vector<float>(C + p.size + V), std::vector<float>(C + p.size + V)},
        gp_rows{std::vector<float>(C + V), std::vector<float>(C + V)}, sum_row(C + V) {
    const int64_t vectors = (C + V - 1) / V;
    left_end = std::min<int64_t>(lo > 0 ? 1 : 0, vectors);  // lo <= 8 <= V: only the first vector
    right_begin = vectors;
    while (right_begin > left_end && (right_begin - 1) * V + V + hi > C) --right_begin;
    for (int64_t k = 0; k < vectors; ++k) {
      if (k >= left_end && k < right_begin) continue;
      for (int64_t d = -lo; d <= hi; ++d) {
        const int64_t at = k * V + d, first = std::max<int64_t>(-at, 0);
        const int64_t last = std::clamp<int64_t>(C - at, 0, V);
        masks.push_back(float_lanes(first, last));
      }
    }
  }

  // Calls emit(c, s, cnt) for the vectors of row xr, N = 1, 2 (kPairs) or 4 at a time: s, an array of N vectors,
  // holds the window sums of squares of channels c .. c + N V (c .. c + cnt when N = 1). kPairs: the vectors
  // left after the blocks of four go in pairs where possible -- for the forward, whose emit only stores the
  // sums (in-process A/B, Zen 3, AVX2: 1.04x faster); the backward's terms ran 1.04x slower so.
  // touch(c) comes first for each 64-byte line of the row, for the caller's prefetches. The lambdas here and
  // the touch and emit lambdas of the callers are CNX_LAMBDA_INLINE: inlined late, they left interior's
  // accumulators on the stack, four 64-byte stores per shift of the window. Alternated processes, 2 threads, cold cache, fp32, 8x96x55x55 /
  // 8x64x56x56 / 8x192x56x56: forward 0.76-0.88 / 0.59-0.66 / 1.74-1.77 ms -> 0.55-0.66 / 0.43-0.47 / 1.15-1.40
  // on AVX-512, 0.90-1.13 / 0.79 / 2.06-2.32 -> 0.73-0.78 / 0.55-0.56 / 1.33-1.51 on AVX2; backward 1.03-1.06 /
  // 0.81-0.82 / 2.37-2.51 -> 0.89-1.00 / 0.67-0.74 / 1.94-2.11 and 1.42-1.44 / 1.03 / 2.90-3.02 -> 1.22-1.28 /
  // 0.84-0.87 / 2.36-2.40.
  template <bool kPairs, typename Touch, typename Emit>
  C10_ALWAYS_INLINE void sums_of_squares(const float* xr, Touch touch, Emit emit) const {
    const Mask* m = masks.data();
    auto edge = [&](int64_t c) CNX_LAMBDA_INLINE {
      touch(c);
      Vec s[1] = {Vec(0.f)};
      for (int64_t d = -lo; d <= hi; ++d, ++m) {
        const Vec v = masked_load(xr + c + d, *m);
        s[0] = at::vec::fmadd(v, v, s[0]);
      }
      emit(c, s, std::min(V, C - c));
    };
    // U whole vectors side by side: as in forward_columns, one vector's chain (the window's fmadds, the
    // power) is long in latency and short in work.
    auto interior = [&](auto unroll, int64_t c) CNX_LAMBDA_INLINE {
      constexpr int U = decltype(unroll)::value;
      for (int u = 0; u < U; u += kLineVectors) touch(c + u * V);
      Vec s[U];
      for (int u = 0; u < U; ++u) s[u] = Vec(0.f);
      for (int64_t d = -lo; d <= hi; ++d)
        for (int u = 0; u < U; ++u) {
          const Vec v = Vec::loadu(xr + c + u * V + d);
          s[u] = at::vec::fmadd(v, v, s[u]);
        }
      emit(c, s, V);
    };
    int64_t k = 0;
    for (; k < left_end; ++k) edge(k * V);
    for (; k + 4 <= right_begin; k += 4) interior(std::integral_constant<int, 4>{}, k * V);
    if constexpr (kPairs)
      for (; k + 2 <= right_begin; k += 2) interior(std::integral_constant<int, 2>{}, k * V);
    for (; k < right_begin; ++k) interior(std::integral_constant<int, 1>{}, k * V);
    for (; k * V < C; ++k) edge(k * V);
  }

  // sums_of_squares' touch: line c of the rows kRowsAhead positions past row `a` (for reading) and past row `b`
  // (for writing when kWriteB), while the task has such rows.
  template <bool kWriteB, typename A, typename B>
  auto prefetch_ahead(bool ahead, const A* a, const B* b) const {
    const int64_t step = kRowsAhead * C;
    return [=](int64_t c) CNX_LAMBDA_INLINE {
      if (ahead) {
        __builtin_prefetch(a + step + c);
        __builtin_prefetch(b + step + c, kWriteB ? 1 : 0);
      }
    };
  }

  // Rows [0, n) of x to y. The row kRowsAhead positions on is prefetched, x for reading and y for writing,
  // a line per vector, spread over the row's work. In-process A/B, 2 threads, cold cache, fp32, 8x96x55x55 /
  // 8x64x56x56 / 8x192x56x56 (Intel Xeon, 2 MB L2): 1.11-1.37x faster on AVX-512, 1.14-1.44x on AVX2; 2 rows
  // ahead gained less (1.07-1.33x), 4-8 about the same; a burst of the whole row's prefetches about the same.
  template <typename scalar_t>
  void forward(const scalar_t* x, scalar_t* y, int64_t n, const Params<float>& p) {
    if (p.three_quarters) return forward_as<lrn::Beta::kThreeQuarters>(x, y, n, p);
    forward_as<lrn::Beta::kAnyBeta>(x, y, n, p);
  }

  // Rows [0, n) of the backward: per row, the terms gp = g s^-beta and t = gp x / s, then
  // dx = gp - coef x (sum of t over the transposed window). The window of squares comes from shifted loads of
  // x, as in the forward; t has no such source and goes through a zero-padded row buffer, summed with
  // shifted loads one row later: loads that straddle the stores of the row just written would wait for them to
  // reach L1 (the reason for sums_of_squares), so the rows run as a two-stage pipeline -- row r's terms,
  // then row r - 1's dx -- over two pairs of buffers (in-process A/B against finishing each row at once:
  // 1.00-1.02x on AVX-512, 1.01-1.10x on AVX2). x and g are prefetched kRowsAhead rows on, dx for writing.
  // Against the buffered loop of Rows::backward (alternated processes, 2 threads, cold cache, fp32): 8x96x55x55
  // 1.69-1.75 -> 1.05-1.06 ms on AVX-512, 1.82 -> 1.38-1.48 ms on AVX2; 8x64x56x56 1.20-1.23 -> 0.81-0.82 and
  // 1.39-1.50 -> 0.96-1.01; 8x192x56x56 3.41-3.45 -> 2.58-2.59 and 3.97-4.39 -> 2.95.
  template <typename scalar_t>
  void backward(const scalar_t* g, const scalar_t* x, scalar_t* dx, int64_t n, const Params<float>& p,
                bool relu = false) {
    if (p.three_quarters) return backward_as<lrn::Beta::kThreeQuarters>(g, x, dx, n, p, relu);
    backward_as<lrn::Beta::kAnyBeta>(g, x, dx, n, p, relu);
  }

 private:
  // Rows of x as float for the shifted loads: x itself, or for bf16/fp16 a ring of two widened rows, row r + 1
  // widened when row r is asked for (a whole row of work before its loads).
  template <typename scalar_t>
  class WideRows {
   public:
    WideRows(const scalar_t* x, int64_t C, int64_t n, std::vector<float> (&ring)[2])
        : x_(x), C_(C), n_(n), ring_(ring) {
      if constexpr (!std::is_same_v<scalar_t, float>) {
        for (auto& row : ring_) row.resize(C);
        if (n > 0) widen(0);
      }
    }
    const float* row(int64_t r) {
      if constexpr (std::is_same_v<scalar_t, float>) {
        return x_ + r * C_;
      } else {
        if (r + 1 < n_) widen(r + 1);
        return ring_[r & 1].data();
      }
    }

   private:
    void widen(int64_t r) {
      const scalar_t* src = x_ + r * C_;
      float* dst = ring_[r & 1].data();
      for (int64_t c = 0; c < C_; c += V) {
        const int64_t cnt = std::min(V, C_ - c);
        load(src + c, cnt).store(dst + c, cnt);
      }
    }
    const scalar_t* x_;
    int64_t C_, n_;
    std::vector<float> (&ring_)[2];
  };

  template <lrn::Beta kBeta, typename scalar_t>
  void forward_as(const scalar_t* x, scalar_t* y, int64_t n, const Params<float>& p) {
    WideRows<scalar_t> wide(x, C, n, wide_rows);
    for (int64_t r = 0; r < n; ++r) {
      const scalar_t* xr = x + r * C;
      const float* xw = wide.row(r);
      scalar_t* yr = y + r * C;
      const bool ahead = r + kRowsAhead < n;
      // The row's sums first, then its powers four vectors at a time: emitted as they come, the edge vectors
      // and the odd ones between the blocks of four each took a power alone (forward_values). In-process A/B
      // with kPairs, AMD Zen 3, AVX2, one thread, in cache, fp32: 1.11-1.13x faster with C = 96 (55x55),
      // 1.12-1.22x with C = 64, 1.04-1.05x with C = 192.
      float* sums = sum_row.data();
      sums_of_squares<true>(xw, prefetch_ahead<true>(ahead, xr, yr),
                            [&](int64_t c, auto& s, int64_t) CNX_LAMBDA_INLINE {
                              constexpr int N = std::extent_v<std::remove_reference_t<decltype(s)>>;
                              for (int u = 0; u < N; ++u) s[u].store(sums + c + u * V);
                            });
      const auto block = [&](auto unroll, int64_t c, int64_t cnt) CNX_LAMBDA_INLINE {
        constexpr int N = decltype(unroll)::value;
        Vec s[N];
        for (int u = 0; u < N; ++u) s[u] = Vec::loadu(sums + c + u * V);
        forward_values<kBeta>(s, p, [&](int u) CNX_LAMBDA_INLINE { return Vec::loadu(xw + c + u * V, cnt); });
        for (int u = 0; u < N; ++u) store(yr + c + u * V, s[u], cnt);
      };
      int64_t c = 0;
      for (; c + 4 * V <= C; c += 4 * V) block(std::integral_constant<int, 4>{}, c, V);
      for (; c + V <= C; c += V) block(std::integral_constant<int, 1>{}, c, V);
      if (c < C) block(std::integral_constant<int, 1>{}, c, C - c);
    }
  }

  template <lrn::Beta kBeta, typename scalar_t>
  void backward_as(const scalar_t* g, const scalar_t* x, scalar_t* dx, int64_t n, const Params<float>& p,
                   bool relu) {
    const int64_t size = lo + hi + 1;
    WideRows<scalar_t> wide(x, C, n, wide_rows);
    auto terms = [&](int64_t r) {
      const scalar_t* xr = x + r * C;
      const float* xw = wide.row(r);
      const scalar_t* gr = g + r * C;
      float* t_row = t_rows[r & 1].data() + hi;  // t[c] at hi + c, zeros around
      float* gp_row = gp_rows[r & 1].data();
      const bool ahead = r + kRowsAhead < n;
      sums_of_squares<false>(
          xw,
          prefetch_ahead<false>(ahead, xr, gr),
          [&](int64_t c, auto& s, int64_t cnt) CNX_LAMBDA_INLINE {
            constexpr int N = std::extent_v<std::remove_reference_t<decltype(s)>>;
            Vec gp[N], t[N];
            backward_terms<kBeta>(
                s, p, [&](int u) CNX_LAMBDA_INLINE { return Vec::loadu(xw + c + u * V, cnt); },
                [&](int u) CNX_LAMBDA_INLINE { return load(gr + c + u * V, cnt); }, gp, t);
            for (int u = 0; u < N; ++u) {
              t[u].store(t_row + c + u * V, cnt);
              gp[u].store(gp_row + c + u * V, cnt);
            }
          });
    };
    auto finish = [&](int64_t r) {
      const scalar_t* xr = x + r * C;
      scalar_t* dr = dx + r * C;
      const float* t_pad = t_rows[r & 1].data();
      const float* gp_row = gp_rows[r & 1].data();
      const bool ahead = r + kRowsAhead < n;
      for (int64_t c = 0; c < C; c += V) {
        if (ahead) __builtin_prefetch(dr + kRowsAhead * C + c, 1);
        // Whole-vector loads past the row's end read the buffers' zero tail; only cnt lanes are stored.
        Vec T(0.f);
        for (int64_t d = 0; d < size; ++d) T = T + Vec::loadu(t_pad + c + d);
        const int64_t cnt = std::min(V, C - c);
        const Vec xv = load(xr + c, cnt), d = lrn::backward_value(xv, Vec::loadu(gp_row + c), T, p);
        store(dr + c, relu ? through_relu(d, xv) : d, cnt);
      }
    };
    for (int64_t r = 0; r < n; ++r) {
      terms(r);
      if (r > 0) finish(r - 1);
    }
    if (n > 0) finish(n - 1);
  }

  static constexpr int kLineVectors = 64 / sizeof(float) / V > 0 ? 64 / sizeof(float) / V : 1;
  static constexpr int64_t kRowsAhead = 6;
  // The backward's two pairs of row buffers; a vector's worth of zeros past the end of each.
  std::vector<float> t_rows[2], gp_rows[2];
  std::vector<float> wide_rows[2];  // WideRows' ring (bf16, fp16)
  std::vector<float> sum_row;       // the forward's window sums of one row (whole vectors: C rounded up)
};
#endif

// Channels-last: one position's C channels, a contiguous row, at a time.
template <typename acc_t>
struct Rows {
  PaddedRow<acc_t> sq, t;  // squares (window [c - lo, c + hi]) and the transposed window's terms
  std::vector<acc_t> sum, gp_row;
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  std::optional<DirectRows> direct;  // float, windows up to kDirectWindow
#endif
  Rows(int64_t C, const Params<acc_t>& p) : sq(C, p.lo, p.hi), t(C, p.hi, p.lo), sum(C), gp_row(C) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<acc_t, float>) {
      if (p.size <= lrn::kDirectWindow) direct.emplace(C, p);
    }
#endif
  }

  template <typename scalar_t>
  void square_sums(const scalar_t* xr, int64_t C, const Params<acc_t>& p) {
    using Vec = at::vec::Vectorized<acc_t>;
    for (int64_t c = 0; c < C; c += Vec::size()) {
      const int64_t cnt = std::min<int64_t>(Vec::size(), C - c);
      const Vec v = load(xr + c, cnt);
      (v * v).store(sq.row() + c, cnt);
    }
    row_window_sums(sq.padded(), C, p.lo, p.hi, sum.data());
  }

  // Rows [0, n) of C channels each, x to y.
  template <typename scalar_t>
  void forward(const scalar_t* x, scalar_t* y, int64_t n, int64_t C, const Params<acc_t>& p) {
    using Vec = at::vec::Vectorized<acc_t>;
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<acc_t, float>) {
      if (direct) return direct->forward(x, y, n, p);
    }
#endif
    for (int64_t r = 0; r < n; ++r) {
      const scalar_t* xr = x + r * C;
      scalar_t* yr = y + r * C;
      square_sums(xr, C, p);
      for (int64_t c = 0; c < C; c += Vec::size()) {
        const int64_t cnt = std::min<int64_t>(Vec::size(), C - c);
        store(yr + c, lrn::forward_value(load(xr + c, cnt), Vec::loadu(sum.data() + c, cnt), p), cnt);
      }
    }
  }

  // Rows [0, n) of the backward: grad g and input x to dx (relu: BackwardColumns::run's).
  template <typename scalar_t>
  void backward(const scalar_t* g, const scalar_t* x, scalar_t* dx, int64_t n, int64_t C, const Params<acc_t>& p,
                bool relu = false) {
    using Vec = at::vec::Vectorized<acc_t>;
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<acc_t, float>) {
      if (direct) return direct->backward(g, x, dx, n, p, relu);
    }
#endif
    for (int64_t r = 0; r < n; ++r) {
      const scalar_t* gr = g + r * C;
      const scalar_t* xr = x + r * C;
      scalar_t* dr = dx + r * C;
      square_sums(xr, C, p);
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
        const Vec gp = Vec::loadu(gp_row.data() + c, cnt), t_sum = Vec::loadu(sum.data() + c, cnt);
        const Vec xv = load(xr + c, cnt), d = lrn::backward_value(xv, gp, t_sum, p);
        store(dr + c, relu ? through_relu(d, xv) : d, cnt);
      }
    }
  }
};

}  // namespace
}  // namespace cnx::cpu::CPU_CAPABILITY
