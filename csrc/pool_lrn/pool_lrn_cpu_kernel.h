#pragma once
// The per-instruction-set CPU kernels of the fused ReLU -> max-pool -> LRN ops (pool_lrn_cpu_kernel.cpp,
// compiled once per ISA) and how their work is split. They take raw pointers so that no at::Tensor code is
// compiled with AVX flags.
//
// Both kernels work on tiles of whole pooled rows of every channel of one sample: pooling and LRN (or the
// LRN backward and the gather) run back to back on a tile small enough to stay in L2 between them, so in
// inference the pooled values never reach memory.
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>

#include "common/cpu_dispatch.h"
#include "pool_lrn/pool_lrn_math.h"

namespace cnx::pool_lrn {

// Elements of pooled values (all channels) per tile: 64 KiB of fp32, a fraction of L2 with the input rows
// behind it. Smaller tiles re-read more input rows (forward) and recompute more boundary rows (backward);
// 128 KiB measured no better on AlexNet's and GoogLeNet's shapes (2-core EPYC, 512 KiB L2).
constexpr int64_t kTileElements = 16384;

// Pooled rows per forward item (channels-last: one row, already C * OW elements).
inline int64_t forward_rows(const Problem& pb) {
  const auto& p = pb.pool;
  if (p.channels_last) return 1;
  return std::clamp<int64_t>(kTileElements / (p.C * p.w.out), 1, p.h.out);
}

// Input rows per backward item: those whose covering pooled rows make about one tile.
inline int64_t backward_rows(const Problem& pb) {
  const auto& p = pb.pool;
  return std::clamp<int64_t>(kTileElements / (p.C * p.w.out) * p.h.stride, 1, p.h.in);
}

// Forward items: (n, block of forward_rows pooled rows); backward items: (n, block of backward_rows input
// rows).
inline int64_t forward_items(const Problem& pb) {
  const int64_t rows = forward_rows(pb);
  return pb.pool.N * ((pb.pool.h.out + rows - 1) / rows);
}

inline int64_t backward_items(const Problem& pb) {
  const int64_t rows = backward_rows(pb);
  return pb.pool.N * ((pb.pool.h.in + rows - 1) / rows);
}

}  // namespace cnx::pool_lrn

// pooled and argmax: null for the inference forward (y only); otherwise the saved tensors' data, argmax
// uint8 or int32 as maxpool::byte_argmax says.
CNX_CPU_DECLARE(void, max_pool2d_lrn_forward_kernel, c10::ScalarType dtype, const void* x, void* y, void* pooled,
                void* argmax, const cnx::pool_lrn::Problem& pb, int64_t begin, int64_t end)
CNX_CPU_DECLARE(void, max_pool2d_lrn_backward_kernel, c10::ScalarType dtype, const void* grad, const void* pooled,
                const void* argmax, void* grad_input, const cnx::pool_lrn::Problem& pb, int64_t begin, int64_t end)
