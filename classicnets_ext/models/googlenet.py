"""GoogLeNet / Inception v1 (Szegedy et al. 2014), twice, on our fused Inception block:

* ``googlenet``: torchvision's model -- BatchNorm (eps 1e-3) after bias-free convs, no LRN, ceil_mode pools,
  a 2x2 maxpool4, a "5x5" branch that is really 3x3 -- with its module names and state_dict keys, so its
  checkpoints load with ``strict=True``; ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)`` in train mode
  with ``aux_logits=True``; ``transform_input`` as torchvision's.
* ``googlenet_paper``: Table 1 of the paper -- conv + bias + ReLU, LRN in the stem, true 5x5 branches
  (``Inception(style="paper")``), 3x3/2 pools, dropout 0.4, and the aux classifiers of Section 5.

Both share the Inception table below and the body that runs it. Every max-pool, LRN and Inception block is ours.
"""
from __future__ import annotations

from collections import namedtuple
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._inception import ConvBNReLU, ConvReLU
from ..nn import Inception, Linear, LocalResponseNorm, MaxPool2d, MaxPoolLRN
from ._registry import register_model
from ._weights import build_model, read_state_dict

# torchvision's namedtuple, redefined so torchvision stays optional: same name, fields and order.
GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])
# A name for torch.export.save to write, so that a program exported in train mode (returning these) saves and
# loads; the registration torch's own error message asks for.
torch.utils._pytree._register_namedtuple(GoogLeNetOutputs,
                                         serialized_type_name="classicnets_ext.models.googlenet.GoogLeNetOutputs")

# Table 1: name -> (in, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj); output sizes at 224.
# Max-pools 3/2 sit before 4a and 5a; aux1 reads 4a's output, aux2 4d's.
INCEPTIONS = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),      # -> 256 x 28 x 28
    "inception3b": (256, 128, 128, 192, 32, 96, 64),    # -> 480 x 28 x 28, maxpool3 -> 14 x 14
    "inception4a": (480, 192, 96, 208, 16, 48, 64),     # -> 512 x 14 x 14 (aux1)
    "inception4b": (512, 160, 112, 224, 24, 64, 64),    # -> 512 x 14 x 14
    "inception4c": (512, 128, 128, 256, 24, 64, 64),    # -> 512 x 14 x 14
    "inception4d": (512, 112, 144, 288, 32, 64, 64),    # -> 528 x 14 x 14 (aux2)
    "inception4e": (528, 256, 160, 320, 32, 128, 128),  # -> 832 x 14 x 14, maxpool4 -> 7 x 7
    "inception5a": (832, 256, 160, 320, 32, 128, 128),  # -> 832 x 7 x 7
    "inception5b": (832, 384, 192, 384, 48, 128, 128),  # -> 1024 x 7 x 7
}
POOL_BEFORE = {"inception4a": "maxpool3", "inception5a": "maxpool4"}
AUX_AFTER = {"inception4a": "aux1", "inception4d": "aux2"}


BasicConv2d = ConvBNReLU  # torchvision's name for conv (no bias) -> BatchNorm(eps=0.001) -> ReLU


class InceptionAux(nn.Module):
    """An auxiliary classifier: pool to 4x4 -> 1x1 conv 128 + ReLU -> FC 1024 + ReLU -> dropout -> FC.
    ``pool=None`` is torchvision's adaptive 4x4 average; the paper's is a 5x5/3 average pool (4x4 at 14x14)."""

    def __init__(self, in_channels: int, num_classes: int, conv_block: Optional[Callable[..., nn.Module]] = None,
                 dropout: float = 0.7, pool: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.pool = pool
        self.conv = (conv_block or BasicConv2d)(in_channels, 128, kernel_size=1)
        self.fc1 = Linear(2048, 1024)
        self.fc2 = Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, (4, 4)) if self.pool is None else self.pool(x)  # N x C x 4 x 4
        x = torch.flatten(self.conv(x), 1)                                            # N x 2048
        x = self.dropout(F.relu(self.fc1(x), inplace=True))                            # N x 1024
        return self.fc2(x)                                                              # N x num_classes


def _paper_aux(in_channels: int, num_classes: int, **kwargs) -> InceptionAux:
    """The paper's aux head (Section 5): 5x5/3 average pool, conv with bias + ReLU. A pool of its own per head
    (one shared by both would be listed once by named_modules, and a hook on it would fire for both)."""
    return InceptionAux(in_channels, num_classes, conv_block=ConvReLU, pool=nn.AvgPool2d(5, stride=3), **kwargs)


