#pragma once
// The max-pool CPU building blocks, vectorised with at::vec: included by the per-instruction-set kernel
// files (maxpool_cpu_kernel.cpp, and pool_lrn_cpu_kernel.cpp, which pools tiles for the LRN after it), so
// they are compiled once per CPU_CAPABILITY. Values compare in the accumulation type (fp32 for fp16/bf16:
// exact, a max only selects); every update is maxpool_math.h's rule applied lane by lane -- a blend where
// `value > max || isnan(value)` -- so ties and NaNs come out exactly as in torch.
//
// Forward, channels-first (x[n][c][h][w]): the window max is separable, a max over kw of each input row
// followed by a max over kh of those row maxima. Taken in that order it is exactly the (kh, kw) scan: both
// report the last NaN if there is one and otherwise the first maximum. Each input row is pooled
// horizontally once (vectorised across output columns), kept in a ring of the last rows, and the output
// rows combine ring rows (vectorised across columns). To give the horizontal pass contiguous loads for any
// stride, the row is first split into `stride` phases -- phase r holds the padded row's elements r,
// r + stride, ... -- so tap kw of consecutive outputs lies at consecutive addresses of one phase. Padding
// is -inf, which never replaces the max; the argmax starts at the window's first tap inside the input, as
// torch's does. On AVX2/AVX-512 the 3 x 3 stride-2 windows (all the classic nets' overlapping pools) skip the
// ring: pool_full_3x3_stride2 reads each output vector straight from the input rows (PlanePooler picks it).
// Forward, channels-last (x[n][h][w][c]): every tap of a window is a contiguous row of C channels; the scan
// of maxpool_math.h (scan_window) runs on blocks of vectors of channels.
// Backward, channels-first: torch's own scatter within one task's rows of a plane (RowScatterer): zeroed,
// then each output's gradient added at its argmax's tap, in increasing (oh, ow).
// Backward, channels-last: a gather, vectorised across C. Each input element sums, in torch's order, the
// gradients of the windows whose argmax is the tap reading it (maxpool_math.h's for_each_gradient_source);
// the covering windows along each dimension are listed once per task.
// Either way every sum is added up in torch's order by one thread: no atomics, deterministic.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cpu_vec.h"
#include "maxpool/maxpool_cpu_kernel.h"
#include "maxpool/maxpool_math.h"

namespace cnx::maxpool {

// The update rule on vectors: a lane mask and blends. The argmax lanes are integers of the value's width.
template <typename T>
struct MaxOps<at::vec::Vectorized<T>> {
  using Vec = at::vec::Vectorized<T>;
  using IVec = at::vec::Vectorized<at::vec::int_same_size_t<T>>;

  static Vec replaces(const Vec& value, const Vec& max) { return (value > max) | value.isnan(); }
  static Vec select(const Vec& take, const Vec& current, const Vec& candidate) {
    return Vec::blendv(current, candidate, take);
  }
  static IVec select(const Vec& take, const IVec& current, const IVec& candidate) {
    return IVec::blendv(current, candidate, at::vec::cast<typename IVec::value_type>(take));
  }
  static NoArgmax select(const Vec&, NoArgmax current, NoArgmax) { return current; }
};

#if defined(CPU_CAPABILITY_AVX512)
// The same rule on AVX-512 in its native form, a lane mask register: at::vec's comparisons widen each mask
// into a vector and its blends narrow it back, 9 instructions per tap instead of these 5 (2 compares, an or,
// 2 masked blends). The scans are bound by this arithmetic once their rows are in cache. fp16/bf16 compare
// in float, so this covers them too.
template <>
struct MaxOps<at::vec::Vectorized<float>> {
  using Vec = at::vec::Vectorized<float>;
  using IVec = at::vec::Vectorized<int32_t>;

  static __mmask16 replaces(const Vec& value, const Vec& max) {
    return _mm512_cmp_ps_mask(value, max, _CMP_GT_OQ) | _mm512_cmp_ps_mask(value, value, _CMP_UNORD_Q);
  }
  static Vec select(__mmask16 take, const Vec& current, const Vec& candidate) {
    return _mm512_mask_blend_ps(take, current, candidate);
  }
  static IVec select(__mmask16 take, const IVec& current, const IVec& candidate) {
    return _mm512_mask_blend_epi32(take, current, candidate);
  }
  static NoArgmax select(__mmask16, NoArgmax current, NoArgmax) { return current; }
};
#endif

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// The rule without an argmax (inference), in 3 instructions instead of 4: maxps(value, max) is exactly
// `value > max ? value : max` (ties keep max, and a NaN max stays), and the blend lets a NaN value in. Found
// by argument-dependent lookup, so it takes over the generic update() for these vectors.
inline void update(at::vec::Vectorized<float>& max, NoArgmax&, const at::vec::Vectorized<float>& value,
                   const NoArgmax&) {
#if defined(CPU_CAPABILITY_AVX512)
  max = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(value, value, _CMP_UNORD_Q), _mm512_max_ps(value, max), value);
#else
  max = _mm256_blendv_ps(_mm256_max_ps(value, max), value, _mm256_cmp_ps(value, value, _CMP_UNORD_Q));
#endif
}
#endif

namespace {

// B vectors of consecutive channels scanned together: B independent chains of dependent blends per tap.
template <typename T, int B>
struct VecBlock {
  T v[B];
  VecBlock() = default;
  template <typename S>
  explicit VecBlock(S s) {
    for (T& x : v) x = T(s);
  }
};

}  // namespace

// The update rule on blocks of vectors: vector by vector.
template <typename T, int B>
struct MaxOps<VecBlock<at::vec::Vectorized<T>, B>> {
  template <typename U>
  using Block = VecBlock<U, B>;
  using Ops = MaxOps<at::vec::Vectorized<T>>;
  using Vb = Block<at::vec::Vectorized<T>>;

  // Whatever one vector's rule takes as its lane mask: a vector, or an AVX-512 mask register.
  using Take = Block<decltype(Ops::replaces(std::declval<at::vec::Vectorized<T>>(),
                                            std::declval<at::vec::Vectorized<T>>()))>;

  static Take replaces(const Vb& value, const Vb& max) {
    Take take;
    for (int b = 0; b < B; ++b) take.v[b] = Ops::replaces(value.v[b], max.v[b]);
    return take;
  }
  template <typename U>
  static Block<U> select(const Take& take, const Block<U>& current, const Block<U>& candidate) {
    Block<U> r;
    for (int b = 0; b < B; ++b) r.v[b] = Ops::select(take.v[b], current.v[b], candidate.v[b]);
    return r;
  }
  static NoArgmax select(const Take&, NoArgmax current, NoArgmax) { return current; }
};

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
template <int B>
void update(VecBlock<at::vec::Vectorized<float>, B>& max, NoArgmax& argmax,
            const VecBlock<at::vec::Vectorized<float>, B>& value, const NoArgmax& index) {
  for (int b = 0; b < B; ++b) update(max.v[b], argmax, value.v[b], index);
}

// The inference scan in 2 instructions per tap: maxps alone (which drops a NaN value but is otherwise the
// rule: ties keep max), and in place of the argmax a witness, the sum of the taps, NaN in every lane whose
// window held a NaN. A window whose witness has a NaN lane is scanned again with the exact rule (so +inf
// meeting -inf in a sum, which also gives NaN, costs time, never a wrong answer). The rule's NaN test is a
// third instruction on AVX-512 and two more uops on AVX2 (a compare and a 2-uop blendv); channels-last
// scans are bound by them once their rows are in cache.
template <typename Block>
struct NanWitness {
  Block sum;
  NanWitness() = default;
  template <typename I>
  explicit NanWitness(I) : sum(0.0f) {}  // the scan's per-tap Index(k) is dead code; its first is the start

