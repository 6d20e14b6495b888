"""Fused (ReLU ->) max pool -> LRN: our fused op against our two ops run separately, eager and torch.compile.

``classicnets_ext.ops.max_pool2d_lrn(x, kernel_size, stride, padding, ceil_mode, size, alpha, beta, k, relu=...)``
equals ``F.local_response_norm(F.max_pool2d(F.relu(x) if relu else x, ...), size, alpha, beta, k)``. Shapes are
the networks' POOL -> NORM pairs: AlexNet's POOL1/NORM1 (N x 96 x 55 x 55) and POOL2/NORM2 (N x 256 x 27 x 27),
3x3/2 after the conv's ReLU, LRN k=2; the GoogLeNet stem's 3x3/2 ceil-mode pool (N x 64 x 112 x 112) after
conv1's ReLU, LRN k=1 -- each with the ReLU folded in, as alexnet_paper and googlenet_paper run them.
Providers: ``ext-fused`` (the fused op on the device's C++ backend), ``ext-triton-fused`` (CUDA only),
``ext-separate`` (our best unfused pair, as ``max_pool2d_lrn`` runs it unfused: our ``max_pool2d``, then
``torch.relu`` of the pooled quarter when relu -- ReLU commutes with max -- then our ``local_response_norm``, on
the same backend), ``ext-auto`` (CUDA only: the op under the ``auto`` backend, whatever ``AUTO_CUDA`` runs), ``eager`` (the torch composite) and ``compile`` (``torch.compile`` of it); ours are compared
with all three. Modes as for max pooling: inference, training forward, forward+backward.
Standalone: ``python bench/bench_pool_lrn.py [--device cpu|cuda] [--quick] [--dtypes ...]``.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

import classicnets_ext
from classicnets_ext import _layouts, ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Net  # noqa: E402

OP = "pool_lrn"


def _pool_lrn(k, relu, ceil_mode=False):
    return {"kernel_size": 3, "stride": 2, "padding": 0, "ceil_mode": ceil_mode, "size": 5, "alpha": 1e-4,
            "beta": 0.75, "k": k, "relu": relu}


# channels_last for AlexNet's first pair only: one case shows the strided path's cost.
NETS = [
    Net("alexnet-pool1-norm1", (96, 55, 55), _pool_lrn(2.0, relu=True), ("nchw", "channels_last")),
    Net("alexnet-pool2-norm2", (256, 27, 27), _pool_lrn(2.0, relu=True)),
    Net("googlenet-stem", (64, 112, 112), _pool_lrn(1.0, relu=True, ceil_mode=True)),
]
# Batch per device: N=8 on the CPU, the target batch; on a GPU a batch that fills it (N=64), so launch
# overhead does not dominate -- ``--batch 8`` gives the shapes there too.
DEFAULT_BATCH = {"cpu": 8, "cuda": 64}
# fp16 on the GPU, as for max pooling: one dtype keeps the GPU run, mostly torch.compile's warmup, within
# bench/gpu_suite.sh's limit. ``harness.cases(..., dtypes=...)`` / the standalone ``--dtypes`` flag widen it.
DTYPES = {"cpu": (torch.float32,), "cuda": (torch.float16,)}
MODES = ("inference", "training-forward", "forward+backward")
# Ours are compared with our unfused pair too: the fusion's own gain.
BASELINES = ("ext-separate", *harness.BASELINES)
ARGMAX_BYTES = 1


def _composite(max_pool2d, local_response_norm, relu_after_pool=False):
    """The unfused chain with the fused op's signature, from the given pooling and LRN functions: the ReLU on
    the input, as the networks write it, or on the pooled quarter (``relu_after_pool``)."""
    def max_pool2d_lrn(input, kernel_size, stride=None, padding=0, ceil_mode=False, size=5, alpha=1e-4, beta=0.75,
                       k=1.0, *, relu=False):
        if relu and not relu_after_pool:
            input = torch.relu(input)
        pooled = max_pool2d(input, kernel_size, stride, padding, ceil_mode=ceil_mode)
        if relu and relu_after_pool:
            pooled = torch.relu(pooled)
        return local_response_norm(pooled, size, alpha, beta, k)
    return max_pool2d_lrn


eager = _composite(F.max_pool2d, F.local_response_norm)
# The fusion's own gain is over our best unfused pair: a ReLU on the whole input first, a full extra pass that
# the pair need not make, inflated it (AlexNet's POOL1/NORM1 fwd+bwd, 2.64x against 1.22x).
separate = _composite(ops.max_pool2d, ops.local_response_norm, relu_after_pool=True)


def _nbytes(mode: str, in_bytes: int, out_numel: int, itemsize: int) -> int:
    """What the fused op must move, counted for every provider (the unfused ones must move more: the pooled
    tensor's write and read back, and the ReLU's pass): inference reads x and writes y; the training forward
    also saves the pooled values (LRN's input) and a 1-byte argmax; the backward reads dy, the pooled values and
    the argmax and writes dx."""
    out_bytes = out_numel * itemsize
    total = in_bytes + out_bytes
    if mode != "inference":
        total += out_bytes + out_numel * ARGMAX_BYTES
    if mode == "forward+backward":
        total += 2 * out_bytes + out_numel * ARGMAX_BYTES + in_bytes
    return total


def case(mode, shape, dtype, layout, params):
    k, s, p = params["kernel_size"], params["stride"], params["padding"]
    out_shape = _layouts.max_pool2d_output_shape(shape, (k, k), (s, s), (p, p), (1, 1), params["ceil_mode"])
    nbytes = _nbytes(mode, torch.Size(shape).numel() * dtype.itemsize, torch.Size(out_shape).numel(),
                     dtype.itemsize)
    return harness.unary_case(OP, mode, shape, dtype, layout, params, eager, nbytes)


def providers(device: str) -> list[harness.Provider]:
    fused = harness.ours(device, ops.max_pool2d_lrn, "max_pool2d_lrn",
                         name=lambda backend: "ext-triton-fused" if backend == "triton" else "ext-fused")
    if device in classicnets_ext.available_backends() and harness.has_ops("ext-separate", "max_pool2d", "lrn"):
        fused.append(harness.Provider("ext-separate", lambda: separate, backend=device))
    if device == "cuda" and device in classicnets_ext.available_backends():
        # What "auto" runs on CUDA (AUTO_CUDA): today the pair, in ext-separate's order, with each op on its
        # own measured backend.
        fused.append(harness.Provider("ext-auto", lambda: ops.max_pool2d_lrn, backend="auto"))
    return fused + harness.baselines(eager)


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
