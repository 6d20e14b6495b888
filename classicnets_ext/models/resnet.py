"""ResNet (He, Zhang, Ren & Sun 2015), torchvision-compatible: torchvision's module names and state_dict keys
(so its checkpoints load with ``strict=True``) and its "v1.5" Bottleneck (stride on the 3x3 conv); the stem's
overlapping 3x3/2 max-pool is ours.

Stem conv 7x7/2 64 + BN + ReLU -> 64x112x112, max-pool 3x3/2 pad 1 -> 64x56x56; four stages at 56, 28, 14, 7;
global average pool; FC. BasicBlock [2,2,2,2] = 18, [3,4,6,3] = 34; Bottleneck [3,4,6,3] = 50, [3,4,23,3] = 101,
[3,8,36,3] = 152 layers: 11,689,512 / 21,797,672 / 25,557,032 / 44,549,160 / 60,192,808 parameters.

In eval mode each block (and the stem) runs its convolutions with their BatchNorms folded in (``_fold``), and
adds the shortcut into the last convolution's fresh output in place: ResNet-50, batch 8, CPU inference spent
16% of its time in BatchNorm and 9% in the out-of-place add.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._fold import FoldCache
from ..nn import Linear, MaxPool2d, _NotScriptable
from ._registry import register_model
from ._weights import build_model


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                     bias=False, dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class _FoldedBlock(_NotScriptable, FoldCache, nn.Module):
    """A residual block whose BatchNorms run on running statistics (eval mode): each conv -> BatchNorm pair
    (``n_convs`` of them, then the projection's) as one folded convolution, ReLU between them, the shortcut added
    in place, ReLU. Otherwise ``forward_unfolded``, torchvision's forward."""
    n_convs: int

    def fold_pairs(self):
        pairs = [(getattr(self, f"conv{i}"), getattr(self, f"bn{i}")) for i in range(1, self.n_convs + 1)]
        if self.downsample is not None:
            pairs.append((self.downsample[0], self.downsample[1]))
        return pairs

    def _foldable_pairs(self):
        """fold_pairs() when the block folds, else None."""
        ds = self.downsample
        if ds is not None and not (type(ds) is nn.Sequential and len(ds) == 2):
            return None  # a custom projection (fold_pairs cannot index it): run it as it is
        pairs = self.fold_pairs()
        return pairs if self.foldable(pairs=pairs) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = self._foldable_pairs()
        if pairs is None:
            return self.forward_unfolded(x)
        folded = self.folded(input=x, pairs=pairs)
        # The block's own activation, unless it is still the ReLU it was built with: a model whose ReLUs were
        # swapped (LeakyReLU, SiLU, ...) runs them folded too (F.relu here ignored the swap).
        act = (lambda t: F.relu(t, inplace=True)) if type(self.relu) is nn.ReLU else self.relu
        out = x
        for i in range(self.n_convs):
            out = pairs[i][0]._conv_forward(out, *folded[i])
            if i + 1 < self.n_convs:
                out = act(out)
        identity = x if self.downsample is None else pairs[-1][0]._conv_forward(x, *folded[-1])
        return act(out.add_(identity))


class BasicBlock(_FoldedBlock):
    """Two 3x3 convs, identity (or 1x1 projection) shortcut."""
    expansion = 1
    n_convs = 2

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward_unfolded(self, x: torch.Tensor) -> torch.Tensor:
        # torchvision's order and in-place sum: hooks fire as there, a hook that keeps bn2's output sees what it
        # sees, and under autocast the sum keeps bn2's dtype.
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(_FoldedBlock):
    """1x1 reduce -> 3x3 (carries the stride: torchvision's v1.5) -> 1x1 expand by 4."""
    expansion = 4
    n_convs = 3

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward_unfolded(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (torchvision's order and in-place sum: see BasicBlock)
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet(_NotScriptable, FoldCache, nn.Module):
    """torchvision's ``ResNet``, with the same keyword arguments; ``pool_layer`` injects the stem's pool."""

    def __init__(self, block: type[Union[BasicBlock, Bottleneck]], layers: list[int], num_classes: int = 1000,
                 zero_init_residual: bool = False, groups: int = 1, width_per_group: int = 64,
                 replace_stride_with_dilation: Optional[list[bool]] = None,
                 norm_layer: Optional[Callable[[int], nn.Module]] = None,
                 pool_layer: Callable[..., nn.Module] = MaxPool2d) -> None:
        super().__init__()
        self._norm_layer = norm_layer = norm_layer or nn.BatchNorm2d
        self.inplanes, self.dilation = 64, 1
        replace_stride_with_dilation = replace_stride_with_dilation or [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation should be None or a 3-element tuple, "
                             f"got {replace_stride_with_dilation}")
        self.groups, self.base_width = groups, width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)  # 64 x 112 x 112
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = pool_layer(kernel_size=3, stride=2, padding=1)                             # 64 x 56 x 56
        self.layer1 = self._make_layer(block, 64, layers[0])                                      # 56 x 56
        self.layer2 = self._make_layer(block, 128, layers[1], 2, replace_stride_with_dilation[0])  # 28 x 28
        self.layer3 = self._make_layer(block, 256, layers[2], 2, replace_stride_with_dilation[1])  # 14 x 14
        self.layer4 = self._make_layer(block, 512, layers[3], 2, replace_stride_with_dilation[2])  # 7 x 7
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = Linear(512 * block.expansion, num_classes)

        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:  # each residual branch starts at zero: every block starts as the identity
            for m in self.modules():
                if isinstance(m, Bottleneck) and m.bn3.weight is not None:
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        norm_layer, downsample, previous_dilation = self._norm_layer, None, self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       norm_layer(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation,
                        norm_layer)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                         dilation=self.dilation, norm_layer=norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def fold_pairs(self):
        return [(self.conv1, self.bn1)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.foldable((self.conv1, self.bn1, self.relu)):
            (weight, bias), = self.folded(input=x)
            x = self.relu(self.conv1._conv_forward(x, weight, bias))
        else:
            x = self.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(self.maxpool(x)))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# name -> (block, blocks per stage)
CONFIGS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]), "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}


def _resnet(name: str, weights, **kwargs) -> ResNet:
    block, layers = CONFIGS[name]
    return build_model(lambda: ResNet(block, layers, **kwargs), weights, name)


@register_model()
def resnet18(*, weights=None, **kwargs) -> ResNet:
    """ResNet-18. ``kwargs`` as torchvision's ``ResNet`` (``num_classes``, ``zero_init_residual``,
    ``norm_layer``, ...) plus ``pool_layer``."""
    return _resnet("resnet18", weights, **kwargs)


@register_model()
def resnet34(*, weights=None, **kwargs) -> ResNet:
    """ResNet-34."""
    return _resnet("resnet34", weights, **kwargs)


@register_model()
def resnet50(*, weights=None, **kwargs) -> ResNet:
    """ResNet-50 (torchvision's v1.5 Bottleneck), 25,557,032 parameters."""
    return _resnet("resnet50", weights, **kwargs)


@register_model()
def resnet101(*, weights=None, **kwargs) -> ResNet:
    """ResNet-101."""
    return _resnet("resnet101", weights, **kwargs)


@register_model()
def resnet152(*, weights=None, **kwargs) -> ResNet:
    """ResNet-152."""
    return _resnet("resnet152", weights, **kwargs)
