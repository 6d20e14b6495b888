#pragma once
// The per-instruction-set CPU kernels of max pooling (maxpool_cpu_kernel.cpp, compiled once per ISA) and how
// their work is split. They take raw pointers so that no at::Tensor code is compiled with AVX flags.
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>

#include "common/cpu_dispatch.h"
#include "maxpool/maxpool_math.h"

namespace cnx::maxpool {

// The channels-first forward works on blocks of this many output rows of one plane: a block re-reads the
// input rows its first window shares with the previous block's last, so blocks must not be too short, and
// splitting planes keeps every thread busy when N * C is small.
constexpr int64_t kRowBlock = 32;

// Windows far wider than the input (valid: a kernel of up to 2^31 taps with padding of half of it): the
// channels-first kernels' scratch -- a padded row and a ring of rows, each as wide as a window's extent --
// would then take gigabytes, while the channels-last kernels' scratch does not depend on the window.
inline bool wide_windows(const Problem& pb) {
  const auto wide = [](const Dim& d) { return (d.kernel - 1) * d.dilation > std::max<int64_t>(4 * d.in, 1 << 16); };
  return wide(pb.h) || wide(pb.w);
}

// The problem the CPU kernels run: pb, except that a dense channels-first problem with wide windows runs as
// what it is in memory, the channels-last problem of N * C samples of one channel.
inline Problem cpu_kernel_problem(const Problem& pb) {
  if (pb.channels_last || !wide_windows(pb)) return pb;
  return Problem{pb.N * pb.C, 1, pb.h, pb.w, true};
}

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
