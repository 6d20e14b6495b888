"""Drop-in modules: subclasses of the torch.nn layers they replace (same constructor, repr, state_dict),
so ``isinstance`` checks, printing, hooks and checkpoints keep working; only ``forward`` runs our ops."""
import importlib

import torch

from . import ops


class _NotScriptable:
    """TorchScript (``torch.jit.script``) cannot compile our modules: their ops pick a backend in Python, and
    the model zoo's blocks (which ``convert()`` also swaps in) fold BatchNorm there too. ``torch.jit.script``
    calls ``__prepare_scriptable__`` on every module of a model before compiling it, so scripting any model
    that holds one of ours stops here, saying what works instead, rather than deep in ``ops.py``."""

    def __prepare_scriptable__(self):
        cls = ours_of(type(self))  # (a converted torchvision block: the zoo's class it runs)
        where = "classicnets_ext.nn" if globals().get(cls.__name__) is cls else cls.__module__
        raise RuntimeError(
            f"torch.jit.script does not support {where}.{cls.__name__}: its forward picks its kernels in "
            "Python (the backend, a BatchNorm fold), which TorchScript cannot compile. Use torch.jit.trace, "
            "torch.compile or torch.export instead (they record the ops themselves).")


class LocalResponseNorm(_NotScriptable, torch.nn.LocalResponseNorm):
    __doc__ = torch.nn.LocalResponseNorm.__doc__

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.local_response_norm(input, self.size, self.alpha, self.beta, self.k)


class MaxPool2d(_NotScriptable, torch.nn.MaxPool2d):
    __doc__ = torch.nn.MaxPool2d.__doc__

    def forward(self, input: torch.Tensor):
        return ops.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                              ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class Linear(_NotScriptable, torch.nn.Linear):
    """:class:`torch.nn.Linear` (same constructor, parameters and results) through :func:`classicnets_ext.ops.linear`,
    which asks MKL for the GEMM layout that runs fast on the CPU: the classifiers of AlexNet, ZFNet and VGG take
    a third to a quarter of the time at small batches."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.linear(input, self.weight, self.bias)


class MaxPoolLRN(_NotScriptable, torch.nn.Module):
    """Fused ``[ReLU ->] MaxPool2d -> LocalResponseNorm`` (AlexNet's POOL1/NORM1, GoogLeNet's stem): the
    module form of :func:`classicnets_ext.ops.max_pool2d_lrn`, equal to ``nn.Sequential(nn.ReLU(),
    nn.MaxPool2d(kernel_size, stride, padding, ceil_mode=ceil_mode), nn.LocalResponseNorm(size, alpha, beta,
    k))`` (without the ReLU unless ``relu=True``), forward and backward, in one pass -- for an unbatched (C, H,
    W) input too, where that Sequential's LRN normalises over H (the functional op normalises over C there, as
    for one sample). No parameters."""

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
        return _pool_lrn_as_sequential(input, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.size,
                                       self.alpha, self.beta, self.k, self.relu)


def _pool_lrn_as_sequential(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu):
    """What the ``[ReLU ->] MaxPool2d -> LocalResponseNorm`` Sequential computes: the fused op, except for an
    unbatched (C, H, W) input, which the Sequential pools and then, torch's LRN of a 3-D tensor being over dim
    1, normalises over H. The op reads it as one sample, normalising over C; the module keeps the Sequential's
    answer, so that convert() never changes what a model computes."""
    if isinstance(input, torch.fx.Proxy):  # one fx node: the test below cannot see a Proxy's rank
        return ops._fx_node(_pool_lrn_as_sequential, input, kernel_size, stride, padding, ceil_mode, size, alpha,
                            beta, k, relu)
    if input.dim() == 3:
        pooled = ops.max_pool2d(input, kernel_size, stride, padding, ceil_mode=ceil_mode)
        return ops.local_response_norm(torch.relu(pooled) if relu else pooled, size, alpha, beta, k)
    return ops.max_pool2d_lrn(input, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu=relu)


_REPLACEMENTS = {torch.nn.LocalResponseNorm: LocalResponseNorm, torch.nn.MaxPool2d: MaxPool2d}


def has_hooks(module: torch.nn.Module) -> bool:
    """Whether ``module`` has forward or backward hooks, its own or global ones (``register_module_forward_hook``:
    torch.utils.module_tracker's, FlopCounterMode's per-module counts): replacing it by a fused op, or running a
    fused op instead of calling it, would silently skip them."""
    g = torch.nn.modules.module
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or g._global_forward_hooks or g._global_forward_pre_hooks
                or g._global_backward_hooks or g._global_backward_pre_hooks)


def must_run(module: torch.nn.Module) -> bool:
    """Whether ``module`` must itself be called, no fused op or folded layer standing in for it: it has hooks
    (has_hooks), or a ``forward`` set on the instance (accelerate's add_hook_to_module sets one; so does a hand
    patch), which may compute something other than its class's."""
    return has_hooks(module) or "forward" in module.__dict__


