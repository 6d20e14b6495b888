"""Host time per call of the zoo's folded blocks, ours against torchvision's, where the kernels cost little.

At batch 1 on a GPU, and for small layers on the CPU, a block's time is mostly Python and dispatch: module
calls, attribute reads, the fold cache's key, the op's argument checks, one launch per kernel. This script
times blocks on a 1x1 input (eval, ``no_grad``): each of ours against torchvision's block with the same
weights, and against the bare kernels it calls (``raw``: the folded weights passed straight to the op or to
``F.conv2d``), whose difference is our Python. Whole networks at batch 1 (224x224) follow: ours against
torchvision's, in the same layout (channels-last). Best of ``--repeats`` runs of ``--calls`` calls, in
microseconds, one process.

``python bench/bench_host.py [--device cpu|cuda] [--calls 2000] [--repeats 5] [--threads N]``
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from classicnets_ext import models
from classicnets_ext._inception import ConvBNReLU

import harness  # bench/, this script's folder


def per_call_us(fn, calls: int, repeats: int, device: str) -> float:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(max(1, calls // 10)):  # warm-up: caches filled, folds made
        fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def cases(device: str):
    """(name, ours, torchvision's or None, raw or None) callables, weights shared within a row."""
    import torchvision

    cl = torch.channels_last

    def tiny(channels):
        return torch.randn(1, channels, 1, 1, device=device).contiguous(memory_format=cl)

    tv_googlenet = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).eval()
    ours_googlenet = models.googlenet(weights=tv_googlenet.state_dict(), aux_logits=False).eval().to(device)
    tv_googlenet = tv_googlenet.to(device, memory_format=cl)
    tv_resnet = torchvision.models.resnet50().eval()
    ours_resnet = models.resnet50(weights=tv_resnet.state_dict()).eval().to(device)
    tv_resnet = tv_resnet.to(device, memory_format=cl)

    x192, x64 = tiny(192), tiny(64)
    block = ours_googlenet.inception3a
    weights = block.fused_parameters()
    op = torch.ops.classicnets_ext.inception.default
    yield ("Inception 3a", lambda: block(x192), lambda: tv_googlenet.inception3a(x192),
           lambda: op(x192, *weights, 64))

    paper = models.googlenet_paper(aux_logits=False).eval().to(device).inception3a
    paper_weights = paper.fused_parameters()
    yield "Inception 3a, paper", lambda: paper(x192), None, lambda: op(x192, *paper_weights, 64)

    stem = ConvBNReLU(64, 64, kernel_size=1).eval().to(device, memory_format=cl)
    (w, b), = stem.folded()
    yield "ConvBNReLU 1x1", lambda: stem(x64), None, lambda: F.relu(F.conv2d(x64, w, b), inplace=True)

    bottleneck = ours_resnet.layer1[0]
    folded = bottleneck.folded()

    def raw_bottleneck():
        out = F.relu(F.conv2d(x64, *folded[0]), inplace=True)
        out = F.relu(F.conv2d(out, *folded[1], padding=1), inplace=True)
        out = F.conv2d(out, *folded[2])
        return F.relu(out.add_(F.conv2d(x64, *folded[3])), inplace=True)
    yield "Bottleneck + projection", lambda: bottleneck(x64), lambda: tv_resnet.layer1[0](x64), raw_bottleneck

    image = torch.randn(1, 3, 224, 224, device=device).contiguous(memory_format=cl)
    yield "googlenet, batch 1", lambda: ours_googlenet(image), lambda: tv_googlenet(image), None
    yield "resnet50, batch 1", lambda: ours_resnet(image), lambda: tv_resnet(image), None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    harness.add_threads_argument(parser)
    args = parser.parse_args(argv)
    harness.set_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.calls < 1 or args.repeats < 1:
        parser.error("--calls and --repeats must be positive")
    header = f"{'block':26s} {'ours':>9s} {'torchvision':>12s} {'ratio':>7s} {'raw':>9s} {'our Python':>11s}"
    print(f"host time per call, us ({args.device}, {torch.get_num_threads()} threads; eval, no_grad)\n{header}")
    with torch.no_grad():
        for name, ours, theirs, raw in cases(args.device):
            calls = args.calls if raw is not None else max(1, args.calls // 100)  # networks: fewer calls
            t_ours = per_call_us(ours, calls, args.repeats, args.device)
            t_theirs = per_call_us(theirs, calls, args.repeats, args.device) if theirs else None
            t_raw = per_call_us(raw, calls, args.repeats, args.device) if raw else None
            cells = [f"{t_ours:9.1f}", f"{t_theirs:12.1f}" if t_theirs else f"{'-':>12s}",
                     f"{t_theirs / t_ours:6.2f}x" if t_theirs else f"{'-':>7s}",
                     f"{t_raw:9.1f}" if t_raw else f"{'-':>9s}", f"{t_ours - t_raw:11.1f}" if t_raw else f"{'-':>11s}"]
            print(f"{name:26s} " + " ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
