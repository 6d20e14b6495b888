"""The model registry: one builder per name, as torchvision's ``get_model`` / ``list_models`` and timm's
``@register_model``. A builder is a keyword-only function ``name(*, weights=None, **kwargs) -> nn.Module``;
registering it records its natural input size (C, H, W), which benches and summaries read."""
from __future__ import annotations

import difflib
import fnmatch
import functools
from dataclasses import dataclass
from typing import Callable, Iterable

import torch


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., torch.nn.Module]
    input_size: tuple[int, int, int]  # (C, H, W) the network was designed for
    family: str  # the module that defines it: "vgg", "googlenet", ...


_MODELS: dict[str, ModelEntry] = {}


def register_model(input_size: tuple[int, int, int] = (3, 224, 224)):
    """``@register_model(input_size=(C, H, W))`` on a builder adds it under its function name. Registering a
    name twice is an error: two families must not silently shadow each other."""
    def add(builder):
        name = builder.__name__
        if name in _MODELS:
            raise ValueError(f"register_model(): a model named {name!r} is already registered "
                             f"(by {_MODELS[name].builder.__module__})")

        @functools.wraps(builder)
        def build(*, progress: bool = True, **kwargs):
            # torchvision's builders take progress= (a download's progress bar), so calls written for them
            # pass it; nothing is downloaded here.
            return builder(**kwargs)

        _MODELS[name] = ModelEntry(name, build, tuple(input_size), builder.__module__.rsplit(".", 1)[-1])
        return build
    if callable(input_size):  # used bare, as @register_model
        builder, input_size = input_size, (3, 224, 224)
        return add(builder)
    return add


def _patterns(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def list_models(module=None, include: str | Iterable[str] | None = None,
                exclude: str | Iterable[str] | None = None) -> list[str]:
    """Registered names, sorted, as torchvision's ``list_models``: ``module`` (one of ``classicnets_ext.models``'
    family modules, e.g. ``classicnets_ext.models.vgg``) keeps its models; ``include`` keeps the names matching
    any of its fnmatch patterns (``"vgg*"`` or a list of them), then ``exclude`` drops those matching any of
    its."""
    entries = sorted(_MODELS.values(), key=lambda e: e.name)
    if module is not None:
        family = getattr(module, "__name__", str(module)).rsplit(".", 1)[-1]
        entries = [e for e in entries if e.family == family]
    names = [e.name for e in entries]
    if include is not None:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in _patterns(include))]
    if exclude is not None:
        names = [n for n in names if not any(fnmatch.fnmatch(n, p) for p in _patterns(exclude))]
    return names


def get_model_entry(name: str) -> ModelEntry:
    try:
        return _MODELS[name.lower() if isinstance(name, str) else name]  # torchvision lower-cases too
    except KeyError:
        close = difflib.get_close_matches(str(name), _MODELS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (list_models() gives all {len(_MODELS)})") from None


def get_model_builder(name: str) -> Callable[..., torch.nn.Module]:
    return get_model_entry(name).builder


def get_model(name: str, **kwargs) -> torch.nn.Module:
    """Build the model registered as ``name``: ``get_model("vgg16", num_classes=10, weights="vgg16.pth")``."""
    return get_model_entry(name).builder(**kwargs)
