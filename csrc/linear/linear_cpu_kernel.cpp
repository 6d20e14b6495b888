// The CPU kernel of classicnets_ext::linear: y = x @ w.T + bias for a few rows of x, the classifier of a
// classic CNN at inference batch sizes. setup.py compiles this file once per instruction set.
//
// Formula: y[m, n] = bias[n] + sum_k x[m, k] * w[n, k].
// Memory traffic: the weight, N*K*4 bytes, read once from DRAM (151 MB for AlexNet's 9216->4096); x, M*K*4
// bytes, read from L2 once per register block of weight rows (kept there by the depth chunking below); y
// written once per depth chunk (M*N*4 bytes, from L1/L2). With M of a few rows this is a stream over the
// weight at a few FLOPs per byte, and its speed is DRAM bandwidth: the kernel's job is to keep the loads
// of w at one per vector of weights, with x and the accumulators out of the way.
//
// Register blocking: kRows weight rows times kBatch rows of x accumulate in kRows*kBatch vector registers;
// each step loads kRows vectors of w and, for each x row, one vector of x that feeds kRows FMAs. AVX-512
// (32 registers): 3 x 8 = 24 accumulators, 3 + 8 loads per 24 FMAs; AVX2 (16): 2 x 4 = 8, 2 + 4 loads per 8.
// More x rows than kBatch reuse the same weight rows from L1/L2 in further passes, so w still comes from
// DRAM once.
//
// Depth chunking: K is cut into chunks of about kDepth floats. For a chunk, all of a thread's weight rows
// are swept against the same x columns (M*kDepth*4 bytes: 128 KB at M = 8), which stay in L2 instead of
// being re-read from L3 or DRAM for every register block (VGG's 25088-wide x at batch 8 is 800 KB);
// y accumulates the chunks' partial sums.
#include "linear/linear_cpu_kernel.h"

#include <ATen/cpu/vec/vec.h>

#include "common/macros.h"

#include <algorithm>
#include <array>
#include <utility>

namespace cnx::cpu::CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;
using linear::CpuProblem;

// A register block: R weight rows times B rows of x, R*B accumulators. Wide blocks serve three or more rows of
// x; one or two rows get more weight rows, so that there are still enough independent FMA chains (their latency
// times their throughput: 8 on these CPUs) to cover the FMA latency.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kRows = 3, kBatch = 8, kNarrowRows = 6, kNarrowBatch = 4;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kRows = 3, kBatch = 4, kNarrowRows = 4, kNarrowBatch = 2;
#else
constexpr int kRows = 1, kBatch = 4, kNarrowRows = 2, kNarrowBatch = 2;
#endif
static_assert(linear::kRowsPerItem % kRows == 0 && linear::kRowsPerItem % kNarrowRows == 0,
              "an item must split into whole register blocks");

// The x columns of a depth chunk take at most this many bytes (in L2 beside the weight rows in flight).
constexpr int64_t kDepthBytes = 128 * 1024;

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

// Partial dot products of R weight rows (w, row stride K) with B rows of x (row stride K) over columns
// [k0, k1), added to y's R x B entries (y row stride N) -- or, for the first chunk, to the bias (or 0).
template <int R, int B>
void block_dots(const float* w, const float* x, float* y, const float* bias, int64_t N, int64_t K, int64_t k0,
                int64_t k1, bool first) {
  Vec acc[R][B];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) acc[r][b] = Vec(0.f);
  const auto step = [&](int64_t k, int64_t count) CNX_LAMBDA_INLINE {
    Vec wv[R];
    for (int r = 0; r < R; ++r) wv[r] = count == Vec::size() ? Vec::loadu(w + r * K + k) : Vec::loadu(w + r * K + k, count);
    for (int b = 0; b < B; ++b) {
      const Vec xv = count == Vec::size() ? Vec::loadu(x + b * K + k) : Vec::loadu(x + b * K + k, count);
      for (int r = 0; r < R; ++r) acc[r][b] = at::vec::fmadd(wv[r], xv, acc[r][b]);
    }
  };
  int64_t k = k0;
  for (; k + Vec::size() <= k1; k += Vec::size()) step(k, Vec::size());
  if (k < k1) step(k, k1 - k);  // zero-filled tails: their products add nothing
  for (int b = 0; b < B; ++b) {
    for (int r = 0; r < R; ++r) {
      const float start = first ? (bias != nullptr ? bias[r] : 0.f) : y[b * N + r];
      y[b * N + r] = start + sum_lanes(acc[r][b]);
    }
  }
}

using BlockFn = void (*)(const float*, const float*, float*, const float*, int64_t, int64_t, int64_t, int64_t, bool);

// block_dots<r, b> for every r <= R and b <= B, indexed [r - 1][b - 1]: the last register block of a thread's
// rows and the last pass over x's rows may be partial.
template <int R, int B>
struct BlockTable {
  std::array<std::array<BlockFn, B>, R> fns;

  template <int r, std::size_t... bs>
  static constexpr std::array<BlockFn, B> row(std::index_sequence<bs...>) {
    return {&block_dots<r, static_cast<int>(bs) + 1>...};
  }
  template <std::size_t... rs>
  static constexpr BlockTable make(std::index_sequence<rs...>) {
    return {{row<static_cast<int>(rs) + 1>(std::make_index_sequence<B>())...}};
  }
  static constexpr BlockTable make() { return make(std::make_index_sequence<R>()); }
};

constexpr auto kWide = BlockTable<kRows, kBatch>::make();
constexpr auto kNarrow = BlockTable<kNarrowRows, kNarrowBatch>::make();

template <int R, int B>
void sweep(const BlockTable<R, B>& table, const float* x, const float* w, const float* bias, float* y,
           const CpuProblem& pb, int64_t n_begin, int64_t n_end) {
  // Chunks of equal depth, a whole number of vectors each but the last.
  const int64_t most = std::max<int64_t>(Vec::size(), kDepthBytes / (pb.M * int64_t(sizeof(float))));
  const int64_t chunks = std::max<int64_t>(1, (pb.K + most / 2) / most);
  const int64_t depth = ((pb.K + chunks - 1) / chunks + Vec::size() - 1) / Vec::size() * Vec::size();
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

}  // namespace

void linear_forward_kernel(const float* x, const float* w, const float* bias, float* y, const CpuProblem& pb,
                           int64_t item_begin, int64_t item_end) {
  const int64_t n_begin = item_begin * linear::kRowsPerItem;
  const int64_t n_end = std::min(pb.N, item_end * linear::kRowsPerItem);
  if (pb.M <= kNarrowBatch) sweep(kNarrow, x, w, bias, y, pb, n_begin, n_end);
  else sweep(kWide, x, w, bias, y, pb, n_begin, n_end);
}

}  // namespace cnx::cpu::CPU_CAPABILITY
