"""Drop-in modules: subclasses of the torch.nn layers they replace (same constructor, repr, state_dict),
so ``isinstance`` checks, printing, hooks and checkpoints keep working; only ``forward`` runs our ops."""
import torch

from . import ops


class LocalResponseNorm(torch.nn.LocalResponseNorm):
    __doc__ = torch.nn.LocalResponseNorm.__doc__

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.local_response_norm(input, self.size, self.alpha, self.beta, self.k)


class MaxPool2d(torch.nn.MaxPool2d):
    __doc__ = torch.nn.MaxPool2d.__doc__

    def forward(self, input: torch.Tensor):
        return ops.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                              ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class MaxPoolLRN(torch.nn.Module):
    """Fused ``[ReLU ->] MaxPool2d -> LocalResponseNorm`` (AlexNet's POOL1/NORM1, GoogLeNet's stem): the
    module form of :func:`classicnets_ext.ops.max_pool2d_lrn`, equal to ``nn.Sequential(nn.ReLU(),
    nn.MaxPool2d(kernel_size, stride, padding, ceil_mode=ceil_mode), nn.LocalResponseNorm(size, alpha, beta,
    k))`` (without the ReLU unless ``relu=True``), forward and backward, in one pass. No parameters."""

    __constants__ = ["kernel_size", "stride", "padding", "ceil_mode", "size", "alpha", "beta", "k", "relu"]

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, size: int = 5,
                 alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, *, relu: bool = False) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if (stride is not None) else kernel_size
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k
        self.relu = relu

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}, size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
                f"relu={self.relu}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.max_pool2d_lrn(input, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.size,
                                  self.alpha, self.beta, self.k, relu=self.relu)


_REPLACEMENTS = {torch.nn.LocalResponseNorm: LocalResponseNorm, torch.nn.MaxPool2d: MaxPool2d}


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Swap, in place, every torch layer we have a kernel for (exact type match) by our subclass of it.

    The module objects keep their attributes and hooks (only their class changes), so parameters,
    buffers, state_dicts and references held elsewhere stay valid. Returns ``model`` for chaining.
    """
    for module in model.modules():
        ours = _REPLACEMENTS.get(type(module))
        if ours is not None:
            module.__class__ = ours
    return model
