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

// Elements of pooled values (all channels) per tile: 1 MiB of fp32, a Zen 5 core's whole L2 (half a Sapphire Rapids'),
// with the input rows behind it streaming through. A tile's rows of one channel are one contiguous run in x, pooled,
// the argmax and dx, and each channel plane is entered once per tile: larger tiles measured faster (most likely fewer
// restarts of the hardware prefetcher, which is also why the forward prefetches the next channel's rows). Tiles of 16K
// elements -> 64K (Intel Xeon, AVX-512, 2 threads, make bench): vs the two separate ext ops, GoogLeNet's stem
// forward+backward 0.87-0.93x -> 1.02-1.10x, AlexNet's 8x256x27x27 0.96-1.02x -> 1.14-1.18x. 64K -> 256K (AMD EPYC Zen
// 5, AVX-512, 2 threads, cold cache, the raw ops against the sum of the separate ones, three processes each): AlexNet's
// 8x96x55x55 (70K pooled values a sample, which 64K split into two tiles of 14 rows) backward 0.91-1.04x -> 1.17-1.30x,
// training forward 1.10-1.31x -> 1.29-1.57x; the stem's 8x64x112x112 backward 1.02-1.05x -> 1.27-1.28x. AlexNet's
// channels-last backward (its 55 input rows one item, was two) went 1.13-1.19x -> 1.08-1.15x, inside the runs' spread.
constexpr int64_t kTileElements = 262144;

// `total` rows in blocks of at most `most`, evened out: 56 rows in blocks of at most 18 make 4 blocks of 14,
// not 18 + 18 + 18 + 2 (a last block of a few rows pays a whole tile's fixed costs: boundary rows, a pass
// of the LRN over too few columns to fill its vectors).
inline int64_t even_blocks(int64_t total, int64_t most) {
  const int64_t blocks = (total + most - 1) / most;
  return (total + blocks - 1) / blocks;
}

// How a kernel's work splits into items: `rows` rows of one sample per item (pooled rows in the forward, input
// rows in the backward), `blocks` items per sample, N * blocks items in all.
struct Tiling {
  int64_t rows, blocks;
};

// `total` rows of each of N samples in blocks of at most `tile_rows`, and into at least `threads` items in all
// where the rows allow: a sample is one tile whenever it fits, but a batch smaller than the thread count still
// gives every thread an item (batch 1 on 2 threads: two half samples, not one thread idle).
inline Tiling split_rows(int64_t total, int64_t tile_rows, int64_t N, int64_t threads) {
  const int64_t per_sample = std::clamp<int64_t>((threads + N - 1) / N, 1, total);
  const int64_t rows = even_blocks(total, std::clamp<int64_t>(tile_rows, 1, (total + per_sample - 1) / per_sample));
  return {rows, (total + rows - 1) / rows};
}

// Forward items: blocks of pooled rows (channels-last: one row, already C * OW elements).
inline Tiling forward_tiling(const Problem& pb, int64_t threads) {
  const auto& p = pb.pool;
  if (p.channels_last) return {1, p.h.out};
  return split_rows(p.h.out, kTileElements / (p.C * p.w.out), p.N, threads);
}

// Backward items: blocks of input rows whose covering pooled rows make about one tile.
inline Tiling backward_tiling(const Problem& pb, int64_t threads) {
  const auto& p = pb.pool;
  return split_rows(p.h.in, kTileElements / (p.C * p.w.out) * p.h.stride, p.N, threads);
}

}  // namespace cnx::pool_lrn

// pooled and argmax: null for the inference forward (y only); otherwise the saved tensors' data, argmax
// uint8 or int32 as maxpool::byte_argmax says.
CNX_CPU_DECLARE(void, max_pool2d_lrn_forward_kernel, c10::ScalarType dtype, const void* x, void* y, void* pooled,
                void* argmax, const cnx::pool_lrn::Problem& pb, cnx::pool_lrn::Tiling tiling, int64_t begin,
                int64_t end)
CNX_CPU_DECLARE(void, max_pool2d_lrn_backward_kernel, c10::ScalarType dtype, const void* grad, const void* pooled,
                const void* argmax, void* grad_input, const cnx::pool_lrn::Problem& pb,
                cnx::pool_lrn::Tiling tiling, int64_t begin, int64_t end)
