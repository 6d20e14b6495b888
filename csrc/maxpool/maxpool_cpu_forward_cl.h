#pragma once
// The channels-last forward: every tap of a window is a contiguous row of C channels, scanned in blocks of
// vectors. See maxpool_cpu_vec.h.

#include "maxpool/maxpool_cpu_blocks.h"

namespace cnx::cpu::CPU_CAPABILITY {
namespace {

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
// the caller). Float vectors scan with the NaN witness unless kExact.
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
  if constexpr (!kExact && maxpool::kNanWitness && std::is_same_v<acc_type<scalar_t>, float>) {
    maxpool::NanWitness<Values, Indices> witness;
    maxpool::scan_window(pb.h, pb.w, th, tw, load_taps, max, witness);
    if (witness.saw_nan()) return pool_channels_exact<B, kFull, scalar_t, index_t>(xn, yo, arg_row, pb, th, tw, c);
    arg = witness.arg;
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

}  // namespace
}  // namespace cnx::cpu::CPU_CAPABILITY
