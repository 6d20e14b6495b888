// The CPU kernels of classicnets_ext::linear -- y = x @ w.T + bias for a few rows of x, the classifier of a
// classic CNN at inference batch sizes -- and of its backward's two products (at the end of the file).
// setup.py compiles this file once per instruction set.
//
// Formula: y[m, n] = bias[n] + sum_k x[m, k] * w[n, k], summed in fp32; the weight is read in its own dtype
// (fp32, bf16 or fp16: converted to fp32 as it is loaded), x, the bias and y are fp32 (the host converts the
// few rows of a bf16/fp16 call, and rounds y once, as oneDNN's reduced-precision products do). An fp32 weight
// under a bf16/fp16 x is rounded to x's dtype as it is loaded (torch.autocast's product without its cast of the
// weight: N*K*4 bytes read, none written). On a CPU with
// AVX512-BF16 a bf16 call keeps x in bf16 and multiplies pairs of columns in one instruction (bf16_dot_block).
// Memory traffic: the weight, N*K*sizeof(w) bytes, read once from DRAM (151 MB for AlexNet's 9216->4096 in
// fp32, 75 MB in bf16); x, M*K*4 bytes (M*K*2 in the bf16 dot products), read from L2 once per register block
// of weight rows; y written once (M*N*4 bytes; once per depth chunk where x is chunked). With a few rows of x
// this is a stream over the weight at a few FLOPs per byte, and its speed is DRAM read bandwidth: cold weights,
// 2 threads, batch 1-8, 28-34 GB/s on the Xeon measured (AVX-512; our AVX2 build 22-33), where F.linear reads
// 10-33 and the column-major product 15-17.
//
// Register blocking: R weight rows times B rows of x accumulate in R*B vector registers; each step loads R
// vectors of w and, for each x row, one vector of x that feeds R FMAs. AVX-512 (32 registers): 3 x 8 = 24
// accumulators; AVX2 (16): 3 x 4 = 12. One to kNarrowBatch rows take more weight rows instead (6 x 4, 4 x 2),
// for enough independent FMA chains; on AVX-512 so do 7 rows and more, in passes (kNarrowPassesFrom).
// More rows of x than B reuse the same weight rows from L1 in further passes, so w still comes from DRAM once.
// The accumulators must stay in registers: `#pragma GCC unroll` makes every index a constant, and the loop
// body has no branch (GCC kept them on the stack, every FMA a load and a store, when a prefetch was
// conditional in the loop: batch 8 ran at half speed).
//
// Depth: x's columns are split into chunks only where x passes kDepthBytes; a chunk's columns of x stay in
// L2 while every weight row of the thread passes, and y accumulates the chunks' partial sums.
#include "linear/linear_cpu_kernel.h"

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <tuple>
#include <type_traits>
#include <utility>

#include "common/macros.h"

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace cnx::cpu::CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;
using linear::CpuProblem;

// A register block: R weight rows times B rows of x, R*B accumulators. Up to kNarrowBatch rows of x take more
// weight rows, so that there are still enough independent FMA chains (the FMA's latency times its throughput:
// 8 on these CPUs) to cover its latency.
// From kNarrowPassesFrom rows on, passes of the narrow block beat those of the wide one on AVX-512 (half the
// loads of x, from L2, per FMA, for a further read of 6 weight rows, from L1/L2 -- the wide block's x loads are
// what binds once the weight's stream no longer does): cold weights, 2 threads, AMD EPYC Zen 5, AlexNet's FC6 /
// FC7 / FC8 / VGG's FC6, 7 rows 1.19x/1.20x/1.09x/1.17x (fp32), 1.02x/1.21x/1.16x/1.05x (bf16), 8 rows
// 1.31x/1.25x/1.26x/1.14x (fp32), 1.04x/1.22x/1.16x/1.11x (bf16); fp16 1.03-1.21x at 7-8 rows, 1.03-1.15x at
// 12-16, 1.17-1.46x at 32-128; bf16 dot products 1.05-1.23x at 9-16 rows, 1.08-1.36x at 24-32. 5 and 6 rows
// (4 + 1, 4 + 2) mixed, 0.90-1.15x: one pass of the wide block. On AVX2 the narrow block's 2 rows made it lose.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kRows = 3, kBatch = 8, kNarrowRows = 6, kNarrowBatch = 4;
constexpr int64_t kNarrowPassesFrom = 7;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kRows = 3, kBatch = 4, kNarrowRows = 4, kNarrowBatch = 2;
constexpr int64_t kNarrowPassesFrom = INT64_MAX;  // never
#else
constexpr int kRows = 1, kBatch = 4, kNarrowRows = 2, kNarrowBatch = 2;
constexpr int64_t kNarrowPassesFrom = INT64_MAX;  // never
#endif
static_assert(linear::kRowsPerItem % kRows == 0 && linear::kRowsPerItem % kNarrowRows == 0,
              "an item must split into whole register blocks");

