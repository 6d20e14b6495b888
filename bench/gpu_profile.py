"""Where the GPU time of the slow rows goes: kernels, or the host between them (bench/gpu_notes.md item 12).

Lease 2 measured the Triton max-pool forward+backward at 0.98 ms for fp16 64x96x55x55 (CUDA C++: 0.18 ms),
while the backward kernel's static count (1,232 SASS instructions per 8 elements) predicts ~0.15 ms. The bench
times whole calls with CUDA events, so a host-bound call (Python launch work, a synchronisation, an extra
copy) reads as a slow kernel. This script runs each case under torch.profiler and prints, per case, the
device time of every kernel it launched against the wall time of an iteration: kernels summing to far less
than the wall time mean the host is the limit, not the kernel.

The model cases (``--cases models``) do the same for whole networks' inference (fp16, channels_last, batch 64 on
the GPU) on our CUDA backend, the reference backend (stock torch layers) and ``torch.compile`` of the reference
network: where the model bench reports ours behind compile, their kernel lists side by side say which layers
lose (issue 8's GPU target; lease 4: alexnet_paper 0.88x compile).

    python3 bench/gpu_profile.py [--iters 20] [--cases ops|models|all] [--models alexnet_paper,googlenet_paper]
                                 [--backends cuda,reference,compile] [--batch 64]
                                 # one table per case and backend on stdout; needs a CUDA device (or --device cpu)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from unittest import mock

import torch
from torch.profiler import ProfilerActivity, profile

import classicnets_ext
from classicnets_ext import _inception, models, ops

SHAPE = (64, 96, 55, 55)


def _fwd_bwd(fn, device):
    x = torch.randn(SHAPE, device=device, dtype=torch.float16 if device == "cuda" else torch.float32,
                    requires_grad=True)
    g = None

    def step():
        nonlocal g
        y = fn(x)
        if g is None:
            g = torch.randn_like(y)
        y.backward(g)
        x.grad = None
    return step


def _block_3a(device, training: bool, batch: int = 32):
    """GoogLeNet's block 3a in the given mode and its input, fp16 on the GPU (fp32 on the CPU), channels-last."""
    dtype = torch.float16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    block = classicnets_ext.nn.Inception(192, 64, 96, 128, 16, 32, 32).train(training)
    block = block.to(device=device, dtype=dtype, memory_format=torch.channels_last)
    x = torch.randn(batch, 192, 28, 28, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    return block, x


def _inception_inference(device):
    """GoogLeNet's block 3a in eval mode (BatchNorm folded: the fused op alone), batch 32, as the Inception bench
    runs it on the GPU: which of the op's kernels (item 38: max-pool's, two GEMMs, four epilogues) costs what."""
    block, x = _block_3a(device, training=False)

    def step():
        with torch.no_grad():
            block(x)
    return step


def _inception_training(stacked: bool, batch: int = 32):
    """GoogLeNet's block 3a in train mode, forward + backward: its three 1x1 layers that read the input one by one
    (what CUDA runs today) or stacked into one convolution, BatchNorm and ReLU (``_forward_stacked``, taken on
    the CPU only until this pair of cases has compared the two on a GPU: item 42)."""
    def factory(device):
        block, x = _block_3a(device, training=True, batch=batch)
        x.requires_grad_(True)
        devices = (device,) if stacked else ()

        def step():
            saved, _inception._STACKED_TRAINING_DEVICES = _inception._STACKED_TRAINING_DEVICES, devices
            try:
                block(x).float().square().mean().backward()
            finally:
                _inception._STACKED_TRAINING_DEVICES = saved
            x.grad = None
            block.zero_grad(set_to_none=True)
        return step
    return factory


def _pool_inference(tiles: bool):
    """Max-pool inference, 3x3/2 on the channels-first SHAPE (the op bench's alexnet-pool1 case): the channels-first
    fast path's shared-memory tiles, or the element kernel they replaced (CNX_MAXPOOL_TILES=0, which the extension
    reads at every launch): gpu_notes item 51."""
    def factory(device):
        x = torch.randn(SHAPE, device=device, dtype=torch.float16 if device == "cuda" else torch.float32)

        def step():
            with mock.patch.dict(os.environ, {"CNX_MAXPOOL_TILES": "1" if tiles else "0"}), torch.no_grad():
                ops.max_pool2d(x, 3, 2)
        return step
    return factory


OP_CASES = {
    # name: step factory (of the device)
    "max-pool fwd+bwd": lambda d: _fwd_bwd(lambda x: ops.max_pool2d(x, 3, 2), d),
    "max-pool inference, shared-memory tiles": _pool_inference(True),
    "max-pool inference, element kernel": _pool_inference(False),
    "pool->LRN fwd+bwd": lambda d: _fwd_bwd(lambda x: ops.max_pool2d_lrn(x, 3, 2, size=5, alpha=5e-4, beta=0.75,
                                                                         k=2.0, relu=True), d),
    "LRN fwd+bwd": lambda d: _fwd_bwd(lambda x: ops.local_response_norm(x, 5, 5e-4, 0.75, 2.0), d),
    "Inception 3a inference b32": _inception_inference,
    "Inception 3a train b32, 1x1 layers one by one": _inception_training(False),
    "Inception 3a train b32, 1x1 layers stacked": _inception_training(True),
}


def _inference(name: str, batch: int, compiled: bool):
    """A network's eval forward under no_grad, as bench_models times it on the GPU: fp16 (fp32 on the CPU),
    channels_last input and weights."""
    def factory(device):
        dtype = torch.float16 if device == "cuda" else torch.float32
        torch.manual_seed(0)
        model = models.get_model(name).to(device=device, dtype=dtype, memory_format=torch.channels_last).eval()
        if compiled:
            model = torch.compile(model)
        x = torch.randn(batch, *models.get_model_entry(name).input_size, device=device, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last)

        def step():
            with torch.no_grad():
                model(x)
        return step
    return factory


def run(name: str, backend: str, device: str, iters: int, factory=None) -> None:
    """Profile ``factory(device)``'s step (OP_CASES[name] by default) on ``backend``; "compile" is the reference
    backend, the factory building a compiled model."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with classicnets_ext.use_backend("reference" if backend == "compile" else backend):
        step = (factory or OP_CASES[name])(device)
        for _ in range(3):  # compile and warm up
            step()
        sync()
        t = time.perf_counter()
        for _ in range(iters):
            step()
        sync()
        wall_ms = (time.perf_counter() - t) / iters * 1e3
        with profile(activities=activities) as prof:
            for _ in range(iters):
                step()
            sync()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    device_ms = sum(e.self_device_time_total for e in kernels) / iters / 1e3
    print(f"== {name}, {backend}: wall {wall_ms:.3f} ms/iter, kernels {device_ms:.3f} ms/iter "
          f"({'host-bound' if device_ms < 0.5 * wall_ms else 'kernel-bound'})")
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:12 if factory else 8]:
        print(f"   {e.self_device_time_total / iters / 1e3:8.4f} ms  x{e.count // iters:<3d} {e.key[:100]}")
    cpu = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CPU),
                 key=lambda e: -e.self_cpu_time_total)[:6]
    print("   host, self time per iteration: " + "; ".join(
        f"{e.key[:40]} {e.self_cpu_time_total / iters / 1e3:.3f} ms" for e in cpu))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: a smoke test of this script on the CPU backend (no device kernels to list)")
    parser.add_argument("--cases", choices=("ops", "models", "all"), default="ops")
    parser.add_argument("--models", default="alexnet_paper,googlenet_paper",
                        help="comma-separated registry names for --cases models/all")
    parser.add_argument("--backends", help="comma-separated backends to profile (default: triton,cuda for the "
                        "ops and cuda,reference,compile for the models; cpu in place of cuda/triton on the CPU)")
    parser.add_argument("--batch", type=int, default=64, help="the models' batch")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_profile: no CUDA device", file=sys.stderr)
        return 1
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for name in names:
        models.get_model_entry(name)  # an unknown name: its error now, not after minutes of other cases
    ours = ("triton", "cuda") if args.device == "cuda" else ("cpu",)
    chosen = args.backends.split(",") if args.backends else None
    cases = []  # (name, backends, factory of a backend: None for an op case)
    if args.cases in ("ops", "all"):
        cases += [(name, ours, lambda b: None) for name in OP_CASES]
    if args.cases in ("models", "all"):
        cases += [(f"{n} inference b{args.batch}", ours[-1:] + ("reference", "compile"),
                   lambda b, n=n: _inference(n, args.batch, b == "compile")) for n in names]
    available = set(classicnets_ext.available_backends()) | {"compile"}
    for name, backends, factory_of in cases:
        for backend in backends:
            if chosen is not None and backend not in chosen:
                continue
            if backend not in available:
                print(f"== {name}, {backend}: backend unavailable")
                continue
            try:
                run(name, backend, args.device, args.iters, factory_of(backend))
            except Exception as e:  # one failing case must not hide the others' tables
                print(f"== {name}, {backend}: {type(e).__name__}: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
