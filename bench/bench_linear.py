"""Fully connected layers at small batches: ops.linear (our CPU kernel, classicnets_ext::linear, for up to 8 fp32
rows (with MKL on an AMD CPU 256, avx2 32), 8 bf16 (12 with AVX512-BF16, 16 on Zen 4, AVX2: 4), 2 to 128 fp16) against
F.linear (eager) and torch.compile of it. fp32 by default;
``--dtypes bfloat16,float16`` measures the others.

Shapes are the classifiers that dominate AlexNet's, ZFNet's and VGG's inference at small batches: AlexNet's
FC6 9216->4096 (ZFNet's too), FC7 4096->4096 and FC8 4096->1000, and VGG's FC6 25088->4096; batch 8 and 1.
The weight is read once per call, so GB/s counts the weight, x and y. Modes: inference (no_grad),
forward+backward (x, weight and bias require grad; our forward and our backward's two products) and
autocast-inference: fp32 operands, frozen weights, under no_grad and ``torch.autocast("cpu", dtype)`` (bf16 for an
fp32 case), where autocast's F.linear casts the weight on every call and ours reads it in fp32, rounding it as it
goes (GB/s counts the fp32 bytes). CPU only: on a GPU ops.linear is F.linear. Standalone: ``python
bench/bench_linear.py [--quick] [--batch N]``.
"""
from __future__ import annotations

import contextlib
import os
import sys

import torch
import torch.nn.functional as F

from classicnets_ext import ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Net  # noqa: E402

OP = "linear"

# chw is (in_features,): a case's shape is (batch, in_features).
NETS = [
    Net("alexnet-fc6", (9216,), {"out_features": 4096}),
    Net("alexnet-fc7", (4096,), {"out_features": 4096}),
    Net("alexnet-fc8", (4096,), {"out_features": 1000}),
    Net("vgg-fc6", (25088,), {"out_features": 4096}),
]
DEFAULT_BATCH = {"cpu": (8, 1)}
DTYPES = {"cpu": (torch.float32,)}
MODES = ("inference", "forward+backward", "autocast-inference")
DEVICES = ("cpu",)


def case(mode, shape, dtype, layout, params):
    rows, in_features = shape
    out_features = params["out_features"]
    # Under autocast the operands are fp32 and the case's dtype is the one autocast computes (and returns) in.
    autocast = mode == "autocast-inference"
    data_dtype, dtype = harness.autocast_dtypes(dtype) if autocast else (dtype, dtype)
    itemsize = data_dtype.itemsize
    # Inference reads the weight, x and bias and writes y; the backward reads dy, x and the weight again and
    # writes dx, dW and db.
    nbytes = (out_features * in_features + rows * (in_features + out_features) + out_features) * itemsize
    if mode == "forward+backward":
        nbytes *= 3

    def make_inputs(device):
        torch.manual_seed(rows + in_features)
        return {"x": torch.randn(shape, dtype=data_dtype, device=device),
                "weight": torch.randn(out_features, in_features, dtype=data_dtype, device=device) / in_features ** 0.5,
                "bias": torch.randn(out_features, dtype=data_dtype, device=device),
                "dy": torch.randn(rows, out_features, dtype=data_dtype, device=device)}

    def bind(fn, inputs):
        if mode in ("inference", "autocast-inference"):
            x, w, b = inputs["x"], inputs["weight"], inputs["bias"]

            def infer():
                with torch.no_grad(), torch.autocast("cpu", dtype=dtype) if autocast else contextlib.nullcontext():
                    return (fn(x, w, b),)
            return infer
        x, w, b = (inputs[k].detach().requires_grad_() for k in ("x", "weight", "bias"))  # leaves of their own

        def train():
            for t in (x, w, b):
                t.grad = None
            y = fn(x, w, b)
            y.backward(inputs["dy"])
            return y, x.grad, w.grad, b.grad
        return train

    return harness.Case(OP, mode, shape, dtype, layout, nbytes, make_inputs, bind, params=dict(params))


def providers(device: str) -> list[harness.Provider]:
    return harness.ours(device, ops.linear, "linear") + harness.baselines(F.linear)


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