  bool saw_nan() const {
    bool nan = false;
    for (const auto& v : sum.v) {
#if defined(CPU_CAPABILITY_AVX512)
      nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) != 0;
#else
      nan |= _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0;
#endif
    }
    return nan;
  }
};

template <int B>
void update(VecBlock<at::vec::Vectorized<float>, B>& max, NanWitness<VecBlock<at::vec::Vectorized<float>, B>>& witness,
            const VecBlock<at::vec::Vectorized<float>, B>& value,
            const NanWitness<VecBlock<at::vec::Vectorized<float>, B>>&) {
  // The empty asm pins each sum where it is computed. Without it GCC 12 sinks all the adds past the last
  // max, to just before saw_nan, which keeps every tap's vector alive until then: on AVX2, 36 of them spilled
  // to the stack and reloaded for a 3x3 window of 4 vectors, and channels-last inference ran up to 13% slower
  // (AVX-512, with 32 registers, spilled half as many and did not measurably slow down).
  for (int b = 0; b < B; ++b) {
#if defined(CPU_CAPABILITY_AVX512)
    max.v[b] = _mm512_max_ps(value.v[b], max.v[b]);
    __m512 sum = _mm512_add_ps(witness.sum.v[b], value.v[b]);
    asm("" : "+v"(sum));
#else
    max.v[b] = _mm256_max_ps(value.v[b], max.v[b]);
    __m256 sum = _mm256_add_ps(witness.sum.v[b], value.v[b]);
    asm("" : "+x"(sum));
#endif
    witness.sum.v[b] = sum;
  }
}
inline constexpr bool kNanWitness = true;
#else
template <typename Block>
struct NanWitness;  // the baseline build scans with the rule alone
inline constexpr bool kNanWitness = false;
#endif

}  // namespace cnx::maxpool

namespace cnx::cpu::CPU_CAPABILITY {
namespace {

using maxpool::Dim;
using maxpool::NoArgmax;
using maxpool::Problem;
using maxpool::VecBlock;

template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;
template <typename scalar_t>
using Vec = at::vec::Vectorized<acc_type<scalar_t>>;
template <typename scalar_t>
using IVec = at::vec::Vectorized<at::vec::int_same_size_t<acc_type<scalar_t>>>;
// What the scan tracks as the argmax: integer lanes, or nothing when index_t is void (inference).
template <typename scalar_t, typename index_t>
using ArgmaxLanes = std::conditional_t<std::is_void_v<index_t>, NoArgmax, IVec<scalar_t>>;

// dst[0..n) = src[0..n) narrowed to the argmax type: one loop over a whole row, which the compiler turns
// into vector packs (per vector, the narrowing would be element by element).
template <typename index_t, typename int_t>
void narrow(const int_t* src, index_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<index_t>(src[i]);
}

// The windows along one dimension (dilation 1) that lie wholly inside the input: [begin, end), begin <= end.
// Window o spans [o * stride - pad, o * stride - pad + kernel); padding makes the first ones hang over the
// start, and ceil_mode (or padding) the last ones over the end.
struct FullWindows {
  int64_t begin, end;
};
inline FullWindows full_windows_of(const Dim& d) {
  const int64_t room = d.in - d.kernel + d.pad;  // the last start a whole window fits at, plus pad
  const int64_t end = room >= 0 ? std::min(d.out, room / d.stride + 1) : 0;
  return {std::min((d.pad + d.stride - 1) / d.stride, end), end};
}

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// 2L 16-bit elements at q as L 32-bit lanes, and those lanes' low or high halves as the floats whose high
// halves they are (bf16 -> float, exactly).
#if defined(CPU_CAPABILITY_AVX512)
inline __m512i load_pairs(const void* q) { return _mm512_loadu_si512(q); }
inline at::vec::Vectorized<float> bf16_low_halves(__m512i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)); }
inline at::vec::Vectorized<float> bf16_high_halves(__m512i v) {
  return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u))));
}
#else
inline __m256i load_pairs(const void* q) { return _mm256_loadu_si256(static_cast<const __m256i*>(q)); }
inline at::vec::Vectorized<float> bf16_low_halves(__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); }
inline at::vec::Vectorized<float> bf16_high_halves(__m256i v) {
  return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int32_t>(0xFFFF0000u))));
}
#endif

// The even (kOdd false) or odd elements of the 2L elements a, b in an interleaved lane order: a0 a2 b0 b2 |
// a4 a6 b4 b6 | ... (in-lane shuffles). Lane-wise work on such vectors ends with in_order.
template <bool kOdd>
inline at::vec::Vectorized<float> deinterleave(const at::vec::Vectorized<float>& a, const at::vec::Vectorized<float>& b) {
  constexpr int kPick = kOdd ? 0xDD : 0x88;
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_shuffle_ps(a, b, kPick);
#else
  return _mm256_shuffle_ps(a, b, kPick);
#endif
}

// Lanes in deinterleave's order put in order: 64-bit pairs (a0 a2)(b0 b2)(a4 a6)(b4 b6)... -> (a0 a2)(a4 a6)...
// (b0 b2)... One lane-crossing permute; float or int32 lanes alike.
inline __m256d in_order_pairs(__m256d v) { return _mm256_permute4x64_pd(v, 0xD8); }
#if defined(CPU_CAPABILITY_AVX512)
inline __m512d in_order_pairs(__m512d v) {
  return _mm512_permutexvar_pd(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), v);
}
inline at::vec::Vectorized<float> in_order(const at::vec::Vectorized<float>& v) {
  return _mm512_castpd_ps(in_order_pairs(_mm512_castps_pd(v)));
}
inline at::vec::Vectorized<int32_t> in_order(const at::vec::Vectorized<int32_t>& v) {
  return _mm512_castpd_si512(in_order_pairs(_mm512_castsi512_pd(v)));
}
#else
inline at::vec::Vectorized<float> in_order(const at::vec::Vectorized<float>& v) {
  return _mm256_castpd_ps(in_order_pairs(_mm256_castps_pd(v)));
}
inline at::vec::Vectorized<int32_t> in_order(const at::vec::Vectorized<int32_t>& v) {
  return _mm256_castpd_si256(in_order_pairs(_mm256_castsi256_pd(v)));
}
#endif

// The max of p[2j], p[2j + 1], p[2j + 2] (in that tap order) for the L outputs j < L, given a = p[0, L),
// b = p[L, 2L), a2 = p[2, L + 2) and b2 = p[L + 2, 2L + 2): the horizontal pass of the 3 x 3 stride-2 pools
// (AlexNet's, GoogLeNet's, ResNet's). In-lane shuffles pick the even and odd elements of two vectors in an
// interleaved lane order; the maxima are lane-wise, so one lane-crossing permute at the end puts them in
// order. 4 shuffles per L outputs, where two full de-interleaves took 8: AlexNet's 8x96x55x55 inference 1.2x
// faster on AVX2.
inline at::vec::Vectorized<float> max3_stride2(const at::vec::Vectorized<float>& a, const at::vec::Vectorized<float>& b,
                                               const at::vec::Vectorized<float>& a2,
                                               const at::vec::Vectorized<float>& b2) {
  using V = at::vec::Vectorized<float>;
  NoArgmax none;
  V max = deinterleave<false>(a, b);
  update(max, none, deinterleave<true>(a, b), none);
  update(max, none, deinterleave<false>(a2, b2), none);
  return in_order(max);
}

inline at::vec::Vectorized<float> max3_stride2(const float* p) {
  using V = at::vec::Vectorized<float>;
  constexpr int64_t L = V::size();
  return max3_stride2(V::loadu(p), V::loadu(p + L), V::loadu(p + 2), V::loadu(p + 2 + L));
}

