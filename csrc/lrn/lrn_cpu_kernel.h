#pragma once
// The per-instruction-set CPU kernels of LRN (lrn_cpu_kernel.cpp, compiled once per ISA) and how their
// work is split. They take raw pointers so that no at::Tensor code is compiled with AVX flags.
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "common/cpu_dispatch.h"
#include "lrn/lrn_math.h"

namespace cnx::lrn {

// Channels-first kernels slide along C over a block of columns at once; channels-last kernels take one spatial
// position, a contiguous row of C channels, per item. The narrowest column block (and the fused pool -> LRN
// kernel's tile width).
constexpr int64_t kColumnBlock = 256;

// A channels-first window's rows (min(size, C) of them per column, re-read at every channel) are kept under
// this many bytes per task, so that they stay in L2: whole 55x55 planes and a window of 5 take 60 KB, the
// widest planes of the networks (112x112) 250 KB; a window of 64 channels gets 2048-column blocks.
constexpr int64_t kWindowRowsBytes = 512 * 1024;

// The backward's ring (the last min(size, C) channels' two terms per column) is kept under this many bytes
// per task, so that it stays in L2 beside the window's rows.
constexpr int64_t kBackwardRingBytes = 160 * 1024;

struct CpuProblem {
  int64_t N, C, S;
  bool channels_last;
  int64_t size;
  double alpha, beta, k;
  int64_t block = kColumnBlock;  // channels-first: the columns of a work item (direct_column_block)
};

// The column block of a channels-first pass: as wide as `widest` and kWindowRowsBytes allow -- whole planes when
// they do -- then split only until `threads` threads get shares within 25% of even (at::parallel_for gives each a
// contiguous run of items), never below kColumnBlock, and a multiple of 64 columns. A channel's row of the block is
// then one long contiguous run, read as a single stream that the prefetchers follow; 256-column blocks read 1 KB
// pieces 4S bytes apart. Interleaved A/B, 2 threads, cold cache, 8x96x55x55 and 8x64x56x56 fp32, whole planes
// against 256 columns: the forward (with the prefetch of forward_columns) 1.26-1.29x faster on AVX-512 and AVX2,
// the backward 1.23-1.30x.
inline int64_t direct_column_block(const CpuProblem& pb, int64_t threads,
                                   int64_t widest = std::numeric_limits<int64_t>::max()) {
  if (pb.channels_last || pb.S <= kColumnBlock) return kColumnBlock;
  widest = std::min(widest, kWindowRowsBytes / (std::min(pb.size, pb.C) * int64_t(sizeof(float))) / 64 * 64);
  const int64_t most = (pb.S + kColumnBlock - 1) / kColumnBlock;  // blocks per plane at kColumnBlock columns
  int64_t per_plane = std::min(most, (pb.S - 1) / std::max(widest, kColumnBlock) + 1);
  for (; per_plane < most; ++per_plane) {
    const int64_t items = pb.N * per_plane, busiest = (items + threads - 1) / threads;
    if (4 * busiest * threads <= 5 * items) break;
  }
  const int64_t width = (pb.S + per_plane - 1) / per_plane;
  return std::max(kColumnBlock, (width + 63) / 64 * 64);
}

// The backward's block: direct_column_block, no wider than its ring allows (4096 columns for fp32 and a
// window of 5); a ring past L2 is re-read from L3 for every channel. In-process A/B, 2 threads, cold cache,
// 2x64x112x112 fp32: blocks of 2048-8192 columns 1.07-1.08x faster than 256, whole 12544-column planes (a
// 500 KB ring) 1.04x.
inline int64_t backward_column_block(const CpuProblem& pb, int64_t threads, int64_t acc_bytes) {
  const int64_t ring_rows = 2 * std::min(pb.size, pb.C);
  return direct_column_block(pb, threads, kBackwardRingBytes / (ring_rows * acc_bytes) / 64 * 64);
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
