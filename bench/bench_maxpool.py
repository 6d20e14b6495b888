"""2-D max pooling: our kernels against F.max_pool2d (eager) and torch.compile of it.

Shapes are the max pools of the classic networks: AlexNet's three overlapping 3x3/2 pools (N x 96 x 55 x 55,
N x 256 x 27 x 27, N x 256 x 13 x 13), the GoogLeNet/ResNet stem's 3x3/2 pad 1 (N x 64 x 112 x 112) and
VGG's first 2x2/2 (N x 64 x 224 x 224). Three modes: inference (under no_grad: nothing saved), the training
forward (the input requires grad: ours save a 1-byte argmax, eager 8-byte indices) and forward+backward.
Standalone: ``python bench/bench_maxpool.py [--device cpu|cuda] [--quick] [--dtypes ...]``.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

from classicnets_ext import _layouts, ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Net  # noqa: E402

OP = "maxpool"


def _pool(k, s, p=0):
    return {"kernel_size": k, "stride": s, "padding": p}


# channels_last where networks run it in practice (AMP + channels_last training): AlexNet's first pool and the
# ResNet stem.
NETS = [
    Net("alexnet-pool1", (96, 55, 55), _pool(3, 2), ("nchw", "channels_last")),
    Net("alexnet-pool2", (256, 27, 27), _pool(3, 2)),
    Net("alexnet-pool5", (256, 13, 13), _pool(3, 2)),
    Net("resnet-stem", (64, 112, 112), _pool(3, 2, 1), ("nchw", "channels_last")),
    Net("vgg-pool1", (64, 224, 224), _pool(2, 2)),
]
# Batch per device: N=8 on the CPU, the target batch (up to 103 MB per fp32 input: VGG's pool); on a GPU
# a batch that fills it (N=64: 12-411 MB per tensor), so launch overhead does not dominate.
DEFAULT_BATCH = {"cpu": 8, "cuda": 64}
# fp16 on the GPU, the dtype networks train pools in (bf16 moves the same bytes, and a max does no arithmetic):
# one dtype keeps the GPU run -- whose time goes mostly to torch.compile's warmup -- within bench/gpu_suite.sh's
# limit. ``harness.cases(..., dtypes=...)`` / the standalone ``--dtypes`` flag widen it.
DTYPES = {"cpu": (torch.float32,), "cuda": (torch.float16,)}
MODES = ("inference", "training-forward", "forward+backward")
# Bytes per output element of what the training forward saves for the backward: our argmax (uint8 for
# these windows); eager's int64 indices; torch.compile's inductor saves int8 window offsets, as we do.
SAVED_BYTES = {"eager": 8}
OURS_SAVED_BYTES = 1


def _nbytes(mode: str, in_bytes: int, out_numel: int, itemsize: int, saved: int) -> int:
    """What a perfect kernel moves: inference reads x and writes y; the training forward also writes what
    it saves; the backward reads dy and the saved argmax/indices and writes dx."""
    total = in_bytes + out_numel * itemsize
    if mode != "inference":
        total += out_numel * saved
    if mode == "forward+backward":
        total += out_numel * (itemsize + saved) + in_bytes
    return total


def case(mode, shape, dtype, layout, params):
    k, s, p = params["kernel_size"], params["stride"], params["padding"]
    out_shape = _layouts.max_pool2d_output_shape(shape, (k, k), (s, s), (p, p), (1, 1), False)
    in_bytes = torch.Size(shape).numel() * dtype.itemsize
    out_numel = torch.Size(out_shape).numel()
    nbytes = _nbytes(mode, in_bytes, out_numel, dtype.itemsize, OURS_SAVED_BYTES)
    by_provider = {name: _nbytes(mode, in_bytes, out_numel, dtype.itemsize, saved)
                   for name, saved in SAVED_BYTES.items()}
    return harness.unary_case(OP, mode, shape, dtype, layout, params, F.max_pool2d, nbytes, by_provider)


def providers(device: str) -> list[harness.Provider]:
    return harness.ours(device, ops.max_pool2d, "max_pool2d") + harness.baselines(F.max_pool2d)


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