// The vector at q, as float. kGuard: near x_end, the input's end, where a whole vector would read past it;
// the lanes there are loaded partially (they only reach outputs past the row's end).
template <bool kGuard, typename scalar_t>
inline at::vec::Vectorized<float> guarded_load(const scalar_t* q, const scalar_t* x_end) {
  using V = at::vec::Vectorized<float>;
  if constexpr (kGuard) {
    if (q + V::size() > x_end) return q < x_end ? load<scalar_t, float>(q, x_end - q) : V(0.f);
  }
  return load<scalar_t, float>(q, V::size());
}

// bf16 needs no shuffle: a 32-bit lane of the 2L elements at r holds r[2j] in its low half and r[2j + 1] in
// its high half, and a bf16 is a float's high half. So one load gives a row's even taps (the lanes shifted left
// by 16) and odd taps (the low halves masked off) as float vectors in output order, and a second load at r + 2
// the third taps. Per row of taps: 2 loads and 3 integer ops, where widening max3x3_stride2's four loads took 8
// and de-interleaving them 3 shuffles and a permute. kGuard: as guarded_load, the elements at or past x_end
// read as zero.
struct Bf16RowTaps {
  at::vec::Vectorized<float> even, odd, next;  // taps kw = 0, 1, 2 of the L windows
};
template <bool kGuard>
inline Bf16RowTaps bf16_row_taps(const c10::BFloat16* r, const c10::BFloat16* x_end) {
  constexpr int64_t L = at::vec::Vectorized<float>::size();
  const auto load = [x_end](const c10::BFloat16* q) {
    if constexpr (kGuard) {
      if (q + 2 * L > x_end) {
        c10::BFloat16 part[2 * L] = {};
        std::copy(q, std::max(q, x_end), part);
        return load_pairs(part);
      }
    }
    return load_pairs(q);
  };
  const auto a = load(r), c = load(r + 2);
  return {bf16_low_halves(a), bf16_high_halves(a), bf16_low_halves(c)};
}

// The L outputs of max3_stride2 for the 3 x 3 windows whose top-left taps are p[2j], j < L, in rows of W
// elements, loaded by guarded_load<kGuard> (bf16: by bf16_row_taps).
template <bool kGuard, typename scalar_t>
inline at::vec::Vectorized<float> max3x3_stride2(const scalar_t* p, int64_t W, const scalar_t* x_end) {
  using V = at::vec::Vectorized<float>;
  constexpr int64_t L = V::size();
  NoArgmax none;
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    Bf16RowTaps max = bf16_row_taps<kGuard>(p, x_end);  // three chains, one per tap column, as a, b, a2 below
    for (int kh = 1; kh < 3; ++kh) {
      const Bf16RowTaps t = bf16_row_taps<kGuard>(p + kh * W, x_end);
      update(max.even, none, t.even, none);
      update(max.odd, none, t.odd, none);
      update(max.next, none, t.next, none);
    }
    update(max.even, none, max.odd, none);
    update(max.even, none, max.next, none);
    return max.even;
  }
  const auto load = [x_end](const scalar_t* q) { return guarded_load<kGuard>(q, x_end); };
  V a = load(p), b = load(p + L), a2 = load(p + 2), b2 = load(p + L + 2);
  update(a, none, load(p + W), none);
  update(b, none, load(p + W + L), none);
  update(a2, none, load(p + W + 2), none);
  update(b2, none, load(p + W + L + 2), none);
  update(a, none, load(p + 2 * W), none);
  update(b, none, load(p + 2 * W + L), none);
  update(a2, none, load(p + 2 * W + 2), none);
  update(b2, none, load(p + 2 * W + L + 2), none);
  return max3_stride2(a, b, a2, b2);
}

// max3x3_stride2 with the argmax: the nine taps one by one in the scan order of maxpool_math.h's scan_window
// (kh, then kw; the same update), so ties and NaN pick torch's tap. Each row's three taps are the even and
// odd elements of two vectors, picked by in-lane shuffles in the interleaved lane order of max3_stride2;
// lanes do not interact in the scan, so one permute of the max and of the argmax at the end puts both in
// order. The argmax is the window-local tap index kh * 3 + kw, in int32 lanes.
template <bool kGuard, typename scalar_t>
inline at::vec::Vectorized<float> max3x3_stride2_argmax(const scalar_t* p, int64_t W, const scalar_t* x_end,
                                                        at::vec::Vectorized<int32_t>& arg) {
  using V = at::vec::Vectorized<float>;
  using I = at::vec::Vectorized<int32_t>;
  constexpr int64_t L = V::size();
  const auto load = [x_end](const scalar_t* q) { return guarded_load<kGuard>(q, x_end); };
  V max(-INFINITY);
  I argmax(0);
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {  // (bf16_row_taps: the taps already in order)
    for (int kh = 0; kh < 3; ++kh) {
      const Bf16RowTaps t = bf16_row_taps<kGuard>(p + kh * W, x_end);
      maxpool::update(max, argmax, t.even, I(3 * kh));
      maxpool::update(max, argmax, t.odd, I(3 * kh + 1));
      maxpool::update(max, argmax, t.next, I(3 * kh + 2));
    }
    arg = argmax;
    return max;
  }
  for (int kh = 0; kh < 3; ++kh) {
    const scalar_t* r = p + kh * W;
    const V a = load(r), b = load(r + L), a2 = load(r + 2), b2 = load(r + L + 2);
    maxpool::update(max, argmax, deinterleave<false>(a, b), I(3 * kh));
    maxpool::update(max, argmax, deinterleave<true>(a, b), I(3 * kh + 1));
    maxpool::update(max, argmax, deinterleave<false>(a2, b2), I(3 * kh + 2));
  }
  arg = in_order(argmax);
  return in_order(max);
}

// pool_full_3x3_stride2's output columns of row oh outside `cols`, whose windows hang over the row's ends,
// rescanned by maxpool_math.h's scalar scan over their taps inside the row: the values into yr (row oh of the
// output) and, with an argmax, the window-local taps into ar. Out of line: inlined, the fp32 training forward of
// AlexNet's pools, which never calls it, ran ~1.2x slower.
template <typename index_t, typename scalar_t>
[[gnu::noinline]] void rescan_edge_columns(const scalar_t* x, const Problem& pb, FullWindows cols, int64_t oh,
                                           scalar_t* yr, index_t* ar) {
  const auto rescan = [&](int64_t ow) {
    float max;
    std::conditional_t<std::is_void_v<index_t>, NoArgmax, int64_t> arg;
    maxpool::window_max(pb.h, pb.w, oh, ow,
                        [x, W = pb.w.in](int64_t ih, int64_t iw) { return static_cast<float>(x[ih * W + iw]); }, max,
                        arg);
    yr[ow] = static_cast<scalar_t>(max);
    if constexpr (!std::is_void_v<index_t>) ar[ow] = static_cast<index_t>(arg);
  };
  for (int64_t ow = 0; ow < cols.begin; ++ow) rescan(ow);
  for (int64_t ow = cols.end; ow < pb.w.out; ++ow) rescan(ow);
}

