#pragma once
// The per-instruction-set CPU kernels of LRN (lrn_cpu_kernel.cpp, compiled once per ISA) and how their
// work is split. They take raw pointers so that no at::Tensor code is compiled with AVX flags.
#include <c10/core/ScalarType.h>

#include <cstdint>

#include "common/cpu_dispatch.h"

namespace cnx::lrn {

struct CpuProblem {
  int64_t N, C, S;
  bool channels_last;
  int64_t size;
  double alpha, beta, k;
};

// Channels-first kernels slide along C over a block of this many columns at once (the block's window rows
// stay in L1); channels-last kernels take one spatial position, a contiguous row of C channels, per item.
constexpr int64_t kColumnBlock = 256;

inline int64_t cpu_work_items(const CpuProblem& pb) {
  if (pb.channels_last) return pb.N * pb.S;
  return pb.N * ((pb.S + kColumnBlock - 1) / kColumnBlock);
}

}  // namespace cnx::lrn

CNX_CPU_DECLARE(void, lrn_forward_kernel, c10::ScalarType dtype, const void* x, void* y,
                const cnx::lrn::CpuProblem& pb, int64_t begin, int64_t end)
CNX_CPU_DECLARE(void, lrn_backward_kernel, c10::ScalarType dtype, const void* grad, const void* x, void* dx,
                const cnx::lrn::CpuProblem& pb, int64_t begin, int64_t end)
