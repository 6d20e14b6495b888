"""GoogLeNet's Inception block in Triton: the op classicnets_ext::inception_triton, the forward of the fused
block (issue 7) with bias + ReLU convolutions (BatchNorm, if any, already folded into the weights):

    red3 = relu(x * w1[ch1x1 : ch1x1 + r3] + b1[...])      red5 = relu(x * w1[ch1x1 + r3 :] + b1[...])
    out  = cat(relu(x * w1[:ch1x1] + b1[:ch1x1]),            1x1 convs ("*": conv2d, stride 1)
               relu(red3 * w3 + b3),  relu(red5 * w5 + b5),  padding k // 2 (k odd)
               relu(max_pool2d(x, 3, 1, 1) * wp + bp))       torch's max: -inf padding, NaN propagates

Every tensor is read and written channels-last, where a convolution is a GEMM over rows m = (n, h, w):
one kernel, ``_inception_gemm_kernel``, computes D[m, j] = relu(bias[j] + sum_k A[m, k] B[k, j]) for all four
of its launches, its constexprs choosing how A is gathered and where D goes:

  1. the three 1x1 convolutions that read x are ONE GEMM (KS = 1, SPLIT): B = w1 viewed [C_in, ch1x1+r3+r5]
     (transposed in the load); a tile's columns are stored straight to their destination -- j < ch1x1 into
     out's channels [0, ch1x1), then red3, then red5 (masked stores: a tile may straddle the boundaries);
  2. the pool projection (KS = 1, POOL): A[m, c] = the 3x3/s1/p1 max of x around m, taken while loading the
     A tile (9 masked loads, -inf outside); no pooled tensor exists. Stored into out's last cp channels;
  3. the 3x3 and 5x5 convolutions (KS = k): an implicit GEMM over K = k * k taps x r channels, A[m, (t, c)]
     = red[n, c, h + dh_t, w + dw_t] (0 outside: the padding), stored into out's [ch1x1, +c3) and [.., +c5).

No intermediate besides red3 and red5 (the block's own outputs, saved for the backward), no cat, no copy of
x unless its channels are not unit-stride. Launch 1 precedes 3 (which read its red buffers); 2 is independent.

Memory traffic (DRAM, itemsize s; L2 absorbing the re-reads of a tile row by the cdiv(N, BLOCK_N) column
programs and of neighbouring taps): x read twice (launches 1 and 2; the pool's 9 taps hit L1/L2 after the
first), red3 / red5 written once and read once, out written once, weights once per row tile. About
s * M * (2 C_in + 2 (r3 + r5) + C_out) bytes for M = N * H * W, against torch's four reads of x, the pooled
tensor written and read, four branch outputs written and re-read and written again by cat.

Precision: tl.dot with fp32 accumulation (fp64 for fp64 inputs), bias added and ReLU applied in fp32, one
rounding to the output dtype -- so red3/red5 are rounded to the input dtype before the k x k convolutions,
as in the unfused block. fp32 inputs use input_precision="ieee" (exact products, matching F.conv2d on the
CPU); on a GPU they use "tf32" only when torch.backends.cuda.matmul.allow_tf32 is set (off by default:
torch's own rule for matmul -- we do not follow cudnn.allow_tf32, which is on by default, because the 1x1
GEMMs are matmuls). fp16 / bf16 use the tensor cores in their dtype; fp64 is exact (GPU: FMA path).

Offsets: rows of x, out and the red buffers are 64-bit (IDX64) when any of them spans 2^31 elements;
weight offsets stay 32-bit (a weight is far smaller).
"""
import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from classicnets_ext import _fakes

from . import _launch
from .maxpool import _needs_int64

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read once: triton reads it when first imported
_GROUP_M = 8  # row tiles per group of the program order: a group's column tiles share its A rows in L2


