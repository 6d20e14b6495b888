"""VGG (Simonyan & Zisserman 2014), torchvision-compatible: the same module names and state_dict keys as
``torchvision.models.vgg*``, so its checkpoints load with ``strict=True``; the 2x2/2 max-pools are ours.

Configs A/B/D/E = VGG11/13/16/19: 3x3 convs (stride 1, pad 1) + ReLU, a 2x2/2 max-pool after each of the 5
stages, channels 64-128-256-512-512; then 4096-4096-num_classes with dropout. VGG16: 13 conv + 3 FC,
138,357,544 parameters, 102,764,544 of them (74%) in FC6 (7*7*512 -> 4096). In eval mode the ``_bn`` variants
run each conv -> BatchNorm as one convolution with the BatchNorm folded in (``_fold``).
"""
from __future__ import annotations

from typing import Callable, Union

import torch
from torch import nn

from .._fold import FoldCache
from ..nn import Linear, MaxPool2d, _NotScriptable, _runs_in_order
from ._registry import register_model
from ._weights import build_model

# Output channels of each 3x3 conv, "M" for a 2x2/2 max-pool (torchvision's cfgs). At 224: stage sizes
# 224 -> 112 -> 56 -> 28 -> 14 -> 7.
cfgs: dict[str, list[Union[str, int]]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_layers(cfg: list[Union[str, int]], batch_norm: bool = False,
                pool_layer: Callable[..., nn.Module] = MaxPool2d,
                norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> nn.Sequential:
    """torchvision's ``make_layers`` with the pool and norm layers injectable (same indices, so same keys)."""
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(pool_layer(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(norm_layer(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return nn.Sequential(*layers)


class VGG(_NotScriptable, FoldCache, nn.Module):
    def __init__(self, features: nn.Module, num_classes: int = 1000, init_weights: bool = True,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        # Adaptive, as torchvision's: 7x7 at 224, and inputs down to 32x32 still fit FC6.
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            Linear(4096, num_classes),
        )
        if init_weights:  # torchvision's initialisation
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.constant_(m.bias, 0)

    def _conv_bn_positions(self) -> list[int]:
        """Where in ``features`` a Conv2d is followed by a BatchNorm (by position: a conv used twice may meet two
        BatchNorms). None unless ``features`` runs its layers in order -- a plain Sequential; torchvision's VGG
        takes any module, whose own forward must run as written."""
        if not _runs_in_order(self.features):
            return []
        layers = list(self.features)
        return [i for i in range(len(layers) - 1) if type(layers[i]) is nn.Conv2d
                and isinstance(layers[i + 1], nn.modules.batchnorm._BatchNorm)]

    def fold_pairs(self):
        layers = list(self.features) if _runs_in_order(self.features) else []
        return [(layers[i], layers[i + 1]) for i in self._conv_bn_positions()]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not self.foldable(self.features.modules()):  # features' own hooks too: it is not called
            return self.features(x)  # N x 512 x H/32 x W/32
        layers = list(self.features)
        folded = dict(zip(self._conv_bn_positions(), self.folded(input=x)))
        i = 0
        while i < len(layers):
            if i in folded:  # the conv with its BatchNorm folded in; the BatchNorm is skipped
                x = layers[i]._conv_forward(x, *folded[i])
                i += 2
            else:
                x = layers[i](x)
                i += 1
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # N x 25088
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _vgg(name: str, cfg: str, batch_norm: bool, weights, pool_layer=MaxPool2d, **kwargs) -> VGG:
    return build_model(lambda: VGG(make_layers(cfgs[cfg], batch_norm, pool_layer=pool_layer), **kwargs), weights,
                       name)


@register_model()
def vgg11(*, weights=None, **kwargs) -> VGG:
    """VGG-11 (config A). ``kwargs``: ``num_classes``, ``init_weights``, ``dropout``, ``pool_layer``."""
    return _vgg("vgg11", "A", False, weights, **kwargs)


@register_model()
def vgg11_bn(*, weights=None, **kwargs) -> VGG:
    """VGG-11 (config A) with BatchNorm after each conv."""
    return _vgg("vgg11_bn", "A", True, weights, **kwargs)


@register_model()
def vgg13(*, weights=None, **kwargs) -> VGG:
    """VGG-13 (config B)."""
    return _vgg("vgg13", "B", False, weights, **kwargs)


@register_model()
def vgg13_bn(*, weights=None, **kwargs) -> VGG:
    """VGG-13 (config B) with BatchNorm."""
    return _vgg("vgg13_bn", "B", True, weights, **kwargs)


@register_model()
def vgg16(*, weights=None, **kwargs) -> VGG:
    """VGG-16 (config D): 13 conv + 3 FC, 138,357,544 parameters."""
    return _vgg("vgg16", "D", False, weights, **kwargs)


@register_model()
def vgg16_bn(*, weights=None, **kwargs) -> VGG:
    """VGG-16 (config D) with BatchNorm."""
    return _vgg("vgg16_bn", "D", True, weights, **kwargs)


@register_model()
def vgg19(*, weights=None, **kwargs) -> VGG:
    """VGG-19 (config E)."""
    return _vgg("vgg19", "E", False, weights, **kwargs)


@register_model()
def vgg19_bn(*, weights=None, **kwargs) -> VGG:
    """VGG-19 (config E) with BatchNorm."""
    return _vgg("vgg19_bn", "E", True, weights, **kwargs)