// The x columns of a depth chunk take at most this many bytes: x stays in L2 (2 MB per core on the Xeon
// measured), the weight streams through. Chunks cost more than they save wherever x fits: with one chunk
// the weight is read front to back, one sequential stream; with chunks, pieces of every row, 4*K bytes apart.
// Cold weights, 2 threads, AVX-512, batch 8, VGG's 25088->4096 (x: 800 KB): 128 KB chunks 19.0 GB/s,
// 256 KB 21.0, 512 KB 18.7, one chunk 27.6.
constexpr int64_t kDepthBytes = 1024 * 1024;

// Weight lines are prefetched this many bytes ahead of the loads. A batch of 8 rows keeps the cores
// busy with FMAs, and the hardware prefetchers alone then fall behind DRAM: cold weights, 2 threads,
// AlexNet's 9216->4096 at batch 8, 15.4 GB/s without, 19.5 with (and 31 GB/s, the read bandwidth, once the
// accumulators stayed in registers); batch 1-2 (DRAM-bound either way) 29-31 -> 33 GB/s.
constexpr int64_t kPrefetchBytes = 2048;

// An fp32 weight read as if cast to T (bf16 or fp16) first: torch.autocast's product without its copy of the
// weight (a fresh N*K*sizeof(T) bytes written, and read again, on every call that its cache does not serve).
template <typename T>
struct RoundedTo {
  using Type = T;
  float value;
};
template <typename W>
constexpr bool kRounded = false;
template <typename T>
constexpr bool kRounded<RoundedTo<T>> = true;

// `count` <= one vector of weights from p, as fp32; a partial vector zero-filled. Inlined where count is a
// constant (a whole vector, the main loop), so that no branch is left there.
template <typename W>
inline __attribute__((always_inline)) Vec load_weights(const W* p, int64_t count) {
  if constexpr (std::is_same_v<W, float>) {
    return Vec::loadu(p, count);
  } else if constexpr (kRounded<W>) {
    // at::vec's conversions round to nearest even, NaN kept, as Tensor.to does (and zeros stay zeros).
    using T = typename W::Type;
    const Vec v = Vec::loadu(&p->value, count);
    return std::get<0>(at::vec::convert_to_float<T>(at::vec::convert_from_float<T>(v, v)));
  } else {
    if (count == Vec::size()) {
      Vec v;
      at::vec::load_to_float(p, v);
      return v;
    }
    __at_align__ float part[Vec::size()] = {};
    for (int64_t i = 0; i < count; ++i) part[i] = static_cast<float>(p[i]);
    return Vec::loadu(part);
  }
}

#if defined(CPU_CAPABILITY_AVX512)
inline float sum_lanes(__m512 v) { return _mm512_reduce_add_ps(v); }  // the bf16 dot products' accumulators
#endif

float sum_lanes(const Vec& v) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  return v.reduce_add();
#else  // the generic Vectorized's reduce_add does not compile (torch 2.14)
  float lanes[Vec::size()];
  v.store(lanes);
  float s = 0.f;
  for (float l : lanes) s += l;
  return s;
#endif
}

// How a register block walks columns [k0, k1) `step` at a time, prefetching each weight row `pf` elements ahead:
// whole steps up to same_rows_end prefetch their own rows, those after it the next block's first columns (the
// rows R*K further on), and a partial step (a masked or zero-filled vector) ends the range.
struct ColumnWalk {
  int64_t whole_end, same_rows_end;
  ColumnWalk(int64_t k0, int64_t k1, int64_t step, int64_t pf)
      : whole_end(k0 + (k1 - k0) / step * step), same_rows_end(std::max(k0, std::min(whole_end, k1 - pf))) {}
};