# (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps). Inception's GEMMs are tall and narrow: M = N * H * W is
# thousands to hundreds of thousands of rows, N 16 .. 384 columns, K 16 .. 832 (x k * k for the convs), so
# the configs span narrow N tiles and small K steps (5x5 reductions have 16 .. 48 channels) as well as the
# square 128 x 128 tiles of large GEMMs.
_GPU_TILES = [
    (128, 128, 32, 4, 8), (128, 128, 64, 3, 8), (128, 64, 32, 4, 4), (128, 64, 64, 3, 4), (64, 128, 32, 4, 4),
    (128, 32, 32, 4, 4), (64, 64, 32, 4, 4), (64, 64, 64, 3, 4), (64, 32, 32, 5, 2), (32, 64, 32, 5, 2),
    (128, 64, 16, 4, 4), (128, 32, 16, 4, 4), (64, 32, 16, 5, 2),
]
# The interpreter runs one small config (no benchmarking); 16 is tl.dot's smallest tile.
_INTERPRET_TILES = [(32, 16, 16, 1, 1)]


def _configs() -> list:
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_stages=s, num_warps=w)
            for bm, bn, bk, s, w in (_INTERPRET_TILES if _INTERPRET else _GPU_TILES)]


def _prune_configs(configs, named_args, **kwargs):
    """Drops the configs whose N or K tile is wider than the problem needs (all-masked columns, wasted
    dot work): BLOCK_N <= max(32, next_pow2(N_OUT)), BLOCK_K <= max(16, next_pow2(C_A)). Never empty: the
    tiles (64 | 128, 32, 16) always pass."""
    n = max(32, triton.next_power_of_2(named_args["N_OUT"]))
    k = max(16, triton.next_power_of_2(named_args["C_A"]))
    kept = [c for c in configs if c.kwargs["BLOCK_N"] <= n and c.kwargs["BLOCK_K"] <= k]
    return kept or configs


@triton.jit
def _pooled_a_tile(a_tap, A_stride_c, A_stride_h, A_stride_w, kk, h, w, H, W, row_ok, k_ok):
    """A[m, kk] = max_pool2d(x, 3, stride 1, padding 1)[n, kk, h, w] for a BLOCK_M x BLOCK_K tile: 9 masked
    neighbour loads (-inf outside), torch's scan (val > best or val is NaN: a NaN propagates). Rows or
    channels outside the problem are 0, not -inf: -inf x 0 would poison the dot with NaN. Compares in fp32
    (fp64 for fp64), as maxpool.py: exact, a max only selects."""
    ok = row_ok[:, None] & k_ok[None, :]
    cmp_t: tl.constexpr = tl.float64 if a_tap.dtype.element_ty == tl.float64 else tl.float32
    best = tl.full(ok.shape, float("-inf"), cmp_t)
    for t in tl.static_range(9):
        dh = t // 3 - 1
        dw = t % 3 - 1
        nb = (h + dh >= 0) & (h + dh < H) & (w + dw >= 0) & (w + dw < W)
        ptrs = a_tap[:, None] + dh * A_stride_h + dw * A_stride_w + kk[None, :] * A_stride_c
        v = tl.load(ptrs, mask=ok & nb[:, None], other=float("-inf")).to(cmp_t)
        best = tl.where((v > best) | (v != v), v, best)
    return tl.where(ok, best, 0.0).to(a_tap.dtype.element_ty)