// The forward of the problems takes_full_3x3_stride2 names: output rows [oh_begin, oh_end) of
// the plane at x into y (at row oh_begin), rows whose windows lie inside the plane vertically (full_windows_of),
// each output vector straight from the input -- the three rows' maxima at the four offsets max3_stride2 takes,
// 12 loads and no store but the output. The general path's vertical maxima go through a row in memory that the
// horizontal loads read back straddling its stores, and its per-row costs were most of the time on small
// planes. AVX2, one thread, 8 x C x H x W inference, general path -> this: AlexNet's pool5 (256 x 13 x 13)
// 1.95x faster, pool2 (256 x 27 x 27) 1.44x, pool1 (96 x 55 x 55) 1.14x.
// A row's vectors start at its first window's left tap, column -pad (the previous row's last element, or
// for the first row the one before the plane when pad_h is 0 -- which takes_full_3x3_stride2 excludes).
// The columns whose windows hang over either end of the row (padding 1, ceil_mode; outside `cols`, which is
// full_windows_of(pb.w)) are then recomputed one by one with the scalar scan of maxpool_math.h, over their
// taps inside the row. The vectors never change with the padding: making them skip padded taps instead
// slowed AlexNet's unpadded pools 1.2-1.4x.
// Loads run past a row's end into the next rows (those lanes land in outputs past the row, never kept), but
// never past x_end, the input's end: the lanes there are loaded partially. Stores run into the next output
// rows, which come later from this thread, but not past y_end. `ahead`, when given, advances once per output
// row.
// Memory traffic: the input read once from memory (each row is read by up to two output rows, and each
// element by up to four loads, from L1), the output written once.
// With an argmax (index_t not void), `argmax` points at output row oh_begin's argmax as y does at its values,
// and each row's int32 argmax lanes go through `arg_row` (OW and a vector past it), narrowed once per
// row (see narrow). Alternated processes, AVX-512, 2 threads, cold cache, the op with save_argmax, RowPooler
// -> this: 8x96x55x55 1.24-1.30 -> 0.46-0.57 ms, 8x256x27x27 1.40-1.48 -> 0.33-0.35, 8x256x13x13 0.67-0.73 ->
// 0.18-0.21, 8x64x112x112 2.57-3.01 -> 1.32-1.41 (the training forward 1.1-1.6x the inference one, was
// 2.4-5.7x).
// bf16 and fp16 widen each load to float (the taps' maxima are then exact values of scalar_t, narrowed back by
// store_exact). Alternated processes, AMD Zen 3, AVX2, 2 threads, cold cache, RowPooler -> this, bf16 / fp16:
// training forward 8x96x55x55 2.08-2.19 -> 0.98-1.09 / 2.02-2.13 -> 1.00-1.04 ms, 8x256x27x27 2.14-2.16 ->
// 0.80-0.89 / 2.09-2.12 -> 0.73-0.83, 8x256x13x13 0.98-1.22 -> 0.44-0.46 / 0.88-1.09 -> 0.39; inference
// 1.1-1.7x faster. bf16 then took its taps from element pairs (bf16_row_taps) instead: alternated processes,
// Intel AVX-512 machine, one thread, in cache, AlexNet's three pools at batch 8, inference 1.32-1.39x faster
// (ATEN_CPU_CAPABILITY=avx2: 1.38-1.67x), training forward 1.10-1.17x (1.20-1.23x).
template <typename index_t = void, typename scalar_t>
void pool_full_3x3_stride2(const scalar_t* x, const scalar_t* x_end, scalar_t* y, scalar_t* y_end, const Problem& pb,
                           FullWindows cols, int64_t oh_begin, int64_t oh_end, PrefetchStream* ahead,
                           index_t* argmax = nullptr, int32_t* arg_row = nullptr) {
  if constexpr (!std::is_same_v<acc_type<scalar_t>, float>) {
    // The callers name this for every dtype, double included, but takes_full_3x3_stride2 keeps double off it.
    TORCH_INTERNAL_ASSERT(false, "pool_full_3x3_stride2 serves float-accumulated dtypes only");
  } else {
    using V = at::vec::Vectorized<float>;
    constexpr int64_t L = V::size();
    const int64_t W = pb.w.in, OW = pb.w.out;
    const bool edges = cols.begin > 0 || cols.end < OW;
    // The window of (oh, ow) has its top-left tap at origin[2 * oh * W + 2 * ow].
    const scalar_t* origin = x - (pb.h.pad * W + pb.w.pad);
    for (int64_t oh = oh_begin; oh < oh_end; ++oh) {
      if (ahead != nullptr) ahead->advance();
      const scalar_t* top = origin + 2 * oh * W;
      scalar_t* yr = y + (oh - oh_begin) * OW;
      for (int64_t ow = 0; ow < OW; ow += L) {
        const scalar_t* p = top + 2 * ow;
        const bool inside = p + 2 * W + L + 2 + L <= x_end;
        V out;
        if constexpr (std::is_void_v<index_t>) {
          out = inside ? max3x3_stride2<false>(p, W, x_end) : max3x3_stride2<true>(p, W, x_end);
        } else {
          at::vec::Vectorized<int32_t> arg;
          out = inside ? max3x3_stride2_argmax<false>(p, W, x_end, arg)
                       : max3x3_stride2_argmax<true>(p, W, x_end, arg);
          arg.store(arg_row + ow);
        }
        if (yr + ow + L <= y_end) store_exact(yr + ow, out, L);
        else store_exact(yr + ow, out, std::min<int64_t>(OW - ow, y_end - (yr + ow)));
      }
      if constexpr (!std::is_void_v<index_t>) narrow(arg_row, argmax + (oh - oh_begin) * OW, OW);
    }
    // After all the rows, not per row: a call in the row loop made the compiler keep its loop constants across
    // it, and AlexNet's bf16 inference pools (which never call it) ran 1.05-1.12x slower. The rows' stores
    // never reach back into an earlier row, so these values stay.
    if (edges) {
      for (int64_t oh = oh_begin; oh < oh_end; ++oh) {
        index_t* ar = nullptr;
        if constexpr (!std::is_void_v<index_t>) ar = argmax + (oh - oh_begin) * OW;
        rescan_edge_columns(x, pb, cols, oh, y + (oh - oh_begin) * OW, ar);
      }
    }
  }
}
#else
// The baseline build, where takes_full_3x3_stride2 is false and this is never called: it lets the callers
// name pool_full_3x3_stride2 without preprocessor guards.
template <typename index_t = void, typename scalar_t>
void pool_full_3x3_stride2(const scalar_t*, const scalar_t*, scalar_t*, scalar_t*, const Problem&, FullWindows, int64_t,
                           int64_t, PrefetchStream*, index_t* = nullptr, int32_t* = nullptr) {
  TORCH_INTERNAL_ASSERT(false, "pool_full_3x3_stride2 has no kernel for this instruction set");
}
#endif

// int32 lanes for one output row's argmax in pool_full_3x3_stride2 (none in inference): OW and a whole vector
// past it, which the row's last vector stores.
template <typename index_t>
std::vector<int32_t> full_3x3_arg_row(const Problem& pb) {
  if constexpr (std::is_void_v<index_t>) return {};
  return std::vector<int32_t>(pb.w.out + 64);
}

