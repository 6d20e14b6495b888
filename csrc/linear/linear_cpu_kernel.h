#pragma once
// The per-instruction-set kernel of classicnets_ext::linear (linear_cpu_kernel.cpp, compiled once per ISA) and
// how its work is split. Raw pointers only, so that no at::Tensor code is compiled with AVX flags.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "common/cpu_dispatch.h"

namespace cnx::linear {

// y = x @ w.T + bias for x (M, K), w (N, K), bias (N) or null, y (M, N), all contiguous, all fp32 but the
// weight (that of the forward and of grad_input). The backward kernels take the same sizes: grad_output (M, N),
// grad_input (M, K), grad_weight (N, K).
struct CpuProblem {
  int64_t M, N, K;
};

// Work items are blocks of this many output features (weight rows): the least common multiple of every ISA's
// register blocks (3 or 6 rows on AVX-512, 3 or 4 on AVX2, 1 or 2 in the baseline build), so a thread's share
// splits into whole register blocks, and small, so that threads get equal shares: AlexNet's 1000 classes as
// 48-row items went 11 items to one thread and 10 to the other.
constexpr int64_t kRowsPerItem = 12;

inline int64_t cpu_work_items(const CpuProblem& pb) { return (pb.N + kRowsPerItem - 1) / kRowsPerItem; }

}  // namespace cnx::linear

// Computes the output features [item_begin, item_end) * kRowsPerItem (clipped to N) of every row of y, in fp32
// from a weight in fp32, bf16 or fp16 (x, bias and y are fp32 in all three).
CNX_CPU_DECLARE(void, linear_forward_kernel, const float* x, const float* w, const float* bias, float* y,
                const cnx::linear::CpuProblem& pb, int64_t item_begin, int64_t item_end)
CNX_CPU_DECLARE(void, linear_forward_bf16_kernel, const float* x, const c10::BFloat16* w, const float* bias,
                float* y, const cnx::linear::CpuProblem& pb, int64_t item_begin, int64_t item_end)
CNX_CPU_DECLARE(void, linear_forward_fp16_kernel, const float* x, const c10::Half* w, const float* bias, float* y,
                const cnx::linear::CpuProblem& pb, int64_t item_begin, int64_t item_end)
// The same with an fp32 weight taken as if cast to bf16 / fp16 first (torch.autocast's product, without the cast).
CNX_CPU_DECLARE(void, linear_forward_fp32_as_bf16_kernel, const float* x, const float* w, const float* bias,
                float* y, const cnx::linear::CpuProblem& pb, int64_t item_begin, int64_t item_end)
CNX_CPU_DECLARE(void, linear_forward_fp32_as_fp16_kernel, const float* x, const float* w, const float* bias,
                float* y, const cnx::linear::CpuProblem& pb, int64_t item_begin, int64_t item_end)
// The same in bf16 with x in bf16 too, on AVX512-BF16's dot products: the AVX-512 build's only, for a CPU
// where cnx::cpu::has_avx512_bf16() (the other builds abort).
CNX_CPU_DECLARE(void, linear_forward_bf16_dot_kernel, const c10::BFloat16* x, const c10::BFloat16* w,
                const float* bias, float* y, const cnx::linear::CpuProblem& pb, int64_t item_begin, int64_t item_end)

// grad_weight = grad_output.T @ x for the weight rows [item_begin, item_end) * kRowsPerItem (clipped to N).
CNX_CPU_DECLARE(void, linear_grad_weight_kernel, const float* grad_output, const float* x, float* grad_weight,
                const cnx::linear::CpuProblem& pb, int64_t item_begin, int64_t item_end)

// partial += grad_output[:, rows] @ w[rows, :] over the weight rows [item_begin, item_end) * kRowsPerItem:
// one thread's share of grad_input = grad_output @ w, summed over the threads by the caller. partial is (M, K),
// fp32, and so is grad_output; w is fp32, bf16 or fp16.
CNX_CPU_DECLARE(void, linear_grad_input_kernel, const float* grad_output, const float* w, float* partial,
                const cnx::linear::CpuProblem& pb, int64_t item_begin, int64_t item_end)
CNX_CPU_DECLARE(void, linear_grad_input_bf16_kernel, const float* grad_output, const c10::BFloat16* w,
                float* partial, const cnx::linear::CpuProblem& pb, int64_t item_begin, int64_t item_end)
CNX_CPU_DECLARE(void, linear_grad_input_fp16_kernel, const float* grad_output, const c10::Half* w, float* partial,
                const cnx::linear::CpuProblem& pb, int64_t item_begin, int64_t item_end)
