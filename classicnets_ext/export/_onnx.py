"""ONNX translations of the ops in torch.ops.classicnets_ext, for torch.onnx.export(..., dynamo=True).

Each op becomes standard ONNX (default domain, no custom domain, nothing an ONNX runtime lacks):

* ``lrn`` -> ``LRN`` (torch's and ONNX's LRN share the alpha / n convention; an even size, which ONNX centres
  differently and onnxruntime rejects, and alpha or beta <= 0, which onnxruntime rejects, run as torch's
  composite: Mul, AveragePool, Pow, Div; fp64, which onnxruntime's kernels lack, as fp32 between two Casts);
* ``max_pool2d`` -> ``MaxPool`` (pads, strides, dilations, ceil_mode with torch's rounding); with
  ``return_indices``, ``max_pool2d_indices`` turns MaxPool's indices into torch's (per plane, not per tensor);
* ``max_pool2d_lrn`` (the fused op) -> ``[Relu ->] MaxPool -> LRN``;
* ``inception`` -> ``Conv`` (the three input 1x1 convolutions stacked, as the op computes them) -> ``Relu`` ->
  ``Slice``s, the spatial ``Conv -> Relu`` branches, ``MaxPool -> Conv -> Relu``, ``Concat``.

The Triton twins (``*_triton``) translate the same way. The fused op's extra outputs, which only a backward
reads (its argmax and pooled copy), have no consumer in an inference graph: they are emitted as zero tensors
of the recorded shape and dtype, which the exporter's optimizer drops.

This module imports onnxscript; ``classicnets_ext.export`` imports it only when an export needs it.
"""
from __future__ import annotations

from typing import Sequence, TypeVar

import torch
from onnxscript import BFLOAT16, DOUBLE, FLOAT, FLOAT16, INT32, INT64, UINT8
from onnxscript.onnx_opset import opset18 as op

from .. import _layouts, _registrations

TFloat = TypeVar("TFloat", FLOAT16, FLOAT, DOUBLE, BFLOAT16)
TArgmax = TypeVar("TArgmax", UINT8, INT32)


def _shape(x) -> list:
    """``x``'s recorded shape (from the exported graph): ints, and symbols for dynamic sizes. Only the
    translations' own inputs carry one; the values they compute do not, so shapes are read there."""
    if x.shape is None:
        raise ValueError("ONNX export: an input of our op has no recorded shape")
    return list(x.shape)


def _max_pool(x, spatial, kernel_size, stride, padding, dilation, ceil_mode: bool, argmax_dtype=None):
    """MaxPool of a 4-D ``x`` whose (H, W) are ``spatial``; given ``argmax_dtype``, also the op's window-local
    argmax (``kh * kW + kw``, see :func:`_window_argmax`) in that dtype."""
    if ceil_mode and all(isinstance(v, int) for v in spatial):
        ceil_mode, extra = _ceil_mode(spatial, kernel_size, stride, padding, dilation)
        if any(extra):
            # Ceil rounding in one dimension, floor in the other: the ceil one's extra bottom/right rows or
            # columns are padded by hand, with -inf, and `padding` stays MaxPool's own (which cannot hold the
            # extra: onnxruntime wants pads under the kernel). MaxPool skips its own pads but not these, so they
            # must come after the input: a window's first tap is then always a real element, which wins a tie
            # (a window of -inf) as in torch. Padding the top/left by hand as well made a pad win it, and the
            # index came out negative.
            x = op.Pad(x, op.Constant(value_ints=[0, 0, 0, 0, 0, 0, *extra]),
                       op.CastLike(op.Constant(value_float=float("-inf")), x))
    pooled, flat_indices = op.MaxPool(x, kernel_shape=list(kernel_size), strides=list(stride),
                                      pads=[*padding, *padding], dilations=list(dilation), ceil_mode=int(ceil_mode))
    if argmax_dtype is None:
        return pooled
    return pooled, _window_argmax(x, pooled, flat_indices, kernel_size, stride, padding, dilation, argmax_dtype)


def _int(value: int):
    return op.Constant(value_int=value)


