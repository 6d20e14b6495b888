"""``weights=``: load a state_dict, or a file saved with ``torch.save``, into a freshly built model.

Nothing is downloaded (there is no network at run time): a torchvision checkpoint is used by its path, e.g. the
``~/.cache/torch/hub/checkpoints/vgg16-397923af.pth`` that torchvision saved, or
``torch.save(torchvision_model.state_dict(), path)``. Loading is strict, and checked by us first so that the
error names every missing key, unexpected key and shape mismatch instead of torch's first-failure message.
"""
from __future__ import annotations

import importlib
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Callable, Union

import torch

Weights = Union[Mapping, str, os.PathLike, None]

# Keys under which training scripts commonly nest the state_dict in a checkpoint dict.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
# Prefixes that wrappers add to every key: DistributedDataParallel / DataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 12  # keys listed per kind in an error, the rest counted
# What a file that is no checkpoint makes torch.load raise.
# (A text file reads as pickle opcodes: "hello" makes the unpickler look up memo 101, a KeyError.)
_LOAD_ERRORS = (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError, KeyError,
                IndexError, struct.error)
# Plain data types that checkpoints hold beside their tensors (see _allowed_global); numpy's dtype classes
# (numpy.dtypes.*) too.
_DATA_GLOBALS = frozenset({
    "argparse.Namespace", "numpy.ndarray", "numpy.dtype",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
})


class IncompatibleWeightsError(RuntimeError):
    """The checkpoint's keys or shapes do not match the model (a RuntimeError, as ``load_state_dict``'s)."""


def read_state_dict(weights: Weights) -> dict[str, torch.Tensor]:
    """The state_dict ``weights`` stands for: a mapping as is, or the file at a path, loaded on the CPU with
    ``weights_only=True`` (no code runs from the file). A checkpoint dict holding the state_dict under
    ``state_dict`` / ``model_state_dict`` / ``model`` is unwrapped, and so are the ``module.`` (DDP) and
    ``_orig_mod.`` (torch.compile) prefixes when every key has them."""
    source = "weights"
    if isinstance(weights, (str, os.PathLike)):
        source = os.fspath(weights)
        if os.path.isdir(source):
            raise IsADirectoryError(f"weights file {source!r} is a directory; pass the checkpoint file in it")
        if not os.path.isfile(source):
            raise FileNotFoundError(f"weights file {source!r} does not exist")
        weights = _load_file(source)
    if not isinstance(weights, Mapping):
        raise ValueError(f"{source}: expected a state_dict (a mapping of names to tensors), got "
                         f"{type(weights).__name__}")
    for key in _NESTED_KEYS:
        if isinstance(weights.get(key), Mapping) and not isinstance(weights.get(key), torch.Tensor):
            weights = weights[key]
            break
    bad = [k for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{source}: not a state_dict: {len(bad)} entr{'y is' if len(bad) == 1 else 'ies are'} not "
                         f"tensors, e.g. {bad[0]!r}")
    state = dict(weights)
    stripped = True
    while stripped:  # in any order and nesting: torch.compile of a DDP model gives "_orig_mod.module."
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def _allowed_global(name: str):
    """The object a checkpoint's pickle names, if it is one of the plain data types training scripts save
    beside the state_dict (an argparse Namespace of flags, numpy arrays and scalars in RNG states); else None."""
    module, _, attr = name.rpartition(".")
    if name not in _DATA_GLOBALS and module != "numpy.dtypes":
        return None
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def _load_file(source: str):
    """torch.load with ``weights_only=True`` (no code from the file runs), also allowing the plain data types
    of :func:`_allowed_global`: torchvision's reference scripts save ``args`` (a Namespace), and checkpoints
    with RNG states hold numpy arrays -- refusing them would refuse most training checkpoints."""
    def fail(e: Exception, hint: str = ""):
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"weights file {source!r} is not a checkpoint saved with torch.save (a state_dict or a "
                         f"dict holding one): {type(e).__name__}: {first}{hint}") from e
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            needed = torch.serialization.get_unsafe_globals_in_checkpoint(source)
        except Exception:  # not a zip checkpoint: the first error says more
            fail(e)
        allowed = [_allowed_global(name) for name in needed]
        refused = [name for name, obj in zip(needed, allowed) if obj is None]
        if not needed:
            fail(e)
        if refused:
            raise ValueError(f"weights file {source!r} holds objects other than tensors and plain data "
                             f"({', '.join(refused)}), which loading them would run: if you trust the file, load it "
                             f"with torch.load(path, weights_only=False) and pass its state_dict") from e
        if any(name.startswith("numpy.") for name in needed):  # an array's dtype class is not listed ahead
            import numpy
            allowed += [getattr(numpy.dtypes, n) for n in dir(numpy.dtypes) if n.endswith("DType")]
        with torch.serialization.safe_globals(allowed):
            try:
                return torch.load(source, map_location="cpu", weights_only=True)
            except _LOAD_ERRORS as e2:
                fail(e2)
    except _LOAD_ERRORS as e:
        fail(e)


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN]) + (f", ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")
    return f"{len(items)} {title}: {shown}"


