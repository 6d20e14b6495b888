"""The Inception block module (GoogLeNet, Szegedy et al. 2014), on the fused ``inception`` op.

Two styles with the same submodule layout (``branch1``, ``branch2.0``, ``branch2.1``, ``branch3.0``,
``branch3.1``, ``branch4.1``):

* ``"torchvision"``: torchvision's ``Inception`` exactly -- bias-free convolutions, BatchNorm (eps 0.001), ReLU,
  and its "5x5" branch that is really 3x3 -- so its state_dicts load with ``strict=True``.
* ``"paper"``: the paper's block -- convolutions with bias, ReLU, no BatchNorm, a true 5x5 (padding 2).

In eval mode (and always for ``"paper"``) the block runs the fused op with BatchNorm folded into the weights.
The folded tensors are cached for inference and rebuilt whenever a parameter or buffer changes (their version
counters), or computed afresh -- differentiably -- when autograd may need them. In train mode the torchvision
block needs each BatchNorm's batch statistics between its convolution and ReLU, which no fold can give: it
runs torchvision's layers, with the three 1x1 layers that read the input as one convolution, one BatchNorm and
one ReLU over their stacked channels (``_forward_stacked``; running statistics updated as torch's), and our
max-pool in the pool branch.
"""
from __future__ import annotations

import contextlib
import operator
import threading

import torch
import torch.nn.functional as F
from torch import nn

from . import _backend, _extension, ops
from ._fold import FoldCache, can_fold, fold_conv_bn, hooked_below, tensor_of
from .nn import MaxPool2d, _NotScriptable, ours_of, torchvision_twin  # nn imports this module at its end

STYLES = ("torchvision", "paper")

# True while hooks on a block's submodules only watch (classicnets_ext.analysis hooks every module to find the
# layers that run): the block then runs as it would without them, fused.
_watch = threading.local()  # .hooks_only: set inside hooks_only_watch on this thread (see _backend._thread)


@contextlib.contextmanager
def hooks_only_watch():
    """Within, on this thread: Inception blocks run fused even when their submodules have hooks (see
    Inception.forward). Thread-local, so that a summary in one thread does not change how another thread's
    hooked blocks run."""
    outermost = not getattr(_watch, "hooks_only", False)
    _watch.hooks_only = True
    try:
        yield
    finally:
        if outermost:
            del _watch.hooks_only


class ConvBNReLU(_NotScriptable, FoldCache, nn.Module):
    """torchvision's ``BasicConv2d``: conv (no bias; ``kwargs`` go to it) -> BatchNorm(eps=0.001) -> ReLU, the
    same attribute names. In eval mode one convolution with the BatchNorm folded in (``_fold``)."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def fold_pairs(self):
        return [(self.conv, self.bn)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.foldable((self.conv, self.bn)):
            (weight, bias), = self.folded(input=x)
            return F.relu(self.conv._conv_forward(x, weight, bias), inplace=True)
        return F.relu(self.bn(self.conv(x)), inplace=True)


class ConvReLU(nn.Module):
    """The paper's layer: conv (with bias) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x), inplace=True)


