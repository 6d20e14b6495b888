"""The raw ops' argument checks in Python: csrc's checks (``check_forward_args`` and friends in
csrc/lrn/lrn.cpp, csrc/maxpool/maxpool.cpp, csrc/pool_lrn/pool_lrn.cpp, csrc/inception/inception.cpp,
csrc/linear/linear_cpu.cpp), in the same order, with the same exception types (ValueError for values,
TypeError for dtypes, RuntimeError for devices) and the same messages but for how a dtype is named (C++
writes ``Int``, Python ``torch.int32``).

Two callers need them. The fake kernels (``_fakes``): without them a bad call traces through torch.compile
or torch.export as if it were good -- an integer input, a zero stride, an empty output -- and fails only when
the compiled graph runs, or divides by zero while tracing. And the Triton launchers, which have no C++ in
front of them. ``ops`` checks the public API's arguments first, raising as torch's functions do; these
guard direct calls of ``torch.ops.classicnets_ext``. Not here: which device type a tensor is on, which
only the kernel that runs knows (C++'s ``check_device``); a fake runs for every backend.

Shapes may be symbolic under torch.compile: comparing them records guards, as torch's own meta functions do.
"""
from __future__ import annotations

import math

import torch

from ._layouts import max_pool2d_argmax_dtype, max_pool2d_output_shape, pooling_output_size, require

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

_INT32_MAX = 2**31 - 1


def dtype(op: str, name: str, t: torch.Tensor) -> None:
    """The dtypes the kernels dispatch on (not every floating type: float8 is one)."""
    if t.dtype not in DTYPES:
        raise TypeError(f"{op}: `{name}` must be float32, float64, float16 or bfloat16, got {t.dtype}")


