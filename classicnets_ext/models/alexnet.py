"""AlexNet, twice:

* ``alexnet``: torchvision's model (the later "one weird trick" variant: 64-192-384-256-256 channels, no LRN,
  an adaptive 6x6 average pool), with torchvision's module names and state_dict keys; its max-pools are ours.
* ``alexnet_paper``: Krizhevsky, Sutskever & Hinton 2012 as the lecture notes analyse it: 3x227x227 input,
  96-256-384-384-256 channels, LRN after conv1 and conv2, overlapping 3x3/2 pools, the two-GPU split as
  ``groups=2``. Built from a table of :class:`ConvSpec` rows that ZFNet (``zfnet.py``) shares.

LRN: n=5, k=2, beta=0.75 and the paper's alpha=1e-4 on the *plain* sum of squares; torch's
LocalResponseNorm divides alpha by n, so the paper's alpha is 5e-4 in torch's convention.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..nn import Linear, LocalResponseNorm, MaxPool2d, MaxPoolLRN
from ._registry import register_model
from ._weights import build_model

PAPER_LRN = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)  # alpha = n * 1e-4 (see the module docstring)
ORDERS = ("lecture", "paper")


# ------------------------------------------------------------------------------------- torchvision's AlexNet

class AlexNet(nn.Module):
    """torchvision's ``AlexNet`` (same attributes, so the same state_dict keys)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5,
                 pool_layer: Callable[..., nn.Module] = MaxPool2d) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),  # 64 x 55 x 55
            pool_layer(kernel_size=3, stride=2),                                           # 64 x 27 x 27
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),           # 192 x 27 x 27
            pool_layer(kernel_size=3, stride=2),                                           # 192 x 13 x 13
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),          # 384 x 13 x 13
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),          # 256 x 13 x 13
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),          # 256 x 13 x 13
            pool_layer(kernel_size=3, stride=2),                                           # 256 x 6 x 6
        )
        # Adaptive, as torchvision's: inputs from 63x63 up still give FC6 its 256*6*6 = 9216 inputs.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = make_classifier(256 * 6 * 6, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def make_classifier(in_features: int, num_classes: int, dropout: float, hidden: int = 4096) -> nn.Sequential:
    """FC6 -> FC7 -> FC8 with dropout before FC6 and FC7, in torchvision's indices (0..6)."""
    return nn.Sequential(
        nn.Dropout(p=dropout), Linear(in_features, hidden), nn.ReLU(inplace=True),
        nn.Dropout(p=dropout), Linear(hidden, hidden), nn.ReLU(inplace=True),
        Linear(hidden, num_classes),
    )


def make_paper_classifier(in_features: int, num_classes: int, dropout: float, hidden: int = 4096) -> nn.Sequential:
    """FC6 -> FC7 -> FC8 with dropout on the outputs of FC6 and FC7, as the papers place it (AlexNet Sec. 4.2,
    Caffe's drop6/drop7 after relu6/relu7; ZFNet Sec. 3) -- torchvision's AlexNet drops their inputs instead
    (pool5's features and FC6's output). FC layers at indices 0, 3, 6."""
    return nn.Sequential(
        Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(p=dropout),
        Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(p=dropout),
        Linear(hidden, num_classes),
    )


@register_model()
def alexnet(*, weights=None, **kwargs) -> AlexNet:
    """torchvision's AlexNet, 61,100,840 parameters. ``kwargs``: ``num_classes``, ``dropout``, ``pool_layer``."""
    return build_model(lambda: AlexNet(**kwargs), weights, "alexnet")


# ---------------------------------------------------------------------------------- the paper's AlexNet

@dataclass(frozen=True)
class ConvSpec:
    """One conv layer of an AlexNet-like feature extractor, and what follows its ReLU: a 3x3/2 overlapping
    max-pool (``pool``, ``ceil`` for ceil_mode) and an LRN (``norm``). ``split``: on the paper's two GPUs each
    half of the output sees only its own half of the input (``groups`` of the model)."""
    out: int
    kernel: int
    stride: int = 1
    padding: int = 0
    split: bool = False
    pool: bool = False
    norm: bool = False
    ceil: bool = False


ALEXNET_PAPER = (                                                    # input 3 x 227 x 227
    ConvSpec(96, 11, stride=4, pool=True, norm=True),                # conv1 96 x 55 x 55 -> pool 96 x 27 x 27
    ConvSpec(256, 5, padding=2, split=True, pool=True, norm=True),   # conv2 256 x 27 x 27 -> pool 256 x 13 x 13
    ConvSpec(384, 3, padding=1),                                     # conv3 384 x 13 x 13 (reads both GPUs)
    ConvSpec(384, 3, padding=1, split=True),                         # conv4 384 x 13 x 13
    ConvSpec(256, 3, padding=1, split=True, pool=True),              # conv5 256 x 13 x 13 -> pool 256 x 6 x 6
)                                                                    # flattened: 9216 -> FC6


