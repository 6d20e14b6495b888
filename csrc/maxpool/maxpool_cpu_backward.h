#pragma once
// The backward of both layouts: a scatter within one task's rows (channels-first) and a gather across C
// (channels-last), each sum in torch's order. See maxpool_cpu_vec.h.

#include "maxpool/maxpool_cpu_blocks.h"

namespace cnx::cpu::CPU_CAPABILITY {
namespace {

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
  // Out of line: inlined into the fused pool -> LRN backward (beside the LRN backward's own loops), GCC left
  // block()'s sums on the stack, a load and a store per add, and the gather took twice the standalone one's time
  // (perf samples). Fused channels-last backward, 8x96x55x55 fp32, raw ops against the separate three in one
  // process, AVX-512 Zen 5, 2 threads: warm caches 0.81-0.88x -> 1.10-1.13x, cold 1.00-1.13x -> 1.31-1.37x.
  [[gnu::noinline]] void gather_row(const scalar_t* g, int64_t g_row0, const index_t* a, scalar_t* dx, int64_t ih) {
    constexpr int64_t L = V::size();
    const int64_t C = pb.C, W = pb.w.in, whole = C / (kBlock * L) * (kBlock * L), rest = C - whole;
    for (int64_t iw = 0; iw < W; ++iw) {
      for (int64_t c0 = 0; c0 < whole; c0 += kBlock * L) block<kBlock, true>(g, g_row0, a, dx, ih, iw, c0);
      if (rest == 0) continue;
      // The last block: its vector count (1 ... kBlock: rest < kBlock * L) and whether all are whole, as
      // compile-time constants. (A fourth vector, rest > 3L, was once left unwritten: grad_input's last
      // rest - 3L channels kept whatever memory held.)
      const bool full = rest % L == 0;
      static_assert(kBlock == 4, "one case per vector count of the last block");
      switch ((rest + L - 1) / L) {
        case 1: full ? block<1, true>(g, g_row0, a, dx, ih, iw, whole) : block<1, false>(g, g_row0, a, dx, ih, iw, whole); break;
        case 2: full ? block<2, true>(g, g_row0, a, dx, ih, iw, whole) : block<2, false>(g, g_row0, a, dx, ih, iw, whole); break;
        case 3: full ? block<3, true>(g, g_row0, a, dx, ih, iw, whole) : block<3, false>(g, g_row0, a, dx, ih, iw, whole); break;
        default: block<4, false>(g, g_row0, a, dx, ih, iw, whole);  // 3L < rest < 4L: never whole
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
