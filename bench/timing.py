"""Bench timing: cold-cache medians on CPU and CUDA, and the copy-bandwidth ceiling. bench/harness.py keeps
the case model and the run loop; bench/results.py the metadata, files, plot and table."""
from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, ContextManager, Sequence

import numpy as np
import torch

# Time budget of one CPU measurement (its timed calls, per provider), in seconds, and the bounds on
# repetitions. With the flushes (CPU_MAX_ROUNDS) it sets the default CPU run's length (~5 minutes for the three
# ops on 2 cores, with a 480 MB L3's 960 MB flush) along with torch.compile's first calls: under 1 s per case with
# a warm inductor cache, 3-25 s with a cold one (the first run on a machine or after a torch upgrade).
CPU_BUDGET_S, CPU_QUICK_BUDGET_S = 0.4, 0.15
CPU_WARMUP_S = 0.05
MIN_REPS, MAX_REPS = 3, 1000
# The CPU's flushes are not counted in its budget (a flush of twice a large L3 takes ~0.1 s, far longer than most
# calls): at least CPU_MIN_ROUNDS rounds (MIN_REPS with --quick), and at most CPU_MAX_ROUNDS -- paired ratios
# settle well before; without that cap the fast cases ran 260 rounds of flushes, and the default run 12 minutes.
CPU_MIN_ROUNDS, CPU_MAX_ROUNDS = 10, 20

_flush_buffers: dict[str, torch.Tensor] = {}


def last_level_cache_bytes() -> int | None:
    """The CPU's largest cache, from sysfs (Linux): None where it cannot be read."""
    sizes = []
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(root):
            if entry.startswith("index"):
                with open(os.path.join(root, entry, "size")) as f:
                    text = f.read().strip().upper()
                unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
                sizes.append(int(text.rstrip("KMG")) * unit)
    except (OSError, ValueError):
        return None
    return max(sizes, default=None)


def cpu_flush_bytes() -> int:
    """Twice the last-level cache, at least 64 MB and at most 2 GiB: what evicts a call's data. A fixed 64 MB
    left the inputs warm on a VM reporting a 480 MB L3 (a 9 MB input summed in 0.33 ms with no flush, 0.37-0.54 ms
    after 64 MB, 0.87 ms after 1 GiB): our kernels then ran 1.4-1.7x faster than from DRAM, and their ratios to
    eager (whose slower calls gain little) came out that much higher."""
    llc = last_level_cache_bytes() or 0
    return min(max(2 * llc, 64 << 20), 2 << 30)


def _flush_cache(device: str) -> None:
    """Overwrite a buffer larger than the last-level cache (H100/H200 L2: 50 MB; on a CPU, cpu_flush_bytes), so
    every timed call starts cold, as triton.testing.do_bench does. Cold numbers are the honest ones to compare
    with the DRAM copy bandwidth."""
    if device not in _flush_buffers:
        nbytes = (256 << 20) if device == "cuda" else cpu_flush_bytes()
        _flush_buffers[device] = torch.empty(nbytes, dtype=torch.int8, device=device)
    _flush_buffers[device].zero_()


