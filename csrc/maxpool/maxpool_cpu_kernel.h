#pragma once
// The per-instruction-set CPU kernels of max pooling (maxpool_cpu_kernel.cpp, compiled once per ISA) and how
// their work is split. They take raw pointers so that no at::Tensor code is compiled with AVX flags.
#include <c10/core/ScalarType.h>

#include <cstdint>

#include "common/cpu_dispatch.h"
#include "maxpool/maxpool_math.h"

namespace cnx::maxpool {

// The channels-first forward works on blocks of this many output rows of one plane: a block re-reads the
// input rows its first window shares with the previous block's last, so blocks must not be too short, and
// splitting planes keeps every thread busy when N * C is small.
constexpr int64_t kRowBlock = 32;

// Work items. Forward: channels-first, a block of output rows of one plane; channels-last, one output row
// (OW positions of C channels). Backward: channels-first, one plane; channels-last, one input row.
inline int64_t forward_work_items(const Problem& pb) {
  if (pb.channels_last) return pb.N * pb.h.out;
  return pb.N * pb.C * ((pb.h.out + kRowBlock - 1) / kRowBlock);
}

inline int64_t backward_work_items(const Problem& pb) {
  return pb.channels_last ? pb.N * pb.h.in : pb.N * pb.C;
}

}  // namespace cnx::maxpool

// argmax: null for the inference forward (output only); otherwise uint8 or int32 as byte_argmax(pb) says.
CNX_CPU_DECLARE(void, max_pool2d_forward_kernel, c10::ScalarType dtype, const void* x, void* y, void* argmax,
                const cnx::maxpool::Problem& pb, int64_t begin, int64_t end)
CNX_CPU_DECLARE(void, max_pool2d_backward_kernel, c10::ScalarType dtype, const void* grad, const void* argmax,
                void* grad_input, const cnx::maxpool::Problem& pb, int64_t begin, int64_t end)
