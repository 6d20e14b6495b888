"""Fused ReLU -> max-pool -> LRN in Triton: the ops classicnets_ext::max_pool2d_lrn_triton and
max_pool2d_lrn_triton_backward, with the schemas and semantics of the C++ ops max_pool2d_lrn(_backward)
(csrc/pool_lrn/): LRN(max_pool2d(relu(x) if relu else x)), dilation 1.

    p_c  = relu?(max over the window of x_c)      (max_pool2d's scan, maxpool.py; relu(NaN) = NaN)
    s_c  = k + alpha / size * sum_{m = c - lo}^{c + hi} p_m^2     lo = size // 2, hi = (size - 1) // 2,
    y_c  = p_c * s_c^-beta                                         the window clipped to [0, C)
    gp_j = g_j p'_j - (2 alpha beta / size) p_j * sum_{i = j - hi}^{j + lo} t_i,   p' = s^-beta,
           t_i = g_i p_i p'_i / s_i;  gp_j = 0 where relu and p_j <= 0 (NaN passes)
    dx   = the max-pool gather of gp through the argmax

ReLU commutes with the max, so the kernel pools x and applies ReLU to the pooled value (see
csrc/pool_lrn/pool_lrn_math.h: the argmax may then name another tap of a window whose max is <= 0, where
the gradient is 0 anyway). p is rounded to the input's dtype before the LRN, as the unfused composite's
pooled tensor is; everything accumulates in fp32 (fp64 for fp64).

Forward: one program per BLOCK pooled positions (n, oh, ow), walking the channels. Each channel's pooled
value is computed once per position -- the KH x KW window scan of maxpool.py, unrolled up to 3x3 -- and
enters a register ring of RING = next_power_of_2(min(size, C)) rows, from which every output channel takes
its window sum of squares directly (exact, Inf and NaN as torch's: no running sum to poison) and its own p.
The alternative, recomputing the `size` pooled neighbours of every output, costs size x KH x KW loads per
output (45 for AlexNet's 3x3 pool and size 5) against KH x KW here; the ring costs O(RING) register
operations per channel instead. Memory traffic per output element: the KH x KW taps of x (each input
element is read by ceil(KH / SH) x ceil(KW / SW) windows, the repeats L1/L2 hits), y written once; pooled
(itemsize) and argmax (1 byte) are written only when saving for the backward -- the inference forward
never writes the pooled tensor. Channels-last: a program's lanes are C apart in memory, so each tap load
touches one cache line per lane, reused by the next channels from L1/L2 (as lrn.py's channels-last walk).

Backward: two passes that reuse the ops' own kernels, plus the ReLU mask:
  1. gp = lrn.py's one-pass LRN backward of (grad_output, pooled): g and p read, gp written (3 x itemsize
     per pooled element, its window ring in L2);
  2. with relu, gp = 0 where p <= 0, in place: p and gp read, gp written (3 x itemsize per pooled element);
  3. maxpool.py's gather of gp through the argmax: per input element, gp and the argmax read once per window
     covering it (L1/L2 hits after the first), dx written once. Deterministic, no atomics.
gp is a pooled-size scratch (a quarter of x for 3x3 stride-2 pools), rounded to the input's dtype as the
composite's gradient is. A one-kernel gather recomputing gp at the matching windows would save its write
and re-read, but needs each window's 2 * size - 1 channel neighbourhood per lane, masked lanes included.
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op

from classicnets_ext import _checks, _fakes
from classicnets_ext._layouts import lrn_kernel_input, max_pool2d_is_channels_last, max_pool2d_lrn_grad_input_like

from . import _launch
from .lrn import _launch_config, _pow_neg_beta, lrn_backward, lrn_forward, window_constants
from .maxpool import (_BLOCK, _as_4d, _coords, _first_tap, _forward_tap, _needs_int64, _tap_span, _unroll,
                      max_pool2d_backward, max_pool2d_forward)

_NO_DILATION = (1, 1)
_NUM_WARPS = 4
# The forward's register ring holds RING x BLOCK values; the column block shrinks so that it stays under
# this many (32 registers a thread at 4 warps), whatever the LRN size.
_RING_VALUES = 4096
# Above this RING the forward runs the unfused pair instead (max_pool2d_forward, then lrn_forward). The ring is a
# [RING, BLOCK] register tile unrolled per channel: RING = 1024 took 156 s to compile for sm_90, 4096 did not
# finish in 15 minutes, and past 32768 the tile exceeds triton's 2^20 elements. LRN sizes in use are 3-9.
_MAX_RING = 64


@triton.jit
def _pool_tap(x_ch, X_stride_h, X_stride_w, mask, hstart, wstart, H, W, tap, kh, kw, best, arg,
              SAVE_ARGMAX: tl.constexpr):
    """Tap (kh, kw) of the windows starting at (hstart, wstart) of channel x_ch, through maxpool's scan step."""
    ih = hstart + kh
    return _forward_tap(x_ch + ih * X_stride_h, X_stride_w, mask & (ih >= 0) & (ih < H), wstart, W, 1, tap, kw,
                        best, arg, SAVE_ARGMAX)