def _window_starts(pooled, axis: int, stride: int, pad: int):
    """Where each output position's window starts along ``axis`` (-2: rows, as a column; -1: columns, as a row)
    of the input: ``out * stride - pad``, int64."""
    count = op.Squeeze(op.Shape(pooled, start=axis, end=axis + 1) if axis == -2 else op.Shape(pooled, start=axis))
    starts = op.Sub(op.Mul(op.Range(_int(0), count, _int(1)), _int(stride)), _int(pad))
    return op.Unsqueeze(starts, [1]) if axis == -2 else starts


def _window_argmax(x, pooled, flat_indices, kernel_size, stride, window_pad, dilation, dtype):
    """The op's argmax -- the tap ``kh * kW + kw`` of each window that holds its maximum -- from ONNX MaxPool's
    indices into the 4-D ``x``, which count through the whole (N, C, H, W) tensor: ``(n * C + c) * H * W +
    h * W + w``. (ONNX's and torch's pools agree on which tap wins a tie: the first in (h, w) order.)"""
    height, width = op.Shape(x, start=2, end=3), op.Shape(x, start=3, end=4)
    in_plane = op.Mod(flat_indices, op.Mul(height, width))
    rows, cols = op.Div(in_plane, width), op.Mod(in_plane, width)
    kh = op.Div(op.Sub(rows, _window_starts(pooled, -2, stride[0], window_pad[0])), _int(dilation[0]))
    kw = op.Div(op.Sub(cols, _window_starts(pooled, -1, stride[1], window_pad[1])), _int(dilation[1]))
    return op.Cast(op.Add(op.Mul(kh, _int(kernel_size[1])), kw), to=dtype)


