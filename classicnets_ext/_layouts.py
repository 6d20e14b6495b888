"""Output layouts of the ops, shared by the fake (meta) kernels (``_fakes``), the Triton launchers and the tests.

They mirror ``cnx::lrn::layout_of`` in csrc/lrn/lrn.cpp: kernels walk an (N, C, S) view in one of two
dense layouts -- channels-first (NCHW-like) or channels-last (C innermost). A channels-last input keeps its
layout, and a view torch takes as channels-last (a channel or spatial slice of one) is answered channels-last
as torch answers it; any other input is handled (and answered) channels-first.
"""
import torch
from torch import _prims_common


def _data_dependent(error: RuntimeError) -> bool:
    """Whether ``error`` is a guard on a data-dependent (unbacked) size: a size torch.compile does not know
    while it traces (a slice to an ``.item()``, a batch picked by a mask), which the real kernels, knowing it,
    decide on at run time. The layout tests below then decide without guards, as torch's meta kernels do."""
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode  # (loaded where one is)

    return isinstance(error, GuardOnDataDependentSymNode)


def require(cond, error: type, message) -> None:
    """``cond``, else ``error(message())``, in the fake kernels' checks. A symbolic ``cond`` (a size under
    torch.compile) goes through torch's own check, which guards on a backed size and turns one on a
    data-dependent (unbacked) size into a run-time assert, as torch's meta kernels do: a plain ``if`` on it
    cannot trace (GuardOnDataDependentSymNode). (Not for code Dynamo traces, which cannot take the message.)"""
    if isinstance(cond, torch.SymBool):
        torch._check_with(error, cond, message)
    elif not cond:
        raise error(message())


def is_channels_last_dense(t: torch.Tensor) -> bool:
    """(N, C, *) with C innermost and the rest dense: moving C to the end gives a contiguous tensor."""
    order = [0, *range(2, t.dim()), 1]
    try:
        return not t.is_contiguous() and t.permute(order).is_contiguous()
    except RuntimeError as error:
        if not _data_dependent(error):
            raise
        return (_prims_common.is_contiguous(t.permute(order), false_if_dde=True)
                and not _prims_common.is_contiguous(t, false_if_dde=True))


def is_channels_last_view(t: torch.Tensor) -> bool:
    """A 4-D or 5-D tensor torch's kernels answer channels-last (``suggest_memory_format``, from the strides'
    order) though it is not contiguous: dense channels-last, or a slice of such a tensor.
    csrc/common/layout.h's is_channels_last_view is the same rule."""
    if t.dim() not in (4, 5):
        return False
    try:
        contiguous = t.is_contiguous()
    except RuntimeError as error:
        if not _data_dependent(error):
            raise
        contiguous = _prims_common.is_contiguous(t, false_if_dde=True)
    return not contiguous and _prims_common.suggest_memory_format(t) != torch.contiguous_format


def lrn_kernel_input(input: torch.Tensor) -> torch.Tensor:
    """``input`` as the LRN kernels read it: dense channels-last as it is, a channels-last view copied dense
    channels-last, anything else contiguous (``cnx::lrn::layout_of``)."""
    if is_channels_last_dense(input):
        return input
    if is_channels_last_view(input):
        return torch.empty_like(input).copy_(input)  # empty_like lays a non-dense tensor out as torch suggests
    return input.contiguous()


def channels_last_strides(shape) -> list:
    """Dense strides in the order (N, *, C): torch's channels-last strides for 4-D and 5-D shapes, and the same
    rule for any other rank (csrc/common/layout.h's with_dense_strides)."""
    strides, step = [0] * len(shape), 1
    for d in [1, *range(len(shape) - 1, 1, -1), 0]:
        strides[d], step = step, step * shape[d]
    return strides


