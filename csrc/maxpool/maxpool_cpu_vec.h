#pragma once
// The max-pool CPU building blocks, vectorised with at::vec: included by the per-instruction-set kernel
// files (maxpool_cpu_kernel.cpp, and pool_lrn_cpu_kernel.cpp, which pools tiles for the LRN after it), so
// they are compiled once per CPU_CAPABILITY. Values compare in the accumulation type (fp32 for fp16/bf16:
// exact, a max only selects); every update is maxpool_math.h's rule applied lane by lane -- a blend where
// `value > max || isnan(value)` -- so ties and NaNs come out exactly as in torch.
//
// Forward, channels-first (x[n][c][h][w]): the window max is separable, a max over kw of each input row
// followed by a max over kh of those row maxima. Taken in that order it is exactly the (kh, kw) scan: both
// report the last NaN if there is one and otherwise the first maximum. Each input row is pooled
// horizontally once (vectorised across output columns), kept in a ring of the last rows, and the output
// rows combine ring rows (vectorised across columns). To give the horizontal pass contiguous loads for any
// stride, the row is first split into `stride` phases -- phase r holds the padded row's elements r,
// r + stride, ... -- so tap kw of consecutive outputs lies at consecutive addresses of one phase. Padding
// is -inf, which never replaces the max; the argmax starts at the window's first tap inside the input, as
// torch's does. On AVX2/AVX-512 the 3 x 3 stride-2 windows (all the classic nets' overlapping pools) skip the
// ring: pool_full_3x3_stride2 reads each output vector straight from the input rows (PlanePooler picks it).
// Forward, channels-last (x[n][h][w][c]): every tap of a window is a contiguous row of C channels; the scan
// of maxpool_math.h (scan_window) runs on blocks of vectors of channels.
// Backward, channels-first: torch's own scatter within one task's rows of a plane (RowScatterer): zeroed,
// then each output's gradient added at its argmax's tap, in increasing (oh, ow).
// Backward, channels-last: a gather, vectorised across C. Each input element sums, in torch's order, the
// gradients of the windows whose argmax is the tap reading it (maxpool_math.h's for_each_gradient_source);
// the covering windows along each dimension are listed once per task.
//
// The parts, each included by the next where it builds on it:
//   maxpool_cpu_blocks.h      the update rule on vectors, type aliases, window and row spans
//   maxpool_cpu_3x3s2.h       the whole-window 3 x 3 stride-2 channels-first forward
//   maxpool_cpu_forward_cf.h  the channels-first forward
//   maxpool_cpu_forward_cl.h  the channels-last forward
//   maxpool_cpu_backward.h    the backward

#include "maxpool/maxpool_cpu_forward_cf.h"
#include "maxpool/maxpool_cpu_forward_cl.h"
#include "maxpool/maxpool_cpu_backward.h"
