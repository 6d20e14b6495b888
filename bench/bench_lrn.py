"""Local Response Normalization: our kernels against F.local_response_norm (eager) and torch.compile of it.

Shapes are the LRN inputs of the networks that use it (size=5, alpha=1e-4, beta=0.75):
AlexNet after conv1 (N x 96 x 55 x 55, k=2) and GoogLeNet's two LRNs (N x 64 x 56 x 56 and
N x 192 x 56 x 56, k=1). Standalone: ``python bench/bench_lrn.py [--device cpu|cuda] [--quick]``.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

from classicnets_ext import ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Net  # noqa: E402

OP = "lrn"


def _lrn(k):
    return {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": k}


# channels_last only for AlexNet: one case shows the strided path's cost.
NETS = [
    Net("alexnet", (96, 55, 55), _lrn(2.0), ("nchw", "channels_last")),
    Net("googlenet-64", (64, 56, 56), _lrn(1.0)),
    Net("googlenet-192", (192, 56, 56), _lrn(1.0)),
]
# Batch per device: the CPU runs must stay short on a small machine; on a GPU, a batch that fills it
# (N=64: 37-77 MB per tensor), so launch overhead does not dominate.
DEFAULT_BATCH = {"cpu": 8, "cuda": 64}
DTYPES = {"cpu": (torch.float32,), "cuda": (torch.float16, torch.bfloat16)}
MODES = ("forward", "forward+backward")
# Bytes a perfect kernel moves, in units of numel * itemsize: forward reads x and writes y; the backward
# (which recomputes the window sums from x) reads x and dy and writes dx.
TRAFFIC = {"forward": 2, "forward+backward": 5}


def case(mode, shape, dtype, layout, params):
    nbytes = TRAFFIC[mode] * torch.Size(shape).numel() * dtype.itemsize
    return harness.unary_case(OP, mode, shape, dtype, layout, params, F.local_response_norm, nbytes)


def providers(device: str) -> list[harness.Provider]:
    return harness.ours(device, ops.local_response_norm, "lrn") + harness.baselines(F.local_response_norm)


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