def lrn_output_like(input: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor shaped like ``input`` in the layout the LRN kernels write, with torch's strides for
    that layout: a dense input's size-1 dimensions may carry any stride, which the output does not take. An
    empty input's output keeps its strides, as torch's composite's does."""
    from torch.fx.experimental.symbolic_shapes import guard_or_false

    if guard_or_false(input.numel() == 0):
        return torch.empty_strided(input.shape, input.stride(), dtype=input.dtype, device=input.device)
    if is_channels_last_dense(input):
        return torch.empty_strided(input.shape, channels_last_strides(input.shape), dtype=input.dtype,
                                   device=input.device)
    if is_channels_last_view(input):
        return torch.empty_like(input)  # laid out as torch suggests for the view (dense channels-last)
    return torch.empty(input.shape, dtype=input.dtype, device=input.device)


# ----------------------------------------------------------------------------------------------- max pool
#
# Max pooling works on (N, C, H, W) or (C, H, W). A 4-D input torch answers channels-last (dense channels-last,
# or a slice of such a tensor: max_pool2d_is_channels_last) is answered channels-last -- output, argmax and
# indices -- and its gradient is channels-last; everything else (any 3-D input, as in torch, and every other
# stride pattern) is answered contiguous. The backward knows the input only by its size, so it takes its
# layout from the argmax, which the forward wrote in the input's. The functions below take the ops' exact
# arguments; the fake kernels (``_fakes``) check those, then call them.

def pooling_output_size(input_size: int, kernel_size: int, stride: int, padding: int, dilation: int,
                        ceil_mode: bool) -> int:
    """torch's pooling_output_shape (aten/src/ATen/native/Pool.h) along one dimension: with ceil_mode the
    last window may hang over the end, but must start inside the input or the left padding."""
    span = input_size + 2 * padding - dilation * (kernel_size - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1  # floor division, as torch's div_rtn
    if ceil_mode and (out - 1) * stride >= input_size + padding:
        out -= 1
    return out


def max_pool2d_output_shape(input_shape, kernel_size, stride, padding, dilation, ceil_mode) -> list:
    """The output shape: input_shape with its last two sizes pooled."""
    *lead, h, w = input_shape
    return [*lead, pooling_output_size(h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode),
            pooling_output_size(w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)]


def max_pool2d_is_channels_last(t: torch.Tensor) -> bool:
    """Whether a max-pool tensor (input, output, argmax) is walked channels-last: 4-D, and channels-last to
    torch's max_pool2d (``suggest_memory_format``) -- dense, or a view the kernels copy dense first. torch's
    test reads size-1 dimensions' strides too, so a dense channels-last (1, 3, 1, 5) with strides (1, 1, 3, 3)
    is contiguous to it, and to us. csrc/maxpool/maxpool.h's is_channels_last is the same rule. A dense
    channels-last tensor without a size-1 dimension is one to torch, and torch's test (~5 us a call, on every
    channels-last training call) is skipped. So it is for a contiguous tensor, but one with a single channel or a
    single spatial element (a channels-last 1x1 map, (2, 3, 1, 1) with strides (3, 1, 3, 3)): the strides of
    its size-1 dimensions can make it channels-last to torch, and only then."""
    if t.dim() != 4:
        return False
    try:
        if t.is_contiguous():
            if t.shape[1] > 1 and t.shape[2] * t.shape[3] > 1:
                return False
        elif 1 not in t.shape and t.is_contiguous(memory_format=torch.channels_last):
            return True
    except RuntimeError as error:  # a data-dependent size (a batch picked by a mask, under torch.compile)?
        if not _data_dependent(error):
            raise
        # then torch's own test decides, as in torch's meta kernel: channels-last where it can tell
    return _prims_common.suggest_memory_format(t) == torch.channels_last


def max_pool2d_argmax_dtype(kernel_size) -> torch.dtype:
    """The argmax holds the window-local index kh * kW + kw: one byte up to 256 taps, else int32."""
    return torch.uint8 if kernel_size[0] * kernel_size[1] <= 256 else torch.int32


def _max_pool2d_empty(shape, like: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    fmt = torch.channels_last if max_pool2d_is_channels_last(like) else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, device=device, memory_format=fmt)


def max_pool2d_outputs_like(input: torch.Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool,
                            save_argmax: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised (output, argmax) of classicnets_ext::max_pool2d(_triton); the argmax is an empty uint8
    tensor when ``save_argmax`` is false."""
    shape = max_pool2d_output_shape(input.shape, kernel_size, stride, padding, dilation, ceil_mode)
    output = _max_pool2d_empty(shape, input, input.dtype, input.device)
    if save_argmax:
        argmax = _max_pool2d_empty(shape, input, max_pool2d_argmax_dtype(kernel_size), input.device)
    else:
        argmax = torch.empty(0, dtype=torch.uint8, device=input.device)
    return output, argmax


def max_pool2d_grad_input_like(grad_output: torch.Tensor, argmax: torch.Tensor, input_size, kernel_size, stride,
                               padding, dilation) -> torch.Tensor:
    """Uninitialised result of classicnets_ext::max_pool2d_backward(_triton): the input's size, grad_output's
    dtype, the argmax's layout."""
    return _max_pool2d_empty(list(input_size), argmax, grad_output.dtype, grad_output.device)


def max_pool2d_indices_like(argmax: torch.Tensor, input_size, kernel_size, stride, padding,
                            dilation) -> torch.Tensor:
    """Uninitialised result of classicnets_ext::max_pool2d_indices(_triton): int64, the argmax's shape and
    layout."""
    return _max_pool2d_empty(argmax.shape, argmax, torch.int64, argmax.device)


# ------------------------------------------------------------------------------------ fused pool -> LRN
#
# max_pool2d_lrn follows max pooling's layout rule; its saved tensors (pooled, argmax) are max_pool2d's
# output and argmax, with dilation 1.

def max_pool2d_lrn_outputs_like(input: torch.Tensor, kernel_size, stride, padding, ceil_mode: bool, size: int,
                                alpha: float, beta: float, k: float, relu: bool,
                                save_for_backward: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uninitialised (output, pooled, argmax) of classicnets_ext::max_pool2d_lrn(_triton); pooled is an
    empty tensor of the input's dtype and argmax an empty uint8 tensor without ``save_for_backward``."""
    pooled, argmax = max_pool2d_outputs_like(input, kernel_size, stride, padding, (1, 1), ceil_mode,
                                             save_for_backward)
    if max_pool2d_is_channels_last(input) and _channels_last_is_contiguous(pooled.shape):
        output = torch.empty(pooled.shape, dtype=pooled.dtype, device=pooled.device)  # LRN's layout rule
    else:
        output = torch.empty_like(pooled)
    return output, pooled if save_for_backward else output.new_empty(0), argmax


def _channels_last_is_contiguous(shape) -> bool:
    """Whether a dense channels-last tensor of ``shape`` (N, C, H, W) is contiguous too: one channel, a 1x1
    map, or no elements. Asked without a guard on a data-dependent size (an unbacked batch is taken as not 0)."""
    from torch.fx.experimental.symbolic_shapes import guard_or_false

    n, c, h, w = shape
    return guard_or_false(c == 1) or guard_or_false(h * w == 1) or guard_or_false(n == 0)


def max_pool2d_lrn_grad_input_like(grad_output: torch.Tensor, pooled: torch.Tensor, argmax: torch.Tensor,
                                   input_size, kernel_size, stride, padding, size, alpha, beta, k,
                                   relu) -> torch.Tensor:
    """Uninitialised result of classicnets_ext::max_pool2d_lrn_backward(_triton)."""
    return max_pool2d_grad_input_like(grad_output, argmax, input_size, kernel_size, stride, padding, (1, 1))


# ---------------------------------------------------------------------------------------------- inception
#
# The Inception op answers channels-last whatever the input's layout: its kernels work on pixels as rows of
# channels, and a block's output mostly feeds the next block.

def inception_outputs_like(input, weight_1x1, weight_3x3, weight_5x5, weight_pool, ch1x1):
    """The inception op's uninitialised outputs (output, reduced_3x3, reduced_5x5), all channels-last."""
    n, _, h, w = input.shape
    out_channels = ch1x1 + weight_3x3.shape[0] + weight_5x5.shape[0] + weight_pool.shape[0]
    return tuple(torch.empty((n, c, h, w), dtype=input.dtype, device=input.device, memory_format=torch.channels_last)
                 for c in (out_channels, weight_3x3.shape[1], weight_5x5.shape[1]))