# Layers whose output is a fresh tensor that only the next layer sees (when they have no hooks).
_FRESH_OUTPUT = (torch.nn.Conv2d, torch.nn.BatchNorm2d)


def _output_unseen(previous) -> bool:
    """Whether a ``ReLU(inplace=True)`` after ``previous`` (None: first in its Sequential) may be fused, which
    drops its in-place write: only when nothing else holds the tensor it overwrites. After a hook-free
    convolution or BatchNorm that tensor is theirs, fresh and seen by nobody else; the Sequential's own input
    is the caller's, and a forward hook may keep the layer's output, and both would see the ReLU's write."""
    return _stock(previous, _FRESH_OUTPUT)


def _fuse_pool_lrn_runs(seq: torch.nn.Sequential) -> None:
    """In ``seq``, each ``[ReLU ->] MaxPool2d -> LocalResponseNorm`` run becomes one MaxPoolLRN in the first
    slot and ``Identity`` in the freed ones: indices, and so state_dict keys, stay (none of them has
    parameters)."""
    layers = list(seq)
    i = 0
    while i < len(layers):
        relu = (_stock(layers[i], (torch.nn.ReLU,))
                and (not layers[i].inplace or _output_unseen(layers[i - 1] if i > 0 else None)))
        j = i + 1 if relu else i
        if j + 1 < len(layers) and _fusable_pool(layers[j]) and _stock(layers[j + 1], _LRNS):
            pool, norm = layers[j], layers[j + 1]
            seq[i] = MaxPoolLRN(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, norm.size, norm.alpha,
                                norm.beta, norm.k, relu=relu).train(pool.training)
            for freed in range(i + 1, j + 2):
                seq[freed] = torch.nn.Identity().train(pool.training)  # an eval model stays all eval
            i = j + 2
        else:
            i += 1


# Exact types: a subclass may override forward, which a fused op would silently drop.
_POOLS = (torch.nn.MaxPool2d, MaxPool2d)
_LRNS = (torch.nn.LocalResponseNorm, LocalResponseNorm)


def _stock(m, types) -> bool:
    """Whether ``m`` computes what its class does, so a fused module may stand in for it: one of ``types``
    exactly (a subclass may override forward), no ``forward`` of its own set on the instance, no hooks."""
    return type(m) in types and not must_run(m)


def _fusable_pool(m) -> bool:
    return _stock(m, _POOLS) and not m.return_indices and m.dilation in (1, (1, 1))


