"""ONNX translations of the ops in torch.ops.classicnets_ext, for torch.onnx.export(..., dynamo=True).

Each op becomes standard ONNX (default domain, no custom domain, nothing an ONNX runtime lacks):

* ``lrn`` -> ``LRN`` (torch's and ONNX's LRN share the alpha / n convention);
* ``max_pool2d`` -> ``MaxPool`` (pads, strides, dilations, ceil_mode);
* ``max_pool2d_lrn`` (the fused op) -> ``[Relu ->] MaxPool -> LRN``;
* ``inception`` -> ``Conv`` (the three input 1x1 convolutions stacked, as the op computes them) -> ``Relu`` ->
  ``Slice``s, the spatial ``Conv -> Relu`` branches, ``MaxPool -> Conv -> Relu``, ``Concat``.

The Triton twins (``*_triton``) translate the same way. The ops' extra outputs that only a backward reads
(max-pool argmax, the fused op's pooled copy) have no consumer in an inference graph: they are emitted as
zero tensors of the recorded shape and dtype, which the exporter's optimizer drops.

This module imports onnxscript; ``classicnets_ext.export`` imports it only when an export needs it.
"""
from __future__ import annotations

from typing import Sequence, TypeVar

import torch
from onnxscript import BFLOAT16, DOUBLE, FLOAT, FLOAT16, INT32, UINT8
from onnxscript.onnx_opset import opset18 as op

TFloat = TypeVar("TFloat", FLOAT16, FLOAT, DOUBLE, BFLOAT16)
TArgmax = TypeVar("TArgmax", UINT8, INT32)

_INT64_MIN = -(2 ** 63)


def _pool_attrs(kernel_size, stride, padding, dilation, ceil_mode: bool) -> dict:
    """MaxPool's attributes from the op's pairs (ONNX pads are begin-then-end: [top, left, bottom, right])."""
    return dict(kernel_shape=list(kernel_size), strides=list(stride), pads=[*padding, *padding],
                dilations=list(dilation), ceil_mode=int(ceil_mode))


def _unbatched(x) -> bool:
    """A (C, H, W) input, which our pooling ops take as torch's do; ONNX pools want (N, C, H, W)."""
    return x.shape is not None and len(x.shape) == 3


def _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode: bool):
    if _unbatched(x):
        return op.Squeeze(_max_pool(op.Unsqueeze(x, [0]), kernel_size, stride, padding, dilation, ceil_mode), [0])
    pooled, _ = op.MaxPool(x, **_pool_attrs(kernel_size, stride, padding, dilation, ceil_mode))
    return pooled


def _lrn(x, size: int, alpha: float, beta: float, k: float):
    """ONNX LRN over channels [c - (size-1)//2, c + size//2]; torch's window is [c - size//2, c + (size-1)//2].
    They agree for odd sizes; an even size runs on the channel-reversed tensor (which mirrors the window) and
    reverses back."""
    attrs = dict(size=size, alpha=alpha, beta=beta, bias=k)
    if size % 2 == 1:
        return op.LRN(x, **attrs)
    flip = dict(starts=op.Constant(value_ints=[-1]), ends=op.Constant(value_ints=[_INT64_MIN]),
                axes=op.Constant(value_ints=[1]), steps=op.Constant(value_ints=[-1]))
    reversed_ = op.Slice(x, flip["starts"], flip["ends"], flip["axes"], flip["steps"])
    return op.Slice(op.LRN(reversed_, **attrs), flip["starts"], flip["ends"], flip["axes"], flip["steps"])


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
    return _lrn(input, size, alpha, beta, k)


def max_pool2d(input: TFloat, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
               dilation: Sequence[int], ceil_mode: bool, save_argmax: bool) -> tuple[TFloat, TArgmax]:
    """classicnets_ext::max_pool2d -> MaxPool (and a stand-in for the backward's argmax)."""
    import onnx_ir as ir
    out = _max_pool(input, kernel_size, stride, padding, dilation, ceil_mode)
    argmax_dtype = ir.DataType.UINT8 if kernel_size[0] * kernel_size[1] <= 256 else ir.DataType.INT32
    return out, _unused_like(out, argmax_dtype, save_argmax)


def max_pool2d_indices(argmax: TArgmax, input_size: Sequence[int], kernel_size: Sequence[int],
                       stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]):
    """classicnets_ext::max_pool2d_indices: no translation (see the error)."""
    raise NotImplementedError(
        "ONNX export: max_pool2d(return_indices=True) is not supported: ONNX MaxPool's indices count over the "
        "whole (N, C, H, W) tensor, not torch's per-plane h * W + w; export the model with return_indices=False")


def max_pool2d_lrn(input: TFloat, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                   ceil_mode: bool, size: int, alpha: float, beta: float, k: float, relu: bool,
                   save_for_backward: bool) -> tuple[TFloat, TFloat, TArgmax]:
    """classicnets_ext::max_pool2d_lrn -> [Relu ->] MaxPool -> LRN (and stand-ins for the backward's state)."""
    import onnx_ir as ir
    x = op.Relu(input) if relu else input
    pooled = _max_pool(x, kernel_size, stride, padding, (1, 1), ceil_mode)
    out = op.Squeeze(_lrn(op.Unsqueeze(pooled, [0]), size, alpha, beta, k), [0]) if _unbatched(pooled) \
        else _lrn(pooled, size, alpha, beta, k)
    saved_pooled = op.Identity(pooled) if save_for_backward else _unused_like(pooled, input.dtype, False)
    argmax_dtype = ir.DataType.UINT8 if kernel_size[0] * kernel_size[1] <= 256 else ir.DataType.INT32
    return out, saved_pooled, _unused_like(out, argmax_dtype, save_for_backward)


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
    pooled = _max_pool(input, (3, 3), (1, 1), (1, 1), (1, 1), False)
    branch4 = op.Relu(op.Conv(pooled, weight_pool, bias_pool))
    return op.Concat(branch1, branch2, branch3, branch4, axis=1), red3, red5


# op name -> translation; each op's Triton twin (``<name>_triton``) shares it.
TRANSLATIONS = {"lrn": lrn, "max_pool2d": max_pool2d, "max_pool2d_indices": max_pool2d_indices,
                "max_pool2d_lrn": max_pool2d_lrn, "inception": inception}


def translation_table() -> dict:
    """{OpOverload: translation} for every classicnets_ext op defined in this process (C++ and Triton)."""
    namespace = torch.ops.classicnets_ext
    table = {}
    for name, fn in TRANSLATIONS.items():
        for op_name in (name, f"{name}_triton"):
            if hasattr(namespace, op_name):
                table[getattr(namespace, op_name).default] = fn
    return table
