#pragma once
// The per-instruction-set CPU kernels of LRN (lrn_cpu_kernel.cpp, compiled once per ISA) and how their
// work is split. They take raw pointers so that no at::Tensor code is compiled with AVX flags.
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>

#include "common/cpu_dispatch.h"
#include "lrn/lrn_math.h"

namespace cnx::lrn {

// Channels-first kernels slide along C over a block of columns at once; channels-last kernels take one spatial
// position, a contiguous row of C channels, per item. The backward, and the forward with a running sum, keep
// per-column state for this many columns (their window rows stay in L1).
constexpr int64_t kColumnBlock = 256;

struct CpuProblem {
  int64_t N, C, S;
  bool channels_last;
  int64_t size;
  double alpha, beta, k;
  int64_t block = kColumnBlock;  // channels-first: the columns of a work item (forward_column_block)
};

// The forward's column block for channels-first windows summed directly (no per-column state): whole planes,
// split only until `threads` threads get shares within 25% of even (at::parallel_for gives each a contiguous
// run of items), never below kColumnBlock, and a multiple of 64 columns. A channel's row of the block is then
// one contiguous run of a plane, read as a single stream that the prefetchers follow; 256-column blocks read
// 1 KB pieces 4S bytes apart. Interleaved A/B, 2 threads, cold cache, 8x96x55x55 and 8x64x56x56 fp32 (with the
// prefetch of forward_columns): 1.26-1.29x faster on AVX-512 and AVX2.
inline int64_t forward_column_block(const CpuProblem& pb, int64_t threads) {
  if (pb.channels_last || pb.size > kDirectWindow || pb.S <= kColumnBlock) return kColumnBlock;
  const int64_t most = (pb.S + kColumnBlock - 1) / kColumnBlock;  // blocks per plane at kColumnBlock columns
  int64_t per_plane = 1;
  for (; per_plane < most; ++per_plane) {
    const int64_t items = pb.N * per_plane, busiest = (items + threads - 1) / threads;
    if (4 * busiest * threads <= 5 * items) break;
  }
  const int64_t width = (pb.S + per_plane - 1) / per_plane;
  return std::max(kColumnBlock, (width + 63) / 64 * 64);
}

inline int64_t cpu_work_items(const CpuProblem& pb) {
  if (pb.channels_last) return pb.N * pb.S;
  return pb.N * ((pb.S + pb.block - 1) / pb.block);
}

}  // namespace cnx::lrn

CNX_CPU_DECLARE(void, lrn_forward_kernel, c10::ScalarType dtype, const void* x, void* y,
                const cnx::lrn::CpuProblem& pb, int64_t begin, int64_t end)
CNX_CPU_DECLARE(void, lrn_backward_kernel, c10::ScalarType dtype, const void* grad, const void* x, void* dx,
                const cnx::lrn::CpuProblem& pb, int64_t begin, int64_t end)