@triton.jit
def _pooled_channel(x_ch, X_stride_h, X_stride_w, mask, hstart, wstart, H, W, KH, KW, arg0,
                    UNROLL_KH: tl.constexpr, UNROLL_KW: tl.constexpr, RELU: tl.constexpr,
                    SAVE_ARGMAX: tl.constexpr, ACC_T: tl.constexpr, OUT_T: tl.constexpr):
    """(p, argmax) of one channel for a block of windows: the max (relu'd when RELU, rounded to OUT_T and
    returned in ACC_T) and its window-local tap. Taps in (kh, kw) order; unrolled when UNROLL_KH > 0."""
    best = tl.full(hstart.shape, float("-inf"), ACC_T)
    arg = arg0
    if UNROLL_KH > 0:
        for tap in tl.static_range(UNROLL_KH * UNROLL_KW):
            best, arg = _pool_tap(x_ch, X_stride_h, X_stride_w, mask, hstart, wstart, H, W, tap, tap // UNROLL_KW,
                                  tap % UNROLL_KW, best, arg, SAVE_ARGMAX)
    else:  # only the taps some lane's window has inside the input (maxpool's _tap_span)
        kh_lo, kh_hi = _tap_span(hstart, H, 1, KH, mask)
        kw_lo, kw_hi = _tap_span(wstart, W, 1, KW, mask)
        for kh in range(kh_lo, kh_hi):
            for kw in range(kw_lo, kw_hi):
                best, arg = _pool_tap(x_ch, X_stride_h, X_stride_w, mask, hstart, wstart, H, W,
                                      (kh * KW + kw).to(tl.int32), kh, kw, best, arg, SAVE_ARGMAX)  # (maxpool's)
    if RELU:
        best = tl.where(best < 0, 0.0, best)  # NaN < 0 is false: NaN stays
    return best.to(OUT_T).to(ACC_T), arg