// Whether pool_full_3x3_stride2 serves the forward of pb for scalar_t with an index_t argmax (void: none): an
// fp32, bf16 or fp16 forward on AVX2 or AVX-512, channels-first, with 3 x 3 stride-2 windows:
// - inference: every window inside the plane (AlexNet's and ZFNet's pools). Where windows hang over the edges
//   (padding 1, ceil_mode), RowPooler's inference path costs less than this one's scalar edge columns and
//   RowPooler'd edge rows: alternated processes, AMD Zen 3, AVX2, 2 threads, cold cache, GoogLeNet's ceil_mode
//   pools 8x192x56x56, 8x480x28x28, 8x832x14x14 ran 1.3-1.7x slower here;
// - training (an argmax): padding 1 (ResNet's stem) and ceil_mode (GoogLeNet's pools) too, the edge rows on
//   RowPooler. The same measurement, RowPooler -> this, ratios of the medians: fp32 the stem 8x64x112x112
//   1.2-1.5x faster, GoogLeNet's 8x64x112x112 / 8x192x56x56 / 8x480x28x28 / 8x832x14x14 1.5 / 1.6 / 1.65 /
//   1.55x; bf16 1.12-1.34x.
// Padding 1 along the columns needs it along the rows too: the first row's vectors would otherwise start
// before the plane.
template <typename scalar_t, typename index_t>
bool takes_full_3x3_stride2(const Problem& pb) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<acc_type<scalar_t>, float>) {
    const auto fits = [](const Dim& d) {
      if (d.kernel != 3 || d.stride != 2 || d.dilation != 1 || d.pad > 1) return false;
      const FullWindows full = full_windows_of(d);
      return !std::is_void_v<index_t> || (full.begin == 0 && full.end == d.out);
    };
    return !pb.channels_last && fits(pb.h) && fits(pb.w) && pb.w.pad <= pb.h.pad;
  }
#endif
  return false;
}

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

// The output rows covering input rows [i0, i1) -- whose windows span one of them: [lo, hi), empty if none
// does. The inverse of input_span below.
inline std::pair<int64_t, int64_t> covering_rows(const Dim& h, int64_t i0, int64_t i1) {
  const int64_t lo = maxpool::covering_span(h, i0).first, hi = maxpool::covering_span(h, i1 - 1).end;
  return {lo, std::max(lo, hi)};
}

// The input rows [r0, r1) that output rows [oh0, oh1) read (clipped to the input).
inline std::pair<int64_t, int64_t> input_span(const Dim& h, int64_t oh0, int64_t oh1) {
  const maxpool::Taps<> top = maxpool::taps_of(h, oh0), bottom = maxpool::taps_of(h, oh1 - 1);
  const int64_t r0 = std::clamp<int64_t>(top.start + top.first * h.dilation, 0, h.in);
  return {r0, std::clamp<int64_t>(bottom.start + (bottom.last - 1) * h.dilation + 1, r0, h.in)};
}

// ---- Forward, channels-last ----

template <int B, bool kFull, typename scalar_t, typename index_t, typename TH, typename TW, bool kExact = false>
C10_ALWAYS_INLINE void pool_channels(const scalar_t* xn, scalar_t* yo,
                                     at::vec::int_same_size_t<acc_type<scalar_t>>* arg_row, const Problem& pb,
                                     const TH& th, const TW& tw, int64_t c);

// pool_channels with the exact rule, for a window whose NaN witness fired. Out of line, so that the inlined
// fast scan neither keeps its loaded vectors nor its maxima in memory for this rare second scan: with the
// rescan inline (and the fast scan a call per window), channels-last inference ran 1.01-1.05x slower on
// AVX-512 and 1.13-1.15x on AVX2 (8x64x112x112 fp32).
template <int B, bool kFull, typename scalar_t, typename index_t, typename TH, typename TW>
[[gnu::noinline, gnu::cold]] void pool_channels_exact(const scalar_t* xn, scalar_t* yo,
                                                      at::vec::int_same_size_t<acc_type<scalar_t>>* arg_row,
                                                      const Problem& pb, const TH& th, const TW& tw, int64_t c) {
  pool_channels<B, kFull, scalar_t, index_t, TH, TW, true>(xn, yo, arg_row, pb, th, tw, c);
}

// The window with taps (th, tw) of channels [c, c + B * V) (clipped to C unless kFull) at one position: the
// scan_window of maxpool_math.h on a block. The output goes to yo, the argmax lanes to arg_row (narrowed by
// the caller). Inference on float vectors scans with the NaN witness unless kExact.
template <int B, bool kFull, typename scalar_t, typename index_t, typename TH, typename TW, bool kExact>
C10_ALWAYS_INLINE void pool_channels(const scalar_t* xn, scalar_t* yo,
                                     at::vec::int_same_size_t<acc_type<scalar_t>>* arg_row, const Problem& pb,
                                     const TH& th, const TW& tw, int64_t c) {
  using V = Vec<scalar_t>;
  using Values = VecBlock<V, B>;
  using Indices = std::conditional_t<std::is_void_v<index_t>, NoArgmax, VecBlock<IVec<scalar_t>, B>>;
  const int64_t C = pb.C, W = pb.w.in;
  // A compile-time V::size() when kFull, which removes the partial-load branches. As an array filled in a loop
  // the counts stayed run-time values: every bf16/fp16 tap tested its count and zeroed the scalar fallback's
  // stack buffer, and channels-last inference ran 2x slower than fp32 on half the bytes.
  const auto count = [&](int b) -> int64_t {
    return kFull ? V::size() : std::clamp<int64_t>(C - c - b * V::size(), 0, V::size());
  };
  const auto load_taps = [&](int64_t ih, int64_t iw) {
    const scalar_t* p = xn + (ih * W + iw) * C + c;
    Values v;
    for (int b = 0; b < B; ++b) v.v[b] = load(p + b * V::size(), count(b));
    return v;
  };
  Values max;
  Indices arg;
  if constexpr (!kExact && std::is_void_v<index_t> && maxpool::kNanWitness &&
                std::is_same_v<acc_type<scalar_t>, float>) {
    maxpool::NanWitness<Values> witness;
    maxpool::scan_window(pb.h, pb.w, th, tw, load_taps, max, witness);
    if (witness.saw_nan()) return pool_channels_exact<B, kFull, scalar_t, index_t>(xn, yo, arg_row, pb, th, tw, c);
  } else {
    maxpool::scan_window(pb.h, pb.w, th, tw, load_taps, max, arg);
  }
  for (int b = 0; b < B; ++b) {
    store_exact(yo + c + b * V::size(), max.v[b], count(b));
    if constexpr (!std::is_void_v<index_t>) arg.v[b].store(arg_row + c + b * V::size());
  }
}

// Blocks of this many vectors while they are full, then single full vectors, then one partial vector. Four
// independent chains hide the blends' latency and keep enough loads in flight; more gain nothing (and spill
// on AVX2's 16 registers). With an argmax a block also holds B index vectors and B masks: on AVX2 a block of
// 4 spilled, and blocks of 2 ran the training forward 1.04-1.11x faster (fp32, channels-last, 8x96x55x55 and
// 8x64x112x112, in-process A/B); AVX-512's 32 registers hold 4 (blocks of 2 there: 0.93-1.08x, no rule).
template <typename index_t>
constexpr int channel_block() {
#if defined(CPU_CAPABILITY_AVX2)
  return std::is_void_v<index_t> ? 4 : 2;
#else
  return 4;
#endif
}

// All C channels of one window.
template <typename scalar_t, typename index_t, typename TH, typename TW>
void pool_position(const scalar_t* xn, scalar_t* yo, at::vec::int_same_size_t<acc_type<scalar_t>>* arg_row,
                   const Problem& pb, const TH& th, const TW& tw) {
  constexpr int64_t V = Vec<scalar_t>::size();
  constexpr int B = channel_block<index_t>();
  const int64_t C = pb.C;
  int64_t c = 0;
  for (; c + B * V <= C; c += B * V) pool_channels<B, true, scalar_t, index_t>(xn, yo, arg_row, pb, th, tw, c);
  for (; c + V <= C; c += V) pool_channels<1, true, scalar_t, index_t>(xn, yo, arg_row, pb, th, tw, c);
  if (c < C) pool_channels<1, false, scalar_t, index_t>(xn, yo, arg_row, pb, th, tw, c);
}

// pool_row_channels_last's default `after`: nothing.
struct NoAfter {
  template <typename scalar_t>
  void operator()(scalar_t*) const {}
};

