"""Cost formulas for our ops, in multiply-accumulates (MACs), and their FLOP formulas for PyTorch's
``torch.utils.flop_counter.FlopCounterMode``.

Generic counters (torchinfo, ptflops, fvcore, FlopCounterMode) know aten's convolutions and matrix products and
count a custom op as zero -- or fail on it. The formulas below give our ops a cost, and registering them with
``register_flop_formula`` makes ``FlopCounterMode`` count ``torch.ops.classicnets_ext.*`` like any aten op.
FLOPs are 2 x MACs, PyTorch's convention (a multiply-accumulate is a multiply and an add; conv and matmul count
2 x their MACs there too). Only the forward ops have formulas: the backward ops count zero, as a custom op
without a formula does.

The counting rules (per output element unless said otherwise):

* **max-pool**: ``kh * kw`` -- one compare-and-select per window element, counted as one MAC (ptflops counts a
  pool as one op per element it reads; torchinfo and FlopCounterMode count pools as zero). The argmax it may
  save is bookkeeping and free.
* **LRN** (``size`` channels): ``size`` MACs for the window's sum of squares, one for ``k + alpha/n * sum``, and
  one for the power and the product with x together (two single FLOPs): ``size + 2``.
* **fused [ReLU ->] max-pool -> LRN**: the max-pool's count plus the LRN's on the pooled tensor. The ReLU is
  applied to the pooled value and counts nothing (torchinfo, ptflops' MACs and FlopCounterMode count no
  activations either).
* **linear** (our CPU kernel for small batches): ``in_features`` per output element, as aten's ``addmm``
  and ``mm`` count in FlopCounterMode, so a model counts the same whichever path its classifier took.
* **connection-table convolution** (LeNet-5's C3, ``TableConv2d``): ``connections x kh x kw`` per output
  position (N x H_out x W_out), where a dense convolution has ``C_out x C_in x kh x kw``: the kernels the table
  leaves out are zeros in the dense weight its forward convolves with, and the paper's C3 does not compute them
  (60 connections of 96: 150,000 MACs, not 240,000). No FLOP formula: it runs aten's ``conv2d``, which
  FlopCounterMode counts densely; the summary counts it by this formula.
* **Inception**: its six convolutions as conv MACs -- the three input 1x1 convolutions (one GEMM),
  the 3x3 and 5x5 convolutions on their reductions and the pool projection, all at the input's H x W -- plus
  the branch's 3x3/1 max-pool at ``9`` per element of the input. Biases, ReLUs and the concatenation are free,
  as for conv layers everywhere (FlopCounterMode's convention; torchinfo adds the bias, < 0.1% of a network).
"""
from __future__ import annotations

from math import prod

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula

from .. import _extension, _registrations


def _window(kernel_size) -> tuple[int, int]:
    """(kh, kw) of a 2-D window given as torch's pooling layers take it: an int, or a sequence of one value
    (both sides) or two."""
    kernel = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
    return (kernel[0], kernel[0]) if len(kernel) == 1 else kernel[-2:]


def max_pool2d_macs(output_shape, kernel_size) -> int:
    """MACs of a max-pool writing ``output_shape`` with windows of ``kernel_size`` (an int or a pair)."""
    kh, kw = _window(kernel_size)
    return prod(output_shape) * kh * kw


def lrn_macs(shape, size: int) -> int:
    """MACs of an LRN over ``size`` channels on a tensor of ``shape``."""
    return prod(shape) * (size + 2)


def max_pool2d_lrn_macs(output_shape, kernel_size, size: int) -> int:
    """MACs of the fused [ReLU ->] max-pool -> LRN writing ``output_shape``."""
    return max_pool2d_macs(output_shape, kernel_size) + lrn_macs(output_shape, size)


def linear_macs(input_shape, weight_shape) -> int:
    """MACs of ``input @ weight.T`` for ``input`` (rows, in_features) and ``weight`` (out_features, in_features);
    the bias is free."""
    return prod(input_shape) * weight_shape[0]


def table_conv2d_macs(output_shape, connections: int, kernel_size) -> int:
    """MACs of a connection-table convolution writing ``output_shape`` (N, C_out, H, W) or (C_out, H, W):
    ``N * H * W * connections * kh * kw`` (each connection is one kh x kw kernel over one input map)."""
    *lead, _, h, w = output_shape
    kh, kw = _window(kernel_size)
    return prod(lead) * h * w * connections * kh * kw


def inception_macs(input_shape, weight_1x1, weight_3x3, weight_5x5, weight_pool) -> int:
    """MACs of an Inception block on ``input_shape`` (N, C, H, W) or (C, H, W), from its weights' shapes:
    ``weight_1x1`` the three stacked input 1x1 convolutions [R, C, 1, 1], ``weight_3x3`` [c3, r3, k, k],
    ``weight_5x5`` [c5, r5, k, k], ``weight_pool`` [cp, C, 1, 1]. Every convolution keeps H x W."""
    *lead, channels, h, w = input_shape
    pixels = prod(lead) * h * w
    convs = sum(prod(shape) for shape in (weight_1x1, weight_3x3, weight_5x5, weight_pool))
    return pixels * convs + max_pool2d_macs((*lead, channels, h, w), 3)


# ------------------------------------------------------------------------------- FlopCounterMode formulas
#
# Called with the op's arguments, tensors replaced by their shapes, and ``out_shape`` (the shapes of the outputs).

def _lrn_flop(input, size, *args, out_shape=None, **kwargs) -> int:
    return 2 * lrn_macs(input, size)


def _max_pool2d_flop(input, kernel_size, *args, out_shape=None, **kwargs) -> int:
    return 2 * max_pool2d_macs(out_shape[0], kernel_size)


def _max_pool2d_lrn_flop(input, kernel_size, stride, padding, ceil_mode, size, *args, out_shape=None,
                         **kwargs) -> int:
    return 2 * max_pool2d_lrn_macs(out_shape[0], kernel_size, size)


def _linear_flop(input, weight, *args, out_shape=None, **kwargs) -> int:
    return 2 * linear_macs(input, weight)


def _inception_flop(input, weight_1x1, bias_1x1, weight_3x3, bias_3x3, weight_5x5, bias_5x5, weight_pool, *args,
                    out_shape=None, **kwargs) -> int:
    return 2 * inception_macs(input, weight_1x1, weight_3x3, weight_5x5, weight_pool)


FORMULAS = {"lrn": _lrn_flop, "max_pool2d": _max_pool2d_flop, "max_pool2d_lrn": _max_pool2d_lrn_flop,
            "inception": _inception_flop, "linear": _linear_flop}


def registered_ops() -> list[str]:
    """The ops of ``torch.ops.classicnets_ext`` that have a FLOP formula here: the C++ ops that ``_C`` defines
    and the Triton twins (``*_triton``, same schemas) once their kernels are imported (``_registrations.load_triton``
    calls ``_register`` again then)."""
    return [name for base in FORMULAS for name in (base, base + "_triton")
            if (_extension.has_op(name) if name == base else _registrations.op_defined(name))]


def _register() -> None:
    for name in registered_ops():
        target = getattr(torch.ops.classicnets_ext, name)
        if target not in flop_registry:  # a re-import (importlib.reload) must not register twice
            register_flop_formula(target)(FORMULAS[name.removesuffix("_triton")])


_register()
