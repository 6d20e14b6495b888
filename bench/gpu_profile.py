"""Where the GPU time of the slow rows goes: kernels, or the host between them (bench/gpu_notes.md item 12).

Lease 2 measured the Triton max-pool forward+backward at 0.98 ms for fp16 64x96x55x55 (CUDA C++: 0.18 ms),
while the backward kernel's static count (1,232 SASS instructions per 8 elements) predicts ~0.15 ms. The bench
times whole calls with CUDA events, so a host-bound call (Python launch work, a synchronisation, an extra
copy) reads as a slow kernel. This script runs each case under torch.profiler and prints, per case, the
device time of every kernel it launched against the wall time of an iteration: kernels summing to far less
than the wall time mean the host is the limit, not the kernel.

    python3 bench/gpu_profile.py [--iters 20]     # one table per case on stdout; needs a CUDA device
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

import classicnets_ext
from classicnets_ext import ops

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


CASES = {
    # name: step factory (of the device)
    "max-pool fwd+bwd": lambda d: _fwd_bwd(lambda x: ops.max_pool2d(x, 3, 2), d),
    "pool->LRN fwd+bwd": lambda d: _fwd_bwd(lambda x: ops.max_pool2d_lrn(x, 3, 2, size=5, alpha=5e-4, beta=0.75,
                                                                         k=2.0, relu=True), d),
    "LRN fwd+bwd": lambda d: _fwd_bwd(lambda x: ops.local_response_norm(x, 5, 5e-4, 0.75, 2.0), d),
}


def run(name: str, backend: str, device: str, iters: int) -> None:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with classicnets_ext.use_backend(backend):
        step = CASES[name](device)
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
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:8]:
        print(f"   {e.self_device_time_total / iters / 1e3:8.4f} ms  x{e.count // iters:<3d} {e.key[:100]}")
    cpu = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CPU),
                 key=lambda e: -e.self_cpu_time_total)[:6]
    print("   host, self time per iteration: " + "; ".join(
        f"{e.key[:40]} {e.self_cpu_time_total / iters / 1e3:.3f} ms" for e in cpu))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: a smoke test of this script on the CPU backend (no device kernels to list)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_profile: no CUDA device", file=sys.stderr)
        return 1
    available = classicnets_ext.available_backends()
    for name in CASES:
        for backend in (("triton", "cuda") if args.device == "cuda" else ("cpu",)):
            if backend not in available:
                print(f"== {name}, {backend}: backend unavailable")
                continue
            try:
                run(name, backend, args.device, args.iters)
            except Exception as e:  # one failing case must not hide the others' tables
                print(f"== {name}, {backend}: {type(e).__name__}: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