def make_features(table, in_channels: int = 3, *, groups: int = 1, order: str = "lecture", lrn: dict = PAPER_LRN,
                  pool_layer: Callable[..., nn.Module] = MaxPool2d,
                  norm_layer: Callable[..., nn.Module] = LocalResponseNorm,
                  pool_norm_layer: Callable[..., nn.Module] = MaxPoolLRN) -> nn.Sequential:
    """The conv stack of ``table`` with named layers (``conv1``, ``pool_norm1``, ...), so checkpoints read
    like the paper and the two orders share their state_dict keys (only the convs have parameters):

    * ``"lecture"`` (the lecture notes': CONV -> ReLU -> POOL -> NORM): ReLU, pool and LRN run as one fused
      ``pool_norm_layer(..., relu=True)``;
    * ``"paper"`` (the paper's and Caffe's: ReLU -> NORM -> POOL): ``relu``, ``norm_layer``, ``pool_layer``.
    """
    if order not in ORDERS:
        raise ValueError(f"argument 'order' must be one of {ORDERS}, got {order!r}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, spec in enumerate(table, 1):
        g = groups if spec.split else 1
        layers[f"conv{i}"] = nn.Conv2d(in_channels, spec.out, spec.kernel, spec.stride, spec.padding, groups=g)
        pool = dict(kernel_size=3, stride=2, ceil_mode=spec.ceil)
        if spec.norm and spec.pool and order == "lecture":
            layers[f"pool_norm{i}"] = pool_norm_layer(**pool, **lrn, relu=True)
        else:
            layers[f"relu{i}"] = nn.ReLU(inplace=True)
            if spec.norm:
                layers[f"norm{i}"] = norm_layer(**lrn)
            if spec.pool:
                layers[f"pool{i}"] = pool_layer(**pool)
        in_channels = spec.out
    return nn.Sequential(layers)


def feature_size(table, size: int) -> int:
    """Spatial size after ``table``'s layers for a ``size`` x ``size`` input (the arithmetic of the papers'
    figures: conv (s + 2p - k) // stride + 1, pools floor or ceil)."""
    for spec in table:
        size = (size + 2 * spec.padding - spec.kernel) // spec.stride + 1
        if spec.pool:
            size = -(-(size - 3) // 2) + 1 if spec.ceil else (size - 3) // 2 + 1
    return size


BIAS_INITS = ("alexnet", "zero")


class ClassicConvNet(nn.Module):
    """``features`` (from :func:`make_features`) -> flatten -> ``classifier`` (:func:`make_paper_classifier`):
    the paper AlexNet's and ZFNet's shape. FC6's input is fixed by ``input_size``, as in the papers.
    ``bias_init``: ``"alexnet"`` (AlexNet's biases of 1, see _paper_init) or ``"zero"`` (ZFNet's: "biases are
    set to 0")."""

    def __init__(self, table, input_size: int, num_classes: int = 1000, dropout: float = 0.5,
                 init_weights: bool = True, bias_init: str = "alexnet", **feature_kwargs) -> None:
        super().__init__()
        if bias_init not in BIAS_INITS:
            raise ValueError(f"argument 'bias_init' must be one of {BIAS_INITS}, got {bias_init!r}")
        self.features = make_features(table, **feature_kwargs)
        spatial = feature_size(table, input_size)
        self.classifier = make_paper_classifier(table[-1].out * spatial * spatial, num_classes, dropout)
        if init_weights:
            self._paper_init(table, bias_init == "alexnet")

    def _paper_init(self, table, unit_biases: bool) -> None:
        """Weights N(0, 0.01), as both papers; with ``unit_biases`` AlexNet's biases, 1 in conv2, conv4, conv5
        and the hidden FC layers (so ReLUs start with positive inputs) and 0 elsewhere; else all 0 (ZFNet's)."""
        ones = {f"conv{i}" for i in (2, 4, 5) if i <= len(table)} if unit_biases else set()
        for name, m in self.features.named_children():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.constant_(m.bias, 1.0 if name in ones else 0.0)
        linears = [m for m in self.classifier if isinstance(m, nn.Linear)]
        for i, m in enumerate(linears):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.constant_(m.bias, 1.0 if unit_biases and i < len(linears) - 1 else 0.0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Flattened row by row per channel (NCHW order, whatever the memory layout): 256 x 6 x 6 -> 9216.
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(input_size=(3, 227, 227))
def alexnet_paper(*, weights=None, groups: int = 2, order: str = "lecture", **kwargs) -> ClassicConvNet:
    """AlexNet as in the paper, 3x227x227 input (the paper's 224 does not make conv1 give 55x55).

    ``groups=2`` (default) is the paper's two-GPU split of conv2, conv4 and conv5: 60,965,224 parameters;
    ``groups=1`` connects every channel: 62,378,344. ``order="lecture"`` (default) runs CONV -> ReLU -> POOL ->
    NORM through the fused :class:`~classicnets_ext.nn.MaxPoolLRN`; ``order="paper"`` runs ReLU -> NORM ->
    POOL. Dropout on FC6's and FC7's outputs, as the paper (torchvision's ``alexnet`` drops their inputs):
    FC6 / FC7 / FC8 are ``classifier.0`` / ``.3`` / ``.6``. Other ``kwargs``: ``num_classes``, ``dropout``
    (0.5), ``init_weights`` (the paper's N(0, 0.01) with biases of 1 in conv2, conv4, conv5, FC6 and FC7;
    ``bias_init="zero"`` for all 0), and the injectable ``pool_layer``, ``norm_layer``, ``pool_norm_layer``.
    """
    return build_model(lambda: ClassicConvNet(ALEXNET_PAPER, 227, groups=groups, order=order, **kwargs), weights,
                       "alexnet_paper")
