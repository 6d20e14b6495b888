"""The model zoo: every network of the lecture notes, built on our layers.

* torchvision-compatible (same module names and state_dict keys, equal outputs): ``alexnet``, ``vgg11`` ...
  ``vgg19_bn``, ``googlenet``, ``resnet18`` ... ``resnet152``;
* paper-faithful: ``lenet5``, ``alexnet_paper``, ``zfnet``, ``googlenet_paper``.

``get_model(name, **kwargs)`` / ``list_models()``, or the builders themselves (``vgg16(num_classes=10)``).
``weights=`` takes a state_dict or the path of a ``torch.save`` file (torchvision's included); nothing is
downloaded. One file per family; each network is a config table with injectable layers.
"""
from ._registry import ModelEntry, get_model, get_model_builder, get_model_entry, list_models, register_model
from ._weights import IncompatibleWeightsError, build_model, load_weights, read_state_dict
from .alexnet import alexnet, alexnet_paper
from .googlenet import GoogLeNetOutputs, googlenet, googlenet_paper
from .lenet import lenet5
from .resnet import resnet18, resnet34, resnet50, resnet101, resnet152
from .vgg import vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn
from .zfnet import zfnet

__all__ = [
    "ModelEntry", "get_model", "get_model_builder", "get_model_entry", "list_models", "register_model",
    "IncompatibleWeightsError", "build_model", "load_weights", "read_state_dict", "GoogLeNetOutputs",
    "alexnet", "alexnet_paper", "googlenet", "googlenet_paper", "lenet5", "zfnet",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
]