// y's R x B entries (y row stride N) += the lane sums of a register block's accumulators -- or, for the first
// depth chunk, = the bias (or 0) + the sums.
template <typename Acc, int R, int B>
inline __attribute__((always_inline)) void add_sums(const Acc (&acc)[R][B], float* y, const float* bias, int64_t N,
                                                    bool first) {
#pragma GCC unroll 16
  for (int b = 0; b < B; ++b) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const float start = first ? (bias != nullptr ? bias[r] : 0.f) : y[b * N + r];
      y[b * N + r] = start + sum_lanes(acc[r][b]);
    }
  }
}

// Partial dot products of R weight rows (w, row stride K) with B rows of x (row stride K) over columns
// [k0, k1), added to y's R x B entries (y row stride N) -- or, for the first chunk, to the bias (or 0).
template <typename W, int R, int B>
void block_dots(const W* w, const float* x, float* y, const float* bias, int64_t N, int64_t K, int64_t k0,
                int64_t k1, bool first) {
  Vec acc[R][B];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b) acc[r][b] = Vec(0.f);
  constexpr int64_t pf = kPrefetchBytes / sizeof(W);
  // The products of columns [k, k + count), count <= one vector (a partial one zero-filled: its products add
  // nothing). Inlined with a constant count in the main loop, where the loads are whole vectors.
  const auto add_products = [&](int64_t k, int64_t count) CNX_LAMBDA_INLINE {
    Vec wv[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) wv[r] = load_weights(w + r * K + k, count);
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b) {
      const Vec xv = Vec::loadu(x + b * K + k, count);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) acc[r][b] = at::vec::fmadd(wv[r], xv, acc[r][b]);
    }
  };
  // A whole vector, prefetching the line at `ahead` of each weight row.
  const auto step = [&](int64_t k, const W* ahead) CNX_LAMBDA_INLINE {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) __builtin_prefetch(ahead + r * K, 0, 3);
    add_products(k, Vec::size());
  };
  const ColumnWalk walk(k0, k1, Vec::size(), pf);
  int64_t k = k0;
  for (; k < walk.same_rows_end; k += Vec::size()) step(k, w + k + pf);
  for (; k < walk.whole_end; k += Vec::size()) step(k, w + R * K + k0 + (k + pf - k1));
  if (k < k1) add_products(k, k1 - k);
  add_sums(acc, y, bias, N, first);
}

// The register blocks of the fp32 FMA kernel, for a weight of type W (x fp32, 16 or 8 columns a step).
template <typename W>
struct FmaBlocks {
  using X = float;
  static constexpr int64_t kStep = Vec::size();
  template <int R, int B>
  static constexpr auto fn = &block_dots<W, R, B>;
};

#if defined(CPU_CAPABILITY_AVX512)
// ------------------------------------------------------------------------- bf16 on AVX512-BF16 (vdpbf16ps)
// With a bf16 weight and bf16 x, vdpbf16ps adds to each of 16 fp32 lanes the products of a pair of bf16
// columns: acc[i] += w[2i] * x[2i] + w[2i+1] * x[2i+1]. A step takes 32 columns in one instruction where the
// FMA kernel takes 16 in one FMA after widening both operands, so the FLOPs per cycle double and the widening
// goes. Where the FMA kernel is compute-bound it gains most: Zen 5, 2 threads, cold bf16 weights, AlexNet's
// FC6 / FC7 / FC8 / VGG's FC6, 1.01-1.18x at 1-4 rows (DRAM-bound either way), 1.08-1.35x at 8 (FC6: 38 -> 45
// GB/s), 1.28-1.48x at 12, 1.2-1.8x at 16-32. Same blocks, prefetch and chunks as block_dots; the products of
// bf16 are exact in fp32 and the sums are fp32, as there -- only in another order. The instruction treats bf16
// subnormals (|v| < 1.2e-38) as zero and flushes subnormal sums, as oneDNN's bf16 products on these CPUs do
// (they use it too). Compiled for AVX512-BF16 function by function (the target attribute, not a flag for the
// file: no other code here may use it), and called only where has_avx512_bf16() says so.
#define CNX_BF16_DOT __attribute__((target("avx512bf16")))