// The positions [ow_begin, ow_end) of an output row whose K x K windows (stride any, no dilation) all lie
// inside the input, th_start their first input row; finish(ow) after each. One loop with the position's scan
// inlined (flatten): called per position, each call reloaded the problem's sizes and rebuilt the tap
// addresses, ~100 instructions per VGG position against ~40, and in a memory-bound row fewer instructions
// keep more of its loads in flight. pool_channels_exact stays out of line (noinline).
template <int K, typename scalar_t, typename index_t, typename Finish>
[[gnu::flatten]] void pool_inner_positions(const scalar_t* xn, scalar_t* yr,
                                           at::vec::int_same_size_t<acc_type<scalar_t>>* arg_row, const Problem& pb,
                                           int64_t th_start, int64_t ow_begin, int64_t ow_end, PrefetchStream* ahead,
                                           Finish& finish) {
  const Problem local = pb;  // a copy: the vector stores may alias pb, whose sizes were reloaded per vector
  const int64_t C = local.C, stride = local.w.stride, pad = local.w.pad;
  for (int64_t ow = ow_begin; ow < ow_end; ++ow) {
    if (ahead != nullptr) ahead->advance();
    pool_position<scalar_t, index_t>(xn, yr + ow * C, arg_row, local, maxpool::FullTaps<K>{th_start},
                                     maxpool::FullTaps<K>{ow * stride - pad});
    finish(ow);
  }
}

// Output row oh of sample xn (OW positions of C channels) into yr / ar (argmax, unless index_t is void);
// arg_row is scratch for C argmax lanes. after(yo) runs on each position's C outputs as soon as they are
// written, while they are in L1 (the fused pool -> LRN's ReLU). Windows inside the input of the common sizes
// (3x3, 2x2, no dilation) scan with their bounds known at compile time (pool_inner_positions): the
// per-window loop control was a good part of the work of a few vectors of channels per tap.
template <typename scalar_t, typename index_t, typename After = NoAfter>
void pool_row_channels_last(const scalar_t* xn, scalar_t* yr, index_t* ar,
                            at::vec::int_same_size_t<acc_type<scalar_t>>* arg_row, const Problem& pb, int64_t oh,
                            PrefetchStream* ahead = nullptr, After after = {}) {
  const int64_t C = pb.C, OW = pb.w.out, K = pb.w.kernel;
  const maxpool::Taps<> th = maxpool::taps_of(pb.h, oh);
  auto finish = [&](int64_t ow) {
    if constexpr (!std::is_void_v<index_t>) narrow(arg_row, ar + ow * C, C);
    after(yr + ow * C);
  };
  const auto any_positions = [&](int64_t ow_begin, int64_t ow_end) {
    for (int64_t ow = ow_begin; ow < ow_end; ++ow) {
      if (ahead != nullptr) ahead->advance();
      pool_position<scalar_t, index_t>(xn, yr + ow * C, arg_row, pb, th, maxpool::taps_of(pb.w, ow));
      finish(ow);
    }
  };
  const bool fixed = (K == 2 || K == 3) && pb.h.kernel == K && pb.h.dilation == 1 && pb.w.dilation == 1 &&
                     th.first == 0 && th.last == K;
  if (!fixed) return any_positions(0, OW);
  const FullWindows inner = full_windows_of(pb.w);  // the columns whose window lies inside the row
  any_positions(0, inner.begin);
  if (K == 3)
    pool_inner_positions<3, scalar_t, index_t>(xn, yr, arg_row, pb, th.start, inner.begin, inner.end, ahead, finish);
  else
    pool_inner_positions<2, scalar_t, index_t>(xn, yr, arg_row, pb, th.start, inner.begin, inner.end, ahead, finish);
  any_positions(inner.end, OW);
}

// A forward work item: output rows [oh_begin, oh_end) of one group of input rows -- a plane (channels-first)
// or a sample (channels-last) -- which starts `group * group_stride` elements into the input.
struct RowItem {
  int64_t group, oh_begin, oh_end;
};

// The input rows that item `next` reads and item `now` does not, as a PrefetchStream of `steps` slices, to be
// advanced once per step of `now`'s work. Both forwards (and the fused op's) walk items in order, and their
// reads jump at each group's end, where the hardware prefetcher starts over; it also runs too little ahead
// within a group. In-process A/B with a cold cache: channels-last 8x96x55x55 and 8x256x27x27 fp32 1.07-1.19x
// faster (AVX-512 and AVX2), the ResNet stem's 8x64x112x112 0.98-1.12x; channels-first on AVX2 the stem's
// inference 1.4x, AlexNet's 8x96x55x55 1.05-1.15x.
template <typename scalar_t>
PrefetchStream rows_ahead(const scalar_t* x, const Dim& h, int64_t group_stride, int64_t row_stride, RowItem now,
                          RowItem next, int64_t steps) {
  auto [r0, r1] = input_span(h, next.oh_begin, next.oh_end);
  if (next.group == now.group) r0 = std::max(r0, input_span(h, now.oh_begin, now.oh_end).second);
  if (r1 <= r0) return {};
  return PrefetchStream(x + next.group * group_stride + r0 * row_stride,
                        (r1 - r0) * row_stride * int64_t(sizeof(scalar_t)), steps);
}

// rows_ahead for the channels-last forwards' items (n, oh), numbered n * OH + oh: nothing after the last
// item (end), one slice per output position.
template <typename scalar_t>
PrefetchStream next_rows_channels_last(const scalar_t* x, const Problem& pb, int64_t item, int64_t end) {
  if (item + 1 >= end) return {};
  const int64_t OH = pb.h.out, next = item + 1, row = pb.w.in * pb.C;
  return rows_ahead(x, pb.h, pb.h.in * row, row, {item / OH, item % OH, item % OH + 1},
                    {next / OH, next % OH, next % OH + 1}, pb.w.out);
}

// Lanes enough for one position's C argmax values (none when index_t is void).
template <typename scalar_t, typename index_t>
std::vector<at::vec::int_same_size_t<acc_type<scalar_t>>> argmax_lanes(int64_t C) {
  constexpr int64_t V = Vec<scalar_t>::size();
  return std::vector<at::vec::int_same_size_t<acc_type<scalar_t>>>(std::is_void_v<index_t> ? 0 : (C + V - 1) / V * V);
}

// ---- Backward ----

// For every input index along one dimension, the (window, tap) pairs covering it in increasing window, as
// for_each_covering_window lists them -- computed once instead of once per element.
class CoveringWindows {
 public:
  explicit CoveringWindows(const Dim& d) : begin_(d.in + 1) {
    for (int64_t i = 0; i < d.in; ++i) {
      begin_[i] = static_cast<int64_t>(pairs_.size());
      maxpool::for_each_covering_window(d, i, [&](int64_t o, int64_t k) { pairs_.emplace_back(o, k); });
    }
    begin_[d.in] = static_cast<int64_t>(pairs_.size());
  }

  // The enumerator of index i that for_each_gradient_source takes.
  auto of(int64_t i) const {
    return [this, i](auto f) {
      for (int64_t e = begin_[i]; e < begin_[i + 1]; ++e) f(pairs_[e].first, pairs_[e].second);
    };
  }

 private:
  std::vector<int64_t> begin_;
  std::vector<std::pair<int64_t, int64_t>> pairs_;
};

