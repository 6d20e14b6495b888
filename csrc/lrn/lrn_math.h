#pragma once
// Local Response Normalization: the math shared by the CPU kernels (scalar and at::vec) and the CUDA kernels.
//
// Forward (torch.nn.functional.local_response_norm semantics), for channel c of a column x[0..C):
//     s_c = k + (alpha / size) * sum_{m = c - lo}^{c + hi} x_m^2      lo = size / 2, hi = (size - 1) / 2,
//     y_c = x_c * s_c^(-beta)                                          the window clipped to [0, C).
// Backward, with p_c = s_c^(-beta) and t_i = g_i * x_i * p_i / s_i:
//     dx_j = g_j * p_j - (2 * alpha * beta / size) * x_j * sum_{i = j - hi}^{j + lo} t_i
// (the transposed window: channel j is in the forward window of every i in [j - hi, j + lo]).
//
// Windows are summed directly, whatever their size: exact to rounding, as torch's avg_pool3d sums them, and
// Inf and NaN give torch's forward. One backward differs: where a window sum s_i is infinite (an Inf input, or
// an fp32 square past 3.4e38) and beta > 1, torch's composite x / s^beta differentiates to inf * 0 = NaN, and
// ours, t_i = g_i * x_i * p_i / s_i, gives the finite limit (0 from that window; tests/test_lrn.py holds both).
// Nothing here may be compiled with -ffast-math.
#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace cnx::lrn {

// Scalar math, usable on host and device. The CPU kernels specialise it for at::vec::Vectorized.
template <typename T>
struct MathOps;

template <>
struct MathOps<float> {
  static CNX_HOST_DEVICE float sqrt(float x) { return ::sqrtf(x); }
#ifdef __CUDA_ARCH__
  static __device__ __forceinline__ float rsqrt(float x) { return ::rsqrtf(x); }
#else
  static inline float rsqrt(float x) { return 1.0f / ::sqrtf(x); }
#endif
  static CNX_HOST_DEVICE float pow(float x, float y) { return ::powf(x, y); }
  static CNX_HOST_DEVICE float pow_neg_three_quarters(float s) {
    const float r = rsqrt(s);
    return r * sqrt(r);
  }
  static CNX_HOST_DEVICE float pow_neg_three_quarters(float s, float& inv) {
    inv = 1.0f / s;
    return pow_neg_three_quarters(s);
  }
};

template <>
struct MathOps<double> {
  static CNX_HOST_DEVICE double sqrt(double x) { return ::sqrt(x); }
  static CNX_HOST_DEVICE double rsqrt(double x) { return 1.0 / ::sqrt(x); }
  static CNX_HOST_DEVICE double pow(double x, double y) { return ::pow(x, y); }
  static CNX_HOST_DEVICE double pow_neg_three_quarters(double s) {
    const double r = rsqrt(s);
    return r * sqrt(r);
  }
  static CNX_HOST_DEVICE double pow_neg_three_quarters(double s, double& inv) {
    inv = 1.0 / s;
    return pow_neg_three_quarters(s);
  }
};

// The constants of one call, in the accumulation type (float for fp16/bf16/fp32, double for fp64).
template <typename acc_t>
struct Params {
  int64_t size, lo, hi;
  acc_t alpha_over_n;  // torch divides alpha by size
  acc_t neg_beta;
  acc_t k;
  acc_t grad_coef;     // 2 * alpha * beta / size
  bool three_quarters; // beta == 0.75 (AlexNet, GoogLeNet): s^-0.75 without exp/log

  static Params make(int64_t size, double alpha, double beta, double k) {
    Params p;
    p.size = size;
    p.lo = size / 2;
    p.hi = (size - 1) / 2;
    p.alpha_over_n = static_cast<acc_t>(alpha / static_cast<double>(size));
    p.neg_beta = static_cast<acc_t>(-beta);
    p.k = static_cast<acc_t>(k);
    p.grad_coef = static_cast<acc_t>(2.0 * alpha * beta / static_cast<double>(size));
    p.three_quarters = beta == 0.75;
    return p;
  }
};

// s = k + alpha/size * sum_sq
template <typename T, typename acc_t>
CNX_HOST_DEVICE T scale(T sum_sq, const Params<acc_t>& p) {
  return T(p.k) + T(p.alpha_over_n) * sum_sq;
}

// What a caller knows of beta at compile time. The CPU's vector loops are instantiated for both, so that the
// beta = 3/4 loop does not hold the general power: with it inlined (Sleef's log and exp, or pow, for whole
// vectors), the loop over a kernel's side-by-side vectors is too big for GCC to unroll before scalar
// replacement, their accumulator array stays in memory, stored on every step of the window; and its calls
// clobber every vector register.
enum class Beta { kAnyBeta, kThreeQuarters };

