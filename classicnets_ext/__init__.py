"""classicnets_ext: the classic CNNs on custom kernels for their performance-critical layers.

Ops (``classicnets_ext.ops``) mirror their torch.nn.functional counterparts; modules
(``classicnets_ext.nn``) subclass the torch.nn layers they replace; ``convert(model)`` swaps them into an
existing model; ``classicnets_ext.models`` builds the classic networks on them (``list_models``,
``get_model``). Backends are chosen with ``set_backend`` / ``use_backend`` (see ``_backend``).

Importing the package costs little over ``import torch`` (a test holds it to that): what is slow to import
comes on first use -- the Triton kernels (triton, ``torch._inductor``) when the ``triton`` backend is first
asked about (``_backend``), the network analysis (``classicnets_ext.analysis``) when it is first used, and
our ``FlopCounterMode`` formulas when ``torch.utils.flop_counter`` (which imports triton) is.
"""
import importlib
import importlib.abc
import importlib.util
import sys

from . import _extension
from ._backend import BACKENDS, available_backends, checkpoint_context, get_backend, set_backend, use_backend
from . import _registrations  # noqa: F401  (fake kernels and autograd for the ops)
from . import models, nn, ops
from . import export  # noqa: F401  (ONNX translations of the ops, registered when torch.onnx's exporter loads)
from .nn import convert

__version__ = "0.1.0"  # the one place: setup.py reads it from here

__all__ = ["BACKENDS", "available_backends", "checkpoint_context", "get_backend", "set_backend", "use_backend",
           "convert", "models", "nn", "ops", "__version__"]


def __getattr__(name: str):
    # `classicnets_ext.analysis` (export, train) without importing it first: it is imported on first use.
    if name in ("analysis", "export", "train"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``callback`` right after the module ``name`` is first imported, by whoever imports it (a post-import
    hook): once, then it leaves ``sys.meta_path``. It stays there until the module is executed: a ``find_spec``
    that does not import (an optional-dependency probe) must not use it up."""

    def __init__(self, name: str, callback) -> None:
        self.name, self.callback, self.ran = name, callback, False

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # the spec the other finders give, not this finder's again
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_callback(module):
            exec_module(module)
            self._imported()

        spec.loader.exec_module = exec_then_callback  # (this spec's own loader object)
        return spec

    def _imported(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        if not self.ran:
            self.ran = True
            self.callback()


def _register_flop_formulas() -> None:
    importlib.import_module(f"{__name__}.analysis.formulas")  # registers them on import


if "torch.utils.flop_counter" in sys.modules:
    _register_flop_formulas()
else:
    sys.meta_path.insert(0, _AfterImport("torch.utils.flop_counter", _register_flop_formulas))
