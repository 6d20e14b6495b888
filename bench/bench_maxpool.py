"""2-D max pooling: our kernels against F.max_pool2d (eager) and torch.compile of it.

Shapes are the max pools of the classic networks: AlexNet's three overlapping 3x3/2 pools (N x 96 x 55 x 55,
N x 256 x 27 x 27, N x 256 x 13 x 13), the GoogLeNet/ResNet stem's 3x3/2 pad 1 (N x 64 x 112 x 112) and
VGG's first 2x2/2 (N x 64 x 224 x 224). Three modes: inference (under no_grad: nothing saved), the training
forward (the input requires grad: ours save a 1-byte argmax, eager 8-byte indices) and forward+backward.
Standalone: ``python bench/bench_maxpool.py [--device cpu|cuda] [--quick]``.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

import classicnets_ext
from classicnets_ext import _extension, _layouts, ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

OP = "maxpool"
# (name, C, H, W, kernel_size, stride, padding, layouts). channels_last where networks run it in practice
# (AMP + channels_last training): AlexNet's first pool and the ResNet stem.
NETS = [
    ("alexnet-pool1", 96, 55, 55, 3, 2, 0, ("nchw", "channels_last")),
    ("alexnet-pool2", 256, 27, 27, 3, 2, 0, ("nchw",)),
    ("alexnet-pool5", 256, 13, 13, 3, 2, 0, ("nchw",)),
    ("resnet-stem", 64, 112, 112, 3, 2, 1, ("nchw", "channels_last")),
    ("vgg-pool1", 64, 224, 224, 2, 2, 0, ("nchw",)),
]
# Batch per device: short CPU runs on a small machine (N=4: up to 51 MB per fp32 input); on a GPU a batch
# that fills it (N=64: 12-411 MB per tensor), so launch overhead does not dominate.
DEFAULT_BATCH = {"cpu": 4, "cuda": 64}
# fp16 on the GPU, the dtype networks train pools in (bf16 moves the same bytes, and a max does no arithmetic):
# one dtype keeps the GPU run -- whose time goes mostly to torch.compile's warmup -- within bench/gpu_suite.sh's
# limit. ``cases(..., dtypes=...)`` / the standalone ``--dtypes`` flag widen it.
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


def _case(mode, shape, dtype, layout, k, s, p):
    def make_inputs(device):
        x = torch.randn(shape, dtype=dtype, device=device)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        inputs = {"x": x}
        if mode == "forward+backward":
            y = F.max_pool2d(x, k, s, p)
            inputs["dy"] = torch.randn_like(y)  # keeps y's memory format
        return inputs

    def bind(fn, inputs):
        if mode == "inference":
            x = inputs["x"]

            def run():
                with torch.no_grad():
                    return (fn(x, k, s, p),)
            return run
        x = inputs["x"].detach().requires_grad_()  # a leaf of its own per provider
        if mode == "training-forward":
            return lambda: (fn(x, k, s, p),)
        dy = inputs["dy"]

        def run():
            x.grad = None  # so the backward writes dx instead of accumulating into it
            y = fn(x, k, s, p)
            y.backward(dy)
            return y, x.grad
        return run

    out_shape = _layouts.max_pool2d_output_shape(shape, (k, k), (s, s), (p, p), (1, 1), False)
    in_bytes = torch.Size(shape).numel() * dtype.itemsize
    out_numel = torch.Size(out_shape).numel()
    nbytes = _nbytes(mode, in_bytes, out_numel, dtype.itemsize, OURS_SAVED_BYTES)
    by_provider = {name: _nbytes(mode, in_bytes, out_numel, dtype.itemsize, saved)
                   for name, saved in SAVED_BYTES.items()}
    return harness.Case(OP, mode, shape, dtype, layout, nbytes, make_inputs, bind,
                        params={"kernel_size": k, "stride": s, "padding": p}, nbytes_by_provider=by_provider)


def cases(device: str, quick: bool = False, batch: int | None = None,
          dtypes: tuple[torch.dtype, ...] | None = None) -> list[harness.Case]:
    """Quick: AlexNet's first pool only (NCHW), every mode and dtype."""
    n = batch or DEFAULT_BATCH[device]
    nets = NETS[:1] if quick else NETS
    return [_case(mode, (n, c, h, w), dtype, layout, k, s, p)
            for mode in MODES
            for dtype in (dtypes or DTYPES[device])
            for _, c, h, w, k, s, p, layouts in nets
            for layout in (layouts[:1] if quick else layouts)]


def _ours(backend):
    return harness.Provider(f"ext-{backend}", lambda: ops.max_pool2d, backend=backend)


def providers(device: str) -> list[harness.Provider]:
    available = classicnets_ext.available_backends()
    provs = []
    cpp = device if device in ("cpu", "cuda") else None
    if cpp in available and _extension.has_op("max_pool2d"):
        provs.append(_ours(cpp))
    elif cpp in available:
        print(f"ext-{cpp} skipped: classicnets_ext._C has no max_pool2d op (built before csrc/maxpool/ landed; "
              "rebuild with `pip install --no-build-isolation -e .`)", file=sys.stderr)
    # Never the Triton interpreter: it is a debugging aid, thousands of times slower.
    if device == "cuda" and "triton" in available and os.environ.get("TRITON_INTERPRET") != "1":
        provs.append(_ours("triton"))
    provs.append(harness.Provider("eager", lambda: F.max_pool2d))
    # A fresh compiled function per case (default inductor), static shapes: each shape compiles once.
    provs.append(harness.Provider("compile", lambda: torch.compile(F.max_pool2d, dynamic=False)))
    return provs


def main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer cases, shorter measurements")
    parser.add_argument("--batch", type=int, help=f"batch size N (default {DEFAULT_BATCH})")
    parser.add_argument("--dtypes", help="comma-separated, e.g. float16,bfloat16,float32 (default per device: "
                        + ", ".join(f"{d}: {','.join(str(t).removeprefix('torch.') for t in v)}"
                                    for d, v in DTYPES.items()) + ")")
    parser.add_argument("--out", help="output directory (default results/maxpool-<device>-<timestamp>)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    if args.dtypes:
        try:
            DTYPES[args.device] = tuple(getattr(torch, d.strip()) for d in args.dtypes.split(",") if d.strip())
        except AttributeError as e:
            parser.error(f"--dtypes: {e}")
    return 0 if harness.run_op(sys.modules[__name__], args.device, args.quick, args.batch, args.out) else 1


if __name__ == "__main__":
    sys.exit(main())