// s^-beta. For beta = 3/4, MathOps' pow_neg_three_quarters: r * sqrt(r) with r = 1/sqrt(s) -- native
// instructions instead of exp(log()), and the same answers as pow for s = 0 (Inf), s = Inf (0), finite s < 0
// and NaN (NaN). Not for s = -Inf, where pow gives +0 and this NaN: only a negative alpha with an infinite
// input reaches it, and there the window's other outputs are NaN where torch's are 0 (left so: one more
// select per element in every kernel for a parameter no network uses).
// kBeta = kThreeQuarters: the caller has checked p.three_quarters, and the general power is left out (see Beta).
template <Beta kBeta = Beta::kAnyBeta, typename T, typename acc_t>
CNX_HOST_DEVICE T pow_neg_beta(T s, const Params<acc_t>& p) {
  using M = MathOps<T>;
  if (kBeta == Beta::kThreeQuarters || p.three_quarters) return M::pow_neg_three_quarters(s);
  return M::pow(s, T(p.neg_beta));
}

// y = x * s^-beta
template <Beta kBeta = Beta::kAnyBeta, typename T, typename acc_t>
CNX_HOST_DEVICE T forward_value(T x, T sum_sq, const Params<acc_t>& p) {
  return x * pow_neg_beta<kBeta>(scale(sum_sq, p), p);
}

// The two per-channel terms of the backward: gp = g * s^-beta (the direct term) and t = gp * x / s (what the
// transposed window sums). For beta = 3/4, 1/s comes with s^-3/4 (MathOps' two-output
// pow_neg_three_quarters: a division, or on the CPU's float vectors the square of s^-1/2, already computed).
// kBeta = kThreeQuarters: the caller has checked p.three_quarters, and the general power is left out (see Beta).
template <Beta kBeta = Beta::kAnyBeta, typename T, typename acc_t>
CNX_HOST_DEVICE void backward_terms(T x, T g, T sum_sq, const Params<acc_t>& p, T& gp, T& t) {
  const T s = scale(sum_sq, p);
  if (kBeta == Beta::kThreeQuarters || p.three_quarters) {
    T inv;
    gp = g * MathOps<T>::pow_neg_three_quarters(s, inv);
    t = gp * x * inv;
    return;
  }
  gp = g * MathOps<T>::pow(s, T(p.neg_beta));
  t = gp * x / s;
}

// dx = gp - 2*alpha*beta/size * x * sum(t over the transposed window). With beta = 0 the scale's power is 1
// whatever x is, and torch's pow backward gives exactly 0 for a zero exponent: dx = gp, plus x^2's own
// gradient 2x * 0, which is NaN only where x is not finite. The full formula would instead turn a t that is
// not finite (s = 0 with k = 0: t = 0/0) into NaN in every neighbouring channel. With alpha = 0 (beta != 0)
// the full formula is torch's: a non-finite x makes s = k + 0 * Inf NaN, and 0 * NaN spreads it as torch's
// mul backward does.
template <typename T, typename acc_t>
CNX_HOST_DEVICE T backward_value(T x, T gp, T t_sum, const Params<acc_t>& p) {
  if (p.neg_beta == acc_t(0)) return gp + x * T(0);
  return gp - T(p.grad_coef) * x * t_sum;
}

// Windows up to this size take the kernels' fast paths (sums unrolled over registers or shifted loads of a
// row, no buffer); larger ones loop over their window. Every window is summed directly, at every size: a
// running sum (add the entering square, subtract the leaving one) costs O(1) per channel but cancels -- once
// x^2 = 1e30 has left a window of ones, its rounding error is the whole sum (NaN for 1e15 channels at size
// 17, 1e-2 relative error at 1e3). Summing directly costs `size` adds per output, as torch's avg_pool3d does.
constexpr int64_t kDirectWindow = 16;

// Window sums over a sequence v[0..n) read through load(m): for every i in [begin, end) (default: all of
// [0, n)) calls emit(i, sum_{m = i - before}^{i + after} load(m)), the window clipped to [0, n), summed in
// increasing m.
template <typename acc_t, typename Load, typename Emit>
CNX_HOST_DEVICE void window_sums(int64_t n, int64_t before, int64_t after, Load load, Emit emit, int64_t begin = 0,
                                 int64_t end = -1) {
  if (end < 0) end = n;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t first = i - before > 0 ? i - before : 0;
    const int64_t last = i + after < n - 1 ? i + after : n - 1;
    acc_t sum = acc_t(0);
    for (int64_t m = first; m <= last; ++m) sum += load(m);
    emit(i, sum);
  }
}

}  // namespace cnx::lrn
