"""The model registry: one builder per name, as torchvision's ``get_model`` / ``list_models`` and timm's
``@register_model``. A builder is a keyword-only function ``name(*, weights=None, **kwargs) -> nn.Module``;
registering it records its natural input size (C, H, W), which benches and summaries read."""
from __future__ import annotations

import difflib
import fnmatch
import functools
import types
import warnings
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

# The layout of a built model's 4-D weights. Channels-last by default: oneDNN then convolves the activations as
# they are, where NCHW ones are reordered into its blocked layout and back around every convolution (fresh
# buffers each call, so page faults too); the first convolution turns an NCHW input channels-last, and every
# activation after it stays so (our pooling, LRN and Inception kernels take either layout). Inductor makes the
# same choice for convolution graphs on the CPU; cuDNN's tensor-core kernels want it too. Measured on the CPU,
# batch 8, fp32, NCHW input, one process: VGG16 inference 889 -> 744 ms (200k -> 75k page faults per call),
# training step 3.10 -> 2.50 s; alexnet_paper 40.9 -> 36.4 ms; ResNet-50 347 -> 311 ms.
# torch.contiguous_format gives torchvision's layout. Either way values, names and shapes are the same.
MEMORY_FORMATS = (torch.channels_last, torch.contiguous_format)


def register_model(input_size: tuple[int, int, int] = (3, 224, 224)):
    """``@register_model(input_size=(C, H, W))`` on a builder adds it under its function name. Registering a
    name twice is an error: two families must not silently shadow each other."""
    def add(builder):
        name = builder.__name__
        if name in _MODELS:
            raise ValueError(f"register_model(): a model named {name!r} is already registered "
                             f"(by {_MODELS[name].builder.__module__})")

        @functools.wraps(builder)
        def build(*args, progress: bool = True, memory_format: torch.memory_format = torch.channels_last,
                  **kwargs):
            # torchvision's builders take progress= (a download's progress bar), so calls written for them
            # pass it; nothing is downloaded here. Its legacy forms, which it still takes with a warning:
            # weights and progress given by position, and pretrained=.
            if args:
                if len(args) > 2 or "weights" in kwargs:
                    raise TypeError(f"{name}() takes weights and progress by position at most (keywords preferred)")
                warnings.warn(f"{name}(): weights and progress by position are deprecated, as in torchvision: pass "
                              "weights=...", stacklevel=2)
                if isinstance(args[0], bool):  # torchvision's oldest form: pretrained by position
                    kwargs["pretrained"] = args[0]
                else:
                    kwargs["weights"] = args[0]
                progress = args[1] if len(args) > 1 else progress
            if "pretrained" in kwargs:
                if kwargs.pop("pretrained"):
                    raise ValueError(f"{name}(): pretrained=True would download weights, and nothing is downloaded "
                                     "here: pass weights= a state_dict or a torch.save file (a torchvision "
                                     "checkpoint included)")
                warnings.warn(f"{name}(): pretrained is deprecated, as in torchvision: leave it out (weights=None)",
                              stacklevel=2)
            if memory_format not in MEMORY_FORMATS:
                raise ValueError(f"{name}(): memory_format must be torch.channels_last or "
                                 f"torch.contiguous_format, got {memory_format!r}")
            return builder(**kwargs).to(memory_format=memory_format)

        _MODELS[name] = ModelEntry(name, build, tuple(input_size), builder.__module__.rsplit(".", 1)[-1])
        return build
    if callable(input_size):  # used bare, as @register_model
        builder, input_size = input_size, (3, 224, 224)
        return add(builder)
    return add


def _patterns(name: str, value) -> list[str]:
    """fnmatch patterns, lower-cased: the names are, and get_model takes any case."""
    patterns = [value] if isinstance(value, str) else value
    try:
        return [p.lower() for p in patterns]
    except (TypeError, AttributeError):
        raise TypeError(f"list_models(): argument '{name}' must be a str or an iterable of str, got "
                        f"{type(value).__name__} {value!r}") from None


def list_models(module=None, include: str | Iterable[str] | None = None,
                exclude: str | Iterable[str] | None = None) -> list[str]:
    """Registered names, sorted, as torchvision's ``list_models``: ``module`` keeps the models of a family module
    (``classicnets_ext.models.vgg``), or all of them for the package ``classicnets_ext.models`` itself (as
    ``torchvision.models`` gives its classification models); ``include`` keeps the names matching any of its
    fnmatch patterns (``"vgg*"`` or a list of them, any case), then ``exclude`` drops those matching any of
    its. An empty ``include`` or ``exclude`` (``[]``, ``""``) filters nothing, as torchvision's."""
    entries = sorted(_MODELS.values(), key=lambda e: e.name)
    if module is not None and not isinstance(module, (str, types.ModuleType)):
        raise TypeError(f"list_models(): argument 'module' must be a module or a family name, got "
                        f"{type(module).__name__} {module!r}")
    module_name = module if isinstance(module, str) else getattr(module, "__name__", None)
    if module is not None and module_name != __package__:
        family = module_name.rsplit(".", 1)[-1]
        families = sorted({e.family for e in entries})
        if isinstance(module, str) and family not in families:  # (a module object of no models gives [])
            raise ValueError(f"list_models(): argument 'module': unknown family {module!r} (one of "
                             f"{', '.join(families)})")
        entries = [e for e in entries if e.family == family]
    names = [e.name for e in entries]
    if include:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in _patterns("include", include))]
    if exclude:
        names = [n for n in names if not any(fnmatch.fnmatch(n, p) for p in _patterns("exclude", exclude))]
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
