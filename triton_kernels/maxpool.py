"""2-D max pooling in Triton: the ops classicnets_ext::max_pool2d_triton, max_pool2d_triton_backward and
max_pool2d_triton_indices, with the schemas (and semantics) of the C++ ops max_pool2d, max_pool2d_backward
and max_pool2d_indices -- which are those of torch.nn.functional.max_pool2d:

* each window is scanned in (kh, kw) order, out-of-bounds taps skipped; the running max starts at -inf and
  the argmax at the first tap with ih >= 0 and iw >= 0; a tap replaces them when ``val > max or val is
  NaN``: ties keep the first max, a NaN propagates (the last NaN wins);
* the argmax is window-local, ``kh * kW + kw``: one byte up to 256 taps (int32 beyond), written only when
  the forward is asked to save it (the inference forward writes the output alone);
* the backward gathers: one program per block of input elements, each summing -- in the (oh, ow) order in
  which torch's serial CPU kernel scatters -- the gradients of the windows whose argmax points at it. No
  atomics, so it is deterministic;
* the indices op turns an argmax into torch's int64 ``h * W + w`` per plane.

Layouts (classicnets_ext._layouts): a channels-last 4-D input gives channels-last output, argmax, indices and
gradient; anything else gives contiguous ones. Outputs are written densely in their layout (one program per
BLOCK consecutive elements of memory); inputs, grad_output and argmax are read through their strides, so a
sliced or transposed input is never copied.

Windows up to 3x3 (the classic networks' 2x2 and 3x3) are unrolled, their size a compile-time constant;
other sizes, and stride, padding and dilation, are run-time arguments of one looped kernel. Values compare
in fp32 (fp64 for fp64): exact, since a max only selects. Gradients accumulate in fp32 (fp64 for fp64).
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op

from classicnets_ext import _fakes
from classicnets_ext._layouts import max_pool2d_is_channels_last

from . import _launch

_BLOCK = 1024
_NUM_WARPS = 4
_INT32_LIMIT = 2**31 - 1
# Windows up to this size in each dimension -- those of the classic networks: 2x2, 3x3 -- are unrolled, every
# tap's load in flight at once, one compiled kernel per size. Other sizes share one looped kernel, which
# bounds the number of compiles (and the code size of large windows).
_UNROLL_MAX = 3


def _divider(d: int) -> tuple[int, int]:
    """(magic, shift) for dividing by d in [1, 2^31] by a multiply-high (csrc/common/int_divider.h's
    Granlund-Montgomery method: magic = floor(2^32 (2^shift - d) / d) + 1, shift = ceil(log2 d)), the magic's
    32 bits passed as an int32, so that every value gets the same kernel argument type."""
    shift = (d - 1).bit_length()
    magic = ((1 << 32) * ((1 << shift) - d)) // d + 1
    return (magic - (1 << 32) if magic >= 1 << 31 else magic), shift


def _dividers(**divisors: int) -> dict:
    """The kernel arguments <NAME>_M, <NAME>_S of _divider for each divisor."""
    out = {}
    for name, d in divisors.items():
        out[f"{name}_M"], out[f"{name}_S"] = _divider(d)
    return out


# Kernel arguments that must keep one type and no value specialisation (a magic number of 1 would become a
# constexpr): the dividers' magic numbers and shifts, of the shape's C, H, W and of the pooling strides.
_SHAPE_DIVIDERS = ["C_M", "C_S", "H_M", "H_S", "W_M", "W_S"]
_STRIDE_DIVIDERS = ["SH_M", "SH_S", "SW_M", "SW_S"]


@triton.jit
def _divide(n, d, magic, shift, FAST: tl.constexpr):
    """n // d for n >= 0. FAST (n < 2^31): a multiply-high, an add and a shift with _divider's (magic, shift)
    for d. A GPU has no integer divider: a division by a value known only at run time is a reciprocal and a
    correction sequence (with them, the sm_90 code of these kernels was 19% (forward) and 32% (backward)
    longer). Else a division."""
    if FAST:
        u = n.to(tl.uint32, bitcast=True)
        q = (tl.umulhi(u, magic.to(tl.uint32, bitcast=True)) + u) >> shift.to(tl.uint32)
        return q.to(tl.int32, bitcast=True)
    else:
        return n // d


@triton.jit
def _peel(o, d, magic, shift, FAST: tl.constexpr):
    """(o % d, o // d): the coordinate of the fastest remaining dimension, and the offset left."""
    q = _divide(o, d, magic, shift, FAST)
    return o - q * d, q


@triton.jit
def _coords(o, C, H, W, C_M, C_S, H_M, H_S, W_M, W_S, CHANNELS_LAST: tl.constexpr, FAST: tl.constexpr):
    """(n, c, h, w) of the element at memory offset o of a dense (N, C, H, W) tensor in the given layout;
    <D>_M, <D>_S: _divider's numbers for C, H and W (FAST: offsets below 2^31)."""
    if CHANNELS_LAST:  # c fastest, then w, then h
        c, t = _peel(o, C, C_M, C_S, FAST)
        w, t = _peel(t, W, W_M, W_S, FAST)
        h, n = _peel(t, H, H_M, H_S, FAST)
    else:  # w fastest, then h, then c
        w, t = _peel(o, W, W_M, W_S, FAST)
        h, t = _peel(t, H, H_M, H_S, FAST)
        c, n = _peel(t, C, C_M, C_S, FAST)
    return n, c, h, w


@triton.jit
def _first_tap(start, D):
    """The first tap k with start + k * D >= 0 (0 when start >= 0). Non-negative operands only: integer
    division of negative numbers rounds differently in compiled Triton and in its interpreter."""
    return tl.where(start < 0, (tl.maximum(-start, 0) + D - 1) // D, 0)


@triton.jit
def _tap_span(start, size, D, K, lane_ok):
    """[lo, hi): the taps k < K that the window of some lane of lane_ok (first element `start`, taps D apart)
    has inside [0, size). A tap outside reads a masked -inf that never wins, so the scan over [lo, hi) is the
    scan over all K; a window of 2^31 taps over a small input (valid, with half of it as padding) walks only
    the taps inside instead of 2^31 of them."""
    first = _first_tap(start, D)
    last = tl.minimum((tl.maximum(size - start, 0) + D - 1) // D, K)
    return tl.min(tl.where(lane_ok, first, K), axis=0), tl.max(tl.where(lane_ok, last, 0), axis=0)


@triton.jit
def _covering_taps(u, D, S, O, K, lane_ok):
    """[lo, hi): the taps k < K by which some lane's input element (at u = i + pad) can be read, i.e. with
    u - k * D the start of a window 0 <= o < O (o * S = u - k * D, divisibility checked by the caller): k * D
    <= u and k * D >= u - (O - 1) * S. Non-negative operands only (see _first_tap)."""
    need = u - (O - 1) * S
    first = tl.where(need > 0, (tl.maximum(need, 0) + D - 1) // D, 0)
    last = tl.minimum(u // D + 1, K)  # u = i + pad >= 0
    return tl.min(tl.where(lane_ok, first, K), axis=0), tl.max(tl.where(lane_ok, last, 0), axis=0)


@triton.jit
def _forward_tap(x_row, X_stride_w, row_ok, wstart, W, DW, tap, kw, best, arg, SAVE_ARGMAX: tl.constexpr):
    """One step of the window scan: tap (kh, kw) = divmod(tap, KW) of row x_row replaces (best, arg) where it
    is in bounds and greater than best or NaN."""
    iw = wstart + kw * DW
    ok = row_ok & (iw >= 0) & (iw < W)
    val = tl.load(x_row + iw * X_stride_w, mask=ok, other=float("-inf")).to(best.dtype)
    take = ok & ((val > best) | (val != val))
    best = tl.where(take, val, best)
    if SAVE_ARGMAX:
        arg = tl.where(take, tap, arg)
    return best, arg


@triton.jit
def _add_if_argmax(g_row, G_stride_w, a_row, A_stride_w, ow, ok, tap, acc):
    """acc + the gradient of window ow of the row where the window exists (ok) and its argmax is `tap`; the
    gradient is read only there."""
    a = tl.load(a_row + ow * A_stride_w, mask=ok, other=0).to(tl.int32)
    hit = ok & (a == tap)
    return acc + tl.load(g_row + ow * G_stride_w, mask=hit, other=0.0).to(acc.dtype)


@triton.jit
def _backward_tap(g_row, G_stride_w, a_row, A_stride_w, h_ok, iw, PW, SW, SW_M, SW_S, DW, OW, tap, kw, acc,
                  FAST: tl.constexpr):
    """acc + the gradient of the window (oh, ow) of which this input element is tap (kh, kw), where that
    window exists (h_ok along h, checked here along w) and its argmax is the tap."""
    w_num = iw + PW - kw * DW
    ow = _divide(tl.maximum(w_num, 0), SW, SW_M, SW_S, FAST)
    ok = h_ok & (w_num >= 0) & (ow * SW == w_num) & (ow < OW)
    return _add_if_argmax(g_row, G_stride_w, a_row, A_stride_w, ow, ok, tap, acc)


@triton.jit(do_not_specialize=_SHAPE_DIVIDERS)
def _max_pool2d_forward_kernel(X_ptr, Y_ptr, A_ptr, total, C, H, W, OH, OW, X_stride_n, X_stride_c, X_stride_h,
                               X_stride_w, SH, SW, PH, PW, DH, DW, KH, KW, C_M, C_S, H_M, H_S, W_M, W_S,
                               UNROLL_KH: tl.constexpr,
                               UNROLL_KW: tl.constexpr, CHANNELS_LAST: tl.constexpr, SAVE_ARGMAX: tl.constexpr,
                               IDX64: tl.constexpr, BLOCK: tl.constexpr):
    """y[o] = max over the window of output element o (and A[o] = its argmax when SAVE_ARGMAX) for BLOCK
    consecutive elements o of the dense output.

    Memory traffic per output element: the KH * KW window taps read (each input element is read by
    ceil(KH / SH) * ceil(KW / SW) windows, the repeats L1/L2 hits), y written, plus one byte of argmax when
    saved. Channels-last: neighbouring lanes are neighbouring channels, so every tap is a coalesced load.
    UNROLL_KH x UNROLL_KW = KH x KW unrolls the window scan; 0 x 0 loops over it.
    """
    pid = tl.program_id(0)
    if IDX64:
        pid = pid.to(tl.int64)
    o = pid * BLOCK + tl.arange(0, BLOCK)
    mask = o < total
    n, c, oh, ow = _coords(o, C, OH, OW, C_M, C_S, H_M, H_S, W_M, W_S, CHANNELS_LAST, not IDX64)
    hstart = oh * SH - PH
    wstart = ow * SW - PW
    x_ptrs = X_ptr + n * X_stride_n + c * X_stride_c
    acc_t: tl.constexpr = tl.float64 if X_ptr.dtype.element_ty == tl.float64 else tl.float32
    best = tl.full([BLOCK], float("-inf"), acc_t)
    arg = (_first_tap(hstart, DH) * KW + _first_tap(wstart, DW)).to(tl.int32)
    if UNROLL_KH > 0:
        for kh in tl.static_range(UNROLL_KH):
            ih = hstart + kh * DH
            row_ok = mask & (ih >= 0) & (ih < H)
            x_row = x_ptrs + ih * X_stride_h
            for kw in tl.static_range(UNROLL_KW):
                best, arg = _forward_tap(x_row, X_stride_w, row_ok, wstart, W, DW, kh * UNROLL_KW + kw, kw, best,
                                         arg, SAVE_ARGMAX)
    else:
        kh_lo, kh_hi = _tap_span(hstart, H, DH, KH, mask)
        kw_lo, kw_hi = _tap_span(wstart, W, DW, KW, mask)
        for kh in range(kh_lo, kh_hi):
            ih = hstart + kh * DH
            row_ok = mask & (ih >= 0) & (ih < H)
            x_row = x_ptrs + ih * X_stride_h
            for kw in range(kw_lo, kw_hi):
                # int32 as arg: under IDX64 the window starts, so the tap bounds and kh, kw, are int64, and a
                # loop-carried arg may not change type (the compiler refuses; the interpreter does not check).
                best, arg = _forward_tap(x_row, X_stride_w, row_ok, wstart, W, DW, (kh * KW + kw).to(tl.int32), kw,
                                         best, arg, SAVE_ARGMAX)
    tl.store(Y_ptr + o, best.to(Y_ptr.dtype.element_ty), mask=mask)
    if SAVE_ARGMAX:
        tl.store(A_ptr + o, arg.to(A_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_SHAPE_DIVIDERS + _STRIDE_DIVIDERS)
def _max_pool2d_backward_kernel(G_ptr, A_ptr, DX_ptr, total, C, H, W, OH, OW, G_stride_n, G_stride_c, G_stride_h,
                                G_stride_w, A_stride_n, A_stride_c, A_stride_h, A_stride_w, SH, SW, PH, PW, DH, DW,
                                KH, KW, C_M, C_S, H_M, H_S, W_M, W_S, SH_M, SH_S, SW_M, SW_S,
                                UNROLL_KH: tl.constexpr, UNROLL_KW: tl.constexpr, COVER_H: tl.constexpr,
                                COVER_W: tl.constexpr, CHANNELS_LAST: tl.constexpr, IDX64: tl.constexpr,
                                BLOCK: tl.constexpr):
    """dx[i] = sum of g over the windows whose argmax is input element i, for BLOCK consecutive elements i
    of the dense gradient.

    Input element (ih, iw) is tap (kh, kw) of window (oh, ow) when ih + PH - kh * DH = oh * SH (and likewise
    along w) with 0 <= oh < OH. Windows are visited in increasing (oh, ow): torch's CPU scatter order, so
    fp32 sums round as torch's do. A window's gradient is loaded only where its argmax matches (a masked-off
    lane reads nothing): per input element, g and the argmax are read once per window containing it (L1/L2
    hits after the first) and dx written once.

    COVER_H x COVER_W > 0 (unrolled windows without dilation): only the windows that contain the element are
    visited -- along h the ceil(KH / SH) = COVER_H candidates ending at oh = (ih + PH) // SH, each reading it
    with tap kh = ih + PH - oh * SH when that is < KH -- one division per dimension. For 3x3/2 that is 4
    candidates instead of the KH x KW = 9 taps of the general walk, which divides once per tap (from
    (KH-1, KW-1) down: windows in increasing (oh, ow) too), over only the taps some lane's windows can read
    it by (_covering_taps).
    """
    pid = tl.program_id(0)
    if IDX64:
        pid = pid.to(tl.int64)
    i = pid * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    n, c, ih, iw = _coords(i, C, H, W, C_M, C_S, H_M, H_S, W_M, W_S, CHANNELS_LAST, not IDX64)
    g_ptrs = G_ptr + n * G_stride_n + c * G_stride_c
    a_ptrs = A_ptr + n * A_stride_n + c * A_stride_c
    acc_t: tl.constexpr = tl.float64 if G_ptr.dtype.element_ty == tl.float64 else tl.float32
    acc = tl.zeros([BLOCK], acc_t)
    if COVER_H > 0:
        uh = ih + PH
        uw = iw + PW
        last_oh = _divide(uh, SH, SH_M, SH_S, not IDX64)
        last_ow = _divide(uw, SW, SW_M, SW_S, not IDX64)
        for j in tl.static_range(COVER_H):
            oh = last_oh - (COVER_H - 1) + j
            kh = uh - oh * SH
            h_ok = mask & (oh >= 0) & (oh < OH) & (kh < UNROLL_KH)
            g_row = g_ptrs + oh * G_stride_h
            a_row = a_ptrs + oh * A_stride_h
            for l in tl.static_range(COVER_W):
                ow = last_ow - (COVER_W - 1) + l
                kw = uw - ow * SW
                ok = h_ok & (ow >= 0) & (ow < OW) & (kw < UNROLL_KW)
                acc = _add_if_argmax(g_row, G_stride_w, a_row, A_stride_w, ow, ok, kh * UNROLL_KW + kw, acc)
    elif UNROLL_KH > 0:
        for kh_up in tl.static_range(UNROLL_KH):
            kh = UNROLL_KH - 1 - kh_up
            h_num = ih + PH - kh * DH
            oh = _divide(tl.maximum(h_num, 0), SH, SH_M, SH_S, not IDX64)
            h_ok = mask & (h_num >= 0) & (oh * SH == h_num) & (oh < OH)
            for kw_up in tl.static_range(UNROLL_KW):
                kw = UNROLL_KW - 1 - kw_up
                acc = _backward_tap(g_ptrs + oh * G_stride_h, G_stride_w, a_ptrs + oh * A_stride_h, A_stride_w,
                                    h_ok, iw, PW, SW, SW_M, SW_S, DW, OW, kh * UNROLL_KW + kw, kw, acc, not IDX64)
    else:
        kh_lo, kh_hi = _covering_taps(ih + PH, DH, SH, OH, KH, mask)
        kw_lo, kw_hi = _covering_taps(iw + PW, DW, SW, OW, KW, mask)
        for kh_up in range(KH - kh_hi, KH - kh_lo):
            kh = KH - 1 - kh_up
            h_num = ih + PH - kh * DH
            oh = _divide(tl.maximum(h_num, 0), SH, SH_M, SH_S, not IDX64)
            h_ok = mask & (h_num >= 0) & (oh * SH == h_num) & (oh < OH)
            for kw_up in range(KW - kw_hi, KW - kw_lo):
                kw = KW - 1 - kw_up
                acc = _backward_tap(g_ptrs + oh * G_stride_h, G_stride_w, a_ptrs + oh * A_stride_h, A_stride_w,
                                    h_ok, iw, PW, SW, SW_M, SW_S, DW, OW, kh * KW + kw, kw, acc, not IDX64)
    tl.store(DX_ptr + i, acc.to(DX_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_SHAPE_DIVIDERS)
def _max_pool2d_indices_kernel(A_ptr, I_ptr, total, C, W, OH, OW, A_stride_n, A_stride_c, A_stride_h, A_stride_w,
                               KW, SH, SW, PH, PW, DH, DW, C_M, C_S, H_M, H_S, W_M, W_S,
                               CHANNELS_LAST: tl.constexpr, IDX64: tl.constexpr,
                               BLOCK: tl.constexpr):
    """indices[o] = ih * W + iw of the tap (kh, kw) = divmod(A[o], KW) of window o, for BLOCK consecutive
    elements o of the dense indices tensor."""
    pid = tl.program_id(0)
    if IDX64:
        pid = pid.to(tl.int64)
    o = pid * BLOCK + tl.arange(0, BLOCK)
    mask = o < total
    n, c, oh, ow = _coords(o, C, OH, OW, C_M, C_S, H_M, H_S, W_M, W_S, CHANNELS_LAST, not IDX64)
    a = tl.load(A_ptr + n * A_stride_n + c * A_stride_c + oh * A_stride_h + ow * A_stride_w, mask=mask,
                other=0).to(tl.int32)
    ih = oh * SH - PH + (a // KW) * DH
    iw = ow * SW - PW + (a % KW) * DW
    tl.store(I_ptr + o, ih.to(tl.int64) * W + iw, mask=mask)


# ------------------------------------------------------------------------------------------------ launchers

def _unroll(kernel_size) -> dict:
    """The UNROLL_KH / UNROLL_KW constants: the kernel size to unroll, or 0 x 0 to loop."""
    unrolled = max(kernel_size) <= _UNROLL_MAX
    return dict(UNROLL_KH=kernel_size[0] if unrolled else 0, UNROLL_KW=kernel_size[1] if unrolled else 0)


def _covering(kernel_size, stride, dilation) -> dict:
    """The backward's COVER_H / COVER_W constants: how many windows along each dimension can contain an input
    element (ceil(kernel / stride)), for unrolled windows without dilation; else 0 x 0 (the walk over taps)."""
    if _unroll(kernel_size)["UNROLL_KH"] == 0 or tuple(dilation) != (1, 1):
        return dict(COVER_H=0, COVER_W=0)
    return dict(COVER_H=-(-kernel_size[0] // stride[0]), COVER_W=-(-kernel_size[1] // stride[1]))


def _as_4d(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 4 else t.unsqueeze(0)


def _extent(t: torch.Tensor) -> int:
    """One past the largest element offset ``t`` reaches."""
    return 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if s > 0)


def _needs_int64(*tensors: torch.Tensor) -> bool:
    """Offsets overflow int32 (the program's block start included)."""
    return max(_extent(t) for t in tensors) + _BLOCK > _INT32_LIMIT


def max_pool2d_forward(input: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
                       dilation: list[int], ceil_mode: bool, save_argmax: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # the op's checks, then its outputs (its fake kernel)
    y, argmax = _fakes.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, save_argmax)
    if y.numel() == 0:
        return y, argmax
    x4, y4 = _as_4d(input), _as_4d(y)
    _, C, H, W = x4.shape
    OH, OW = y4.shape[2:]
    total = y.numel()
    # Without an argmax to write, y stands in for its pointer (never used): no null pointer reaches the launch.
    _launch.grid(_max_pool2d_forward_kernel, (triton.cdiv(total, _BLOCK),))(
        x4, y, argmax if save_argmax else y, total, C, H, W, OH, OW, *x4.stride(), stride[0], stride[1], padding[0],
        padding[1], dilation[0], dilation[1], kernel_size[0], kernel_size[1], **_unroll(kernel_size),
        **_dividers(C=C, H=OH, W=OW), CHANNELS_LAST=max_pool2d_is_channels_last(y), SAVE_ARGMAX=save_argmax,
        IDX64=_needs_int64(x4, y), BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    return y, argmax


def max_pool2d_backward(grad_output: torch.Tensor, argmax: torch.Tensor, input_size: list[int],
                        kernel_size: list[int], stride: list[int], padding: list[int],
                        dilation: list[int]) -> torch.Tensor:
    # the op's checks, then its output (its fake kernel)
    dx = _fakes.max_pool2d_backward(grad_output, argmax, input_size, kernel_size, stride, padding, dilation)
    if dx.numel() == 0:
        return dx
    g4, a4, dx4 = _as_4d(grad_output), _as_4d(argmax), _as_4d(dx)
    _, C, H, W = dx4.shape
    OH, OW = a4.shape[2:]
    total = dx.numel()
    _launch.grid(_max_pool2d_backward_kernel, (triton.cdiv(total, _BLOCK),))(
        g4, a4, dx, total, C, H, W, OH, OW, *g4.stride(), *a4.stride(), stride[0], stride[1], padding[0],
        padding[1], dilation[0], dilation[1], kernel_size[0], kernel_size[1], **_unroll(kernel_size),
        **_covering(kernel_size, stride, dilation),
        **_dividers(C=C, H=H, W=W, SH=stride[0], SW=stride[1]), CHANNELS_LAST=max_pool2d_is_channels_last(dx),
        IDX64=_needs_int64(g4, a4, dx), BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    return dx


def max_pool2d_indices(argmax: torch.Tensor, input_size: list[int], kernel_size: list[int], stride: list[int],
                       padding: list[int], dilation: list[int]) -> torch.Tensor:
    # the op's checks, then its output (its fake kernel)
    indices = _fakes.max_pool2d_indices(argmax, input_size, kernel_size, stride, padding, dilation)
    if indices.numel() == 0:
        return indices
    a4 = _as_4d(argmax)
    _, C, OH, OW = a4.shape
    total = indices.numel()
    _launch.grid(_max_pool2d_indices_kernel, (triton.cdiv(total, _BLOCK),))(
        a4, indices, total, C, input_size[-1], OH, OW, *a4.stride(), kernel_size[1], stride[0], stride[1],
        padding[0], padding[1], dilation[0], dilation[1], **_dividers(C=C, H=OH, W=OW),
        CHANNELS_LAST=max_pool2d_is_channels_last(indices), IDX64=_needs_int64(a4, indices), BLOCK=_BLOCK,
        num_warps=_NUM_WARPS)
    return indices


# torch releases before pytorch#188722 ignore triton_op's `schema` and infer one from the annotations above:
# SymInt[] where these say int[2] -- the same calls, so the launchers keep their annotations exact.
max_pool2d_triton = triton_op(
    "classicnets_ext::max_pool2d_triton", mutates_args=(),
    schema="(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode, "
           "bool save_argmax) -> (Tensor, Tensor)")(max_pool2d_forward)
max_pool2d_triton_backward = triton_op(
    "classicnets_ext::max_pool2d_triton_backward", mutates_args=(),
    schema="(Tensor grad_output, Tensor argmax, SymInt[] input_size, int[2] kernel_size, int[2] stride, "
           "int[2] padding, int[2] dilation) -> Tensor")(max_pool2d_backward)
max_pool2d_triton_indices = triton_op(
    "classicnets_ext::max_pool2d_triton_indices", mutates_args=(),
    schema="(Tensor argmax, SymInt[] input_size, int[2] kernel_size, int[2] stride, int[2] padding, "
           "int[2] dilation) -> Tensor")(max_pool2d_indices)

# The C++ ops' fake kernels (_fakes: their checks, then their outputs): triton_op's default fake traces the
# launcher, which cannot run under TRITON_INTERPRET.
max_pool2d_triton.register_fake(_fakes.max_pool2d)
max_pool2d_triton_backward.register_fake(_fakes.max_pool2d_backward)
max_pool2d_triton_indices.register_fake(_fakes.max_pool2d_indices)
