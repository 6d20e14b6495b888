#pragma once
// The per-instruction-set CPU kernels of the fused ReLU -> max-pool -> LRN ops (pool_lrn_cpu_kernel.cpp,
// compiled once per ISA) and how their work is split. They take raw pointers so that no at::Tensor code is
// compiled with AVX flags.
//
// Both kernels work on tiles of whole pooled rows of every channel of one sample: pooling and LRN (or the
// LRN backward and the scatter or gather) run back to back on a tile small enough to stay in L2 between them, so in
// inference the pooled values never reach memory.
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>

#include "common/cpu_dispatch.h"
#include "pool_lrn/pool_lrn_math.h"

namespace cnx::pool_lrn {

// Elements of pooled values (all channels) per tile: 256 KiB of fp32, half an EPYC's L2, with the input rows
// behind it streaming through. Smaller tiles re-read more input rows (forward), recompute more boundary rows
// (backward), and run the LRN over fewer columns: against 64 KiB tiles, in `make bench` on an AVX-512 Xeon
// (2 threads, two runs), the fused op went from 0.87-0.93x to 1.02-1.10x the two separate ops in the
// GoogLeNet stem's forward+backward and from 0.96-1.02x to 1.14-1.18x in AlexNet's 8x256x27x27 one, and
// no case got slower.
constexpr int64_t kTileElements = 65536;

// `total` rows in blocks of at most `most`, evened out: 56 rows in blocks of at most 18 make 4 blocks of 14,
// not 18 + 18 + 18 + 2 (a last block of a few rows pays a whole tile's fixed costs: boundary rows, a pass
// of the LRN over too few columns to fill its vectors).
inline int64_t even_blocks(int64_t total, int64_t most) {
  const int64_t blocks = (total + most - 1) / most;
  return (total + blocks - 1) / blocks;
}

// Pooled rows per forward item (channels-last: one row, already C * OW elements).
inline int64_t forward_rows(const Problem& pb) {
  const auto& p = pb.pool;
  if (p.channels_last) return 1;
  return even_blocks(p.h.out, std::clamp<int64_t>(kTileElements / (p.C * p.w.out), 1, p.h.out));
}

// Input rows per backward item: those whose covering pooled rows make about one tile.
inline int64_t backward_rows(const Problem& pb) {
  const auto& p = pb.pool;
  return even_blocks(p.h.in, std::clamp<int64_t>(kTileElements / (p.C * p.w.out) * p.h.stride, 1, p.h.in));
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
