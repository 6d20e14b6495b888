"""ZFNet (Zeiler & Fergus 2013): AlexNet's plan with finer early layers, on the same table machinery
(:class:`~classicnets_ext.models.alexnet.ConvSpec`, ``make_features``).

Changes from AlexNet: conv1 is 7x7 stride 2 (not 11x11/4), conv2 has stride 2, so resolution falls more slowly;
one GPU (no grouped convolutions); the pools round up (ceil_mode) to give the paper's Fig. 3 sizes
224 -> 110 -> 55 -> 26 -> 13 -> 6. conv3/4/5 are 512/1024/512 wide by default (the widely taught variant the
lecture notes describe, 107,627,624 parameters); ``paper_widths=True`` gives the paper's 384/384/256
(62,357,608). The paper does not give its contrast normalisation's constants: AlexNet's are used, after the
pool (Fig. 3's order: conv -> ReLU -> pool -> norm, which is also the default ``order="lecture"``), so ReLU, pool
and LRN run as one fused op. Initialisation is ZFNet's own (Sec. 3): weights N(0, 0.01) as AlexNet's, but every
bias 0 (AlexNet starts five of them at 1); dropout on FC6's and FC7's outputs ("layers 6 and 7").
"""
from __future__ import annotations

from dataclasses import replace

from ._registry import register_model
from ._weights import build_model
from .alexnet import ClassicConvNet, ConvSpec

ZFNET = (                                                                   # input 3 x 224 x 224
    ConvSpec(96, 7, stride=2, padding=1, pool=True, norm=True, ceil=True),  # conv1 96 x 110 x 110 -> pool 55 x 55
    ConvSpec(256, 5, stride=2, pool=True, norm=True, ceil=True),            # conv2 256 x 26 x 26 -> pool 13 x 13
    ConvSpec(512, 3, padding=1),                                            # conv3 512 x 13 x 13
    ConvSpec(1024, 3, padding=1),                                           # conv4 1024 x 13 x 13
    ConvSpec(512, 3, padding=1, pool=True),                                 # conv5 512 x 13 x 13 -> pool 6 x 6
)                                                                           # flattened: 18432 -> FC6
PAPER_WIDTHS = (384, 384, 256)  # conv3/4/5 in the paper (Fig. 3), as AlexNet's


@register_model(input_size=(3, 224, 224))
def zfnet(*, weights=None, paper_widths: bool = False, **kwargs) -> ClassicConvNet:
    """ZFNet, 3x224x224 input. ``paper_widths=True``: conv3/4/5 384/384/256 instead of 512/1024/512.

    ``order`` for conv1 and conv2: ``"lecture"`` (default) is ZFNet's own Fig. 3 order, conv -> ReLU -> 3x3/2
    max-pool -> LRN, run as one fused :class:`~classicnets_ext.nn.MaxPoolLRN`; ``"paper"`` is the *AlexNet*
    paper's order, conv -> ReLU -> LRN -> max-pool (not ZFNet's; same parameters and state_dict keys, to
    compare the two). Other ``kwargs`` as :func:`~classicnets_ext.models.alexnet_paper`'s (``num_classes``,
    ``dropout``, ``init_weights``, ``bias_init`` -- here ``"zero"`` by default, ZFNet's --, the injectable
    layers); no ``groups`` (a TypeError): ZFNet ran on one GPU, so no layer of it is split."""
    if "groups" in kwargs:  # make_features would take it and split nothing: say so, as for any unknown keyword
        raise TypeError("zfnet() got an unexpected keyword argument 'groups' (ZFNet ran on one GPU: none of its "
                        "convolutions is split)")
    table = ZFNET
    if paper_widths:
        table = table[:2] + tuple(replace(spec, out=w) for spec, w in zip(table[2:], PAPER_WIDTHS))
    kwargs.setdefault("bias_init", "zero")  # ZFNet Sec. 3: "biases are set to 0"
    return build_model(lambda: ClassicConvNet(table, 224, **kwargs), weights, "zfnet")
