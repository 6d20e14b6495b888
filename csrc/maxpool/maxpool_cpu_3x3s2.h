#pragma once
// The 3 x 3 stride-2 windows of the classic nets' overlapping pools, channels-first on AVX2 / AVX-512:
// each output vector read straight from the input rows (no ring of row maxima). See maxpool_cpu_vec.h.

#include "maxpool/maxpool_cpu_blocks.h"

namespace cnx::cpu::CPU_CAPABILITY {
namespace {

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

}  // namespace
}  // namespace cnx::cpu::CPU_CAPABILITY