class _GoogLeNetBody(nn.Module):
    """What both networks share: the Inception blocks with maxpool3/4 between them, the aux heads and the
    head. Subclasses build their stem first (so state_dict keys come in torchvision's order), then call
    :meth:`_build_body`, and define ``forward_stem``."""

    def _build_body(self, inception_block, aux_block, pool_layer, maxpool4_kernel: int, num_classes: int,
                    aux_logits: bool, dropout: float, dropout_aux: float) -> None:
        self.aux_logits = aux_logits
        for name, cfg in INCEPTIONS.items():
            if name in POOL_BEFORE:
                k = 3 if name == "inception4a" else maxpool4_kernel
                setattr(self, POOL_BEFORE[name], pool_layer(k, stride=2, ceil_mode=True))
            setattr(self, name, inception_block(*cfg))
        if aux_logits:
            self.aux1 = aux_block(512, num_classes, dropout=dropout_aux)
            self.aux2 = aux_block(528, num_classes, dropout=dropout_aux)
        else:
            self.aux1 = self.aux2 = None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))  # the paper's 7x7 average pool at 224; any size here
        self.dropout = nn.Dropout(p=dropout)
        self.fc = Linear(1024, num_classes)

    def forward_features(self, x: torch.Tensor):
        """(N x 1024 x 7 x 7 features at 224, aux2 logits, aux1 logits); the aux logits only in train mode."""
        x = self.forward_stem(x)  # N x 192 x 28 x 28
        aux = {}
        for name in INCEPTIONS:
            if name in POOL_BEFORE:
                x = getattr(self, POOL_BEFORE[name])(x)
            x = getattr(self, name)(x)
            head = getattr(self, AUX_AFTER.get(name, ""), None)
            if head is not None and self.training:
                aux[AUX_AFTER[name]] = head(x)
        return x, aux.get("aux2"), aux.get("aux1")

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # N x 1024
        return self.fc(self.dropout(x))

    def forward(self, x: torch.Tensor):
        x, aux2, aux1 = self.forward_features(x)
        x = self.forward_head(x)
        if self.training and self.aux_logits:
            return GoogLeNetOutputs(x, aux2, aux1)
        return x

    def drop_aux(self) -> None:
        """Remove the aux heads (inference needs none; torchvision does this after loading its weights)."""
        self.aux_logits, self.aux1, self.aux2 = False, None, None


class GoogLeNet(_GoogLeNetBody):
    """torchvision's ``GoogLeNet``, same arguments (``blocks=[conv_block, inception_block, aux_block]``) plus
    an injectable ``pool_layer``."""

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, transform_input: bool = False,
                 init_weights: Optional[bool] = True, blocks: Optional[list[Callable[..., nn.Module]]] = None,
                 dropout: float = 0.2, dropout_aux: float = 0.7,
                 pool_layer: Callable[..., nn.Module] = MaxPool2d) -> None:
        super().__init__()
        blocks = blocks or [BasicConv2d, partial(Inception, style="torchvision"), InceptionAux]
        if len(blocks) != 3:
            raise ValueError(f"blocks length should be 3 instead of {len(blocks)}")
        conv_block, inception_block, aux_block = blocks
        self.transform_input = transform_input
        self.conv1 = conv_block(3, 64, kernel_size=7, stride=2, padding=3)  # 64 x 112 x 112
        self.maxpool1 = pool_layer(3, stride=2, ceil_mode=True)              # 64 x 56 x 56
        self.conv2 = conv_block(64, 64, kernel_size=1)                       # 64 x 56 x 56
        self.conv3 = conv_block(64, 192, kernel_size=3, padding=1)           # 192 x 56 x 56
        self.maxpool2 = pool_layer(3, stride=2, ceil_mode=True)              # 192 x 28 x 28
        self._build_body(inception_block, aux_block, pool_layer, 2, num_classes, aux_logits, dropout, dropout_aux)
        if init_weights or init_weights is None:  # torchvision's (which reads None as True)
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's: from ImageNet-normalised input to the (x - 0.5) / 0.5 scaling its weights expect."""
        if not self.transform_input:
            return x
        x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        return torch.cat((x_ch0, x_ch1, x_ch2), 1)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool1(self.conv1(self._transform_input(x)))
        return self.maxpool2(self.conv3(self.conv2(x)))


