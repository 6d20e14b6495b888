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