// The channels-first backward as a scatter, the way torch's CPU kernel runs it: input rows [i0, i1) of one
// plane zeroed, then each output element's gradient added at the tap its argmax names, output by output in
// increasing (oh, ow) -- torch's order, so every sum matches it bit for bit. Only the output rows whose
// windows reach [i0, i1) are read; a tap in a row outside it (another task's rows) is skipped, and so is one
// outside the input or not a tap at all (an argmax the forward did not write: the gather, too, never saw
// it), so any argmax is memory-safe. bf16 and fp16 add up in float, in a task-local copy of the rows, and are
// rounded once, as the other kernels do.
// It replaced a gather vectorised across the columns of each input row (its sums built in the forward's
// phases, then merged back into the row), whose per-row passes cost more than the adds on small planes: in
// `make bench` (AVX-512 EPYC) forward+backward went from 0.93x eager to 1.6x on AlexNet's 8x256x13x13 pool5
// and from 1.7x to 3.2x on its 8x256x27x27 pool2.
// Memory traffic: grad_output and the argmax read once (a row shared by two tasks' blocks twice), grad_input
// written once, its plane hot in L1 between the zeroing and the adds.
template <typename scalar_t, typename index_t>
struct RowScatterer {
  using acc_t = acc_type<scalar_t>;
  static constexpr bool kDirect = std::is_same_v<scalar_t, acc_t>;  // add into grad_input itself
  static constexpr bool kByte = std::is_same_v<index_t, uint8_t>;

  const Problem& pb;
  // kByte: per byte value, its tap's row and column offsets from the window's first element; a value that is
  // not a tap gets an offset no row reaches.
  std::vector<int64_t> tap_row, tap_col;
  std::vector<acc_t> sums;  // !kDirect: the rows being summed

  explicit RowScatterer(const Problem& p) : pb(p) {
    gathers_stride2 = kGatherStride2 && (p.h.kernel == 2 || p.h.kernel == 3) && p.w.kernel == p.h.kernel &&
                      p.h.stride == 2 && p.w.stride == 2 && p.h.pad == 0 && p.w.pad == 0 && p.h.dilation == 1 &&
                      p.w.dilation == 1;
    if constexpr (kByte) {
      constexpr int64_t kNone = int64_t(1) << 60;
      tap_row.assign(256, kNone);
      tap_col.assign(256, kNone);
      for (int64_t t = 0; t < std::min<int64_t>(256, pb.h.kernel * pb.w.kernel); ++t) {
        tap_row[t] = t / pb.w.kernel * pb.h.dilation;
        tap_col[t] = t % pb.w.kernel * pb.w.dilation;
      }
    }
  }

  // Input rows [i0, i1) of one plane into dx (which points at the plane). a points at the plane's argmax; g
  // at grad_output row g_row0 (the plane's row 0, or the first row of a tile), and holds every output row
  // whose windows reach those input rows.
  void scatter_rows(const scalar_t* g, int64_t g_row0, const index_t* a, scalar_t* dx, int64_t i0, int64_t i1) {
    if constexpr (kGatherStride2) {
      if (gathers_stride2)
        return pb.w.kernel == 3 ? gather_rows_stride2<3>(g, g_row0, a, dx, i0, i1)
                                : gather_rows_stride2<2>(g, g_row0, a, dx, i0, i1);
    }
    const Dim h = pb.h, w = pb.w;  // copies: stores through acc_t* could otherwise alias pb
    const int64_t W = w.in, rows = i1 - i0, taps = h.kernel * w.kernel;
    acc_t* out;
    if constexpr (kDirect) {
      out = dx + i0 * W;
    } else {
      sums.resize(rows * W);
      out = sums.data();
    }
    std::fill(out, out + rows * W, acc_t(0));
    const auto [lo, hi] = covering_rows(h, i0, i1);
    for (int64_t oh = lo; oh < hi; ++oh) {
      const int64_t row0 = oh * h.stride - h.pad - i0;  // the window's first row, from row i0
      const scalar_t* gr = g + (oh - g_row0) * w.out;
      const index_t* ar = a + oh * w.out;
      for (int64_t ow = 0; ow < w.out; ++ow) {
        int64_t r, c;
        if constexpr (kByte) {
          r = tap_row[ar[ow]];
          c = tap_col[ar[ow]];
        } else {
          const int64_t t = ar[ow];
          if (t < 0 || t >= taps) continue;
          r = t / w.kernel * h.dilation;
          c = t % w.kernel * w.dilation;
        }
        r += row0;
        c += ow * w.stride - w.pad;
        // Unsigned: a negative row or column wraps past any bound.
        if (static_cast<uint64_t>(r) < static_cast<uint64_t>(rows) && static_cast<uint64_t>(c) < static_cast<uint64_t>(W))
          out[r * W + c] += static_cast<acc_t>(gr[ow]);
      }
    }
    if constexpr (!kDirect) {
      using V = Vec<scalar_t>;
      scalar_t* d = dx + i0 * W;
      for (int64_t e = 0; e < rows * W; e += V::size()) {
        const int64_t n = std::min<int64_t>(V::size(), rows * W - e);
        store(d + e, V::loadu(out + e, n), n);
      }
    }
  }

 private:
  // The gather is AVX-512 only. On AVX2 the same gather (K = 3; maskload / maskstore, and the argmax bytes of a
  // partial vector through a buffer, as AVX2 has no masked byte load) ran 2-3x slower than the scatter
  // (1x96x55x55, one thread); a variant with plain loads, window m - 1's lanes shifted in from the previous
  // vector and buffers only for a row's last vector tied on 1x64x112x112 and lost 1.8x on 1x96x55x55, 3.4x on
  // 1x256x27x27.
#if defined(CPU_CAPABILITY_AVX512)
  static constexpr bool kGatherStride2 = kByte && std::is_same_v<scalar_t, float>;
#else
  static constexpr bool kGatherStride2 = false;
#endif
  bool gathers_stride2 = false;

#if defined(CPU_CAPABILITY_AVX512)
  // scatter_rows for the classic nets' pools -- K x K windows (K = 3: AlexNet, ZFNet, GoogLeNet, ceil_mode
  // included; K = 2: VGG), stride 2, no padding or dilation -- as a gather vectorised along the input row, each
  // element written once with no zeroing pass and no read-modify-write. Input column 2m is tap column 0 of
  // window m (and for K = 3 tap column 2 of window m - 1), column 2m + 1 tap column 1 of window m; row i is tap
  // row i - 2 oh of the windows oh that cover it (one or two). So 16 consecutive windows' gradients and argmax
  // bytes give the even and the odd columns of 32 consecutive inputs, interleaved into place by a permute each.
  // The adds run in the scatter's order -- (oh, ow) increasing, only matching taps adding -- and give its bits.
  // Lanes past the row's windows are masked off, loads included (masked loads do not fault), so an argmax that
  // is not a tap adds nothing, as in the scatter. Memory traffic: grad_input written once; grad_output and the
  // argmax rows read once per input row they cover (the second time from L1). One thread, L2-resident,
  // AVX-512, Intel Xeon, against the scatter: K = 3, 1x96x55x55 1.25x faster, 1x64x112x112 1.5x, 1x256x27x27
  // the same; K = 2, 1x64x224x224 1.6x, 1x128x112x112 1.75x.
  template <int K>
  void gather_rows_stride2(const float* g, int64_t g_row0, const uint8_t* a, float* dx, int64_t i0,
                           int64_t i1) const {
    constexpr int64_t L = 16;
    const int64_t W = pb.w.in, OW = pb.w.out, OH = pb.h.out, pairs = (W + 1) / 2;
    // sum + v in the lanes of `valid` whose argmax byte is `tap`
    const auto add_where = [](__m512 sum, __m512 v, __m512i tap_of, int tap, __mmask16 valid) {
      return _mm512_mask_add_ps(sum, _mm512_mask_cmpeq_epi32_mask(valid, tap_of, _mm512_set1_epi32(tap)), sum, v);
    };
    const __m512i first_half = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i second_half = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (int64_t i = i0; i < i1; ++i) {
      // windows oh with 2 oh <= i <= 2 oh + K - 1 (i - K + 2 >= 0 or truncates to 0)
      const int64_t oh_first = std::max<int64_t>(0, (i - K + 2) / 2), oh_last = std::min<int64_t>(OH - 1, i / 2);
      float* row = dx + i * W;
      for (int64_t m0 = 0; m0 < pairs; m0 += L) {
        const __mmask16 cur = float_lanes(0, OW - m0);                          // window m exists
        [[maybe_unused]] const __mmask16 prev = float_lanes(1 - m0, OW + 1 - m0);  // window m - 1 exists
        __m512 even = _mm512_setzero_ps(), odd = _mm512_setzero_ps();
        for (int64_t oh = oh_first; oh <= oh_last; ++oh) {
          const int tap = static_cast<int>(K * (i - 2 * oh));
          const float* gr = g + (oh - g_row0) * OW + m0;
          const uint8_t* ar = a + oh * OW + m0;
          const __m512 gc = _mm512_maskz_loadu_ps(cur, gr);
          const __m512i ac = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(cur, ar));
          if constexpr (K == 3) {  // window m - 1 first: the scatter's order
            const __m512 gp = _mm512_maskz_loadu_ps(prev, gr - 1);
            const __m512i ap = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(prev, ar - 1));
            even = add_where(even, gp, ap, tap + 2, prev);
          }
          even = add_where(even, gc, ac, tap, cur);
          odd = add_where(odd, gc, ac, tap + 1, cur);
        }
        const int64_t j = 2 * m0;
        _mm512_mask_storeu_ps(row + j, float_lanes(0, W - j), _mm512_permutex2var_ps(even, first_half, odd));
        _mm512_mask_storeu_ps(row + j + L, float_lanes(0, W - j - L),
                              _mm512_permutex2var_ps(even, second_half, odd));
      }
    }
  }