def same_shape(op: str, name: str, t: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if t.shape != other.shape:
        raise ValueError(f"{op}: `{name}` shape {list(t.shape)} differs from `{other_name}` shape "
                         f"{list(other.shape)}")


def same_dtype(op: str, name: str, t: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if t.dtype != other.dtype:
        raise TypeError(f"{op}: `{name}` dtype {t.dtype} differs from `{other_name}` dtype {other.dtype}")


def same_device(op: str, name: str, t: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if t.device != other.device:
        raise RuntimeError(f"{op}: `{name}` is on {t.device} but `{other_name}` is on {other.device}")


# ------------------------------------------------------------------------------------------------------ LRN

def lrn_settings(op: str, size: int, alpha: float, beta: float, k: float) -> None:
    """cnx::lrn::check_settings: a positive size, finite alpha, beta and k."""
    if size <= 0:
        raise ValueError(f"{op}: `size` must be positive, got {size}")
    for name, value in (("alpha", alpha), ("beta", beta), ("k", k)):
        if not math.isfinite(value):
            raise ValueError(f"{op}: `{name}` must be finite, got {value}")


def lrn(input: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> None:
    """cnx::lrn::check_forward_args."""
    op = "local_response_norm"
    if input.dim() < 3:
        raise ValueError(f"{op}: expected `input` of 3 or more dimensions (N, C, *), got {input.dim()} dimensions")
    dtype(op, "input", input)
    lrn_settings(op, size, alpha, beta, k)


def lrn_backward(grad_output: torch.Tensor, input: torch.Tensor, size: int, alpha: float, beta: float,
                 k: float) -> None:
    """cnx::lrn::check_backward_args."""
    lrn(input, size, alpha, beta, k)
    op = "local_response_norm backward"
    same_shape(op, "grad_output", grad_output, "input", input)
    same_dtype(op, "grad_output", grad_output, "input", input)
    same_device(op, "grad_output", grad_output, "input", input)


# ------------------------------------------------------------------------------------------------- max pool

def pool_params(op: str, kernel_size, stride, padding, dilation) -> None:
    """cnx::maxpool::check_params: the four int[2] arguments, as torch checks them."""
    for name, value in (("kernel_size", kernel_size), ("stride", stride), ("padding", padding),
                        ("dilation", dilation)):
        if len(value) != 2:
            raise ValueError(f"{op}: `{name}` must have 2 values (height, width), got {list(value)}")
        if value[0] > _INT32_MAX or value[1] > _INT32_MAX:
            raise ValueError(f"{op}: `{name}` values must fit in 32 bits (at most {_INT32_MAX}, as in torch), got "
                             f"{list(value)}")
    for name, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
        if value[0] <= 0 or value[1] <= 0:
            raise ValueError(f"{op}: `{name}` must be positive, got {list(value)}")
    if padding[0] < 0 or padding[1] < 0:
        raise ValueError(f"{op}: `padding` must be non-negative, got {list(padding)}")
    if padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        raise ValueError(f"{op}: `padding` must be at most half of `kernel_size` (as in torch), got padding "
                         f"{list(padding)} for kernel_size {list(kernel_size)}")
    if kernel_size[0] * kernel_size[1] > 2**31:
        raise ValueError(f"{op}: `kernel_size` may cover at most 2^31 taps, got {list(kernel_size)}")


def max_pool2d(input: torch.Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool,
               op: str = "max_pool2d") -> None:
    """cnx::maxpool::check_forward_args: (C, H, W) or (N, C, H, W) with non-zero C, H, W, and a non-empty
    output."""
    if input.dim() not in (3, 4):
        raise ValueError(f"{op}: `input` must be 3-D (C, H, W) or 4-D (N, C, H, W), got {input.dim()} dimensions")
    for size in input.shape[-3:]:  # (require: a data-dependent size is checked when the graph runs)
        require(size != 0, ValueError,
                lambda: f"{op}: `input` must have non-zero C, H and W, got shape {list(input.shape)}")
    dtype(op, "input", input)
    pool_params(op, kernel_size, stride, padding, dilation)
    out = max_pool2d_output_shape(input.shape, kernel_size, stride, padding, dilation, ceil_mode)[-2:]
    for size in out:
        require(size >= 1, ValueError,
                lambda: f"{op}: the output would be empty: input size ({input.shape[-2]}, {input.shape[-1]}) "
                        f"pools to ({out[0]}, {out[1]}) with kernel_size {list(kernel_size)}, stride "
                        f"{list(stride)}, padding {list(padding)}, dilation {list(dilation)} and ceil_mode={ceil_mode}")


def max_pool2d_argmax(op: str, grad_output: torch.Tensor | None, argmax: torch.Tensor, input_size, kernel_size,
                      stride, padding, dilation) -> None:
    """cnx::maxpool::check_argmax_args (the backward and the indices): an argmax of the dtype and pooled shape
    the forward writes for ``input_size``, and a grad_output like it."""
    dim = len(input_size)
    if dim not in (3, 4):
        raise ValueError(f"{op}: `input_size` must have 3 (C, H, W) or 4 (N, C, H, W) values, got {list(input_size)}")
    for size in (input_size[0] + 1, *input_size[-3:]):  # (N may be 0; require: data-dependent sizes too)
        require(size > 0, ValueError, lambda: f"{op}: `input_size` must have positive C, H and W, got "
                                              f"{list(input_size)}")
    pool_params(op, kernel_size, stride, padding, dilation)
    if argmax.dim() != dim:
        raise ValueError(f"{op}: `argmax` must have as many dimensions as `input_size` ({dim}), got shape "
                         f"{list(argmax.shape)}")
    expected = max_pool2d_argmax_dtype(kernel_size)
    if argmax.dtype != expected:
        raise TypeError(f"{op}: `argmax` must be {expected} for kernel_size {list(kernel_size)} (as max_pool2d "
                        f"writes it), got {argmax.dtype}")
    # The pooled size of either ceil_mode: the backward needs the windows' count only. The floor size first,
    # and the ceil size only if that fails: with a symbolic (dynamic) input size, the forward's argmax is the
    # floor expression itself, which compares equal without a guard, where the ceil size's own test guards on
    # a relation torch.export cannot prove over a range of sizes.
    for a in (-2, -1):
        n = argmax.shape[a]
        pooled = (pooling_output_size(input_size[a], kernel_size[a], stride[a], padding[a], dilation[a], ceil)
                  for ceil in (False, True))
        def message():
            return (f"{op}: `argmax` of shape {list(argmax.shape)} is not the pooled size of input_size "
                    f"{list(input_size)} with kernel_size {list(kernel_size)}, stride {list(stride)}, padding "
                    f"{list(padding)} and dilation {list(dilation)}")

        if not any(n == size for size in pooled):
            raise ValueError(message())
        require(n >= 1, ValueError, message)
    if argmax.shape[-3] != input_size[-3] or (dim == 4 and argmax.shape[0] != input_size[0]):
        raise ValueError(f"{op}: `argmax` of shape {list(argmax.shape)} does not match input_size {list(input_size)}")
    if grad_output is not None:
        same_shape(op, "grad_output", grad_output, "argmax", argmax)
        dtype(op, "grad_output", grad_output)
        same_device(op, "grad_output", grad_output, "argmax", argmax)


# ------------------------------------------------------------------------------------------ fused pool -> LRN

_NO_DILATION = (1, 1)


def max_pool2d_lrn(input: torch.Tensor, kernel_size, stride, padding, ceil_mode: bool, size: int, alpha: float,
                   beta: float, k: float) -> None:
    """cnx::pool_lrn::check_forward_args: max_pool2d's (dilation 1), then LRN's settings."""
    op = "max_pool2d_lrn"
    max_pool2d(input, kernel_size, stride, padding, _NO_DILATION, ceil_mode, op)
    lrn_settings(op, size, alpha, beta, k)


def max_pool2d_lrn_backward(grad_output: torch.Tensor, pooled: torch.Tensor, argmax: torch.Tensor, input_size,
                            kernel_size, stride, padding, size: int, alpha: float, beta: float, k: float) -> None:
    """cnx::pool_lrn::check_backward_args: max_pool2d_backward's, and a pooled tensor like the argmax."""
    op = "max_pool2d_lrn_backward"
    max_pool2d_argmax(op, grad_output, argmax, input_size, kernel_size, stride, padding, _NO_DILATION)
    same_shape(op, "pooled", pooled, "argmax", argmax)
    same_dtype(op, "pooled", pooled, "grad_output", grad_output)
    same_device(op, "pooled", pooled, "argmax", argmax)
    lrn_settings(op, size, alpha, beta, k)


# ------------------------------------------------------------------------------------------------ inception

def _conv_weight(name: str, w: torch.Tensor, in_channels: int | None, one_by_one: bool) -> None:
    op = "inception"
    if w.dim() != 4:
        raise ValueError(f"{op}: `{name}` must be a 4-D convolution weight [out, in, kH, kW], got shape "
                         f"{list(w.shape)}")
    if w.shape[0] <= 0 or w.shape[1] <= 0:
        raise ValueError(f"{op}: `{name}` must have at least one output and one input channel, got shape "
                         f"{list(w.shape)}")
    if in_channels is not None and w.shape[1] != in_channels:
        raise ValueError(f"{op}: `{name}` expects {w.shape[1]} input channels, but the block's input has "
                         f"{in_channels} (shape {list(w.shape)})")
    if w.shape[2] != w.shape[3] or w.shape[2] % 2 != 1:
        raise ValueError(f"{op}: `{name}` must have a square, odd kernel (padding is kernel // 2), got shape "
                         f"{list(w.shape)}")
    if one_by_one and w.shape[2] != 1:
        raise ValueError(f"{op}: `{name}` must be a 1x1 convolution weight, got shape {list(w.shape)}")


def _bias(name: str, b: torch.Tensor, channels: int) -> None:
    if b.dim() != 1 or b.shape[0] != channels:
        raise ValueError(f"inception: `{name}` must have shape [{channels}], got {list(b.shape)}")


def inception(input: torch.Tensor, weight_1x1: torch.Tensor, bias_1x1: torch.Tensor, weight_3x3: torch.Tensor,
              bias_3x3: torch.Tensor, weight_5x5: torch.Tensor, bias_5x5: torch.Tensor, weight_pool: torch.Tensor,
              bias_pool: torch.Tensor, ch1x1: int) -> None:
    """cnx::inception::prepare_forward's checks: a 4-D input, the parameters of its dtype and device, 1x1
    weights on its channels, square odd 3x3/5x5 kernels, weight_1x1 stacking the three 1x1 branches."""
    op = "inception"
    if input.dim() != 4:
        raise ValueError(f"{op}: `input` must be 4-D (N, C, H, W), got {input.dim()} dimensions")
    dtype(op, "input", input)
    if 0 in input.shape[1:]:
        raise ValueError(f"{op}: `input` must have non-zero C, H and W, got shape {list(input.shape)}")
    params = {"weight_1x1": weight_1x1, "bias_1x1": bias_1x1, "weight_3x3": weight_3x3, "bias_3x3": bias_3x3,
              "weight_5x5": weight_5x5, "bias_5x5": bias_5x5, "weight_pool": weight_pool, "bias_pool": bias_pool}
    for name, t in params.items():
        same_dtype(op, name, t, "input", input)
        same_device(op, name, t, "input", input)
    channels = input.shape[1]
    _conv_weight("weight_1x1", weight_1x1, channels, True)
    _conv_weight("weight_pool", weight_pool, channels, True)
    _conv_weight("weight_3x3", weight_3x3, None, False)
    _conv_weight("weight_5x5", weight_5x5, None, False)
    if ch1x1 <= 0:
        raise ValueError(f"{op}: `ch1x1` must be positive, got {ch1x1}")
    r3, r5 = weight_3x3.shape[1], weight_5x5.shape[1]
    n1 = ch1x1 + r3 + r5
    if weight_1x1.shape[0] != n1:
        raise ValueError(f"{op}: `weight_1x1` must stack ch1x1 + ch3x3red + ch5x5red = {ch1x1} + {r3} + {r5} = {n1} "
                         "output channels (ch3x3red and ch5x5red are `weight_3x3`'s and `weight_5x5`'s input "
                         f"channels), got {weight_1x1.shape[0]}")
    _bias("bias_1x1", bias_1x1, n1)
    _bias("bias_3x3", bias_3x3, weight_3x3.shape[0])
    _bias("bias_5x5", bias_5x5, weight_5x5.shape[0])
    _bias("bias_pool", bias_pool, weight_pool.shape[0])


# --------------------------------------------------------------------------------------------------- linear

# The dtypes the linear kernels read (cnx::linear::check_kernel_dtype): fp32, and bf16 / fp16 weights in linear
# and linear_grad_input.
LINEAR_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """cnx::linear::check_args: the CPU kernel's rows times a weight, all float32, bfloat16 or float16 -- or a
    bfloat16 / float16 input with a float32 weight and bias (rounded to the input's dtype as they are read)."""
    op = "linear"
    if input.dim() != 2:
        raise ValueError(f"{op}: expected a 2-D `input` (rows, in_features), got {input.dim()} dimensions")
    if weight.dim() != 2:
        raise ValueError(f"{op}: expected a 2-D `weight` (out_features, in_features), got {weight.dim()} dimensions")
    if input.dtype not in LINEAR_DTYPES:
        raise TypeError(f"{op}: `input` must be float32, bfloat16 or float16, got {input.dtype}")
    params = torch.float32 if input.dtype != torch.float32 and weight.dtype == torch.float32 else input.dtype
    if weight.dtype != params:
        also = "" if input.dtype == torch.float32 else ", or torch.float32"
        raise TypeError(f"{op}: `weight` must have `input`'s dtype ({input.dtype}{also}), got {weight.dtype}")
    if input.shape[1] != weight.shape[1]:
        raise ValueError(f"{op}: `input` has {input.shape[1]} features but `weight` takes {weight.shape[1]} (shapes "
                         f"{list(input.shape)} and {list(weight.shape)})")
    same_device(op, "weight", weight, "input", input)
    if bias is not None:
        same_device(op, "bias", bias, "input", input)
        if bias.dtype != params:
            raise TypeError(f"{op}: `bias` must have `weight`'s dtype ({params}), got {bias.dtype}")
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{op}: expected `bias` of shape ({weight.shape[0]}), got {list(bias.shape)}")


def _linear_grad_operands(op: str, grad_output: torch.Tensor, other_name: str, other: torch.Tensor,
                          reduced: bool) -> None:
    """cnx::linear::check_grad_args: 2-D ``grad_output`` and ``other`` of one dtype (float32; with ``reduced``
    bfloat16 and float16 too) on one device."""
    if grad_output.dim() != 2 or other.dim() != 2:
        raise ValueError(f"{op}: expected 2-D `grad_output` and `{other_name}`, got {grad_output.dim()} and "
                         f"{other.dim()} dimensions")
    if reduced and grad_output.dtype not in LINEAR_DTYPES:
        raise TypeError(f"{op}: `grad_output` must be float32, bfloat16 or float16, got {grad_output.dtype}")
    if not reduced and grad_output.dtype != torch.float32:
        raise TypeError(f"{op}: `grad_output` must be float32, got {grad_output.dtype}")
    if other.dtype != grad_output.dtype:
        raise TypeError(f"{op}: `{other_name}` must have `grad_output`'s dtype ({grad_output.dtype}), got "
                        f"{other.dtype}")
    same_device(op, other_name, other, "grad_output", grad_output)


def linear_grad_input(grad_output: torch.Tensor, weight: torch.Tensor) -> None:
    """linear_grad_input_cpu's checks: ``grad_output`` (rows, out_features), ``weight`` (out_features,
    in_features)."""
    op = "linear_grad_input"
    _linear_grad_operands(op, grad_output, "weight", weight, reduced=True)
    if grad_output.shape[1] != weight.shape[0]:
        raise ValueError(f"{op}: `grad_output` has {grad_output.shape[1]} features but `weight` has "
                         f"{weight.shape[0]} rows")


def linear_grad_weight(grad_output: torch.Tensor, input: torch.Tensor) -> None:
    """linear_grad_weight_cpu's checks: ``grad_output`` (rows, out_features), ``input`` (rows, in_features)."""
    op = "linear_grad_weight"
    _linear_grad_operands(op, grad_output, "input", input, reduced=False)
    if grad_output.shape[0] != input.shape[0]:
        raise ValueError(f"{op}: `grad_output` has {grad_output.shape[0]} rows but `input` has {input.shape[0]}")