@triton.jit
def _max_pool2d_lrn_forward_kernel(X_ptr, Y_ptr, P_ptr, A_ptr, positions, C, H, W, OH, OW, X_stride_n,
                                   X_stride_c, X_stride_h, X_stride_w, Y_stride_n, Y_stride_c, Y_stride_h,
                                   Y_stride_w, SH, SW, PH, PW, KH, KW, UNROLL_KH: tl.constexpr,
                                   UNROLL_KW: tl.constexpr, RELU: tl.constexpr, SAVE: tl.constexpr,
                                   LO: tl.constexpr, HI: tl.constexpr, RING: tl.constexpr,
                                   ALPHA_OVER_N: tl.constexpr, NEG_BETA: tl.constexpr, K: tl.constexpr,
                                   IDX64: tl.constexpr, BLOCK: tl.constexpr):
    """y (and, when SAVE, pooled and argmax) of BLOCK pooled positions q = (n, oh, ow), all channels, in one
    pass i = 0 .. C-1+HI: channel i is pooled and enters ring slot i % RING; channel i - HI, whose window
    [i - HI - LO, i] is then complete, is normalised and written. Slot s holds the latest channel m <= top
    = min(i, C - 1) with m = s mod RING; RING >= min(size, C) keeps the window's channels in distinct slots.
    Y, P and A share one layout (Y's strides); X is read through its strides. Pointers advance channel by
    channel, so no channel offset is ever multiplied out in 32 bits.
    """
    pid = tl.program_id(0)
    if IDX64:
        pid = pid.to(tl.int64)
    q = pid * BLOCK + tl.arange(0, BLOCK)
    mask = q < positions
    # Once per position, for C channels: plain divisions (no dividers: their magic numbers unused).
    n, _, oh, ow = _coords(q, 1, OH, OW, 0, 0, 0, 0, 0, 0, False, False)
    hstart = oh * SH - PH
    wstart = ow * SW - PW
    arg0 = (_first_tap(hstart, 1) * KW + _first_tap(wstart, 1)).to(tl.int32)
    x_ch = X_ptr + n * X_stride_n  # channel i's
    out = n * Y_stride_n + oh * Y_stride_h + ow * Y_stride_w
    y_ch = Y_ptr + out  # channel i - HI's
    p_ch = P_ptr + out  # channel i's
    a_ch = A_ptr + out
    acc_t: tl.constexpr = tl.float64 if X_ptr.dtype.element_ty == tl.float64 else tl.float32
    bits_t: tl.constexpr = tl.int64 if X_ptr.dtype.element_ty == tl.float64 else tl.int32
    slots = tl.arange(0, RING)
    ring = tl.zeros([RING, BLOCK], acc_t)
    for i in range(C + HI):
        if i < C:
            p, arg = _pooled_channel(x_ch, X_stride_h, X_stride_w, mask, hstart, wstart, H, W, KH, KW, arg0,
                                     UNROLL_KH, UNROLL_KW, RELU, SAVE, acc_t, X_ptr.dtype.element_ty)
            ring = tl.where(slots[:, None] == i % RING, p[None, :], ring)
            if SAVE:
                tl.store(p_ch, p.to(P_ptr.dtype.element_ty), mask=mask)
                tl.store(a_ch, arg.to(A_ptr.dtype.element_ty), mask=mask)
                p_ch += Y_stride_c
                a_ch += Y_stride_c
            x_ch += X_stride_c
        c = i - HI
        if c >= 0:
            top = tl.minimum(i, C - 1)
            held = top - (top - slots + RING) % RING  # the channel in each slot
            in_window = (held >= 0) & (held >= c - LO)
            sum_sq = tl.sum(tl.where(in_window[:, None], ring * ring, 0.0), axis=0)
            # The one slot holding channel c, picked by an integer sum of its bits (the other slots add 0): exact
            # for every value -- a float sum with 0.0 turned a pooled -0.0 into +0.0.
            bits = tl.where((slots == c % RING)[:, None], ring.to(bits_t, bitcast=True), 0)
            p_c = tl.sum(bits, axis=0).to(acc_t, bitcast=True)
            y = p_c * _pow_neg_beta(K + ALPHA_OVER_N * sum_sq, NEG_BETA)
            tl.store(y_ch, y.to(Y_ptr.dtype.element_ty), mask=mask)
            y_ch += Y_stride_c


