"""Receptive field, jump and depth along a network.

The receptive field ``r`` of a feature map is the side of the square of input pixels one of its elements
sees; the jump ``j`` is the distance, in input pixels, between two neighbouring elements (the product of the
strides so far). A layer with kernel ``k``, stride ``s`` and dilation ``d`` maps them as

    r_out = r_in + (d * (k - 1)) * j_in,        j_out = j_in * s

(padding shifts the field but does not widen it), and a transposed convolution (an upsampling by ``s``) as

    r_out = r_in + ((d * (k - 1)) // s) * j_in,   j_out = j_in / s

(an output element sums the input elements within ``d * (k - 1)`` of it on the upsampled grid, which are at
most ``(d * (k - 1)) // s`` input steps apart; neighbouring outputs are ``1 / s`` of an input step apart). A
jump below 1 -- and a field that grows by a fraction of a pixel after it -- is kept exact as a
:class:`~fractions.Fraction`; the summary's rows report such values as floats and whole ones as ints.

Depth counts conv and fully connected layers, the lecture notes' way (AlexNet has 8 layers: pools and norms
only post-process the conv before them).

Where paths branch and join (an Inception block's four branches, a residual block's shortcut) the summary follows
the *largest* path: a join takes the largest receptive field and the greatest depth among its inputs, and the jump
of the inputs on its output's grid, not of one broadcast over it (see ``join``, ``summary._Tracker``). Our fused
Inception block runs as one op, so it is one layer here with its largest path built in: 1x1 -> 5x5 (the paper's;
torchvision's "5x5" is 3x3), two conv layers deep.

The same maps apply to modules (:func:`layer_geometry`) and to the functional ops a forward may call instead
(:func:`op_geometry`: ``F.conv2d``, ``F.max_pool2d``, ``torch.avg_pool1d``, our ops, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from math import ceil

import torch
import torch.nn.functional as F
from torch import nn

from .._inception import Inception


def _exact(value):
    """A Fraction that is whole as an int (so every field and jump without an upsampling stays a plain int)."""
    return int(value) if isinstance(value, Fraction) and value.denominator == 1 else value


@dataclass(frozen=True)
class Geometry:
    """What a tensor has seen: receptive field, jump, and the number of conv/FC layers on its longest path.
    ``receptive_field`` and ``jump`` are ints, or Fractions after a transposed convolution (see the module)."""
    receptive_field: int | Fraction = 1
    jump: int | Fraction = 1
    depth: int = 0

    def then(self, kernel: int = 1, stride: int = 1, dilation: int = 1, layers: int = 0) -> "Geometry":
        """The geometry after a layer with this kernel, stride and dilation, ``layers`` conv/FC layers deep:
        r + d(k - 1) j, j s."""
        return Geometry(_exact(self.receptive_field + dilation * (kernel - 1) * self.jump),
                        _exact(self.jump * stride), self.depth + layers)

    def up(self, kernel: int = 1, stride: int = 1, dilation: int = 1, layers: int = 1) -> "Geometry":
        """The geometry after a transposed convolution with this kernel, stride and dilation:
        r + (d(k - 1) // s) j, j / s."""
        return Geometry(_exact(self.receptive_field + (dilation * (kernel - 1) // stride) * self.jump),
                        _exact(Fraction(self.jump) / stride), self.depth + layers)


def join(geometries, on_grid=None) -> Geometry | None:
    """Where paths meet (add, cat, any op of several inputs): the largest receptive field and the greatest
    depth. The jump is that of the widest input on the output's grid (``on_grid``: a flag per input, False for
    one broadcast over the output's sides): a squeeze-and-excitation gate, a globally pooled (N, C, 1, 1)
    scale, widens the field of every pixel it multiplies, but the product stays on the feature map's grid."""
    geometries = list(geometries)
    if not geometries:
        return None
    def widest(gs):
        return max(gs, key=lambda g: (g.receptive_field, -g.jump))
    grid = geometries if on_grid is None else [g for g, on in zip(geometries, on_grid) if on]
    return Geometry(widest(geometries).receptive_field, widest(grid or geometries).jump,
                    max(g.depth for g in geometries))


def on_grid(shape, output_shape) -> bool:
    """Whether a tensor of ``shape`` lies on the grid of an op's output (not broadcast along any of its sides):
    no size 1, aligned from the right, where the output's size is larger."""
    return all(not (i == 1 and o > 1) for i, o in zip(reversed(list(shape)), reversed(list(output_shape))))


def _side(value) -> int:
    """The larger side of an int-or-tuple argument (our fields are squares: a non-square kernel counts its
    larger side)."""
    return max(value) if isinstance(value, (tuple, list)) else int(value)


def _window(kernel, dilation) -> tuple[int, int]:
    """(kernel, dilation) of the side whose window spans the most input steps, d (k - 1) + 1: a field is a square
    of the larger side, and the larger kernel and the larger dilation may be different sides' (a 3x2 kernel
    dilated (1, 3) spans 3 x 4, not 7)."""
    sides = [list(v) if isinstance(v, (tuple, list)) else [int(v)] for v in (kernel, dilation)]
    n = max(len(s) for s in sides)
    ks, ds = (s * n if len(s) == 1 else s for s in sides)
    return max(zip(ks, ds), key=lambda kd: kd[1] * (kd[0] - 1))


def _adaptive(in_size: int, out_size: int) -> tuple[int, int]:
    """(kernel, stride) of an adaptive pool from ``in_size`` to ``out_size``: its largest window (torch's windows
    run from floor(i * in / out) to ceil((i + 1) * in / out)), and the nearest whole stride."""
    if out_size >= in_size:
        return 1, 1
    kernel = max(ceil((i + 1) * in_size / out_size) - (i * in_size) // out_size for i in range(out_size))
    return kernel, max(1, round(in_size / out_size))


def adaptive_window(input_shape, output_shape, dims: int) -> tuple[int, int]:
    """(kernel, stride) of an adaptive pool over the last ``dims`` sides: the largest of the sides' (a field is a
    square, so a 14x7 -> 1x1 pool counts as 14x14 whichever side is the long one)."""
    sides = list(zip(input_shape[-dims:], output_shape[-dims:]))
    return max((_adaptive(i, o) for i, o in sides), default=(1, 1))


def is_conv(module: nn.Module) -> bool:
    """A convolution: torch's, or any leaf layer with a ``kernel_size`` and weights (LeNet's TableConv2d)."""
    return isinstance(module, nn.modules.conv._ConvNd) or (
        hasattr(module, "kernel_size") and any(True for _ in module.parameters(recurse=False)))


def inception_kernel(block: Inception) -> int:
    """The largest path of an Inception block: 1x1 -> k (its spatial convolutions), or 3x3 pool -> 1x1."""
    return max(block.branch2[1].conv.kernel_size[0], block.branch3[1].conv.kernel_size[0], 3)


_ADAPTIVE_DIMS = ((nn.AdaptiveAvgPool1d, 1), (nn.AdaptiveMaxPool1d, 1), (nn.AdaptiveAvgPool2d, 2),
                  (nn.AdaptiveMaxPool2d, 2), (nn.AdaptiveAvgPool3d, 3), (nn.AdaptiveMaxPool3d, 3))


def _pool_stride(stride, kernel):
    """torch's pools: a stride of None (the modules', F's) or [] (aten's) is the kernel size."""
    return kernel if stride is None or (isinstance(stride, (tuple, list)) and not stride) else stride


def layer_geometry(module: nn.Module, before: Geometry, input_shape, output_shape) -> Geometry | None:
    """The geometry after the leaf layer ``module`` (one that ran no submodule), given its input's; None for a
    layer of no known kind (element-wise or across channels, such as ReLU, BatchNorm, LRN, dropout: the
    summary then keeps what the functional ops it ran gave its output)."""
    if isinstance(module, Inception):
        return before.then(inception_kernel(module), layers=2)
    if isinstance(module, nn.Linear):
        return before.then(layers=1)
    for kind, dims in _ADAPTIVE_DIMS:
        if isinstance(module, kind):
            if len(input_shape) <= dims:
                return None
            return before.then(*adaptive_window(input_shape, output_shape, dims))
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        kernel, dilation = _window(module.kernel_size, module.dilation)
        return before.up(kernel, _side(module.stride), dilation)
    if hasattr(module, "kernel_size"):  # convs, pools, the fused pool -> LRN, LeNet's table conv
        # (a conv-like layer without a stride attribute runs at 1)
        stride = _pool_stride(getattr(module, "stride", 1), module.kernel_size)
        kernel, dilation = _window(module.kernel_size, getattr(module, "dilation", 1))
        return before.then(kernel, _side(stride), dilation, layers=1 if is_conv(module) else 0)
    return None


# ------------------------------------------------------------------------------------ functional ops
#
# The ops a forward may call in place of a module. Each kind lists its arguments' names in order (an argument
# comes by position or by keyword); ``dims`` is the number of spatial sides of an adaptive pool.

_CONV = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_TRANSPOSE = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
_CONVOLUTION = ("input", "weight", "bias", "stride", "padding", "dilation", "transposed", "output_padding", "groups")
_MAX_POOL = ("input", "kernel_size", "stride", "padding", "dilation")
_AVG_POOL = ("input", "kernel_size", "stride")  # no dilation
_LP_POOL = ("input", "norm_type", "kernel_size", "stride")


def _functional_ops() -> dict:
    """{function: (kind, argument names, dims)} for torch's functional convolutions and pools."""
    table = {}

    def add(kind, names, functions, dims=0):
        for function in functions:
            if function is not None:
                table[function] = (kind, names, dims)

    nn_c = torch._C._nn
    for n in (1, 2, 3):
        add("conv", _CONV, [getattr(torch, f"conv{n}d")])
        add("conv_transpose", _CONV_TRANSPOSE, [getattr(torch, f"conv_transpose{n}d")])
        add("pool", _MAX_POOL, [getattr(F, f"max_pool{n}d"), getattr(F, f"max_pool{n}d_with_indices"),
                                getattr(F, f"_max_pool{n}d", None), getattr(torch, f"max_pool{n}d", None),
                                getattr(torch, f"max_pool{n}d_with_indices", None),
                                getattr(nn_c, f"max_pool{n}d_with_indices", None)])
        add("pool", _AVG_POOL, [getattr(F, f"avg_pool{n}d"), getattr(torch, f"avg_pool{n}d", None)])
        add("pool", _LP_POOL, [getattr(F, f"lp_pool{n}d", None)])
        add("adaptive", ("input",), [getattr(F, f"adaptive_avg_pool{n}d"), getattr(F, f"adaptive_max_pool{n}d"),
                                     getattr(F, f"adaptive_max_pool{n}d_with_indices"),
                                     getattr(F, f"_adaptive_max_pool{n}d", None),
                                     getattr(torch, f"adaptive_avg_pool{n}d", None),
                                     getattr(torch, f"adaptive_max_pool{n}d", None),
                                     getattr(nn_c, f"adaptive_avg_pool{n}d", None),
                                     getattr(nn_c, f"adaptive_max_pool{n}d", None)], dims=n)
    add("convolution", _CONVOLUTION, [torch.convolution])
    add("linear", ("input", "weight"), [F.linear])
    return table


_FUNCTIONAL = _functional_ops()

# Our ops (``torch.ops.classicnets_ext.*``, Triton twins included), by name: stride and padding come resolved.
_OUR_OPS = {"max_pool2d": ("pool", _MAX_POOL), "max_pool2d_lrn": ("pool", ("input", "kernel_size", "stride")),
            "inception": ("inception", ("input", "weight_1x1", "bias_1x1", "weight_3x3", "bias_3x3", "weight_5x5"))}


def _spec(func):
    """(kind, argument names, dims) of a functional conv, pool or linear; None for any other function."""
    try:
        spec = _FUNCTIONAL.get(func)
    except TypeError:  # an unhashable callable
        return None
    if spec is None and getattr(func, "namespace", None) == "classicnets_ext":  # an OpOverload of ours
        found = _OUR_OPS.get(func.__name__.split(".")[0].removesuffix("_triton"))
        spec = (*found, 0) if found else None
    return spec


def _kernel_of(weight) -> int:
    """A convolution's kernel side from its weight (out, in / groups, *kernel) or (in, out / groups, *kernel)."""
    return _side(list(weight.shape[2:])) if isinstance(weight, torch.Tensor) and weight.dim() > 2 else 1


def op_geometry(func, before: Geometry, args, kwargs, output_shape) -> Geometry:
    """The geometry after a call of ``func`` whose tensor inputs have the (joined) geometry ``before``: a
    functional convolution's or pool's map (as :func:`layer_geometry` maps their modules); ``before`` for any
    other function (element-wise, shape changes, joins)."""
    spec = _spec(func)
    if spec is None:
        return before
    kind, names, dims = spec

    def arg(name, default=None):
        i = names.index(name)
        return args[i] if len(args) > i else kwargs.get(name, default)

    try:
        if kind == "linear":
            return before.then(layers=1)
        if kind == "adaptive":
            shape = getattr(arg("input"), "shape", None)
            if shape is None or len(shape) <= dims or len(output_shape) <= dims:
                return before
            return before.then(*adaptive_window(list(shape), output_shape, dims))
        if kind == "inception":
            return before.then(max(_kernel_of(arg("weight_3x3")), _kernel_of(arg("weight_5x5")), 3), layers=2)
        if kind == "convolution" and arg("transposed", False):
            kind = "conv_transpose"
        if kind in ("conv", "convolution", "conv_transpose"):
            weight = arg("weight")
            sides = list(weight.shape[2:]) if isinstance(weight, torch.Tensor) and weight.dim() > 2 else 1
            kernel, dilation = _window(sides, arg("dilation", 1))
            stride = _side(arg("stride", 1))
            if kind == "conv_transpose":
                return before.up(kernel, stride, dilation)
            return before.then(kernel, stride, dilation, layers=1)
        kernel = arg("kernel_size")
        stride = _pool_stride(arg("stride"), kernel)
        kernel, dilation = _window(kernel, arg("dilation", 1) if "dilation" in names else 1)
        return before.then(kernel, _side(stride), dilation)
    except (TypeError, ValueError):  # arguments of a form we do not read (the op itself took them): no change
        return before
