"""Receptive field, jump and depth along a network.

The receptive field ``r`` of a feature map is the side of the square of input pixels one of its elements
sees; the jump ``j`` is the distance, in input pixels, between two neighbouring elements (the product of the
strides so far). A layer with kernel ``k``, stride ``s`` and dilation ``d`` maps them as

    r_out = r_in + (d * (k - 1)) * j_in,        j_out = j_in * s

(padding shifts the field but does not widen it). Depth counts conv and fully connected layers, the lecture
notes' way (AlexNet has 8 layers: pools and norms only post-process the conv before them).

Where paths branch and join (an Inception block's four branches, a residual block's shortcut) the summary
follows the *largest* path: a join takes the largest receptive field and the greatest depth among its inputs
(see ``summary._Tracker``). Our fused Inception block runs as one op, so it is one layer here with its
largest path built in: 1x1 -> 5x5 (the paper's; torchvision's "5x5" is 3x3), two conv layers deep.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from torch import nn

from .._inception import Inception


@dataclass(frozen=True)
class Geometry:
    """What a tensor has seen: receptive field, jump, and the number of conv/FC layers on its longest path."""
    receptive_field: int = 1
    jump: int = 1
    depth: int = 0

    def then(self, kernel: int = 1, stride: int = 1, dilation: int = 1, layers: int = 0) -> "Geometry":
        """The geometry after a layer with this kernel, stride and dilation, ``layers`` conv/FC layers deep."""
        return Geometry(self.receptive_field + dilation * (kernel - 1) * self.jump, self.jump * stride,
                        self.depth + layers)


def join(geometries) -> Geometry | None:
    """Where paths meet (add, cat, any op of several inputs): the largest receptive field (its jump with it)
    and the greatest depth."""
    geometries = list(geometries)
    if not geometries:
        return None
    widest = max(geometries, key=lambda g: (g.receptive_field, -g.jump))
    return Geometry(widest.receptive_field, widest.jump, max(g.depth for g in geometries))


def _side(value) -> int:
    """The larger side of an int-or-tuple argument (our fields are squares: a non-square kernel counts its
    larger side)."""
    return max(value) if isinstance(value, (tuple, list)) else int(value)


def _adaptive(in_size: int, out_size: int) -> tuple[int, int]:
    """(kernel, stride) of an adaptive pool from ``in_size`` to ``out_size``: its largest window (torch's windows
    run from floor(i * in / out) to ceil((i + 1) * in / out)), and the nearest whole stride."""
    if out_size >= in_size:
        return 1, 1
    kernel = max(ceil((i + 1) * in_size / out_size) - (i * in_size) // out_size for i in range(out_size))
    return kernel, max(1, round(in_size / out_size))


def is_conv(module: nn.Module) -> bool:
    """A convolution: torch's, or any leaf layer with a ``kernel_size`` and weights (LeNet's TableConv2d)."""
    return isinstance(module, nn.modules.conv._ConvNd) or (
        hasattr(module, "kernel_size") and any(True for _ in module.parameters(recurse=False)))


def inception_kernel(block: Inception) -> int:
    """The largest path of an Inception block: 1x1 -> k (its spatial convolutions), or 3x3 pool -> 1x1."""
    return max(block.branch2[1].conv.kernel_size[0], block.branch3[1].conv.kernel_size[0], 3)


def layer_geometry(module: nn.Module, before: Geometry, input_shape, output_shape) -> Geometry:
    """The geometry after the leaf layer ``module`` (one that ran no submodule), given its input's."""
    if isinstance(module, Inception):
        return before.then(inception_kernel(module), layers=2)
    if isinstance(module, nn.Linear):
        return before.then(layers=1)
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and len(input_shape) >= 3:
        kernel, stride = _adaptive(input_shape[-1], output_shape[-1])
        return before.then(kernel, stride)
    if hasattr(module, "kernel_size"):  # convs, pools, the fused pool -> LRN, LeNet's table conv
        stride = getattr(module, "stride", 1)  # (a conv-like layer without a stride attribute runs at 1)
        if stride is None or stride == ():  # torch's pools: the stride defaults to the kernel size
            stride = module.kernel_size
        return before.then(_side(module.kernel_size), _side(stride), _side(getattr(module, "dilation", 1)),
                           layers=1 if is_conv(module) else 0)
    return before  # element-wise or across channels (ReLU, BatchNorm, LRN, dropout): no spatial extent