@triton.jit
def _relu_grad_kernel(G_ptr, P_ptr, total, IDX64: tl.constexpr, BLOCK: tl.constexpr):
    """g = 0 where p <= 0 (torch's threshold_backward on the ReLU output: NaN passes), in place, for BLOCK
    consecutive elements of two tensors of one dense layout."""
    pid = tl.program_id(0)
    if IDX64:
        pid = pid.to(tl.int64)
    o = pid * BLOCK + tl.arange(0, BLOCK)
    mask = o < total
    p = tl.load(P_ptr + o, mask=mask, other=0.0)
    g = tl.load(G_ptr + o, mask=mask, other=0.0)
    tl.store(G_ptr + o, tl.where(p <= 0, 0.0, g).to(G_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------ launchers


def _forward_config(positions: int, ring: int, channels_last: bool) -> tuple[int, int]:
    """(BLOCK, num_warps): lrn.py's column blocks over the pooled positions, narrowed while the register ring
    would exceed _RING_VALUES."""
    block, _ = _launch_config(1, positions, channels_last)
    while block > 32 and ring * block > _RING_VALUES:
        block //= 2
    return block, max(1, block // 128)


def max_pool2d_lrn_forward(input: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
                           ceil_mode: bool, size: int, alpha: float, beta: float, k: float, relu: bool,
                           save_for_backward: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # the op's checks, then its outputs (its fake kernel)
    y, pooled, argmax = _fakes.max_pool2d_lrn(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k,
                                              relu, save_for_backward)
    if y.numel() == 0:
        return y, pooled, argmax
    x4, y4 = _as_4d(input), _as_4d(y)
    N, C, H, W = x4.shape
    OH, OW = y4.shape[2:]
    positions = N * OH * OW
    ring = triton.next_power_of_2(min(size, C))
    if ring > _MAX_RING:
        return _unfused_forward(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu,
                                save_for_backward, y, pooled, argmax)
    block, num_warps = _forward_config(positions, ring, max_pool2d_is_channels_last(input))
    # pooled and argmax share y's layout (max_pool2d_lrn_outputs_like; where y's strides differ, they differ in
    # size-1 dimensions only); without them y stands in for their pointers (never used), so no null pointer
    # reaches the launch.
    _launch.grid(_max_pool2d_lrn_forward_kernel, (triton.cdiv(positions, block),))(
        x4, y, pooled if save_for_backward else y, argmax if save_for_backward else y, positions, C, H, W, OH, OW,
        *x4.stride(), *y4.stride(), stride[0], stride[1], padding[0], padding[1], kernel_size[0], kernel_size[1],
        **_unroll(kernel_size), RELU=relu, SAVE=save_for_backward, RING=ring,
        **window_constants(size, alpha, beta, k, C), IDX64=_needs_int64(x4, y), BLOCK=block, num_warps=num_warps)
    return y, pooled, argmax


def _unfused_forward(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu, save_for_backward,
                     y, pooled, argmax):
    """The forward as the unfused composite's kernels (a window too wide for the ring, _MAX_RING), into the
    outputs the fused op promises: the pool's values and argmax, the ReLU, the LRN."""
    p, a = max_pool2d_forward(input, kernel_size, stride, padding, list(_NO_DILATION), ceil_mode, save_for_backward)
    if relu:
        p = torch.relu(p)
    y.copy_(lrn_forward(_as_4d(p), size, alpha, beta, k).view(y.shape))
    if save_for_backward:
        pooled.copy_(p)
        argmax.copy_(a)
    return y, pooled, argmax


def max_pool2d_lrn_backward(grad_output: torch.Tensor, pooled: torch.Tensor, argmax: torch.Tensor,
                            input_size: list[int], kernel_size: list[int], stride: list[int], padding: list[int],
                            size: int, alpha: float, beta: float, k: float, relu: bool) -> torch.Tensor:
    _checks.max_pool2d_lrn_backward(grad_output, pooled, argmax, input_size, kernel_size, stride, padding, size,
                                    alpha, beta, k)
    if argmax.numel() == 0:
        return max_pool2d_lrn_grad_input_like(grad_output, pooled, argmax, input_size, kernel_size, stride, padding,
                                              size, alpha, beta, k, relu)
    # LRN wants (N, C, *): a 3-D (C, OH, OW) pooled tensor is one sample.
    p4 = _as_4d(pooled)
    gp4 = lrn_backward(_as_4d(grad_output), p4, size, alpha, beta, k)
    if relu:
        # The mask walks gp4 and p4 as flat arrays: p4 in the layout the LRN backward wrote gp4 in (a channels-last
        # view made dense channels-last, any other non-dense tensor contiguous).
        p4 = lrn_kernel_input(p4)
        total = gp4.numel()
        _launch.grid(_relu_grad_kernel, (triton.cdiv(total, _BLOCK),))(
            gp4, p4, total, IDX64=_needs_int64(gp4, p4), BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    gp = gp4 if argmax.dim() == 4 else gp4.squeeze(0)
    return max_pool2d_backward(gp, argmax, input_size, kernel_size, stride, padding, list(_NO_DILATION))


# torch releases before pytorch#188722 ignore triton_op's `schema` and infer one from the annotations above:
# SymInt[] where these say int[2] -- the same calls, so the launchers keep their annotations exact.
max_pool2d_lrn_triton = triton_op(
    "classicnets_ext::max_pool2d_lrn_triton", mutates_args=(),
    schema="(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, int size, "
           "float alpha, float beta, float k, bool relu, bool save_for_backward) -> (Tensor, Tensor, Tensor)"
)(max_pool2d_lrn_forward)
max_pool2d_lrn_triton_backward = triton_op(
    "classicnets_ext::max_pool2d_lrn_triton_backward", mutates_args=(),
    schema="(Tensor grad_output, Tensor pooled, Tensor argmax, SymInt[] input_size, int[2] kernel_size, "
           "int[2] stride, int[2] padding, int size, float alpha, float beta, float k, bool relu) -> Tensor"
)(max_pool2d_lrn_backward)

# The C++ ops' fake kernels (_fakes: their checks, then their outputs): triton_op's default fake traces the
# launcher, which cannot run under TRITON_INTERPRET.
max_pool2d_lrn_triton.register_fake(_fakes.max_pool2d_lrn)
max_pool2d_lrn_triton_backward.register_fake(_fakes.max_pool2d_lrn_backward)
