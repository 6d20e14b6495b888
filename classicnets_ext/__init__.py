"""classicnets_ext: the classic CNNs on custom kernels for their performance-critical layers.

Ops (``classicnets_ext.ops``) mirror their torch.nn.functional counterparts; modules
(``classicnets_ext.nn``) subclass the torch.nn layers they replace; ``convert(model)`` swaps them into an
existing model; ``classicnets_ext.models`` builds the classic networks on them (``list_models``,
``get_model``). Backends are chosen with ``set_backend`` / ``use_backend`` (see ``_backend``).
"""
from . import _extension
from ._backend import BACKENDS, available_backends, get_backend, set_backend, use_backend
from . import _registrations  # noqa: F401  (fake kernels and autograd for the ops)
from . import models, nn, ops
from . import export  # noqa: F401  (ONNX translations of the ops, registered when torch.onnx's exporter loads)
from .nn import convert
from .analysis import formulas as _flop_formulas  # noqa: F401  (FlopCounterMode formulas for the ops)

__version__ = "0.1.0"  # the one place: setup.py reads it from here

__all__ = ["BACKENDS", "available_backends", "get_backend", "set_backend", "use_backend", "convert", "models", "nn", "ops",
           "__version__"]