# Caffe's bvlc_googlenet LRN (local_size 5, alpha 1e-4, beta 0.75, k 1); Caffe, like torch, divides alpha by n.
PAPER_LRN = dict(size=5, alpha=1e-4, beta=0.75, k=1.0)


class GoogLeNetPaper(_GoogLeNetBody):
    """GoogLeNet as in Table 1. Stem: conv1 7x7/2 -> [ReLU -> maxpool 3/2 -> LRN] as one fused op ->
    conv2 1x1 -> conv3 3x3 -> LRN -> maxpool 3/2 (LRN before the pool: no fusion there)."""

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, init_weights: bool = True,
                 dropout: float = 0.4, dropout_aux: float = 0.7, pool_layer: Callable[..., nn.Module] = MaxPool2d,
                 norm_layer: Callable[..., nn.Module] = LocalResponseNorm,
                 pool_norm_layer: Callable[..., nn.Module] = MaxPoolLRN,
                 inception_block: Callable[..., nn.Module] = partial(Inception, style="paper")) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3)             # 64 x 112 x 112
        self.pool_norm1 = pool_norm_layer(3, stride=2, ceil_mode=True, **PAPER_LRN, relu=True)  # 64 x 56 x 56
        self.conv2 = ConvReLU(64, 64, kernel_size=1)                                   # 64 x 56 x 56
        self.conv3 = ConvReLU(64, 192, kernel_size=3, padding=1)                       # 192 x 56 x 56
        self.norm2 = norm_layer(**PAPER_LRN)
        self.maxpool2 = pool_layer(3, stride=2, ceil_mode=True)                        # 192 x 28 x 28
        self._build_body(inception_block, _paper_aux, pool_layer, 3, num_classes, aux_logits, dropout, dropout_aux)
        if init_weights:  # Caffe bvlc_googlenet's fillers: xavier weights, 0.2 biases (0 for the classifiers)
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    # Caffe's XavierFiller: uniform in +-sqrt(3 / fan_in) (torch's xavier_uniform_ divides by
                    # fan_in + fan_out, 3.3x narrower on conv1): kaiming_uniform_ with gain 1 is exactly that.
                    nn.init.kaiming_uniform_(m.weight, a=1)
                    nn.init.constant_(m.bias, 0.2)
            for fc in (self.fc, *(a.fc2 for a in (self.aux1, self.aux2) if a is not None)):
                nn.init.constant_(fc.bias, 0.0)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool_norm1(self.conv1(x))
        return self.maxpool2(self.norm2(self.conv3(self.conv2(x))))


def _load(model_cls, name: str, weights, kwargs):
    """Build and load as torchvision's googlenet builder does: with weights, ``aux_logits`` defaults to False
    but a checkpoint's aux heads are still loaded (strictly) and then dropped; a checkpoint without aux heads
    builds a model without them."""
    if weights is None:
        return model_cls(**kwargs)
    state = read_state_dict(weights)
    keep_aux = kwargs.get("aux_logits", False)
    kwargs = {**kwargs, "aux_logits": keep_aux or any(k.startswith(("aux1.", "aux2.")) for k in state)}
    model = build_model(lambda: model_cls(**kwargs), state, name)
    if not keep_aux:
        model.drop_aux()
    return model


@register_model()
def googlenet(*, weights=None, **kwargs) -> GoogLeNet:
    """torchvision's GoogLeNet: 6,624,904 parameters without the aux heads. ``kwargs`` as torchvision's
    (``num_classes``, ``aux_logits``, ``transform_input``, ``init_weights``, ``blocks``, ``dropout``,
    ``dropout_aux``) plus ``pool_layer``. torchvision's ImageNet checkpoint was trained with
    ``transform_input=True``: pass it (a path cannot tell us which kind of checkpoint it holds)."""
    return _load(GoogLeNet, "googlenet", weights, kwargs)


@register_model()
def googlenet_paper(*, weights=None, **kwargs) -> GoogLeNetPaper:
    """GoogLeNet as in the paper (Table 1): about 7.0M parameters without the aux heads. ``kwargs``:
    ``num_classes``, ``aux_logits`` (True: trained with them; they run only in train mode), ``dropout`` (0.4),
    ``dropout_aux`` (0.7), ``init_weights``, and the injectable ``pool_layer``, ``norm_layer``,
    ``pool_norm_layer``, ``inception_block``. The aux heads' 5x5/3 pool needs 4a's 14x14 (a 224 input)."""
    return _load(GoogLeNetPaper, "googlenet_paper", weights, kwargs)
