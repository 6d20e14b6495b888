"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998), 1x32x32 input:

    C1 6@5x5 -> 6x28x28; S2 2x2 -> 6x14x14; C3 16@5x5 -> 16x10x10; S4 2x2 -> 16x5x5;
    C5 120@5x5 -> 120x1x1; F6 84; output 10.

Kept from the paper: the layer sizes, the scaled tanh f(a) = 1.7159 tanh(2a/3) after C1, C3, C5 and F6, and
(option) C3's partial connection table (Table I). Simplified: S2/S4 are plain 2x2 average pools (the paper's
subsampling multiplies each 2x2 sum by a trainable coefficient and adds a trainable bias, then squashes: 12 + 32
parameters we leave out, with their squashing), and the output layer is a linear layer (the paper's is 10
Euclidean RBF units with fixed +-1 codes); weights start as torch's layers start them (uniform in
+-1/sqrt(fan_in)), not the paper's +-2.4/fan_in. Parameters: 61,706 with a fully connected C3; 60,806 with the
connection table -- the paper's 60,000 trainable ones, less the 44 of the subsampling layers, plus the 850 of the
linear output layer that stands in for the fixed RBF codes.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model
from ._weights import build_model

# LeCun 1998, Table I: the S2 maps (0-5) each C3 map (0-15) reads. Maps 0-5 read 3 neighbours, 6-11 four
# neighbours, 12-14 four non-neighbours, 15 all six: the asymmetry forces the maps to differ.
C3_TABLE = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


class ScaledTanh(nn.Module):
    """LeCun's squashing function f(a) = A tanh(S a), A = 1.7159, S = 2/3: f(+-1) = +-1, and the second
    derivative is largest (in magnitude) at the targets +-1 (Appendix A)."""

    def __init__(self, amplitude: float = 1.7159, slope: float = 2.0 / 3.0) -> None:
        super().__init__()
        self.amplitude, self.slope = amplitude, slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.amplitude * torch.tanh(self.slope * x)


class TableConv2d(nn.Module):
    """A convolution where output map ``o`` sees only input maps ``table[o]``. Only the connected kernels are
    parameters (``weight``: one 5x5 kernel per connection, 60 for C3), so the count is the paper's; forward
    scatters them into a dense, zero-elsewhere kernel and runs one ``conv2d``."""

    def __init__(self, in_channels: int, table, kernel_size: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, len(table), kernel_size
        # The dense kernel's rows (o * in_channels + i) that the connections fill, in weight's order.
        self._pairs = tuple(o * in_channels + i for o, inputs in enumerate(table) for i in inputs)
        # Not in the state_dict, so that checkpoints hold only the weights (and stay as they were).
        self.register_buffer("index", torch.tensor(self._pairs), persistent=False)
        self.weight = nn.Parameter(torch.empty(len(self._pairs), kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(len(table)))
        # torch's Conv2d default, uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), with the fan-in each output map
        # really has (its connections x 5 x 5).
        fan_in = [len(inputs) * kernel_size ** 2 for inputs in table]
        weight_bound = torch.tensor([fan_in[o] ** -0.5 for o, inputs in enumerate(table) for _ in inputs])
        with torch.no_grad():
            self.weight.copy_((torch.rand_like(self.weight) * 2 - 1) * weight_bound.view(-1, 1, 1))
            self.bias.copy_((torch.rand_like(self.bias) * 2 - 1) * torch.tensor(fan_in, dtype=torch.float).rsqrt())

    def _apply(self, fn, recurse=True):
        # Moves and conversions run through here, to_empty too: after meta-device init (to_empty, then
        # load_state_dict, which skips this buffer) the index would hold uninitialised memory. Its values
        # follow from the table alone: written into each new index tensor (in place, so that whatever fn made
        # of it stays). torch's RNNs override _apply likewise, to re-flatten their weights.
        index = self.index
        super()._apply(fn, recurse)
        if self.index is not index:
            self.index.copy_(torch.tensor(self._pairs, device=self.index.device))
        return self

    def dense_weight(self) -> torch.Tensor:
        k = self.kernel_size
        dense = self.weight.new_zeros(self.out_channels * self.in_channels, k, k)
        return dense.index_copy(0, self.index, self.weight).view(self.out_channels, self.in_channels, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, connections={len(self.index)}"


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, c3_table: bool = False,
                 activation: Callable[[], nn.Module] = ScaledTanh,
                 pool_layer: Callable[..., nn.Module] = nn.AvgPool2d) -> None:
        super().__init__()
        c3 = TableConv2d(6, C3_TABLE, 5) if c3_table else nn.Conv2d(6, 16, 5)
        self.features = nn.Sequential(OrderedDict([                       # 1 x 32 x 32
            ("c1", nn.Conv2d(1, 6, 5)), ("act1", activation()),          # 6 x 28 x 28
            ("s2", pool_layer(kernel_size=2, stride=2)),                  # 6 x 14 x 14
            ("c3", c3), ("act3", activation()),                           # 16 x 10 x 10
            ("s4", pool_layer(kernel_size=2, stride=2)),                  # 16 x 5 x 5
            ("c5", nn.Conv2d(16, 120, 5)), ("act5", activation()),        # 120 x 1 x 1
        ]))
        self.classifier = nn.Sequential(OrderedDict([
            ("f6", nn.Linear(120, 84)), ("act6", activation()),           # 84
            ("output", nn.Linear(84, num_classes)),                       # 10
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(input_size=(1, 32, 32))
def lenet5(*, weights=None, **kwargs) -> LeNet5:
    """LeNet-5. ``kwargs``: ``num_classes`` (10), ``c3_table`` (False: a fully connected C3, 61,706
    parameters; True: the paper's connection table, 60,806), ``activation``, ``pool_layer``."""
    return build_model(lambda: LeNet5(**kwargs), weights, "lenet5")