#else
  template <int K>
  void gather_rows_stride2(const scalar_t*, int64_t, const index_t*, scalar_t*, int64_t, int64_t) const {}
#endif
};

// `n` argmax values from p as the integer lanes the values' comparisons use; lanes past n are -1, no tap.
// One-byte argmax widens in the register on AVX-512 / AVX2 (vpmovzxbd); an element loop elsewhere.
template <typename scalar_t, typename index_t>
IVec<scalar_t> argmax_lanes_of(const index_t* p, int64_t n) {
  using IV = IVec<scalar_t>;
  using int_t = typename IV::value_type;
  if (n == IV::size()) {
    if constexpr (std::is_same_v<index_t, int_t>) return IV::loadu(p);
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<index_t, uint8_t> && std::is_same_v<int_t, int32_t>)
      return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<index_t, uint8_t> && std::is_same_v<int_t, int32_t>)
      return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
#endif
  }
  int_t lanes[IV::size()];
  for (int64_t i = 0; i < IV::size(); ++i) lanes[i] = i < n ? static_cast<int_t>(p[i]) : int_t(-1);
  return IV::loadu(lanes);
}

// One input row of C channels per (n, ih, iw), channels in blocks of kBlock vectors whose sums stay in
// registers across the position's covering windows: each window adds its grad where its argmax is the tap
// reading the position (+0 elsewhere, which leaves every sum unchanged: a sum that starts at +0 is never -0),
// the argmax widened and compared in registers. The windows come in torch's order (for_each_gradient_source).
// It replaced a loop over channels left to the compiler, with the sums in memory and each window's bytes
// compared one by one, which lost to torch's scalar scatter by 1.3-1.5x (8x64x112x112 and 8x96x55x55 fp32).
// Memory traffic: grad_input written once; each output position's C argmax and grad_output elements are
// read by every input position of its window, the repeats from cache (consecutive input rows share most of
// their windows), so memory sees grad_output and the argmax about once.
template <typename scalar_t, typename index_t>
struct ChannelsLastGatherer {
  using acc_t = acc_type<scalar_t>;
  using V = Vec<scalar_t>;
  using IV = IVec<scalar_t>;
  static constexpr int kBlock = 4;
  const Problem& pb;
  const CoveringWindows rows, cols;

  explicit ChannelsLastGatherer(const Problem& p) : pb(p), rows(p.h), cols(p.w) {}

  // Input row ih of one sample into dx (W positions of C channels). a points at the sample's argmax; g at
  // its grad_output row g_row0 (0, or the first row of a tile) and holds every output row covering ih.
  void gather_row(const scalar_t* g, int64_t g_row0, const index_t* a, scalar_t* dx, int64_t ih) {
    constexpr int64_t L = V::size();
    const int64_t C = pb.C, W = pb.w.in, whole = C / (kBlock * L) * (kBlock * L), rest = C - whole;
    for (int64_t iw = 0; iw < W; ++iw) {
      for (int64_t c0 = 0; c0 < whole; c0 += kBlock * L) block<kBlock, true>(g, g_row0, a, dx, ih, iw, c0);
      if (rest == 0) continue;
      // The last block: its vector count and whether all are whole, as compile-time constants.
      const bool full = rest % L == 0;
      switch ((rest + L - 1) / L) {
        case 1: full ? block<1, true>(g, g_row0, a, dx, ih, iw, whole) : block<1, false>(g, g_row0, a, dx, ih, iw, whole); break;
        case 2: full ? block<2, true>(g, g_row0, a, dx, ih, iw, whole) : block<2, false>(g, g_row0, a, dx, ih, iw, whole); break;
        default: full ? block<3, true>(g, g_row0, a, dx, ih, iw, whole) : block<3, false>(g, g_row0, a, dx, ih, iw, whole);
      }
    }
  }

 private:
  // Channels [c0, c0 + K vectors) of input position (ih, iw), clipped to C unless kFull. K and the unrolled
  // loops keep the K sums in registers (with a run-time count they lived in memory, a load and a store per
  // add).
  template <int K, bool kFull>
  C10_ALWAYS_INLINE void block(const scalar_t* g, int64_t g_row0, const index_t* a, scalar_t* dx, int64_t ih,
                               int64_t iw, int64_t c0) {
    constexpr int64_t L = V::size();
    const int64_t C = pb.C, OW = pb.w.out;
    const auto lanes = [&](int b) { return kFull ? L : std::clamp<int64_t>(C - c0 - b * L, 0, L); };
    V sum[K];
#pragma GCC unroll 4
    for (int b = 0; b < K; ++b) sum[b] = V(acc_t(0));
    maxpool::for_each_gradient_source(rows.of(ih), cols.of(iw), pb.w.kernel, [&](int64_t oh, int64_t ow, int64_t tap) {
      const int64_t at = (oh * OW + ow) * C + c0;
      const scalar_t* gp = g + (at - g_row0 * OW * C);
      const IV t(static_cast<typename IV::value_type>(tap));
#pragma GCC unroll 4
      for (int b = 0; b < K; ++b) {
        const V take = at::vec::cast<acc_t>(argmax_lanes_of<scalar_t>(a + at + b * L, lanes(b)) == t);
        sum[b] = sum[b] + (load(gp + b * L, lanes(b)) & take);
      }
    });
#pragma GCC unroll 4
    for (int b = 0; b < K; ++b) store(dx + iw * C + c0 + b * L, sum[b], lanes(b));
  }
};

// Calls f(index_t{}) with the argmax element type of this problem.
template <typename F>
void dispatch_argmax(const Problem& pb, F f) {
  if (maxpool::byte_argmax(pb)) f(uint8_t{});
  else f(int32_t{});
}

}  // namespace
}  // namespace cnx::cpu::CPU_CAPABILITY
