"""``weights=``: load a state_dict, or a file saved with ``torch.save``, into a freshly built model.

Nothing is downloaded (there is no network at run time): a torchvision checkpoint is used by its path, e.g. the
``~/.cache/torch/hub/checkpoints/vgg16-397923af.pth`` that torchvision saved, or
``torch.save(torchvision_model.state_dict(), path)``. Loading is strict, and checked by us first so that the
error names every missing key, unexpected key and shape mismatch instead of torch's first-failure message.
"""
from __future__ import annotations

import os
import pickle
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
        if not os.path.isfile(source):
            raise FileNotFoundError(f"weights file {source!r} does not exist")
        try:
            weights = torch.load(source, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as e:
            raise ValueError(f"weights file {source!r} is not a checkpoint saved with torch.save (a state_dict or "
                             f"a dict holding one): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                             ) from e
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
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN]) + (f", ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")
    return f"{len(items)} {title}: {shown}"


def check_compatible(model: torch.nn.Module, state: Mapping[str, torch.Tensor], name: str = "model") -> None:
    """Raise :class:`IncompatibleWeightsError` naming every missing key, unexpected key and shape mismatch
    between ``model.state_dict()`` and ``state``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} (checkpoint {list(state[k].shape)}, model {list(expected[k].shape)})"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = [_listing(t, items) for t, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                                      ("shape mismatches", shapes)) if items]
        raise IncompatibleWeightsError(f"weights do not fit {name}: " + "; ".join(parts))


def build_model(factory: Callable[[], torch.nn.Module], weights: Weights, name: str = "model") -> torch.nn.Module:
    """``factory()`` with ``weights`` loaded (see :func:`load_weights`). With weights, the model is first built
    on the meta device, so no time goes into initialising tensors about to be overwritten and no second copy
    of them is held (VGG16: 138M parameters); then it is allocated on the CPU and the checkpoint copied in.
    Models with non-persistent buffers (values no checkpoint holds) are built normally."""
    if weights is None:
        return factory()
    state = read_state_dict(weights)
    with torch.device("meta"):
        model = factory()
    check_compatible(model, state, name)
    if set(dict(model.named_buffers())) - set(model.state_dict()):
        return load_weights(factory(), state, name)
    model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True)
    return model


def load_weights(model: torch.nn.Module, weights: Weights, name: str = "model") -> torch.nn.Module:
    """Load ``weights`` (see :func:`read_state_dict`) into ``model`` strictly; ``None`` leaves it as built."""
    if weights is None:
        return model
    state = read_state_dict(weights)
    check_compatible(model, state, name)
    model.load_state_dict(state, strict=True)
    return model
