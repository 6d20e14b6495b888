"""Eval-mode BatchNorm folded into the convolution before it.

With running statistics, BatchNorm is an affine map per channel, so ``bn(conv(x, W, b))`` is one convolution::

    s = gamma / sqrt(running_var + eps)
    bn(conv(x, W, b)) = conv(x, W * s, (b - running_mean) * s + beta)        (b = 0 for a bias-free conv)

The folded convolution writes its output once; the unfolded pair writes it, then reads and writes it again
(ResNet-50, batch 8, CPU: BatchNorm was 16% of an inference). Only the weights -- a few MB -- are read to fold,
and the folded tensors are cached between calls (``FoldCache``), so inference pays nothing for it but the memory
of one folded copy of those weights (ResNet-50: 94 MB), which pickling (``torch.save(model)``, deepcopy) drops.

What may fold: ``nn.Conv2d`` followed by an ``nn.BatchNorm2d`` in eval mode with running statistics, exact
types (a subclass may do something else). Training mode needs the batch's statistics between the convolution
and what follows, so it never folds; nor does a block whose submodules have hooks, which must see the unfolded
layers run (analysis.summary's too: it lists the layers that run), or a ``forward`` set on the instance, which may
compute something else.
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch._subclasses.fake_tensor import FakeTensor

from . import _backend
from .nn import must_run  # nn imports this module (through _inception) after must_run exists


def runs_submodules(modules) -> bool:
    """Whether any of ``modules`` must itself be called (``nn.must_run``)."""
    return any(must_run(m) for m in modules)


def hooked_below(module: nn.Module) -> bool:
    """``runs_submodules`` of every module under ``module`` (not itself), on the forward's hot path: a walk of
    the ``_modules`` dicts, ~0.2 us a module where ``module.modules()`` costs ~1 us (a generator of generators
    with a memo set). Global hooks count, as in has_hooks; the per-module test is must_run's, inlined."""
    g = torch.nn.modules.module
    if (g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks
            or g._global_backward_pre_hooks):
        return True
    stack, seen = list(module._modules.values()), {id(module)}
    while stack:
        m = stack.pop()
        if m is None or id(m) in seen:  # a module shared, or registered inside itself: once
            continue
        seen.add(id(m))
        d = m.__dict__  # the instance's attributes: subscripts skip the attribute protocol (~0.3 us a module)
        if "_modules" not in d:  # torch.jit.trace's module keeps its attributes elsewhere; it runs compiled code
            return True
        if (d["_forward_hooks"] or d["_forward_pre_hooks"] or d["_backward_hooks"] or d["_backward_pre_hooks"]
                or "forward" in d):
            return True
        stack.extend(d["_modules"].values())
    return False


def tensor_of(module: nn.Module, name: str):
    """``getattr(module, name, None)`` for a parameter or buffer, by the dict lookup that ``nn.Module.__getattr__``
    ends in (~0.05 us against ~0.5 us; the forward's fold key reads dozens)."""
    for store in (module._parameters, module._buffers):
        if name in store:
            return store[name]
    return getattr(module, name, None)