def _ceil_mode(spatial, kernel_size, stride, padding, dilation) -> tuple[bool, list[int]]:
    """ONNX's ceil_mode for a ceil_mode=True pool of a known (H, W), and the extra bottom/right padding that
    makes floor rounding give torch's size where the two dimensions need different roundings.

    torch drops a last window that would start in the right padding; ONNX shape inference does not (ORT's
    kernel does), so where torch's size is the floor size, floor mode says so exactly."""
    floor, torch_size = [], []
    for size, k, s, p, d in zip(spatial, kernel_size, stride, padding, dilation):
        floor.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
        torch_size.append(_layouts.pooling_output_size(size, k, s, p, d, True))
    if floor == torch_size:
        return False, [0, 0]
    ceil = [-(-(size + 2 * p - d * (k - 1) - 1) // s) + 1
            for size, k, s, p, d in zip(spatial, kernel_size, stride, padding, dilation)]
    if ceil == torch_size:
        return True, [0, 0]
    return False, [(t - f) * s for t, f, s in zip(torch_size, floor, stride)]


def _lrn(x, dtype, rank: int, size: int, alpha: float, beta: float, k: float):
    """LRN of an (N, C, *) tensor of ``rank`` dimensions and ``dtype`` (passed down: the values a translation
    computes carry none, only its inputs do): onnxruntime's LRN kernel takes 4-D inputs only, so others run
    as (N, C, prod(*), 1)."""
    if rank == 4:
        return _lrn4d(x, dtype, size, alpha, beta, k)
    as_4d = op.Reshape(x, op.Constant(value_ints=[0, 0, -1, 1]))  # (N, C, *) as (N, C, prod(*), 1)
    return op.Reshape(_lrn4d(as_4d, dtype, size, alpha, beta, k), op.Shape(x))


def _lrn4d(x, dtype, size: int, alpha: float, beta: float, k: float):
    """torch's and ONNX's LRN agree for odd sizes (the window [c - size//2, c + size//2]) and positive alpha
    and beta (onnxruntime rejects others). ONNX centres an even window the other way and onnxruntime rejects
    even sizes, so those, and alpha or beta <= 0, run as torch's own composite: ``x / (k + alpha *
    avg_pool3d(x^2 viewed (N, 1, C, H, W), (size, 1, 1), zero padding (size//2, (size-1)//2)))^beta``.
    onnxruntime has neither an LRN nor an AveragePool kernel for doubles (ONNX allows them): fp32 inside."""
    import onnx_ir as ir

    if dtype == ir.DataType.DOUBLE:
        as_float = op.Cast(x, to=ir.DataType.FLOAT)
        return op.Cast(_lrn4d(as_float, ir.DataType.FLOAT, size, alpha, beta, k), to=ir.DataType.DOUBLE)
    if size % 2 == 1 and alpha > 0 and beta > 0:
        return op.LRN(x, size=size, alpha=alpha, beta=beta, bias=k)
    squares = op.Unsqueeze(op.Mul(x, x), [1])
    mean = op.Squeeze(op.AveragePool(squares, kernel_shape=[size, 1, 1], pads=[size // 2, 0, 0, (size - 1) // 2, 0, 0],
                                     count_include_pad=1), [1])
    scalar = lambda v: op.CastLike(op.Constant(value_float=v), x)  # noqa: E731
    return op.Div(x, op.Pow(op.Add(op.Mul(mean, scalar(alpha)), scalar(k)), scalar(beta)))


def _unused_like(reference, dtype, saved: bool):
    """A zero tensor standing in for an output only the backward reads: ``reference``'s shape when the op
    saved it, else the op's empty [0] placeholder."""
    shape = op.Shape(reference) if saved else op.Constant(value_ints=[0])
    return op.ConstantOfShape(shape, value=_zero(dtype))


def _zero(dtype):
    import onnx_ir as ir
    return ir.tensor([0], dtype=dtype)


# ------------------------------------------------------------------------------------------ translations
# Named parameters and defaults as the ops' schemas (csrc/*/*.cpp), which the exporter binds by name.

def lrn(input: TFloat, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> TFloat:
    """classicnets_ext::lrn -> LRN."""
    return _lrn(input, input.dtype, len(_shape(input)), size, alpha, beta, k)


def _argmax_dtype(kernel_size):
    import onnx_ir as ir
    return ir.DataType.UINT8 if kernel_size[0] * kernel_size[1] <= 256 else ir.DataType.INT32


def max_pool2d(input: TFloat, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
               dilation: Sequence[int], ceil_mode: bool, save_argmax: bool) -> tuple[TFloat, TArgmax]:
    """classicnets_ext::max_pool2d -> MaxPool, and the argmax when saved (``return_indices`` reads it; in a
    training graph only the backward does, and the exporter's optimizer drops it)."""
    shape = _shape(input)
    x = op.Unsqueeze(input, [0]) if len(shape) == 3 else input  # (C, H, W): ONNX pools want a batch
    argmax_dtype = _argmax_dtype(kernel_size)
    if not save_argmax:
        out = _max_pool(x, shape[-2:], kernel_size, stride, padding, dilation, ceil_mode)
        out = op.Squeeze(out, [0]) if len(shape) == 3 else out
        return out, _unused_like(out, argmax_dtype, False)
    out, argmax = _max_pool(x, shape[-2:], kernel_size, stride, padding, dilation, ceil_mode, argmax_dtype)
    if len(shape) == 3:
        out, argmax = op.Squeeze(out, [0]), op.Squeeze(argmax, [0])
    return out, argmax


def max_pool2d_indices(argmax: TArgmax, input_size: Sequence[int], kernel_size: Sequence[int],
                       stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]) -> INT64:
    """classicnets_ext::max_pool2d_indices -> torch's per-plane indices ``h * W + w`` of the argmax's taps."""
    import onnx_ir as ir

    tap = op.Cast(argmax, to=ir.DataType.INT64)
    kh, kw = op.Div(tap, _int(kernel_size[1])), op.Mod(tap, _int(kernel_size[1]))
    rows = op.Add(_window_starts(argmax, -2, stride[0], padding[0]), op.Mul(kh, _int(dilation[0])))
    cols = op.Add(_window_starts(argmax, -1, stride[1], padding[1]), op.Mul(kw, _int(dilation[1])))
    width = input_size[-1]
    return op.Add(op.Mul(rows, _int(width) if isinstance(width, int) else width), cols)


def max_pool2d_lrn(input: TFloat, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                   ceil_mode: bool, size: int, alpha: float, beta: float, k: float, relu: bool,
                   save_for_backward: bool) -> tuple[TFloat, TFloat, TArgmax]:
    """classicnets_ext::max_pool2d_lrn -> [Relu ->] MaxPool -> LRN (and stand-ins for the backward's state)."""
    shape = _shape(input)
    x = op.Relu(input) if relu else input
    x = op.Unsqueeze(x, [0]) if len(shape) == 3 else x
    pooled = _max_pool(x, shape[-2:], kernel_size, stride, padding, (1, 1), ceil_mode)
    out = _lrn(pooled, input.dtype, 4, size, alpha, beta, k)
    if len(shape) == 3:
        pooled, out = op.Squeeze(pooled, [0]), op.Squeeze(out, [0])
    saved_pooled = op.Identity(pooled) if save_for_backward else _unused_like(pooled, input.dtype, False)
    return out, saved_pooled, _unused_like(out, _argmax_dtype(kernel_size), save_for_backward)


def inception(input: TFloat, weight_1x1: TFloat, bias_1x1: TFloat, weight_3x3: TFloat, bias_3x3: TFloat,
              weight_5x5: TFloat, bias_5x5: TFloat, weight_pool: TFloat, bias_pool: TFloat,
              ch1x1: int) -> tuple[TFloat, TFloat, TFloat]:
    """classicnets_ext::inception -> Conv/Relu/Slice/MaxPool/Concat (``reference.inception``'s composite).
    The op's other outputs, the two ReLU'd reductions, are two of the slices."""
    r3, r5 = weight_3x3.shape[1], weight_5x5.shape[1]
    k3, k5 = weight_3x3.shape[-1], weight_5x5.shape[-1]
    if not all(isinstance(v, int) for v in (r3, r5, k3, k5)):
        raise ValueError("ONNX export: inception's weights must have static shapes")
    reduce = op.Relu(op.Conv(input, weight_1x1, bias_1x1))
    # Slices, not a Split: torch.onnx's tracer needs Split's num_outputs, which ONNX forbids next to sizes.
    branch1, red3, red5 = (op.Slice(reduce, op.Constant(value_ints=[start]), op.Constant(value_ints=[start + n]),
                                    op.Constant(value_ints=[1]))
                           for start, n in ((0, ch1x1), (ch1x1, r3), (ch1x1 + r3, r5)))
    branch2 = op.Relu(op.Conv(red3, weight_3x3, bias_3x3, pads=[k3 // 2] * 4))
    branch3 = op.Relu(op.Conv(red5, weight_5x5, bias_5x5, pads=[k5 // 2] * 4))
    pooled = _max_pool(input, _shape(input)[-2:], (3, 3), (1, 1), (1, 1), (1, 1), False)
    branch4 = op.Relu(op.Conv(pooled, weight_pool, bias_pool))
    return op.Concat(branch1, branch2, branch3, branch4, axis=1), red3, red5


# op name -> translation; each op's Triton twin shares it.
TRANSLATIONS = {"lrn": lrn, "max_pool2d": max_pool2d, "max_pool2d_indices": max_pool2d_indices,
                "max_pool2d_lrn": max_pool2d_lrn, "inception": inception}


def op_names(name: str) -> tuple[str, str]:
    """The op ``name`` and its Triton twin: ``<op>_triton``, where a helper op's suffix stays last
    (``max_pool2d_triton_indices``, as ``*_triton_backward``)."""
    base, helper = ("max_pool2d", "_indices") if name == "max_pool2d_indices" else (name, "")
    return name, f"{base}_triton{helper}"


def translation_table() -> dict:
    """{OpOverload: translation} for every classicnets_ext op defined in this process (C++, and Triton once
    their kernels are imported)."""
    namespace = torch.ops.classicnets_ext
    return {getattr(namespace, op_name).default: fn for name, fn in TRANSLATIONS.items()
            for op_name in op_names(name) if _registrations.op_defined(op_name)}
