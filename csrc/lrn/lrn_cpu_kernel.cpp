// LRN CPU kernels. setup.py compiles this file once per instruction set (-DCPU_CAPABILITY=DEFAULT|AVX2|
// AVX512); at::vec::Vectorized then maps to 256- or 512-bit registers and its sqrt/pow to native
// instructions or Sleef. Only raw pointers cross this file's boundary (see lrn_cpu_kernel.h); the vector
// code itself, and its memory traffic, is lrn_cpu_vec.h. Work items: a block of pb.block columns of
// one sample (channels-first) or one position's row of C channels (channels-last).
#include "lrn/lrn_cpu_kernel.h"

#include <ATen/Dispatch.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "lrn/lrn_cpu_vec.h"

namespace cnx::cpu::CPU_CAPABILITY {
namespace {

using lrn::CpuProblem;
using lrn::Params;

// Calls f(n, s0, width) for the column blocks [begin, end) of a channels-first problem.
template <typename F>
void for_each_column_block(const CpuProblem& pb, int64_t begin, int64_t end, F f) {
  const int64_t blocks = (pb.S + pb.block - 1) / pb.block;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / blocks, s0 = (item % blocks) * pb.block;
    f(n, s0, std::min(pb.block, pb.S - s0));
  }
}

template <typename scalar_t>
Params<at::opmath_type<scalar_t>> params_of(const CpuProblem& pb) {
  return Params<at::opmath_type<scalar_t>>::make(pb.size, pb.alpha, pb.beta, pb.k);
}

}  // namespace

void lrn_forward_kernel(c10::ScalarType dtype, const void* x, void* y, const CpuProblem& pb, int64_t begin,
                        int64_t end) {
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, dtype, "lrn_forward_cpu", [&] {
    const auto p = params_of<scalar_t>(pb);
    auto* xp = static_cast<const scalar_t*>(x);
    auto* yp = static_cast<scalar_t*>(y);
    const int64_t C = pb.C, S = pb.S;
    if (pb.channels_last) {
      Rows<at::opmath_type<scalar_t>> rows(C, p);
      rows.forward(xp + begin * C, yp + begin * C, end - begin, C, p);
    } else {
      for_each_column_block(pb, begin, end, [&](int64_t n, int64_t s0, int64_t width) {
        const int64_t off = n * C * S + s0;
        forward_columns(xp + off, S, yp + off, S, C, width, p);
      });
    }
  });
}

void lrn_backward_kernel(c10::ScalarType dtype, const void* grad, const void* x, void* dx, const CpuProblem& pb,
                         int64_t begin, int64_t end) {
  AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, dtype, "lrn_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto p = params_of<scalar_t>(pb);
    auto* gp = static_cast<const scalar_t*>(grad);
    auto* xp = static_cast<const scalar_t*>(x);
    auto* dp = static_cast<scalar_t*>(dx);
    const int64_t C = pb.C, S = pb.S;
    if (pb.channels_last) {
      Rows<acc_t> rows(C, p);
      rows.backward(gp + begin * C, xp + begin * C, dp + begin * C, end - begin, C, p);
    } else {
      BackwardColumns<acc_t> columns(pb.size, C, pb.block);
      for_each_column_block(pb, begin, end, [&](int64_t n, int64_t s0, int64_t width) {
        const int64_t off = n * C * S + s0;
        columns.run(gp + off, S, xp + off, S, dp + off, S, C, width, p);
      });
    }
  });
}

}  // namespace cnx::cpu::CPU_CAPABILITY
