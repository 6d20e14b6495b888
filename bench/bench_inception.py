"""The fused Inception block against torchvision's ``Inception``: eager NCHW, eager channels_last, torch.compile.

Every GoogLeNet block (3a ... 5b, Szegedy et al. 2014 Table 1) at its own spatial size (28, 14 or 7), in eval
mode (BatchNorm folded into our op) for inference and in train mode for a training step (forward + backward,
batch statistics). Providers: ``ext-cpu`` / ``ext-cuda`` / ``ext-triton`` (our ``classicnets_ext.nn.Inception``
loaded with the torchvision block's weights, on that backend), ``eager`` (the torchvision block) and
``compile`` (``torch.compile`` of it; max-autotune on the GPU). The layout column is the input's and the
baseline modules' layout: ``nchw`` is what users run by default, ``channels_last`` converts the torchvision
block's weights too. Ours takes the same input and answers channels-last.
Standalone: ``python bench/bench_inception.py [--device cpu|cuda] [--quick] [--batch N] [--dtypes ...]``.
"""
from __future__ import annotations

import os
import sys

import torch

import classicnets_ext
from classicnets_ext.nn import Inception

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Net  # noqa: E402

OP = "inception"

# name -> (in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj), spatial size
BLOCKS = {
    "3a": ((192, 64, 96, 128, 16, 32, 32), 28), "3b": ((256, 128, 128, 192, 32, 96, 64), 28),
    "4a": ((480, 192, 96, 208, 16, 48, 64), 14), "4b": ((512, 160, 112, 224, 24, 64, 64), 14),
    "4c": ((512, 128, 128, 256, 24, 64, 64), 14), "4d": ((512, 112, 144, 288, 32, 64, 64), 14),
    "4e": ((528, 256, 160, 320, 32, 128, 128), 14), "5a": ((832, 256, 160, 320, 32, 128, 128), 7),
    "5b": ((832, 384, 192, 384, 48, 128, 128), 7),
}
NETS = [Net(f"inception-{name}", (cfg[0], hw, hw), {"block": name}, ("nchw", "channels_last"))
        for name, (cfg, hw) in BLOCKS.items()]
DEFAULT_BATCH = {"cpu": (8, 1), "cuda": (32, 1, 128)}
DTYPES = {"cpu": (torch.float32,), "cuda": (torch.float16,)}
MODES = ("inference", "forward+backward")

_modules: dict[tuple, torch.nn.Module] = {}


def _torchvision_block(name: str) -> torch.nn.Module:
    from torchvision.models.googlenet import Inception as TVInception
    torch.manual_seed(0)
    block = TVInception(*BLOCKS[name][0])
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so the fold has work to do
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return block


def _module(kind: str, name: str, x: torch.Tensor, training: bool) -> torch.nn.Module:
    """The block of ``kind`` ("ext" or "torchvision") for input ``x``: on its device, dtype and layout."""
    cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    key = (kind, name, x.device, x.dtype, cl, training)
    if key not in _modules:
        block = _torchvision_block(name)
        if kind == "ext":
            ours = Inception(*BLOCKS[name][0])
            ours.load_state_dict(block.state_dict(), strict=True)
            block = ours
        block = block.to(device=x.device, dtype=x.dtype).train(training)
        _modules[key] = block.to(memory_format=torch.channels_last) if cl else block
    return _modules[key]


def _runner(kind: str):
    def run(x, block):
        return _module(kind, block, x, torch.is_grad_enabled() and x.requires_grad)(x)
    return run


def _flops(cfg, hw: int, n: int) -> int:
    cin, c1, r3, c3, r5, c5, cp = cfg
    k5 = 3  # torchvision's "5x5" is 3x3
    return 2 * n * hw * hw * (cin * (c1 + r3 + r5 + cp) + 9 * r3 * c3 + k5 * k5 * r5 * c5)


def case(mode, shape, dtype, layout, params):
    cfg, hw = BLOCKS[params["block"]]
    out_channels = cfg[1] + cfg[3] + cfg[5] + cfg[6]
    n = shape[0]
    itemsize = dtype.itemsize
    # Bytes a perfect block moves: x read and y written (the weights are small); doubled-ish for training.
    nbytes = (cfg[0] + out_channels) * n * hw * hw * itemsize * (1 if mode == "inference" else 3)
    c = harness.unary_case(OP, mode, shape, dtype, layout, params, _runner("torchvision"), nbytes)
    c.params["gflop"] = round(_flops(cfg, hw, n) / 1e9, 3)
    return c


def providers(device: str) -> list[harness.Provider]:
    provs = harness.ours(device, _runner("ext"), "inception")
    compile_mode = harness.gpu_compile_mode() if device == "cuda" else None
    eager = _runner("torchvision")
    return provs + [harness.Provider("eager", lambda: eager),
                    harness.Provider("compile", lambda: torch.compile(eager, dynamic=False, mode=compile_mode))]


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