constexpr int64_t kPairStep = 32;  // bf16 columns in a 512-bit vector

// `count` <= kPairStep bf16 from p as 16 pairs, the missing ones zero (they add nothing).
CNX_BF16_DOT inline __attribute__((always_inline)) __m512bh load_pairs(const c10::BFloat16* p, int64_t count) {
  const auto first_count = static_cast<__mmask32>((uint64_t(1) << count) - 1);
  const __m512i v = count == kPairStep ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(first_count, p);
  return reinterpret_cast<__m512bh>(v);
}

template <int R, int B>
CNX_BF16_DOT void bf16_dot_block(const c10::BFloat16* w, const c10::BFloat16* x, float* y, const float* bias,
                                 int64_t N, int64_t K, int64_t k0, int64_t k1, bool first) {
  constexpr int64_t pf = kPrefetchBytes / sizeof(c10::BFloat16);
  __m512 acc[R][B];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b) acc[r][b] = _mm512_setzero_ps();
  const auto add_products = [&](int64_t k, int64_t count) CNX_BF16_DOT CNX_LAMBDA_INLINE {
    __m512bh wv[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) wv[r] = load_pairs(w + r * K + k, count);
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b) {
      const __m512bh xv = load_pairs(x + b * K + k, count);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], wv[r], xv);
    }
  };
  const auto step = [&](int64_t k, const c10::BFloat16* ahead) CNX_BF16_DOT CNX_LAMBDA_INLINE {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) __builtin_prefetch(ahead + r * K, 0, 3);
    add_products(k, kPairStep);
  };
  const ColumnWalk walk(k0, k1, kPairStep, pf);
  int64_t k = k0;
  for (; k < walk.same_rows_end; k += kPairStep) step(k, w + k + pf);
  for (; k < walk.whole_end; k += kPairStep) step(k, w + R * K + k0 + (k + pf - k1));
  if (k < k1) add_products(k, k1 - k);
  add_sums(acc, y, bias, N, first);
}

struct Bf16DotBlocks {
  using X = c10::BFloat16;
  static constexpr int64_t kStep = kPairStep;
  template <int R, int B>
  static constexpr auto fn = &bf16_dot_block<R, B>;
};
#endif  // CPU_CAPABILITY_AVX512

// Blocks::fn<r, b> for every r <= R and b <= B, indexed [r - 1][b - 1]: the last register block of a thread's
// rows and the last pass over x's rows may be partial.
template <typename Blocks, int R, int B>
struct BlockTable {
  using Fn = decltype(Blocks::template fn<1, 1>);
  std::array<std::array<Fn, B>, R> fns;

  template <int r, std::size_t... bs>
  static constexpr std::array<Fn, B> row(std::index_sequence<bs...>) {
    return {Blocks::template fn<r, static_cast<int>(bs) + 1>...};
  }
  template <std::size_t... rs>
  static constexpr BlockTable make(std::index_sequence<rs...>) {
    return {{row<static_cast<int>(rs) + 1>(std::make_index_sequence<B>())...}};
  }
  static constexpr BlockTable make() { return make(std::make_index_sequence<R>()); }
};

template <typename Blocks>
constexpr auto kWide = BlockTable<Blocks, kRows, kBatch>::make();
template <typename Blocks>
constexpr auto kNarrow = BlockTable<Blocks, kNarrowRows, kNarrowBatch>::make();