def check_compatible(model: torch.nn.Module, state: Mapping[str, torch.Tensor], name: str = "model") -> None:
    """Raise :class:`IncompatibleWeightsError` naming every missing key, unexpected key and shape mismatch
    between ``model.state_dict()`` and ``state``."""
    expected = model.state_dict()
    # BatchNorm's step counters came with torch 0.4.1; load_state_dict fills them in (see fill_batch_counters)
    # when a checkpoint predates them, as older torchvision ones do.
    missing = [k for k in expected if k not in state and not _is_batch_counter(model, k)]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} (checkpoint {list(state[k].shape)}, model {list(expected[k].shape)})"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = [_listing(t, items) for t, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                                      ("shape mismatches", shapes)) if items]
        raise IncompatibleWeightsError(f"weights do not fit {name}: " + "; ".join(parts))


def _is_batch_counter(model: torch.nn.Module, key: str) -> bool:
    module, _, attr = key.rpartition(".")
    return attr == "num_batches_tracked" and isinstance(model.get_submodule(module),
                                                        torch.nn.modules.batchnorm._NormBase)


def fill_batch_counters(model: torch.nn.Module, state: dict) -> dict:
    """``state`` with each missing BatchNorm ``num_batches_tracked`` set to 0: what torch's own loading does
    for a checkpoint without them (here explicitly, as a model built on the meta device has no value to keep)."""
    missing = [k for k in model.state_dict() if k not in state and _is_batch_counter(model, k)]
    return {**state, **{k: torch.tensor(0, dtype=torch.long) for k in missing}}


def build_model(factory: Callable[[], torch.nn.Module], weights: Weights, name: str = "model") -> torch.nn.Module:
    """``factory()`` with ``weights`` loaded (see :func:`load_weights`). With weights, the model is first built
    on the meta device, so no time goes into initialising tensors about to be overwritten and no second copy
    of them is held (VGG16: 138M parameters); then it is allocated on the default device in effect at this call
    (the CPU, or that of a ``with torch.device(...)`` / ``torch.set_default_device``, where the model would be
    without weights, as torchvision's builders leave it) and the checkpoint copied in. Models with
    non-persistent buffers (values no checkpoint holds) are built normally."""
    if weights is None:
        return factory()
    state = read_state_dict(weights)
    device = torch.get_default_device()  # read before the meta context below replaces it
    with torch.device("meta"):
        model = factory()
    check_compatible(model, state, name)
    if set(dict(model.named_buffers())) - set(model.state_dict()):
        return load_weights(factory(), state, name)
    model = model.to_empty(device=device)
    model.load_state_dict(fill_batch_counters(model, state), strict=True)
    return model


def load_weights(model: torch.nn.Module, weights: Weights, name: str = "model") -> torch.nn.Module:
    """Load ``weights`` (see :func:`read_state_dict`) into ``model`` strictly; ``None`` leaves it as built."""
    if weights is None:
        return model
    state = read_state_dict(weights)
    check_compatible(model, state, name)
    model.load_state_dict(fill_batch_counters(model, state), strict=True)
    return model
