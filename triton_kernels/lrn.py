"""Local Response Normalization in Triton: the ops classicnets_ext::lrn_triton and lrn_triton_backward.

The math of csrc/lrn/lrn_math.h, with the semantics of the CPU kernels (csrc/lrn/lrn_cpu_kernel.cpp):

    s_c  = k + alpha / size * sum_{m = c - lo}^{c + hi} x_m^2     lo = size // 2, hi = (size - 1) // 2,
    y_c  = x_c * s_c^-beta                                         the window clipped to [0, C)
    dx_j = g_j p_j - (2 alpha beta / size) x_j * sum_{i = j - hi}^{j + lo} t_i,   p = s^-beta, t_i = g_i x_i p_i / s_i

The input is walked as an (N, C, S) view in one of the two dense layouts of classicnets_ext._layouts
(channels-first, or channels-last kept as it is); each program takes one n and BLOCK_S columns and streams
along C. Every window is summed directly at every channel, whatever its size, the re-reads hitting L1: exact
to rounding, as torch's sums (a running sum cancels once a huge square has left it -- |x| ~ 1e18 in fp32 left
garbage in the following channels, 1e15 at size 17 NaN), and Inf and NaN inputs give torch's results.
fp16 / bf16 / fp32 accumulate in fp32, fp64 in fp64. Channel offsets are 64-bit (c * stride overflows int32
in a channels-first sample of 2^31 elements).

size, alpha, beta and k are compile-time constants: a network uses one set, the window loops know their
bounds, and the constants enter the code exactly (a float kernel argument is rounded to fp32, which fp64
inputs cannot afford).
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op

from classicnets_ext import _fakes
from classicnets_ext._layouts import is_channels_last_dense, lrn_kernel_input

from . import _launch

_MIN_PROGRAMS = 1024  # below this, narrower column blocks: each program's walk along C is sequential


@triton.jit
def _sqrt_times_fourth_root(s):
    """sqrt(s) * sqrt(sqrt(s)) = s^0.75. In fp32 through sqrt_rn: tl.sqrt compiles to sqrt.approx.ftz, which
    flushes a subnormal s (k = 0 and tiny x) to 0 and gives inf where torch is finite; the rounded sqrt costs
    nothing against the loads. (fp64's sqrt is the rounded one; sqrt_rn takes fp32 only.)"""
    if s.dtype == tl.float32:
        r = tl.sqrt_rn(s)
        return r * tl.sqrt_rn(r)
    else:
        r = tl.sqrt(s)
        return r * tl.sqrt(r)


@triton.jit
def _pow_neg_beta(s, NEG_BETA: tl.constexpr):
    """s^-beta: 1 / (sqrt(s) * sqrt(sqrt(s))) for beta = 0.75, else exp2(-beta * log2(|s|)) (beta = 0: 1), with
    pow's sign for a negative s and an integer beta (k < 0 with beta = 1 is finite in torch: no NaN here)."""
    if NEG_BETA == -0.75:
        return 1.0 / _sqrt_times_fourth_root(s)
    elif NEG_BETA == 0.0:
        return tl.full(s.shape, 1.0, s.dtype)
    elif NEG_BETA == NEG_BETA // 1:  # an integer: |s|^-beta, negated for s < 0 and an odd beta
        magnitude = tl.exp2(NEG_BETA * tl.log2(tl.abs(s)))
        if NEG_BETA % 2 != 0:
            magnitude = tl.where(s < 0, -magnitude, magnitude)
        return magnitude
    else:
        return tl.exp2(NEG_BETA * tl.log2(s))


@triton.jit
def _window_sum_sq(x_ptrs, X_stride_c, first, last, mask, acc):
    """acc + sum_{m = first}^{last} x_m^2 over a column block."""
    for m in range(first, last + 1):
        x = tl.load(x_ptrs + m * X_stride_c, mask=mask, other=0.0).to(acc.dtype)
        acc += x * x
    return acc


@triton.jit
def _lrn_forward_kernel(X_ptr, Y_ptr, C, S, X_stride_n, X_stride_c, X_stride_s, n_col_blocks,
                        LO: tl.constexpr, HI: tl.constexpr, ALPHA_OVER_N: tl.constexpr, NEG_BETA: tl.constexpr,
                        K: tl.constexpr, IDX64: tl.constexpr, BLOCK_S: tl.constexpr):
    """y_c = x_c * (K + ALPHA_OVER_N * sum_{m=c-LO}^{c+HI} x_m^2)^NEG_BETA for one n and BLOCK_S columns.

    Y shares X's strides. Memory traffic per element: x read once and y written once from/to DRAM
    (2 * itemsize bytes); its other size - 1 loads (each window's rows, and x_c itself) were read a few
    channels earlier and hit L1/L2.
    """
    pid = tl.program_id(0).to(tl.int64)
    if IDX64:  # c * X_stride_c past 2^31: a channels-first sample of 2^31 elements or more
        X_stride_c = X_stride_c.to(tl.int64)
    cols = (pid % n_col_blocks) * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = cols < S
    offsets = (pid // n_col_blocks) * X_stride_n + cols * X_stride_s
    x_ptrs = X_ptr + offsets
    y_ptrs = Y_ptr + offsets
    acc_t: tl.constexpr = tl.float64 if X_ptr.dtype.element_ty == tl.float64 else tl.float32
    for c in range(C):
        sum_sq = _window_sum_sq(x_ptrs, X_stride_c, tl.maximum(c - LO, 0), tl.minimum(c + HI, C - 1), mask,
                                tl.zeros([BLOCK_S], acc_t))
        x = tl.load(x_ptrs + c * X_stride_c, mask=mask, other=0.0).to(acc_t)
        y = x * _pow_neg_beta(K + ALPHA_OVER_N * sum_sq, NEG_BETA)
        tl.store(y_ptrs + c * X_stride_c, y.to(Y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lrn_backward_kernel(G_ptr, X_ptr, DX_ptr, Ring_ptr, C, S, X_stride_n, X_stride_c, X_stride_s, n_col_blocks,
                         L, LO: tl.constexpr, HI: tl.constexpr, ALPHA_OVER_N: tl.constexpr,
                         NEG_BETA: tl.constexpr, K: tl.constexpr, GRAD_COEF: tl.constexpr, IDX64: tl.constexpr,
                         BLOCK_S: tl.constexpr):
    """dx_j = gp_j - GRAD_COEF * x_j * T_j for one n and BLOCK_S columns, in one pass i = 0 .. C-1+LO:

        gp_i = g_i * s_i^NEG_BETA,  t_i = gp_i * x_i / s_i,  T_{i-LO} = sum_{m=i-SIZE+1}^{i} t_m (summed
        directly from the ring), dx_{i-LO} written at step i.

    t and gp live in this program's slice of Ring (shape (2, programs, L, BLOCK_S), accumulation dtype): slot
    i % L holds channel i, L = min(SIZE, C) (t_{i-SIZE}, which t_i overwrites when L = SIZE, left the window
    at step i - 1; when L = C no slot is ever reused). A per-program ring rather than a (2, N, C, S) scratch: its 2 * L
    rows per column stay in L2 and reach DRAM once, instead of 2 * C rows per column of extra traffic.
    Each slot is read back by the thread that wrote it (BLOCK_S >= 32 * num_warps: no replicated lanes).

    Memory traffic per element: x and g read once, dx written once from/to DRAM (3 * itemsize bytes); x is
    re-loaded SIZE more times (its windows, its output) and the ring takes 2 stores and SIZE + 1 loads of the
    accumulation type, all of them L1/L2 hits.
    """
    SIZE: tl.constexpr = LO + HI + 1
    pid = tl.program_id(0).to(tl.int64)
    if IDX64:  # i * X_stride_c past 2^31: a channels-first sample of 2^31 elements or more
        X_stride_c = X_stride_c.to(tl.int64)
    cols = (pid % n_col_blocks) * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = cols < S
    offsets = (pid // n_col_blocks) * X_stride_n + cols * X_stride_s
    x_ptrs = X_ptr + offsets
    g_ptrs = G_ptr + offsets
    dx_ptrs = DX_ptr + offsets
    t_ring = Ring_ptr + pid * L * BLOCK_S + tl.arange(0, BLOCK_S)
    gp_ring = t_ring + tl.num_programs(0).to(tl.int64) * L * BLOCK_S
    acc_t: tl.constexpr = tl.float64 if X_ptr.dtype.element_ty == tl.float64 else tl.float32
    for i in range(C + LO):
        if i < C:
            sum_sq = _window_sum_sq(x_ptrs, X_stride_c, tl.maximum(i - LO, 0), tl.minimum(i + HI, C - 1), mask,
                                    tl.zeros([BLOCK_S], acc_t))
            s = K + ALPHA_OVER_N * sum_sq
            x = tl.load(x_ptrs + i * X_stride_c, mask=mask, other=0.0).to(acc_t)
            gp = tl.load(g_ptrs + i * X_stride_c, mask=mask, other=0.0).to(acc_t) * _pow_neg_beta(s, NEG_BETA)
            t = gp * x / s
            tl.store(t_ring + (i % L) * BLOCK_S, t, mask=mask)
            tl.store(gp_ring + (i % L) * BLOCK_S, gp, mask=mask)
        t_sum = tl.zeros([BLOCK_S], acc_t)
        for m in range(tl.maximum(i - SIZE + 1, 0), tl.minimum(i, C - 1) + 1):
            t_sum += tl.load(t_ring + (m % L) * BLOCK_S, mask=mask, other=0.0)
        out = i - LO
        if out >= 0:
            gp_out = tl.load(gp_ring + (out % L) * BLOCK_S, mask=mask, other=0.0)
            x_out = tl.load(x_ptrs + out * X_stride_c, mask=mask, other=0.0).to(acc_t)
            if NEG_BETA == 0.0:  # lrn_math.h's backward_value: gp, NaN only where x is not finite, as torch's
                dx = gp_out + x_out * 0.0
            else:
                dx = gp_out - GRAD_COEF * x_out * t_sum
            tl.store(dx_ptrs + out * X_stride_c, dx.to(DX_ptr.dtype.element_ty), mask=mask)


def _launch_config(N: int, S: int, channels_last: bool) -> tuple[int, int]:
    """(BLOCK_S, num_warps): 4 columns a thread (16-byte fp32 accesses) up to 512 columns (128 channels-last,
    where each column is its own cache line), halved while that leaves under _MIN_PROGRAMS programs; never
    under 32 * num_warps columns."""
    block = min(triton.next_power_of_2(S), 128 if channels_last else 512)
    while block > 32 and N * triton.cdiv(S, block) < _MIN_PROGRAMS:
        block //= 2
    block = max(block, 32)
    return block, max(1, block // 128)


def window_constants(size: int, alpha: float, beta: float, k: float, C: int) -> dict:
    """The kernels' compile-time window constants (see the module docstring). LO and HI, the window's reach
    below and above its channel, stop at C - 1: the window is clipped to the C channels anyway, and the
    kernels loop C + LO or C + HI times (as csrc's kernel_window, so that any size torch takes runs in time
    and registers bounded by C); alpha / size keeps the true size."""
    reach = max(C - 1, 0)
    return dict(LO=min(size // 2, reach), HI=min((size - 1) // 2, reach), ALPHA_OVER_N=float(alpha) / size,
                NEG_BETA=-float(beta), K=float(k))


def _problem(input: torch.Tensor, size: int, alpha: float, beta: float, k: float):
    """The input in the kernels' layout, its (N, C, S), its (n, c, s) strides and the window constants."""
    x = lrn_kernel_input(input)
    channels_last = is_channels_last_dense(x)
    N, C = x.shape[0], x.shape[1]
    S = x.numel() // (N * C) if N * C else 0
    strides = (C * S, 1, C) if channels_last else (C * S, S, 1)
    consts = dict(window_constants(size, alpha, beta, k, C), IDX64=_channel_offsets_need_int64(C, S, channels_last))
    return x, (N, C, S), strides, channels_last, consts


def _channel_offsets_need_int64(C: int, S: int, channels_last: bool) -> bool:
    """Whether c * (channel stride) can pass 2^31: channels-first with a sample of 2^31 elements or more. Not
    with S = 1: the channel stride is then 1, which triton specialises to a constant (no ``.to``), and c * 1 is
    c, as wide as the loop over C already is (C >= 2^31 arrives as int64)."""
    return not channels_last and S > 1 and C * S >= 2**31


def lrn_forward(input: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75,
                k: float = 1.0) -> torch.Tensor:
    y = _fakes.lrn(input, size, alpha, beta, k)  # the op's checks, then its outputs (its fake kernel)
    x, (N, C, S), strides, channels_last, consts = _problem(input, size, alpha, beta, k)
    if y.numel() == 0:
        return y
    block, num_warps = _launch_config(N, S, channels_last)
    n_col_blocks = triton.cdiv(S, block)
    _launch.grid(_lrn_forward_kernel, (N * n_col_blocks,))(
        x, y, C, S, *strides, n_col_blocks, **consts, BLOCK_S=block, num_warps=num_warps)
    return y


def lrn_backward(grad_output: torch.Tensor, input: torch.Tensor, size: int, alpha: float, beta: float,
                 k: float) -> torch.Tensor:
    dx = _fakes.lrn_backward(grad_output, input, size, alpha, beta, k)  # the op's checks, then its outputs (its fake kernel)
    x, (N, C, S), strides, channels_last, consts = _problem(input, size, alpha, beta, k)
    if dx.numel() == 0:
        return dx
    g = grad_output if grad_output.stride() == x.stride() else torch.empty_like(x).copy_(grad_output)
    block, num_warps = _launch_config(N, S, channels_last)
    n_col_blocks = triton.cdiv(S, block)
    programs, L = N * n_col_blocks, min(size, C)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    ring = torch.empty((2, programs, L, block), dtype=acc_dtype, device=x.device)
    # num_stages=1: no software pipelining, so no ring load is hoisted above the store it must see.
    _launch.grid(_lrn_backward_kernel, (programs,))(
        g, x, dx, ring, C, S, *strides, n_col_blocks, L, **consts, GRAD_COEF=2.0 * alpha * beta / size,
        BLOCK_S=block, num_warps=num_warps, num_stages=1)
    return dx


lrn_triton = triton_op(
    "classicnets_ext::lrn_triton", mutates_args=(),
    schema="(Tensor input, int size, float alpha=1e-4, float beta=0.75, float k=1.0) -> Tensor")(lrn_forward)
lrn_triton_backward = triton_op(
    "classicnets_ext::lrn_triton_backward", mutates_args=(),
    schema="(Tensor grad_output, Tensor input, int size, float alpha, float beta, float k) -> Tensor")(lrn_backward)

# The C++ ops' fake kernels (_fakes: their checks, then their outputs): triton_op's default fake traces the
# launcher, which cannot run under TRITON_INTERPRET.
lrn_triton.register_fake(_fakes.lrn)
lrn_triton_backward.register_fake(_fakes.lrn_backward)