template <typename Blocks, int R, int B, typename W>
void sweep(const BlockTable<Blocks, R, B>& table, const typename Blocks::X* x, const W* w, const float* bias,
           float* y, const CpuProblem& pb, int64_t n_begin, int64_t n_end) {
  // As few chunks as keep x's columns of one within kDepthBytes, of equal depth: a whole number of steps
  // each but the last.
  constexpr int64_t step = Blocks::kStep;
  const int64_t most = std::max<int64_t>(step, kDepthBytes / (pb.M * int64_t(sizeof(typename Blocks::X))));
  const int64_t chunks = (pb.K + most - 1) / most;
  const int64_t depth = ((pb.K + chunks - 1) / chunks + step - 1) / step * step;
  for (int64_t k0 = 0; k0 < pb.K; k0 += depth) {
    const int64_t k1 = std::min(pb.K, k0 + depth);
    for (int64_t n = n_begin; n < n_end; n += R) {
      const int64_t rows = std::min<int64_t>(R, n_end - n);
      for (int64_t m = 0; m < pb.M; m += B) {
        const int64_t batch = std::min<int64_t>(B, pb.M - m);
        table.fns[rows - 1][batch - 1](w + n * pb.K, x + m * pb.K, y + m * pb.N + n,
                                       bias == nullptr ? nullptr : bias + n, pb.N, pb.K, k0, k1, k0 == 0);
      }
    }
  }
}

// The forward of weight rows [item_begin, item_end) * kRowsPerItem, in the register blocks that suit M.
template <typename Blocks, typename W>
void forward(const typename Blocks::X* x, const W* w, const float* bias, float* y, const CpuProblem& pb,
             int64_t item_begin, int64_t item_end) {
  const int64_t n_begin = item_begin * linear::kRowsPerItem;
  const int64_t n_end = std::min(pb.N, item_end * linear::kRowsPerItem);
  if (pb.M <= kNarrowBatch || pb.M >= kNarrowPassesFrom) {
    sweep(kNarrow<Blocks>, x, w, bias, y, pb, n_begin, n_end);
  } else {
    sweep(kWide<Blocks>, x, w, bias, y, pb, n_begin, n_end);
  }
}

// ------------------------------------------------------------------------------------------------ backward
// Both products stream one large operand once, front to back, and keep the few rows of the other (x or
// grad_output's columns, at most kChunk at a time) in registers or L1/L2:
//  - grad_weight[n, :] = sum_m grad[m, n] * x[m, :]: written once (N*K*4 bytes, the size of the weight), x's
//    M rows read from L2 for every block of weight rows. A rank-M update: store-bound.
//  - grad_input[m, :] = sum_n grad[m, n] * w[n, :]: the weight read once (N*K*sizeof(w) bytes: in fp32, bf16
//    or fp16, as the forward reads it) into a per-thread fp32 (M, K) partial sum that stays in L2, summed over
//    the threads (and rounded to the weight's dtype) by the caller. Read-bound.
// grad's entries are the scalar coefficients, broadcast into the FMAs. A batch over kChunk rows is taken
// kChunk rows at a time (grad_weight adds the later chunks to what the first stored).
constexpr int kChunk = 8;
// grad_input's register block takes more weight rows than grad_weight's: each block of rows passes over the
// whole (M, K) partial in L2 (a load and a store of M*K*4 bytes), so the rows per pass set the L2 traffic per
// weight byte. 12 rows (AVX-512: the 12 weight vectors and an accumulator stay in its 32 registers; GCC keeps
// the coefficients' broadcasts on the stack, FMA memory operands from L1) against 4, cold weights, 2 threads,
// AMD EPYC Zen 4, AlexNet's FC6 / FC7 / FC8 and VGG's FC6, against at::mm: bf16 at 8 rows 0.61-0.95x ->
// 0.79-1.31x (VGG 1.6x -> 1.7-1.8x), fp32 at 8 1.58-2.03x -> 2.29-2.57x and at 16 1.27-1.45x -> 1.56-1.83x.
// AVX2 (16 registers): 6 against 2, fp32 at 16 rows 0.50-2.3x -> 1.16-2.39x (one FC7 at 0.91x in four runs).
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kGradRows = 4, kGradInputRows = 12;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kGradRows = 2, kGradInputRows = 6;
#else
constexpr int kGradRows = 1, kGradInputRows = 1;
#endif
static_assert(linear::kRowsPerItem % kGradRows == 0 && linear::kRowsPerItem % kGradInputRows == 0,
              "an item must split into whole register blocks");