def _runs_in_order(seq: torch.nn.Module) -> bool:
    """Whether ``seq`` is a Sequential whose forward is Sequential's: its layers one after the other. A
    subclass's own forward may index, reuse or tap the slots that fusion rewrites."""
    return (isinstance(seq, torch.nn.Sequential) and type(seq).forward is torch.nn.Sequential.forward
            and "forward" not in seq.__dict__)


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Swap, in place, every torch layer we have a kernel for by ours; returns ``model`` for chaining.

    * ``LocalResponseNorm`` and ``MaxPool2d`` (exact types) become our subclasses of them (``nn.Linear``
      stays: quantisation tooling matches it by exact type);
    * ``[ReLU ->] MaxPool2d -> LocalResponseNorm`` runs inside an ``nn.Sequential`` become one ``MaxPoolLRN``
      (the Sequential keeps its length: ``Identity`` holds the freed slots, as in
      ``torch.ao.quantization.fuse_modules``; so a slice or a walk over the layers that ends on the pool now
      ends after the LRN: take such slices before converting) -- unless one of them has hooks, which the fused
      module could not call, or a ``forward`` of its own (a subclass's, or one set on the instance), which it
      would drop; likewise a Sequential with its own ``forward`` is left alone. A
      ``ReLU(inplace=True)`` joins only after a hook-free ``Conv2d`` or ``BatchNorm2d``, whose output nobody
      else sees; elsewhere its in-place write could be seen (the caller's input, a hook's saved output), so it
      stays itself;
    * torchvision's GoogLeNet ``Inception`` blocks become our fused :class:`Inception`, which calls its
      submodules one by one, as torchvision's does, whenever one of them has hooks;
    * torchvision's ResNet ``BasicBlock`` / ``Bottleneck`` and GoogLeNet / Inception-v3 ``BasicConv2d``
      become the model zoo's, which fold their BatchNorms into the convolutions in eval mode. Converted
      blocks (these and Inception) take a ``torchvision_twin`` class, the zoo's and torchvision's at once, so
      ``isinstance`` against torchvision's class still holds, as for the drop-in layers.

    Modules are converted by changing their class, so parameters, buffers, hooks, train/eval mode and
    references held elsewhere (an optimizer's) stay valid, and so do state_dicts. Only modules: functional
    calls in a ``forward`` (``F.max_pool2d``; torchvision's Inception-v3 makes two) stay torch's. A TorchScript
    module (whose submodules are compiled) is refused: convert the Python model, then trace or export it.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"convert(): argument 'model' must be a torch.nn.Module, not {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("convert(): argument 'model' is a TorchScript module, whose layers cannot be swapped: "
                        "convert the Python model first, then script, trace or export it")
    for module in list(model.modules()):
        if _runs_in_order(module):
            _fuse_pool_lrn_runs(module)
    for module in model.modules():
        cls = type(module)
        ours = _REPLACEMENTS.get(cls)
        if ours is not None:
            module.__class__ = ours
        elif _inception.is_torchvision_inception(module):
            _inception.adopt_torchvision(module)
        elif (cls.__module__, cls.__name__) in _TWINNED and cls.__name__ != "Inception":  # (one ours cannot run)
            # the same attributes; ours runs torchvision's forward unless it folds
            module.__class__ = torchvision_twin(cls)
    return model


# torchvision's blocks that convert() swaps: (module, class) -> the zoo's class, by (module, attribute).
_TWINNED = {("torchvision.models.resnet", "BasicBlock"): ("classicnets_ext.models.resnet", "BasicBlock"),
            ("torchvision.models.resnet", "Bottleneck"): ("classicnets_ext.models.resnet", "Bottleneck"),
            ("torchvision.models.googlenet", "BasicConv2d"): ("classicnets_ext._inception", "ConvBNReLU"),
            ("torchvision.models.inception", "BasicConv2d"): ("classicnets_ext._inception", "ConvBNReLU"),
            ("torchvision.models.googlenet", "Inception"): ("classicnets_ext._inception", "Inception")}


def torchvision_twin(theirs: type) -> type:
    """The class a converted torchvision block takes: the zoo's class first (its forward, folds and fused op),
    then torchvision's, so that ``isinstance`` against either holds -- code written for torchvision's model
    (``isinstance(m, Bottleneck)`` to zero-init, freeze or group a block) still finds its blocks, as it finds
    the drop-in layers. Made once per class; its qualified name, ``_torchvision__<module>__<class>``, is an
    attribute of this module (``__getattr__`` below), so that pickles of converted models (which name a class
    by module and qualified name) load in a new process. ``ours_of`` maps it back to the zoo's class."""
    qualname = f"{_TWIN_PREFIX}{theirs.__module__.rsplit('.', 1)[-1]}__{theirs.__name__}"
    twin = _twins.get(qualname)
    if twin is None:
        where, name = _TWINNED[(theirs.__module__, theirs.__name__)]
        ours = getattr(importlib.import_module(where), name)
        twin = type(theirs.__name__, (ours, theirs), {
            "__module__": __name__, "__qualname__": qualname, "__doc__": ours.__doc__, "_twin_of": ours})
        twin = _twins.setdefault(qualname, twin)  # (threads converting at once all take the first one made)
    return twin


def ours_of(cls: type) -> type:
    """The zoo's class for a ``torchvision_twin`` (exactly: not for a subclass of one), else ``cls``."""
    return cls.__dict__.get("_twin_of", cls)


_TWIN_PREFIX = "_torchvision__"
_twins: dict[str, type] = {}


def __getattr__(name: str):
    """``_torchvision__<module>__<class>``: the ``torchvision_twin`` of ``torchvision.models.<module>.<class>``
    (importing it), which is how pickle finds one."""
    module, sep, cls = name[len(_TWIN_PREFIX):].partition("__")
    if name.startswith(_TWIN_PREFIX) and sep and (f"torchvision.models.{module}", cls) in _TWINNED:
        return torchvision_twin(getattr(importlib.import_module(f"torchvision.models.{module}"), cls))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Imported last: the Inception block is built from the modules above.
from . import _inception  # noqa: E402
from ._inception import Inception  # noqa: E402,F401