def _time_cuda(fn: Callable, quick: bool) -> list[float]:
    """triton.testing.do_bench's method, written out: CUDA events around each call, L2 flushed before
    each, warmup and repetitions sized from an estimate. (Not do_bench itself: its signature and return
    value changed across triton versions, and the CPU path cannot use it.)"""
    warmup_ms, rep_ms = (10, 40) if quick else (25, 100)
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        _flush_cache("cuda")
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate_ms = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate_ms))):
        fn()
    n = min(MAX_REPS, max(10, int(rep_ms / estimate_ms)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        _flush_cache("cuda")
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def _time_cpu(runs: dict[str, tuple[Callable, Callable[[], ContextManager]]], quick: bool) -> dict[str, list[float]]:
    """Wall clock per call of one or more providers, in rounds: each round times every provider once, each call
    after its own flush, the order rotating from round to round. A neighbour's load or a clock change then lands on
    every provider of the rounds it spans, not on whichever provider was being timed, so the ratio of two
    providers' times within a round stays put while the times themselves drift. On a 2-core VM (AVX-512 EPYC),
    channels-last max-pool 8x96x55x55 timed one provider after another (0.4 s each) came out 1.32x, 1.14x and
    0.90x torch.compile in three measurements in one process; interleaved, six runs (AVX2 and AVX-512 builds)
    gave 1.15-1.23x.

    ``runs`` maps each name to its call and a context its calls run inside (the backend it selects), entered
    around the flush and the call, outside the timed region. Rounds run until the budget (CPU_BUDGET_S per
    provider) is spent -- but at least MIN_REPS, so slow calls (eager) still get quantiles; a slow provider
    leaves the fast ones fewer, but paired, samples. Each provider first gets CPU_WARMUP_S of warmup (at least
    one call).

    Every call is timed alone, after its own flush, however short: calls under ~1 ms used to be timed in groups
    with one flush per group, so a fast column ran warm while a slower one beside it ran cold -- 24x against
    eager where both cold gave 11x. perf_counter's resolution (~0.1 us) is far below the shortest call timed.

    The budget counts the timed calls, not the flushes around them (see CPU_MIN_ROUNDS)."""
    budget = (CPU_QUICK_BUDGET_S if quick else CPU_BUDGET_S) * len(runs)
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        fn, context = runs[name]
        with context():
            n, t = 0, time.perf_counter()
            while n < 1 or time.perf_counter() - t < CPU_WARMUP_S:
                fn()
                n += 1
    rounds, timed = 0, 0.0
    while rounds < (MIN_REPS if quick else CPU_MIN_ROUNDS) or (timed < budget and rounds < CPU_MAX_ROUNDS):
        for name in names[rounds % len(names):] + names[:rounds % len(names)]:
            fn, context = runs[name]
            with context():
                _flush_cache("cpu")
                t = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - t
                times[name].append(elapsed * 1e3)
                timed += elapsed
        rounds += 1
    return times


def time_providers(runs: dict[str, tuple[Callable, Callable[[], ContextManager]]], device: str,
                   quick: bool = False) -> tuple[dict[str, list[float]], bool]:
    """Times in ms of each provider's call, and whether they are paired: on the CPU interleaved in rounds
    (``times[a][i]`` and ``times[b][i]`` come from round i), on CUDA one provider after another (the GPU's
    clock does not follow the host's neighbours; CUDA events time the device alone)."""
    if device != "cuda":
        return _time_cpu(runs, quick), True
    times = {}
    for name, (fn, context) in runs.items():
        with context():
            times[name] = _time_cuda(fn, quick)
    return times, False


def summary(times: Sequence[float]) -> dict[str, float]:
    """Median and 20/80 % quantiles of a provider's times in ms, plus the number of timed repetitions."""
    q20, median, q80 = np.quantile(times, [0.2, 0.5, 0.8])
    return {"median_ms": float(median), "q20_ms": float(q20), "q80_ms": float(q80), "reps": len(times)}


def speedup(base: Sequence[float], times: Sequence[float], paired: bool) -> float:
    """How many times faster than ``base`` a provider ran: the median of the rounds' ratios when the times are
    paired, else the ratio of the medians."""
    if paired:
        return float(np.median(np.asarray(base) / np.asarray(times)))
    return float(np.median(base) / np.median(times))


_copy_gbps: dict[tuple[str, torch.dtype], float] = {}


def copy_bandwidth(device: str, dtype: torch.dtype) -> float:
    """GB/s of ``dst.copy_(src)`` on a tensor far larger than the caches (read + write counted): the
    practical ceiling a memory-bound kernel on this device can reach. Measured once per device/dtype, from
    the best of at least 10 copies: a ceiling should not sink because a neighbour was busy during its one
    measurement (on a quiet machine best and median differ by a few %)."""
    key = (device, dtype)
    if key not in _copy_gbps:
        nbytes = (1 << 30) if device == "cuda" else max(128 << 20, cpu_flush_bytes())  # past the caches
        src = torch.ones(nbytes // torch.finfo(dtype).bits * 8, dtype=dtype, device=device)
        dst = torch.empty_like(src)
        times: list[float] = []
        while len(times) < 10:
            copies, _ = time_providers({"copy": (lambda: dst.copy_(src), contextlib.nullcontext)}, device, True)
            times += copies["copy"]
        _copy_gbps[key] = 2 * src.numel() * src.element_size() / min(times) / 1e6
        del src, dst
    return _copy_gbps[key]