// R rows of grad_weight (out, row stride K) from B rows of x (row stride K); coefficient (b, r) is
// grad[b * N + r]. `first`: store, else add to what is there.
template <int R, int B>
void grad_weight_block(const float* grad, const float* x, float* out, int64_t N, int64_t K, bool first) {
  float c[B][R];
#pragma GCC unroll 16
  for (int b = 0; b < B; ++b)
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) c[b][r] = grad[b * N + r];
  const auto columns = [&](int64_t k, int64_t count) CNX_LAMBDA_INLINE {
    Vec acc[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r] = first ? Vec(0.f) : Vec::loadu(out + r * K + k, count);
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b) {
      const Vec xv = Vec::loadu(x + b * K + k, count);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) acc[r] = at::vec::fmadd(Vec(c[b][r]), xv, acc[r]);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r].store(out + r * K + k, count);
  };
  const int64_t whole_end = K / Vec::size() * Vec::size();
  int64_t k = 0;
  for (; k < whole_end; k += Vec::size()) columns(k, Vec::size());
  if (k < K) columns(k, K - k);
}

// B rows of partial (row stride K) += the products of R weight rows (row stride K) with their coefficients
// grad[b * N + r].
template <typename W, int R, int B>
void grad_input_block(const float* grad, const W* w, float* partial, int64_t N, int64_t K) {
  float c[B][R];
#pragma GCC unroll 16
  for (int b = 0; b < B; ++b)
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) c[b][r] = grad[b * N + r];
  constexpr int64_t pf = kPrefetchBytes / sizeof(W);
  const auto columns = [&](int64_t k, int64_t count) CNX_LAMBDA_INLINE {
    Vec wv[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) wv[r] = load_weights(w + r * K + k, count);
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b) {
      Vec acc = Vec::loadu(partial + b * K + k, count);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) acc = at::vec::fmadd(Vec(c[b][r]), wv[r], acc);
      acc.store(partial + b * K + k, count);
    }
  };
  const int64_t whole_end = K / Vec::size() * Vec::size();
  int64_t k = 0;
  for (; k < whole_end; k += Vec::size()) {
    // As the forward's weight stream (kPrefetchBytes); past a row's end it is the next row's start.
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) __builtin_prefetch(w + r * K + k + pf, 0, 3);
    columns(k, Vec::size());
  }
  if (k < K) columns(k, K - k);
}

// F<R, b>(args...) for a run-time batch chunk b in [1, kChunk].
template <template <int, int> class F, int R, typename... Args>
void with_batch(int64_t b, Args... args) {
  switch (b) {
    case 1: return F<R, 1>::run(args...);
    case 2: return F<R, 2>::run(args...);
    case 3: return F<R, 3>::run(args...);
    case 4: return F<R, 4>::run(args...);
    case 5: return F<R, 5>::run(args...);
    case 6: return F<R, 6>::run(args...);
    case 7: return F<R, 7>::run(args...);
    default: return F<R, 8>::run(args...);
  }
}
static_assert(kChunk == 8, "with_batch's cases");

template <int R, int B>
struct GradWeight {
  static void run(const float* g, const float* x, float* out, int64_t N, int64_t K, bool first) {
    grad_weight_block<R, B>(g, x, out, N, K, first);
  }
};
template <int R, int B>
struct GradInput {
  template <typename W>
  static void run(const float* g, const W* w, float* partial, int64_t N, int64_t K) {
    grad_input_block<W, R, B>(g, w, partial, N, K);
  }
};

// block(rows, batch, m, n) for the weight rows of items [item_begin, item_end) (clipped to N), register block
// by register block (rows: an integral_constant, Rows, or 1 for each row of a partial last block) and
// each chunk of at most kChunk batch rows from m.
template <int Rows, typename Block>
void for_each_block(const CpuProblem& pb, int64_t item_begin, int64_t item_end, Block&& block) {
  const int64_t n_end = std::min(pb.N, item_end * linear::kRowsPerItem);
  for (int64_t n = item_begin * linear::kRowsPerItem; n < n_end; n += Rows) {
    for (int64_t m = 0; m < pb.M; m += kChunk) {
      const int64_t batch = std::min<int64_t>(kChunk, pb.M - m);
      if (n + Rows <= n_end) {
        block(std::integral_constant<int, Rows>(), batch, m, n);
      } else {
        for (int64_t r = n; r < n_end; ++r) block(std::integral_constant<int, 1>(), batch, m, r);
      }
    }
  }
}