class Inception(_NotScriptable, FoldCache, nn.Module):
    """GoogLeNet's Inception block: ``cat([1x1, 1x1 -> 3x3, 1x1 -> 5x5, 3x3 max-pool -> 1x1], dim=1)``.

    Arguments as torchvision's ``Inception`` (``in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5,
    pool_proj, conv_block=None``); ``style`` is ``"torchvision"`` (default, BatchNorm, a 3x3 "5x5" branch) or
    ``"paper"`` (bias, no BatchNorm, a true 5x5). Input (N, C, H, W) or (C, H, W); output (N, ch1x1 + ch3x3 +
    ch5x5 + pool_proj, H, W), channels-last when the fused op runs.

    ``conv_block``, as torchvision's, builds each conv layer as ``conv_block(in, out, kernel_size=k[,
    padding=p])`` in place of the style's own (``ConvBNReLU`` / ``ConvReLU``). The fused op knows only those
    two: a block of any other class runs its layers one by one, as torchvision's block does.
    """

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int, conv_block=None, *, style: str = "torchvision") -> None:
        super().__init__()
        if style not in STYLES:
            raise ValueError(f"Inception(): argument 'style' must be one of {STYLES}, got {style!r}")
        widths = dict(in_channels=in_channels, ch1x1=ch1x1, ch3x3red=ch3x3red, ch3x3=ch3x3, ch5x5red=ch5x5red,
                      ch5x5=ch5x5, pool_proj=pool_proj)
        for name, value in widths.items():
            # nn.Conv2d builds with 0 channels and fails only in forward (torchvision's block too): say it here.
            try:
                width = None if isinstance(value, bool) else operator.index(value)  # ints, numpy ints
            except TypeError:
                width = None
            if width is None or width < 1:
                raise ValueError(f"Inception(): argument '{name}' must be a positive int, got {value!r}")
        if conv_block is not None and not callable(conv_block):
            raise TypeError(f"Inception(): argument 'conv_block' must be callable, got {type(conv_block).__name__}")
        self.style = style
        block = conv_block or (ConvBNReLU if style == "torchvision" else ConvReLU)
        k5 = 3 if style == "torchvision" else 5  # torchvision's known deviation: its "5x5" branch is 3x3
        self.branch1 = block(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(block(in_channels, ch3x3red, kernel_size=1),
                                     block(ch3x3red, ch3x3, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(block(in_channels, ch5x5red, kernel_size=1),
                                     block(ch5x5red, ch5x5, kernel_size=k5, padding=k5 // 2))
        self.branch4 = nn.Sequential(MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
                                     block(in_channels, pool_proj, kernel_size=1))

    def extra_repr(self) -> str:
        return f"style={self.style!r}"

    # ------------------------------------------------------------------------------------- fused parameters
    # Submodules are read from the _modules dicts, as nn.Module.__getattr__ and Sequential.__getitem__ end up
    # doing, at a tenth of their cost: the forward reads ~20 of them on every call (an Inception block's host
    # time ran ~140 us over its op's before, 6x the op's at batch 1).
    def _layers(self):
        mods = self._modules
        b2, b3, b4 = (tuple(mods[name]._modules.values()) for name in ("branch2", "branch3", "branch4"))
        return (mods["branch1"], b2[0], b3[0], b2[1], b3[1], b4[1])

    @staticmethod
    def _pairs(layers):
        return [(layer._modules.get("conv"), layer._modules.get("bn")) for layer in layers]

    def fold_pairs(self):
        return self._pairs(self._layers())

    def fused_parameters(self, pairs=None) -> tuple[torch.Tensor, ...]:
        """The fused op's (weight_1x1, bias_1x1, weight_3x3, bias_3x3, weight_5x5, bias_5x5, weight_pool,
        bias_pool), BatchNorm folded (eval mode). ``pairs``: ``fold_pairs()``, when the caller has it."""
        (w1, b1), (w2, b2), (w3, b3), (w33, b33), (w55, b55), (wp, bp) = (
            fold_conv_bn(conv, bn) for conv, bn in (self.fold_pairs() if pairs is None else pairs))
        # The spatial weights channels-last, like the op's reductions: oneDNN and cuDNN then run the convolution
        # as it is, instead of reordering the weight on every call.
        cl = torch.channels_last
        return (torch.cat([w1, w2, w3]), torch.cat([b1, b2, b3]), w33.contiguous(memory_format=cl), b33,
                w55.contiguous(memory_format=cl), b55, wp, bp)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = self._standard_pairs(x)
        if pairs is not None and self._folds(pairs):
            return self._forward_fused(x, pairs)
        if pairs is not None and _stacks_in_training(pairs, x):
            return self._forward_stacked(x, pairs)
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], -3)

    def _forward_fused(self, x: torch.Tensor, pairs) -> torch.Tensor:
        checked = x if self.style == "torchvision" else None  # BatchNorm2d's 4-D input
        weights = self.folded(lambda: self.fused_parameters(pairs), input=checked, pairs=pairs)
        packs = _onednn_packs(self, weights, x)
        if packs is not None:
            _extension._C.inception_set_cpu_prepacked(weights[0], packs[0], weights[6], packs[1])
        try:
            return ops.inception(x, *weights, pairs[0][0].out_channels)
        finally:
            if packs is not None:
                _extension._C.inception_set_cpu_prepacked()

    def _forward_stacked(self, x: torch.Tensor, pairs) -> torch.Tensor:
        """torchvision's block with BatchNorm on batch statistics (training), its three 1x1 layers that read x
        run as one: one convolution over the stacked weights, one BatchNorm over the stacked channels, one ReLU.
        BatchNorm normalizes each channel by its own statistics, so this is the three layers' computation (their
        running statistics and batch counts updated as theirs); the input is read once, and the narrow reductions
        (16-48 channels) no longer run as GEMMs of their own. The rest -- the spatial layers and the pool
        branch -- runs as in torchvision's block. Forward + backward of GoogLeNet's blocks 3a, 4b and 5b, batch
        1 and 8, NCHW and channels-last, against running the layers one by one (AMD EPYC Zen 5, 2 threads, one
        process): AVX-512 1.02-1.29x, avx2 1.01-1.19x; the 1x1 layers alone 1.1-1.9x."""
        convs, bns = zip(*pairs[:3])
        widths = [conv.out_channels for conv in convs]
        bias = None if convs[0].bias is None else torch.cat([conv.bias for conv in convs])
        y = F.conv2d(x, torch.cat([conv.weight for conv in convs]), bias)
        y = F.relu(_stacked_batch_norm(y, bns), inplace=True)
        out1, red3, red5 = _SplitChannels.apply(y, widths)
        layers = self._layers()
        return torch.cat([out1, layers[3](red3), layers[4](red5), self.branch4(x)], -3)

    def _fusable(self, x: torch.Tensor):
        """The (conv, bn or None) pairs of ``fold_pairs()`` when the fused op computes what the submodules would,
        else None (see _standard_pairs and _folds)."""
        pairs = self._standard_pairs(x)
        return pairs if pairs is not None and self._folds(pairs) else None

    def _folds(self, pairs) -> bool:
        """BatchNorm folds into every layer (eval mode, running statistics; never with batch statistics, which
        no fold gives); the paper's layers need their biases."""
        if self.style == "paper":
            return all(tensor_of(conv, "bias") is not None for conv, _ in pairs)
        return all(can_fold(conv, bn) for conv, bn in pairs)

    def _standard_pairs(self, x: torch.Tensor):
        """The (conv, bn or None) pairs of ``fold_pairs()`` when the block is still built from its own layers as
        constructed and may run other than submodule by submodule, else None: it must run them one by one, as
        torchvision's block does, where
        * hooks on a submodule (a feature extractor's, a pruning mask's) must run and see its output, which the
          fused op never computes;
        * a submodule swapped since construction (an AvgPool2d in the pool branch, a FrozenBatchNorm2d, another
          kernel size) runs its own forward, and an input with the wrong channel count gets torch's error;
        * inside torch.func transforms (grad, vmap, jacrev, ...), which the fused op's autograd
          (torch.library.register_autograd) does not support: grad raised, vmap looped per sample.
        """
        if torch._C._functorch.maybe_current_level() is not None:  # inside a torch.func transform (0.1 us)
            return None
        if torch.fx._symbolic_trace.is_fx_symbolic_tracing():  # fx records the branches' layers, as torchvision's
            return None
        if not getattr(_watch, "hooks_only", False) and hooked_below(self):
            return None
        mods = self._modules
        if any(type(mods.get(name)) is not nn.Sequential for name in ("branch2", "branch3", "branch4")):
            return None
        b2, b3, b4 = (tuple(mods[name]._modules.values()) for name in ("branch2", "branch3", "branch4"))
        if (len(b2), len(b3), len(b4)) != (2, 2, 2):
            return None
        layers = (mods.get("branch1"), b2[0], b3[0], b2[1], b3[1], b4[1])
        block = ConvBNReLU if self.style == "torchvision" else ConvReLU
        if any(ours_of(type(layer)) is not block for layer in layers):  # (converted torchvision layers too)
            return None
        pool = b4[0]
        if type(pool) not in (MaxPool2d, nn.MaxPool2d) or pool.return_indices or not _pools_3x3_same(pool):
            return None
        pairs = self._pairs(layers)
        b1, r3, r5, c3, c5, proj = convs = [conv for conv, _ in pairs]
        channels = _channels(x)
        if not (all(type(c) is nn.Conv2d and _same_conv(c) for c in convs)
                and all(c.in_channels == channels and c.kernel_size == (1, 1) for c in (b1, r3, r5, proj))
                and c3.in_channels == r3.out_channels and c5.in_channels == r5.out_channels):
            return None
        return pairs


# Devices where Inception.forward stacks the three 1x1 layers in training (_forward_stacked): measured on the CPU;
# on CUDA the layers run one by one until the GPU bench has compared the two.
_STACKED_TRAINING_DEVICES = ("cpu",)
_BN_SETTINGS = ("training", "track_running_stats", "affine", "eps", "momentum")


def _stacks_in_training(pairs, x: torch.Tensor) -> bool:
    """Whether the three 1x1 layers that read ``x`` (``pairs[:3]``) may run as one (Inception._forward_stacked):
    each BatchNorm normalizes by batch statistics (training, or no running statistics), all three with the same
    settings (one F.batch_norm call takes one eps and momentum; a momentum of None -- a cumulative average -- runs
    them one by one), the same dtype and device throughout, and the convolutions alike but for their widths.
    Not on the reference backend, which runs every layer as torch's, nor where BatchNorm raises (a 3-D input, one
    value per channel), so that its error names its own layer's size."""
    convs, bns = zip(*pairs[:3])
    if (x.dim() != 4 or x.numel() == x.shape[1] or x.device.type not in _STACKED_TRAINING_DEVICES
            or _backend.get_backend() == "reference" or any(type(bn) is not nn.BatchNorm2d for bn in bns)):
        return False
    first = bns[0]
    if not (first.training or tensor_of(first, "running_mean") is None) or first.momentum is None:
        return False
    if any(getattr(bn, name) != getattr(first, name) for bn in bns[1:] for name in _BN_SETTINGS):
        return False
    for sized, modules, names in ((False, convs, ("weight", "bias")),
                                  (True, bns, ("weight", "bias", "running_mean", "running_var"))):
        for name in names:  # each tensor on all three or on none (a conv with a bias beside two without)
            tensors = [tensor_of(m, name) for m in modules]
            if tensors[0] is None:
                if any(t is not None for t in tensors):
                    return False
            elif any(t is None or t.dtype != x.dtype or t.device != x.device for t in tensors):
                return False
            # A BatchNorm's tensors sized for its convolution: where they are not, its own forward raises, and a
            # stacked one might not (two mismatched widths that sum right).
            elif sized and any(t.shape != (conv.out_channels,) for t, conv in zip(tensors, convs)):
                return False
    return True


class _SplitChannels(torch.autograd.Function):
    """``y.split(widths, 1)`` whose backward writes the pieces' gradients into one tensor in ``y``'s layout.
    torch's split backward is a cat, which answers contiguous (NCHW) unless every gradient suggests another
    layout -- and the branch output's gradient, a slice of the block's, often does not (a loss's expanded
    gradient suggests none) -- so the ReLU and BatchNorm backward after it mixed layouts (4b, batch 8,
    channels-last: threshold_backward 43 -> 367 us a call)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, widths: list[int]):
        ctx.widths = widths
        ctx.shape, ctx.stride = y.shape, y.stride()
        ctx.set_materialize_grads(False)
        return y.split(widths, 1)

    @staticmethod
    def backward(ctx, *grads):
        given = [g for g in grads if g is not None]
        if not given:
            return None, None
        grad = given[0].new_empty_strided(ctx.shape, ctx.stride)
        start = 0
        for width, g in zip(ctx.widths, grads):
            part = grad.narrow(1, start, width)  # (a view of its own: split's views refuse in-place writes
            start += width                      # under create_graph, where this backward is differentiated)
            if g is None:
                part.zero_()
            else:
                part.copy_(g)
        return grad, None


def _stacked_batch_norm(y: torch.Tensor, bns) -> torch.Tensor:
    """``cat([bn(part) for bn, part in zip(bns, y.split(widths, 1))], 1)`` as one F.batch_norm over ``y``, with
    the BatchNorms' affine parameters and running statistics stacked; the updated statistics are written back
    and each BatchNorm counts the batch, as its own forward does (``_stacks_in_training`` has checked that they
    agree). Normalizing each channel slice by itself would read strided views, which torch's CPU BatchNorm takes
    on its slow path (its backward 3.7x slower there); the stacked tensor is dense."""
    first = bns[0]
    stack = (lambda name: None if tensor_of(first, name) is None
             else torch.cat([tensor_of(bn, name) for bn in bns]))
    tracked = first.training and first.track_running_stats
    running = [stack(name) if tracked else None for name in ("running_mean", "running_var")]
    out = F.batch_norm(y, *running, stack("weight"), stack("bias"), True, first.momentum, first.eps)
    if tracked:
        with torch.no_grad():
            widths = [bn.num_features for bn in bns]
            for name, values in zip(("running_mean", "running_var"), running):
                if values is not None:
                    for bn, part in zip(bns, values.split(widths)):
                        tensor_of(bn, name).copy_(part)
            for bn in bns:
                if bn.num_batches_tracked is not None:
                    bn.num_batches_tracked.add_(1)
    return out


# mkldnn::_linear_pointwise, the matmul on a packed weight, and its packing op: registered where torch is built
# with oneDNN (every x86 and aarch64 wheel).
_ONEDNN_MATMUL = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_packs(block: Inception, weights: tuple, x: torch.Tensor):
    """The fused op's two 1x1 weights (the stacked 1x1 and the pool projection) packed in oneDNN's blocked layout,
    once per cached fold, for the CPU kernel's fp32 GEMMs: oneDNN otherwise reorders a weight on every tile's GEMM,
    and MKL's sgemm (at::mm) runs AVX2 code on AMD CPUs. Against torch.compile of torchvision's block, in one
    process (AMD EPYC Zen 5, AVX-512, 2 threads, channels-last, the nine blocks): batch 1 0.91-1.36x -> 1.12-1.80x,
    batch 8 0.92-1.27x -> 1.00-1.33x. None where the op would not take them (see csrc/inception/inception.h): not
    an fp32 CPU input, no oneDNN, a fold computed afresh."""
    w1 = weights[0]
    if (torch.compiler.is_compiling() or x.device.type != "cpu" or w1.device.type != "cpu"
            or w1.dtype != torch.float32 or x.dtype != torch.float32 or not _ONEDNN_MATMUL
            or not _extension.available() or torch.is_autocast_enabled("cpu")):
        return None
    pack = torch.ops.mkldnn._reorder_linear_weight
    return block.fold_derived(weights, "onednn_1x1", lambda: (pack(w1.flatten(1)), pack(weights[6].flatten(1))))


def _channels(x: torch.Tensor):
    """``x``'s channel count as an int (None unless 3-D or 4-D): it only picks the path, which a trace fixes
    anyway, so a trace reads it untraced."""
    if x.dim() not in (3, 4):
        return None
    with ops.untraced():
        return x.shape[-3]


def is_torchvision_inception(module: nn.Module) -> bool:
    """A torchvision GoogLeNet ``Inception`` block built from its default layers (what ``adopt_torchvision``
    can take over)."""
    cls = type(module)
    if cls.__name__ != "Inception" or not cls.__module__.startswith("torchvision.models"):
        return False
    try:
        pool = module.branch4[0]
        layers = (module.branch1, module.branch2[0], module.branch2[1], module.branch3[0], module.branch3[1],
                  module.branch4[1])
    except (AttributeError, IndexError, TypeError):
        return False
    return (isinstance(pool, nn.MaxPool2d) and _pools_3x3_same(pool)
            and all(type(getattr(layer, "conv", None)) is nn.Conv2d and type(getattr(layer, "bn", None)) is nn.BatchNorm2d
                    and _same_conv(layer.conv) for layer in layers))


def _as_pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _pools_3x3_same(pool: nn.MaxPool2d) -> bool:
    """The pool branch's geometry: 3x3 windows, stride 1, padding 1, no dilation (what the fused op pools)."""
    return ([_as_pair(v) for v in (pool.kernel_size, pool.stride, pool.padding, pool.dilation)]
            == [(3, 3), (1, 1), (1, 1), (1, 1)])


def _same_conv(conv: nn.Conv2d) -> bool:
    """Stride 1, groups 1, no dilation, 'same' padding: what the fused op computes."""
    k = conv.kernel_size[0]
    return (conv.kernel_size == (k, k) and k % 2 == 1 and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding == (k // 2, k // 2) and conv.padding_mode == "zeros")


def adopt_torchvision(module: nn.Module) -> None:
    """Turn a torchvision ``Inception`` into ours in place: same submodules, parameters and mode."""
    module.__class__ = torchvision_twin(type(module))  # ours, and still torchvision's for isinstance
    module.style = "torchvision"
    module._fold_cache = None