@triton.autotune(configs=_configs(), key=["M", "N_OUT", "C_A", "KS", "POOL"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit
def _inception_gemm_kernel(A_ptr, W_ptr, Bias_ptr, D0_ptr, D1_ptr, D2_ptr, M, H, W, C_A, N_OUT, N_D0, N_D1,
                           A_stride_n, A_stride_c, A_stride_h, A_stride_w, W_stride_n, W_stride_c, W_stride_h,
                           W_stride_w, Bias_stride, D0_row_stride, D0_col_offset, D1_row_stride, D2_row_stride,
                           KS: tl.constexpr, POOL: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
                           UPCAST: tl.constexpr, IDX64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """D[m, j] = relu(bias[j] + sum_{t < KS^2, c < C_A} A_t[m, c] * Wt[j, c, t // KS, t % KS]) for a
    BLOCK_M x BLOCK_N tile, m = (n, h, w) < M = N * H * W, j < N_OUT:

      A_t[m, c] = A[n, c, h + t // KS - KS // 2, w + t % KS - KS // 2], 0 outside H x W (the conv padding);
                  with POOL (KS = 1): the 3x3/s1/p1 max of A around (h, w), NaN-propagating;
      store     = row m of D0 at D0_row_stride * m + D0_col_offset + j; with SPLIT, columns j >= N_D0 go to
                  D1 (column j - N_D0) and j >= N_D0 + N_D1 to D2 (column j - N_D0 - N_D1).

    A is read through its strides (channels unit-stride for coalesced K loads), W through its 4-D strides
    (the [C_out, C_A] -> [K, N] transpose is in the load), D rows are dense channels-last. The K loop walks
    taps, then BLOCK_K channels; tl.dot accumulates in fp32 (fp64 for fp64). UPCAST feeds it fp32 tiles
    instead of bf16 ones: only under TRITON_INTERPRET, whose dot (Triton 3.8) multiplies bf16's raw bits.

    Traffic per program: BLOCK_M x KS^2 x C_A elements of A (x9 neighbour loads with POOL, L1/L2 hits after
    the first), KS^2 x C_A x BLOCK_N of W, BLOCK_M x BLOCK_N stored once. Programs run in groups of GROUP_M
    row tiles so that the column tiles of a row tile share its A rows in L2.
    """
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N_OUT, BLOCK_N)
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_m
    pid_n = (pid % in_group) // group_m
    if IDX64:
        pid_m = pid_m.to(tl.int64)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N_OUT
    w = rm % W
    t = rm // W
    h = t % H
    a_row = A_ptr + (t // H) * A_stride_n
    acc_t: tl.constexpr = tl.float64 if A_ptr.dtype.element_ty == tl.float64 else tl.float32
    acc = tl.zeros((BLOCK_M, BLOCK_N), acc_t)
    for tap in tl.static_range(KS * KS):
        dh = tap // KS - KS // 2
        dw = tap % KS - KS // 2
        row_ok = m_ok & (h + dh >= 0) & (h + dh < H) & (w + dw >= 0) & (w + dw < W)
        a_tap = a_row + (h + dh) * A_stride_h + (w + dw) * A_stride_w
        w_tap = W_ptr + rn * W_stride_n + (tap // KS) * W_stride_h + (tap % KS) * W_stride_w
        for k0 in range(0, C_A, BLOCK_K):
            kk = k0 + rk
            k_ok = kk < C_A
            if POOL:
                a = _pooled_a_tile(a_tap, A_stride_c, A_stride_h, A_stride_w, kk, h, w, H, W, m_ok, k_ok)
            else:
                a = tl.load(a_tap[:, None] + kk[None, :] * A_stride_c, mask=row_ok[:, None] & k_ok[None, :],
                            other=0.0)
            b = tl.load(w_tap[None, :] + kk[:, None] * W_stride_c, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            if UPCAST:  # the same sum: bf16 x bf16 products are exact in fp32
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc_t)
    bias = tl.load(Bias_ptr + rn * Bias_stride, mask=n_ok, other=0.0).to(acc_t)
    y = acc + bias[None, :]
    y = tl.where(y < 0, 0.0, y).to(D0_ptr.dtype.element_ty)  # NaN < 0 is false: relu(NaN) = NaN, as torch
    rows = rm[:, None]
    ok = m_ok[:, None]
    if SPLIT:
        end1 = N_D0 + N_D1
        tl.store(D0_ptr + rows * D0_row_stride + (D0_col_offset + rn)[None, :], y, mask=ok & (rn < N_D0)[None, :])
        tl.store(D1_ptr + rows * D1_row_stride + (rn - N_D0)[None, :], y,
                 mask=ok & ((rn >= N_D0) & (rn < end1))[None, :])
        tl.store(D2_ptr + rows * D2_row_stride + (rn - end1)[None, :], y, mask=ok & ((rn >= end1) & n_ok)[None, :])
    else:
        tl.store(D0_ptr + rows * D0_row_stride + (D0_col_offset + rn)[None, :], y, mask=ok & n_ok[None, :])


# ------------------------------------------------------------------------------------------------ launchers

def _precision(x: torch.Tensor) -> str:
    if x.dtype == torch.float32 and x.is_cuda and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _launch_gemm(a, weight, bias, d0, d0_col_offset, n_d0, *, splits=None, ks=1, pool=False, idx64=False,
            precision="ieee"):
    """One launch of _inception_gemm_kernel: A = a (N, C_A, H, W), B = weight (N_OUT, C_A, ks, ks); columns
    [0, n_d0) to d0 from channel d0_col_offset, then splits = (d1, d2) (SPLIT) with the rest."""
    N, C_A, H, W = a.shape
    M, n_out = N * H * W, weight.shape[0]
    if M == 0 or n_out == 0:
        return
    d1, d2 = splits if splits is not None else (d0, d0)
    n_d1 = d1.shape[1] if splits is not None else 0
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(n_out, meta["BLOCK_N"]),)  # noqa: E731
    _launch.grid(_inception_gemm_kernel, grid)(
        a, weight, bias, d0, d1, d2, M, H, W, C_A, n_out, n_d0, n_d1, *a.stride(), *weight.stride(),
        bias.stride(0), d0.shape[1], d0_col_offset, d1.shape[1], d2.shape[1], KS=ks, POOL=pool,
        SPLIT=splits is not None, PRECISION=precision, UPCAST=_INTERPRET and a.dtype == torch.bfloat16,
        IDX64=idx64, GROUP_M=_GROUP_M)


def inception_forward(input: torch.Tensor, weight_1x1: torch.Tensor, bias_1x1: torch.Tensor,
                      weight_3x3: torch.Tensor, bias_3x3: torch.Tensor, weight_5x5: torch.Tensor,
                      bias_5x5: torch.Tensor, weight_pool: torch.Tensor, bias_pool: torch.Tensor,
                      ch1x1: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # the op's checks, then its outputs (its fake kernel)
    out, red3, red5 = _fakes.inception(input, weight_1x1, bias_1x1, weight_3x3, bias_3x3, weight_5x5, bias_5x5,
                                       weight_pool, bias_pool, ch1x1)
    if out.numel() == 0:
        return out, red3, red5
    # The GEMMs want unit-stride channels (coalesced K loads); any other strides are kept.
    x = input if input.stride(1) == 1 or input.shape[1] == 1 else input.contiguous(memory_format=torch.channels_last)
    c3, c5 = weight_3x3.shape[0], weight_5x5.shape[0]
    k = dict(idx64=_needs_int64(x, out, red3, red5), precision=_precision(x))
    _launch_gemm(x, weight_1x1, bias_1x1, out, 0, ch1x1, splits=(red3, red5), **k)
    _launch_gemm(x, weight_pool, bias_pool, out, ch1x1 + c3 + c5, weight_pool.shape[0], pool=True, **k)
    _launch_gemm(red3, weight_3x3, bias_3x3, out, ch1x1, c3, ks=weight_3x3.shape[2], **k)
    _launch_gemm(red5, weight_5x5, bias_5x5, out, ch1x1 + c3, c5, ks=weight_5x5.shape[2], **k)
    return out, red3, red5


inception_triton = triton_op(
    "classicnets_ext::inception_triton", mutates_args=(),
    schema="(Tensor input, Tensor weight_1x1, Tensor bias_1x1, Tensor weight_3x3, Tensor bias_3x3, "
           "Tensor weight_5x5, Tensor bias_5x5, Tensor weight_pool, Tensor bias_pool, int ch1x1) "
           "-> (Tensor output, Tensor reduced_3x3, Tensor reduced_5x5)")(inception_forward)

# The C++ op's fake kernel (_fakes: its checks, then its outputs): triton_op's default fake traces the
# launcher, which cannot run under TRITON_INTERPRET.
inception_triton.register_fake(_fakes.inception)
