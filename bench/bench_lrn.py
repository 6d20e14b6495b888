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

import classicnets_ext
from classicnets_ext import ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

OP = "lrn"
SIZE, ALPHA, BETA = 5, 1e-4, 0.75
# (name, C, H, W, k, layouts). channels_last only for AlexNet: one case shows the strided path's cost.
NETS = [
    ("alexnet", 96, 55, 55, 2.0, ("nchw", "channels_last")),
    ("googlenet-64", 64, 56, 56, 1.0, ("nchw",)),
    ("googlenet-192", 192, 56, 56, 1.0, ("nchw",)),
]
# Batch per device: the CPU runs must stay short on a small machine; on a GPU, a batch that fills it
# (N=64: 37-77 MB per tensor), so launch overhead does not dominate.
DEFAULT_BATCH = {"cpu": 8, "cuda": 64}
DTYPES = {"cpu": (torch.float32,), "cuda": (torch.float16, torch.bfloat16)}
MODES = ("forward", "forward+backward")
# Bytes a perfect kernel moves, in units of numel * itemsize: forward reads x and writes y; the backward
# (which recomputes the window sums from x) reads x and dy and writes dx.
TRAFFIC = {"forward": 2, "forward+backward": 5}


def _case(mode, shape, dtype, layout, k):
    def make_inputs(device):
        x = torch.randn(shape, dtype=dtype, device=device)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        inputs = {"x": x}
        if mode == "forward+backward":
            inputs["dy"] = torch.randn_like(x)  # keeps x's memory format
        return inputs

    def bind(fn, inputs):
        if mode == "forward":
            x = inputs["x"]
            return lambda: (fn(x, SIZE, ALPHA, BETA, k),)
        x = inputs["x"].detach().requires_grad_()  # a leaf of its own per provider
        dy = inputs["dy"]

        def run():
            x.grad = None  # so the backward writes dx instead of accumulating into it
            y = fn(x, SIZE, ALPHA, BETA, k)
            y.backward(dy)
            return y, x.grad
        return run

    numel = torch.Size(shape).numel()
    return harness.Case(OP, mode, shape, dtype, layout, TRAFFIC[mode] * numel * dtype.itemsize, make_inputs,
                        bind, params={"size": SIZE, "alpha": ALPHA, "beta": BETA, "k": k})


def cases(device: str, quick: bool = False, batch: int | None = None) -> list[harness.Case]:
    """Quick: the AlexNet shape only (NCHW), both modes, every dtype."""
    n = batch or DEFAULT_BATCH[device]
    nets = NETS[:1] if quick else NETS
    return [_case(mode, (n, c, h, w), dtype, layout, k)
            for mode in MODES
            for dtype in DTYPES[device]
            for _, c, h, w, k, layouts in nets
            for layout in (layouts[:1] if quick else layouts)]


def _ours(backend):
    return harness.Provider(f"ext-{backend}", lambda: ops.local_response_norm, backend=backend)


def providers(device: str) -> list[harness.Provider]:
    available = classicnets_ext.available_backends()
    provs = []
    if device == "cpu" and "cpu" in available:
        provs.append(_ours("cpu"))
    if device == "cuda":
        if "cuda" in available:
            provs.append(_ours("cuda"))
        # Never the Triton interpreter: it is a debugging aid, thousands of times slower.
        if "triton" in available and os.environ.get("TRITON_INTERPRET") != "1":
            provs.append(_ours("triton"))
    provs.append(harness.Provider("eager", lambda: F.local_response_norm))
    # A fresh compiled function per case (default inductor), static shapes: each shape compiles once.
    provs.append(harness.Provider("compile", lambda: torch.compile(F.local_response_norm, dynamic=False)))
    return provs


def main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer cases, shorter measurements")
    parser.add_argument("--batch", type=int, help=f"batch size N (default {DEFAULT_BATCH})")
    parser.add_argument("--out", help="output directory (default results/lrn-<device>-<timestamp>)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    return 0 if harness.run_op(sys.modules[__name__], args.device, args.quick, args.batch, args.out) else 1


if __name__ == "__main__":
    sys.exit(main())