def fold_conv_bn(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(weight, bias) of ``conv`` followed by eval-mode ``bn`` as one convolution (``conv``'s own without bn).
    The weight keeps the conv weight's memory format and dtype. Half-precision models fold in fp32 and round
    once, as BatchNorm computes in fp32 for them (a bf16 ResNet-18's output error vs fp64: 1.07% folded in
    bf16, 0.86% this way, 0.94% for torchvision's unfolded model)."""
    if bn is None:
        return conv.weight, conv.bias
    dtype = conv.weight.dtype
    wide = (lambda t: t.float()) if dtype in (torch.float16, torch.bfloat16) else (lambda t: t)
    scale = torch.rsqrt(wide(bn.running_var) + bn.eps)
    if bn.weight is not None:  # affine=False: gamma 1, beta 0
        scale = wide(bn.weight) * scale
    mean = wide(bn.running_mean)
    bias = -mean * scale if bn.bias is None else wide(bn.bias) - mean * scale
    if conv.bias is not None:
        bias = bias + wide(conv.bias) * scale
    return (wide(conv.weight) * scale.reshape(-1, 1, 1, 1)).to(dtype), bias.to(dtype)


def can_fold(conv: nn.Module, bn: nn.Module) -> bool:
    """``conv -> bn`` is a pair ``fold_conv_bn`` reproduces: exact types, bn in eval mode with running stats;
    and the backend is not ``reference`` (stock PyTorch: every layer as it is)."""
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and not bn.training
            and bn.track_running_stats and tensor_of(bn, "running_mean") is not None
            and _backend.get_backend() != "reference")


_BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# How many torch.optim steps have run in this process, in every fold cache's key. A fused step
# (SGD/Adam(fused=True)) updates the parameters in place without bumping their version counters, and may come
# after a cached forward whatever held the gradients (a backward, torch.func.grad, a hand-set .grad): any step
# refolds the next forward, which costs one pass over the folded weights per step.
_optimizer_steps = [0]


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    _optimizer_steps[0] += 1


register_optimizer_step_post_hook(_count_optimizer_step)


class FoldCache:
    """Mixin for an ``nn.Module`` that runs convolutions with BatchNorm folded in: ``fold_pairs()`` names the
    (conv, bn or None) pairs; ``folded()`` gives their folded tensors (or what ``compute`` makes of them),
    cached for inference.

    The cache is keyed on every tensor of the pairs, with its version counter and data pointer (an in-place update
    bumps the version; ``param.data = other`` keeps it but moves the data). It holds the tensors themselves, so a
    new tensor is never taken for a freed one that had its address (``functional_call`` with new parameters on every
    call), and their storages, so a new storage never gets a keyed one's address either (two ``.data`` rebinds
    between forwards: the second got the first's freed address, and the old fold came back); a replaced tensor or
    storage is kept until the next forward. Strong references, as a weak one makes
    ``torch.utils.swap_tensors`` refuse the parameter (``load_state_dict`` under
    ``torch.__future__.set_swap_module_params_on_conversion(True)``). Each BatchNorm's ``num_batches_tracked`` is
    among the tensors, as a training-mode forward updates the running statistics without bumping their versions but
    counts the batch in place. Also in the key: each BatchNorm's eps (no tensor) and inference mode. ``.to()`` and
    friends clear the cache, and so do ``.train()`` and ``.eval()``: an in-place edit through ``.data``
    (``p.data.mul_(2)``) bumps no version that the cache can see, nor do ``torch.distributed`` collectives into
    parameters (``dist.broadcast``, ``all_reduce``) or ``vector_to_parameters`` refilling one flat buffer (same
    tensors, pointers and versions), and calling ``model.eval()`` after such an edit is the way to have it folded
    again. Inference tensors (a model built or moved under ``torch.inference_mode``) have no
    version counter at all: they are keyed on their data pointers alone, and an in-place edit of one needs
    ``model.eval()`` too. A forward through which autograd may pass (below) drops the cache, and the count of
    ``torch.optim`` steps is in the key (``_optimizer_steps``): a fused optimizer step (``SGD/Adam(fused=True)``)
    updates the parameters without bumping their versions.

    Where a cached tensor would be wrong, the fold is computed afresh: when autograd may pass through the
    parameters (a cached tensor with a graph would be backpropagated through twice), under Dynamo and export
    (which cannot guard on version counters; Inductor constant-folds it where parameters are frozen) and
    jit.trace (it would record a constant), and for fake or functorch-wrapped parameters (analysis, ``vmap``
    over stacked models), which have no data to key on and belong to one call."""

    _fold_cache: Optional[tuple] = None

    def fold_pairs(self) -> list[tuple[nn.Conv2d, Optional[nn.BatchNorm2d]]]:
        raise NotImplementedError

    def foldable(self, watched=None, pairs=None) -> bool:
        """Every pair of ``fold_pairs()`` (or ``pairs``) folds (``can_fold``) and none of the ``watched`` modules
        (default: every module under this one) has hooks."""
        if torch.fx._symbolic_trace.is_fx_symbolic_tracing():
            return False  # fx records the layers as torchvision's (create_feature_extractor finds its node names)
        pairs = self.fold_pairs() if pairs is None else pairs
        return (bool(pairs) and all(can_fold(conv, bn) for conv, bn in pairs)
                and not (hooked_below(self) if watched is None else runs_submodules(watched)))

    @staticmethod
    def _fold_tensors(pairs) -> list[torch.Tensor]:
        tensors = []
        for conv, bn in pairs:
            tensors += [tensor_of(conv, "weight"), tensor_of(conv, "bias")]
            if bn is not None:
                tensors += [tensor_of(bn, name) for name in _BN_TENSORS]
        return [t for t in tensors if t is not None]

    def folded(self, compute: Optional[Callable[[], tuple]] = None, input: Optional[torch.Tensor] = None,
               pairs=None) -> tuple:
        """``compute()`` (default: ``fold_conv_bn`` of each pair), from the cache when it is still right.
        ``input``, the folded layers' input, is checked as the BatchNorm2d that the fold stands in for checks
        its own: a (C, H, W) one, which a convolution takes, is BatchNorm2d's ValueError, not a wrong shape
        further on. ``pairs``: ``fold_pairs()``, when the caller has it already."""
        if input is not None and input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")
        pairs = self.fold_pairs() if pairs is None else pairs
        if compute is None:  # not `compute or ...`: Dynamo in torch 2.11 cannot take a bound method's truth value
            compute = lambda: tuple(fold_conv_bn(conv, bn) for conv, bn in pairs)  # noqa: E731
        tensors = self._fold_tensors(pairs)
        if (torch.compiler.is_compiling() or torch.jit.is_tracing() or isinstance(tensors[0], FakeTensor)
                or torch._C._functorch.is_functorch_wrapped_tensor(tensors[0])):
            return compute()
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            self._fold_cache = None
            return compute()
        try:
            versions = [t._version for t in tensors]
        except RuntimeError:  # inference tensors (a model built or moved under inference_mode) have no counter
            versions = [-1 if t.is_inference() else t._version for t in tensors]
        key = (versions, [t.data_ptr() for t in tensors], [bn.eps for _, bn in pairs if bn is not None],
               torch.is_inference_mode_enabled(), _optimizer_steps[0])
        cache = self._fold_cache  # read once: another thread may replace it (one model served by several)
        if cache is None or cache[1] != key or not all(map(operator.is_, cache[0], tensors)):
            with torch.no_grad():
                # (The storages are held, never read: while they live, no new storage takes their addresses.)
                cache = (tuple(tensors), key, compute(), tuple(t.untyped_storage() for t in tensors), {})
            self._fold_cache = cache
        return cache[2]

    def fold_derived(self, folded: tuple, name: str, make: Callable[[], Any]) -> Any:
        """``make()`` computed once per fold: kept beside ``folded`` while it is the cached fold (what ``folded()``
        returned from the cache), so it is rebuilt exactly when the fold is and dropped with it (``.to()``,
        ``.train()``, pickling). None when ``folded`` was computed afresh (autograd, compile, trace: nothing is
        cached)."""
        cache = self._fold_cache
        if cache is None or cache[2] is not folded:
            return None
        derived = cache[4]
        if name not in derived:
            with torch.no_grad():
                derived[name] = make()
        return derived[name]

    def _apply(self, fn, *args, **kwargs):
        self._fold_cache = None  # .to(), .half(), ... make new tensors
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True):
        self._fold_cache = None  # model.eval() folds afresh: the remedy for edits the key cannot see
        return super().train(mode)

    def __getstate__(self):
        # torch.save(model) and deepcopy pickle __dict__: without this, a second copy of the conv weights.
        state = dict(super().__getstate__())
        state.pop("_fold_cache", None)
        return state