template <typename W>
void grad_input(const float* grad, const W* w, float* partial, const CpuProblem& pb, int64_t item_begin,
                int64_t item_end) {
  for_each_block<kGradInputRows>(pb, item_begin, item_end, [&](auto rows, int64_t batch, int64_t m, int64_t n) {
    with_batch<GradInput, decltype(rows)::value>(batch, grad + m * pb.N + n, w + n * pb.K, partial + m * pb.K, pb.N,
                                                 pb.K);
  });
}

}  // namespace

void linear_forward_kernel(const float* x, const float* w, const float* bias, float* y, const CpuProblem& pb,
                           int64_t item_begin, int64_t item_end) {
  forward<FmaBlocks<float>>(x, w, bias, y, pb, item_begin, item_end);
}

void linear_forward_bf16_kernel(const float* x, const c10::BFloat16* w, const float* bias, float* y,
                                const CpuProblem& pb, int64_t item_begin, int64_t item_end) {
  forward<FmaBlocks<c10::BFloat16>>(x, w, bias, y, pb, item_begin, item_end);
}

void linear_forward_fp16_kernel(const float* x, const c10::Half* w, const float* bias, float* y,
                                const CpuProblem& pb, int64_t item_begin, int64_t item_end) {
  forward<FmaBlocks<c10::Half>>(x, w, bias, y, pb, item_begin, item_end);
}

void linear_forward_fp32_as_bf16_kernel(const float* x, const float* w, const float* bias, float* y,
                                        const CpuProblem& pb, int64_t item_begin, int64_t item_end) {
  forward<FmaBlocks<RoundedTo<c10::BFloat16>>>(x, reinterpret_cast<const RoundedTo<c10::BFloat16>*>(w), bias, y, pb,
                                                item_begin, item_end);
}

void linear_forward_fp32_as_fp16_kernel(const float* x, const float* w, const float* bias, float* y,
                                        const CpuProblem& pb, int64_t item_begin, int64_t item_end) {
  forward<FmaBlocks<RoundedTo<c10::Half>>>(x, reinterpret_cast<const RoundedTo<c10::Half>*>(w), bias, y, pb,
                                           item_begin, item_end);
}

void linear_forward_bf16_dot_kernel(const c10::BFloat16* x, const c10::BFloat16* w, const float* bias, float* y,
                                    const CpuProblem& pb, int64_t item_begin, int64_t item_end) {
#if defined(CPU_CAPABILITY_AVX512)
  forward<Bf16DotBlocks>(x, w, bias, y, pb, item_begin, item_end);
#else
  // The host calls this only where has_avx512_bf16(), which the AVX-512 build alone satisfies.
  std::fputs("classicnets_ext: linear_forward_bf16_dot_kernel called outside the AVX-512 build\n", stderr);
  std::abort();
#endif
}

void linear_grad_weight_kernel(const float* grad, const float* x, float* grad_weight, const CpuProblem& pb,
                               int64_t item_begin, int64_t item_end) {
  for_each_block<kGradRows>(pb, item_begin, item_end, [&](auto rows, int64_t batch, int64_t m, int64_t n) {
    with_batch<GradWeight, decltype(rows)::value>(batch, grad + m * pb.N + n, x + m * pb.K, grad_weight + n * pb.K,
                                                  pb.N, pb.K, m == 0);
  });
}

void linear_grad_input_kernel(const float* grad, const float* w, float* partial, const CpuProblem& pb,
                              int64_t item_begin, int64_t item_end) {
  grad_input(grad, w, partial, pb, item_begin, item_end);
}

void linear_grad_input_bf16_kernel(const float* grad, const c10::BFloat16* w, float* partial, const CpuProblem& pb,
                                   int64_t item_begin, int64_t item_end) {
  grad_input(grad, w, partial, pb, item_begin, item_end);
}

void linear_grad_input_fp16_kernel(const float* grad, const c10::Half* w, float* partial, const CpuProblem& pb,
                                   int64_t item_begin, int64_t item_end) {
  grad_input(grad, w, partial, pb, item_begin, item_end);
}

}  // namespace cnx::cpu::CPU_CAPABILITY
