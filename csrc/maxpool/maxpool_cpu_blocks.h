#pragma once
// maxpool_cpu_vec.h's building blocks: the per-lane update rule on vectors and blocks of vectors (MaxOps,
// with the NaN witness of the AVX builds), the type aliases of one CPU_CAPABILITY, and the spans of windows
// and rows that the forward and backward kernels share.

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
// The training scan takes the same shortcut with its argmax (Indices: a block of integer vectors): the
// argmax moves where `value > max` (an ordered compare, false for a NaN value: without NaNs exactly the rule),
// the max is maxps, and the witness catches the NaNs. 4 instructions per tap where the rule takes 5 on
// AVX-512 (plus a broadcast of the tap's number, when it is not a constant) and 6 uops on AVX2.
template <typename Block, typename Indices = NoArgmax>
struct NanWitness {
  Block sum;
  Indices arg;
  NanWitness() = default;
  // The scan's first Index(k) starts the argmax and the sum; its per-tap ones are only read for their argmax
  // (their sum is dead code).
  template <typename I>
  explicit NanWitness(I k) : sum(0.0f), arg(k) {}

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

template <int B, typename Indices>
void update(VecBlock<at::vec::Vectorized<float>, B>& max,
            NanWitness<VecBlock<at::vec::Vectorized<float>, B>, Indices>& witness,
            const VecBlock<at::vec::Vectorized<float>, B>& value,
            const NanWitness<VecBlock<at::vec::Vectorized<float>, B>, Indices>& index) {
  // The empty asm pins each sum where it is computed. Without it GCC 12 sinks all the adds past the last
  // max, to just before saw_nan, which keeps every tap's vector alive until then: on AVX2, 36 of them spilled
  // to the stack and reloaded for a 3x3 window of 4 vectors, and channels-last inference ran up to 13% slower
  // (AVX-512, with 32 registers, spilled half as many and did not measurably slow down).
  for (int b = 0; b < B; ++b) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (!std::is_same_v<Indices, NoArgmax>) {
      const __mmask16 take = _mm512_cmp_ps_mask(value.v[b], max.v[b], _CMP_GT_OQ);
      witness.arg.v[b] = _mm512_mask_mov_epi32(witness.arg.v[b], take, index.arg.v[b]);
    }
    max.v[b] = _mm512_max_ps(value.v[b], max.v[b]);
    __m512 sum = _mm512_add_ps(witness.sum.v[b], value.v[b]);
    asm("" : "+v"(sum));
#else
    if constexpr (!std::is_same_v<Indices, NoArgmax>) {
      const __m256 take = _mm256_cmp_ps(value.v[b], max.v[b], _CMP_GT_OQ);
      witness.arg.v[b] = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(witness.arg.v[b]),
                                                              _mm256_castsi256_ps(index.arg.v[b]), take));
    }
    max.v[b] = _mm256_max_ps(value.v[b], max.v[b]);
    __m256 sum = _mm256_add_ps(witness.sum.v[b], value.v[b]);
    asm("" : "+x"(sum));
#endif
    witness.sum.v[b] = sum;
  }
}
inline constexpr bool kNanWitness = true;
#else
template <typename Block, typename Indices = NoArgmax>
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

// dst[0..n) = src[0..n) narrowed to the argmax type, over a whole row (per vector, the narrowing would be element
// by element). int32 -> uint8 (the one-byte argmax of fp32, fp16 and bf16) packs 16 lanes at a time: GCC left the
// plain loop scalar for rows under its vector loop's 64 elements (AlexNet's 27-wide rows: ~20% of the fused
// forward's pooling samples were this loop's byte stores). Raw ops in one process, AMD EPYC Zen 5, 2 threads, fp32
// training forward, AVX-512: max_pool2d 1.02-1.05x faster, the fused pool -> LRN 1.04-1.06x (8x96x55x55) and
// 1.06-1.11x (8x64x112x112), 0.99-1.01x at 8x256x27x27; avx2 1.00-1.03x; channels-last (C per call) unchanged.
template <typename index_t, typename int_t>
void narrow(const int_t* src, index_t* dst, int64_t n) {
  int64_t i = 0;
  if constexpr (std::is_same_v<index_t, uint8_t> && std::is_same_v<int_t, int32_t>) {
#if defined(CPU_CAPABILITY_AVX512)
    for (; i + 16 <= n; i += 16)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm512_cvtepi32_epi8(_mm512_loadu_si512(src + i)));
    if (i < n) {
      const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
      _mm512_mask_cvtepi32_storeu_epi8(dst + i, m, _mm512_maskz_loadu_epi32(m, src + i));
      return;
    }
#elif defined(CPU_CAPABILITY_AVX2)
    // Values are taps, 0 ... 255: the saturating packs keep them. packus_epi32 interleaves the two sources' 128-bit
    // halves; the permute puts src[i .. i + 16) in order as 16-bit lanes, packus_epi16 halves them to bytes.
    for (; i + 16 <= n; i += 16) {
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 8));
      const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                       _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
    }
#endif
  }
  for (; i < n; ++i) dst[i] = static_cast<index_t>(src[i]);
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

}  // namespace
}  // namespace cnx::cpu::CPU_CAPABILITY
