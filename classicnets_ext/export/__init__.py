"""Deployment: our models to ONNX (standard ``LRN`` / ``MaxPool`` / ``Conv`` nodes) and to torch.export archives.

``torch.onnx.export(model, (x,), "m.onnx", dynamo=True)`` works on any model built on our layers once
``classicnets_ext`` is imported: the ops' ONNX translations (``_onnx``) are added to the table torch.onnx's
exporter builds its registry from, the moment that exporter is imported (so ``import classicnets_ext`` costs
nothing and needs neither onnx nor onnxscript). Why this way:

* torch.onnx (2.14) builds a fresh ``ONNXRegistry.from_torchlib()`` on every export, from torchlib's op list,
  and adds only the ``custom_translation_table`` of that call. There is no public hook for a library to add
  to it; the one it reads is the list of torchlib's own ``onnx_impl`` registrations, and that is where ours go.
* Decompositions (``torch._decomp``'s global table, which the exporter also follows) would do for the pools
  and the Inception block, but no ATen op lowers to ONNX ``LRN``: a decomposed LRN would export as
  Pow/Pad/AveragePool/Div. And a translation per op is also what an ``ExportedProgram`` (``torch.export``'s,
  or a ``.pt2`` loaded back) needs: our ops are still in it.

Should the registration fail (a torch whose exporter internals moved), :data:`ONNX_REGISTRATION_ERROR` says
why and ``torch.onnx.export(..., custom_translation_table=classicnets_ext.export.onnx_translation_table())``
does the same job explicitly; our CLI then passes it.

``torch.export`` needs nothing: our ops are registered custom ops with fake kernels, so ``.pt2`` archives
hold them as ``classicnets_ext::*`` calls, and a process that imports ``classicnets_ext`` loads and runs them.
"""
from __future__ import annotations

import importlib.abc
import sys
import warnings

# Why the ONNX translations could not be registered with torch.onnx's exporter, or None.
ONNX_REGISTRATION_ERROR: BaseException | None = None

_REGISTRATION = "torch.onnx._internal.exporter._registration"
_TORCHLIB_REGISTRY = "torch.onnx._internal.exporter._torchlib._torchlib_registry"
_registered = False


def onnx_translation_table() -> dict:
    """``{torch.ops.classicnets_ext.<op>.default: translation}`` for ``torch.onnx.export(...,
    custom_translation_table=...)``; not needed unless :data:`ONNX_REGISTRATION_ERROR` is set. Needs onnxscript."""
    from . import _onnx
    return _onnx.translation_table()


def _register() -> bool:
    """Add our translations to torchlib's registration list once both exporter modules have loaded (they
    import each other, so either may finish last); True when done (or failed for good)."""
    global _registered, ONNX_REGISTRATION_ERROR
    if _registered:
        return True
    registration, torchlib = sys.modules.get(_REGISTRATION), sys.modules.get(_TORCHLIB_REGISTRY)
    if not (hasattr(registration, "OnnxDecompMeta") and hasattr(torchlib, "onnx_impl")):
        return False
    _registered = True
    try:
        from . import _onnx

        # By qualified name, as the registry looks ops up: the Triton twins are defined only when their kernels
        # are imported (``_registrations.load_triton``), which may come after this, or never.
        for name, fn in _onnx.TRANSLATIONS.items():
            torchlib.onnx_impl(tuple(f"classicnets_ext::{op}" for op in _onnx.op_names(name)), trace_only=True)(fn)
    except Exception as e:  # never break torch.onnx's import: say why and let the table be passed by hand
        ONNX_REGISTRATION_ERROR = e
        warnings.warn(f"classicnets_ext: the ONNX translations of our ops could not be registered with torch.onnx "
                      f"({type(e).__name__}: {e}); pass custom_translation_table=classicnets_ext.export."
                      f"onnx_translation_table() to torch.onnx.export", RuntimeWarning, stacklevel=2)
    return True


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs :func:`_register` after the exporter's registry modules execute: finds their spec with the other
    finders and wraps that spec's (per-module) loader's ``exec_module``."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in (_REGISTRATION, _TORCHLIB_REGISTRY):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = getattr(spec.loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_then_register(module):
            exec_module(module)
            if _register() and self in sys.meta_path:
                sys.meta_path.remove(self)
        spec.loader.exec_module = exec_then_register
        return spec


def _install() -> None:
    if not _register():
        sys.meta_path.insert(0, _AfterImport())


_install()

from ._api import (UnsupportedExportError, export_onnx, export_pt2, onnxruntime_session, parse_input_size,  # noqa: E402
                   run_onnxruntime)

__all__ = ["ONNX_REGISTRATION_ERROR", "UnsupportedExportError", "onnx_translation_table", "export_onnx", "export_pt2",
           "onnxruntime_session", "parse_input_size", "run_onnxruntime"]
