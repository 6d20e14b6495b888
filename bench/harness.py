"""Shared benchmark machinery: timing, copy bandwidth, correctness guard, results, plot and table.

An op's script (bench_lrn.py, bench_maxpool.py, bench_pool_lrn.py) defines

* ``OP``: its name, used in file names and rows;
* ``NETS`` (:class:`Net`: the network layers it runs), ``MODES``, and per device ``DTYPES`` and
  ``DEFAULT_BATCH``, from which :func:`cases` makes the list of :class:`Case`, each by
* ``case(mode, shape, dtype, layout, params)``: one :class:`Case`, usually from :func:`unary_case`;
* ``providers(device)``: a list of :class:`Provider` -- ours (``ext-*``, from :func:`ours`) plus the baselines
  ``eager`` (the torch function itself) and ``compile`` (``torch.compile`` of it) from :func:`baselines`, only
  those the machine can run;
* optionally ``BASELINES``: the providers ours are compared with (default :data:`BASELINES`), one speed-up
  column each;

and ``run_op(module, device, ...)`` does the rest; ``main(module)`` is the script's standalone command line.
Every provider of a case sees the same input tensors; its outputs are checked once against eager before it is
timed, so a broken kernel cannot post a time.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

import classicnets_ext
from classicnets_ext import _extension

REPO = Path(__file__).resolve().parent.parent
BASELINES = ("eager", "compile")

# Correctness-guard tolerance (atol = rtol) per dtype: loose on purpose. The guard catches broken kernels
# (errors of order 1), not last-ulp differences; eager itself rounds every intermediate in fp16/bf16.
GUARD_TOL = {torch.float64: 1e-6, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}

# Time budget of one CPU measurement (its timed loop, cache flushes included), in seconds, and the bounds on
# repetitions. The budget sets the default CPU run's length (~2 minutes on 2 cores) along with torch.compile's
# first calls: under 1 s per case with a warm inductor cache, 3-25 s with a cold one (the first run on a
# machine or after a torch upgrade: ~7 minutes in all).
CPU_BUDGET_S, CPU_QUICK_BUDGET_S = 0.4, 0.15
CPU_WARMUP_S = 0.05
MIN_REPS, MAX_REPS = 3, 1000


@dataclass
class Case:
    """One benchmarked configuration. ``make_inputs(device)`` builds the tensors (once per case, shared by
    all providers); ``bind(fn, inputs)`` returns a zero-argument closure that runs the case once with the
    provider's op ``fn`` and returns the tensors to check (outputs, gradients)."""
    op: str
    mode: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    layout: str
    nbytes: int  # bytes a perfect kernel moves per call (reads + writes): the numerator of GB/s
    make_inputs: Callable[[str], dict[str, torch.Tensor]]
    bind: Callable[[Callable, dict], Callable[[], Sequence[torch.Tensor]]]
    params: dict[str, Any] = field(default_factory=dict)
    # Per-provider overrides of nbytes, where providers must move different data (max pooling's training
    # forward saves a 1-byte argmax in ours, 8-byte indices in eager).
    nbytes_by_provider: dict[str, int] = field(default_factory=dict)

    @property
    def shape_str(self) -> str:
        return "x".join(map(str, self.shape))

    @property
    def dtype_str(self) -> str:
        return str(self.dtype).removeprefix("torch.")


@dataclass
class Provider:
    """``make()`` returns the op callable for one case (called per case, so ``compile`` compiles once per
    shape). ``backend`` is the classicnets_ext backend selected around the whole check-and-time of this
    provider, so the timed calls carry no backend-switching overhead."""
    name: str
    make: Callable[[], Callable]
    backend: str | None = None


# ---------------------------------------------------------------------------------------- cases, providers

@dataclass(frozen=True)
class Net:
    """One layer of a network that an op's bench runs: its input's (C, H, W), the op's keyword arguments, and
    the layouts to bench it in ("nchw", "channels_last")."""
    name: str
    chw: tuple[int, int, int]
    params: dict[str, Any]
    layouts: tuple[str, ...] = ("nchw",)


def cases(module, device: str, quick: bool = False, batch: int | None = None,
          dtypes: Sequence[torch.dtype] | None = None) -> list[Case]:
    """An op script's cases: ``module.case(mode, (N, C, H, W), dtype, layout, params)`` for every mode in
    ``module.MODES``, dtype (default ``module.DTYPES[device]``), net in ``module.NETS`` and layout of that net,
    in that nesting order, then every batch: N is ``batch``, or ``module.DEFAULT_BATCH[device]`` (an int, or a
    tuple of batch sizes). Quick: the first net only, in its first layout, at the first batch (every mode and
    dtype)."""
    batches = batch or module.DEFAULT_BATCH[device]
    batches = batches if isinstance(batches, tuple) else (batches,)
    nets = module.NETS[:1] if quick else module.NETS
    return [module.case(mode, (n, *net.chw), dtype, layout, net.params)
            for mode in module.MODES
            for dtype in (dtypes or module.DTYPES[device])
            for net in nets
            for layout in (net.layouts[:1] if quick else net.layouts)
            for n in (batches[:1] if quick else batches)]


def unary_case(op: str, mode: str, shape: tuple[int, ...], dtype: torch.dtype, layout: str,
               params: dict[str, Any], eager: Callable, nbytes: int,
               nbytes_by_provider: dict[str, int] | None = None) -> Case:
    """A :class:`Case` of an op called as ``fn(x, **params)`` on one random input ``x`` of ``shape``, which
    every provider's function takes with the same keyword names. ``mode``:

    * ``"forward"``: ``x`` does not require grad (LRN's inference);
    * ``"inference"``: under ``torch.no_grad()``, so nothing is saved for a backward;
    * ``"training-forward"``: ``x`` requires grad, so the op saves what its backward needs;
    * ``"forward+backward"``: the training forward, then ``y.backward(dy)`` with a random ``dy`` shaped (and laid
      out) like ``eager``'s output.
    """
    def make_inputs(device):
        x = torch.randn(shape, dtype=dtype, device=device)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        inputs = {"x": x}
        if mode == "forward+backward":
            with torch.no_grad():
                inputs["dy"] = torch.randn_like(eager(x, **params))  # keeps the output's memory format
        return inputs

    def bind(fn, inputs):
        x = inputs["x"]
        if mode == "inference":
            def run():
                with torch.no_grad():
                    return (fn(x, **params),)
            return run
        if mode == "forward":
            return lambda: (fn(x, **params),)
        x = x.detach().requires_grad_()  # a leaf of its own per provider
        if mode == "training-forward":
            return lambda: (fn(x, **params),)
        dy = inputs["dy"]

        def run():
            x.grad = None  # so the backward writes dx instead of accumulating into it
            y = fn(x, **params)
            y.backward(dy)
            return y, x.grad
        return run

    if mode not in ("forward", "inference", "training-forward", "forward+backward"):
        raise ValueError(f"unknown mode {mode!r}")
    return Case(op, mode, shape, dtype, layout, nbytes, make_inputs, bind, params=dict(params),
                nbytes_by_provider=dict(nbytes_by_provider or {}))


REBUILD = "rebuild it with `pip install --no-build-isolation -e .`"


def has_ops(name: str, *cpp_ops: str) -> bool:
    """Whether the loaded _C defines every op a provider ``name`` calls; if not, say so on stderr (the
    provider is then left out of the run: a _C built before those kernels landed)."""
    missing = [op for op in cpp_ops if not _extension.has_op(op)]
    if missing:
        print(f"{name} skipped: classicnets_ext._C has no {', '.join(missing)} op (built from older sources; "
              f"{REBUILD})", file=sys.stderr)
    return not missing


def _ext_name(backend: str) -> str:
    return f"ext-{backend}"


def ours(device: str, fn: Callable, cpp_op: str, name: Callable[[str], str] = _ext_name) -> list[Provider]:
    """Our ``fn`` on every backend of ours that runs on ``device``: the C++ one (``"cpu"`` / ``"cuda"``, when
    the loaded _C defines ``cpp_op``) and, on CUDA, Triton -- never the Triton interpreter, a debugging aid
    thousands of times slower. ``name(backend)`` names each provider."""
    available = classicnets_ext.available_backends()
    provs = []
    if device in ("cpu", "cuda") and device in available and has_ops(name(device), cpp_op):
        provs.append(Provider(name(device), lambda: fn, backend=device))
    if device == "cuda" and "triton" in available and os.environ.get("TRITON_INTERPRET") != "1":
        provs.append(Provider(name("triton"), lambda: fn, backend="triton"))
    return provs


def baselines(eager: Callable) -> list[Provider]:
    """``eager`` (the torch function) and ``compile``: a fresh ``torch.compile`` of it per case (default
    inductor), static shapes, so each shape compiles once."""
    return [Provider("eager", lambda: eager), Provider("compile", lambda: torch.compile(eager, dynamic=False))]


# ----------------------------------------------------------------------------------------------- timing

_flush_buffers: dict[str, torch.Tensor] = {}


def _flush_cache(device: str) -> None:
    """Overwrite a buffer larger than the last-level cache (H100/H200 L2: 50 MB; a CPU's L3, or the slice of
    it one core sees: tens of MB), so every timed call starts cold, as triton.testing.do_bench does. Cold
    numbers are the honest ones to compare with the DRAM copy bandwidth."""
    if device not in _flush_buffers:
        nbytes = (256 << 20) if device == "cuda" else (64 << 20)  # smaller on CPU: its flush is slow
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


def _time_cpu(fn: Callable, quick: bool) -> list[float]:
    """Wall clock per call: repetitions, each after a cache flush, until the time budget is spent -- but at
    least MIN_REPS, so slow calls (eager) still get quantiles. The guard's call came first and warmed ``fn`` up,
    so the first repetition counts; only a call faster than CPU_WARMUP_S gets more warmup (CPU_WARMUP_S of it),
    and calls shorter than ~1 ms are then timed in groups so the clock's resolution and the loop's overhead do
    not count."""
    budget = CPU_QUICK_BUDGET_S if quick else CPU_BUDGET_S
    t0 = time.perf_counter()
    _flush_cache("cpu")
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times, group = [first * 1e3], 1
    if first < CPU_WARMUP_S:
        times, n, t = [], 0, time.perf_counter()
        while n < 1 or time.perf_counter() - t < CPU_WARMUP_S:
            fn()
            n += 1
        group = max(1, math.ceil(1e-3 / ((time.perf_counter() - t) / n)))
        t0 = time.perf_counter()
    while len(times) < MIN_REPS or (time.perf_counter() - t0 < budget and len(times) < MAX_REPS):
        _flush_cache("cpu")
        t = time.perf_counter()
        for _ in range(group):
            fn()
        times.append((time.perf_counter() - t) / group * 1e3)
    return times


def measure(fn: Callable, device: str, quick: bool = False) -> dict[str, float]:
    """Median and 20/80 % quantiles of ``fn``'s time in ms, plus the number of timed repetitions."""
    times = _time_cuda(fn, quick) if device == "cuda" else _time_cpu(fn, quick)
    q20, median, q80 = np.quantile(times, [0.2, 0.5, 0.8])
    return {"median_ms": float(median), "q20_ms": float(q20), "q80_ms": float(q80), "reps": len(times)}


_copy_gbps: dict[tuple[str, torch.dtype], float] = {}


def copy_bandwidth(device: str, dtype: torch.dtype) -> float:
    """GB/s of ``dst.copy_(src)`` on a tensor far larger than the caches (read + write counted): the
    practical ceiling a memory-bound kernel on this device can reach. Measured once per device/dtype, from
    the best of at least 10 copies: a ceiling should not sink because a neighbour was busy during its one
    measurement (on a quiet machine best and median differ by a few %)."""
    key = (device, dtype)
    if key not in _copy_gbps:
        nbytes = (1 << 30) if device == "cuda" else (128 << 20)
        src = torch.ones(nbytes // torch.finfo(dtype).bits * 8, dtype=dtype, device=device)
        dst = torch.empty_like(src)
        timer = _time_cuda if device == "cuda" else _time_cpu
        times: list[float] = []
        while len(times) < 10:
            times += timer(lambda: dst.copy_(src), True)
        _copy_gbps[key] = 2 * src.numel() * src.element_size() / min(times) / 1e6
        del src, dst
    return _copy_gbps[key]


# --------------------------------------------------------------------------------------------- metadata

def _triton_version() -> str | None:
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def metadata(device: str) -> dict[str, Any]:
    info = classicnets_ext._extension.build_info()
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else _cpu_model(),
        "torch_version": torch.__version__,
        "triton_version": _triton_version(),
        "cuda_version": torch.version.cuda,
        "ext_version": classicnets_ext.__version__,
        "ext_build_info": info,
        "cpu_capability": info.get("cpu_capability") or torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# The metadata repeated in every CSV row, so CSVs from several machines can simply be concatenated.
CSV_META = ("device_name", "torch_version", "triton_version", "cuda_version", "ext_version", "cpu_capability",
            "threads", "date")
ROW_FIELDS = ("op", "mode", "shape", "layout", "dtype", "provider", "median_ms", "q20_ms", "q80_ms", "reps",
              "gbps", "pct_copy_bw", "speedup_vs_eager", "speedup_vs_compile", "first_call_s", "error")


def _speedup_bases(rows: list[dict]) -> list[str]:
    """The baselines the rows carry a speed-up against (``speedup_vs_<base>`` keys), in their order."""
    return [k.removeprefix("speedup_vs_") for k in (rows[0] if rows else {}) if k.startswith("speedup_vs_")] \
        or list(BASELINES)


def _row_fields(rows: list[dict]) -> tuple[str, ...]:
    """ROW_FIELDS, with one speed-up column per baseline of the op (eager and compile unless it names more)."""
    i, j = ROW_FIELDS.index("speedup_vs_eager"), ROW_FIELDS.index("speedup_vs_compile") + 1
    return ROW_FIELDS[:i] + tuple(f"speedup_vs_{b}" for b in _speedup_bases(rows)) + ROW_FIELDS[j:]


# ------------------------------------------------------------------------------------------------- run

def _check(outputs: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], dtype: torch.dtype) -> None:
    tol = GUARD_TOL[dtype]
    for i, (got, want) in enumerate(zip(outputs, expected)):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol,
                                   msg=lambda m: f"output {i} differs from eager: {m}")


def _bench_case(case: Case, provs: list[Provider], device: str, quick: bool, bar: tqdm,
                bases: Sequence[str] = BASELINES) -> list[dict]:
    inputs = case.make_inputs(device)
    copy_gbps = copy_bandwidth(device, case.dtype)
    expected = None
    rows = {}
    for p in sorted(provs, key=lambda p: p.name != "eager"):  # eager first: its outputs are the reference
        bar.set_postfix_str(f"{case.mode} {case.shape_str} {case.layout} {p.name}")
        row = {"op": case.op, "mode": case.mode, "shape": case.shape_str, "layout": case.layout,
               "dtype": case.dtype_str, "provider": p.name, "error": "", "params": case.params}
        try:
            if p.name == "compile":
                torch._dynamo.reset()  # a fresh compile per case: no recompile limit, no dynamic shapes
            with classicnets_ext.use_backend(p.backend or "auto"):
                run = case.bind(p.make(), inputs)
                t0 = time.perf_counter()
                outputs = run()  # the first call also compiles / autotunes: its time is worth recording
                row["first_call_s"] = time.perf_counter() - t0
                if expected is None:
                    expected = [t.detach().clone() for t in outputs]
                _check(outputs, expected, case.dtype)
                row.update(measure(run, device, quick))
            row["gbps"] = case.nbytes_by_provider.get(p.name, case.nbytes) / row["median_ms"] / 1e6
            row["pct_copy_bw"] = 100 * row["gbps"] / copy_gbps
        except Exception as e:  # a failing provider is reported, never timed, and the run goes on
            row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]
            tqdm.write(f"[{case.op} {case.mode} {case.shape_str} {case.layout} {case.dtype_str}] "
                       f"{p.name} FAILED: {row['error']}")
            if expected is None:  # eager failed: nothing to check the others against
                raise
        rows[p.name] = row
    rows = [rows[p.name] for p in provs]
    times = {r["provider"]: r.get("median_ms") for r in rows}
    for r in rows:
        for base in bases:
            ok = r.get("median_ms") and times.get(base)
            r[f"speedup_vs_{base}"] = times[base] / r["median_ms"] if ok else None
    return rows


def bench(module, device: str, quick: bool = False, batch: int | None = None,
          on_case: Callable[[list[dict]], None] | None = None, rows: list[dict] | None = None) -> list[dict]:
    """Run every case of ``module`` on ``device`` with a progress bar; one row per case and provider, appended
    to ``rows`` (a new list by default), which is returned. ``on_case(rows so far)`` is called after each case."""
    provs = module.providers(device)
    bases = getattr(module, "BASELINES", BASELINES)
    rows = [] if rows is None else rows
    todo = cases(module, device, quick, batch)
    with tqdm(todo, desc=f"{module.OP} on {device}", unit="case", dynamic_ncols=True) as bar:
        for case in bar:
            rows.extend(_bench_case(case, provs, device, quick, bar, bases))
            if device == "cuda":
                torch.cuda.empty_cache()
            if on_case:
                on_case(rows)
    return rows


# --------------------------------------------------------------------------------------------- outputs

def write_results(rows: list[dict], meta: dict, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / f"{stem}.json", out_dir / f"{stem}.csv"
    json_path.write_text(json.dumps({"metadata": meta, "rows": rows}, indent=1, default=str))
    with csv_path.open("w", newline="") as f:
        fields = _row_fields(rows)
        writer = csv.DictWriter(f, fieldnames=fields + CSV_META, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**{k: meta[k] for k in CSV_META}, **{k: _round(r.get(k)) for k in fields}})
    return [csv_path, json_path]


def _round(v):
    return float(f"{v:.5g}") if isinstance(v, float) else ("" if v is None else v)


def _case_key(r: dict) -> tuple:
    return (r["mode"], r["shape"], r["layout"], r["dtype"])


def plot(rows: list[dict], meta: dict, path: Path) -> Path:
    """Per mode (one row of panels each): grouped bars per case by provider, time (log scale) on the left,
    speed-up vs eager on the right."""
    import matplotlib
    matplotlib.use("Agg")  # no display on benchmark machines
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in rows))
    provs = list(dict.fromkeys(r["provider"] for r in rows))
    n_keys = max(sum(r["mode"] == m for r in rows) // len(provs) for m in modes)
    fig, axes = plt.subplots(len(modes), 2, figsize=(max(12, 2 + 1.5 * n_keys), 3.6 * len(modes)), squeeze=False)
    width = 0.8 / len(provs)
    for ax_row, mode in zip(axes, modes):
        keys = list(dict.fromkeys(_case_key(r) for r in rows if r["mode"] == mode))
        by = {(_case_key(r), r["provider"]): r for r in rows if r["mode"] == mode}
        labels = [f"{shape}\n{layout} {dtype}" for _, shape, layout, dtype in keys]
        for ax, metric, title in ((ax_row[0], "median_ms", "time (ms, lower is better)"),
                                  (ax_row[1], "speedup_vs_eager", "speed-up vs eager (higher is better)")):
            for i, p in enumerate(provs):
                vals = [(by.get((k, p)) or {}).get(metric) or 0.0 for k in keys]
                xs = np.arange(len(keys)) + (i - (len(provs) - 1) / 2) * width
                bars = ax.bar(xs, vals, width, label=p)
                ax.bar_label(bars, labels=[f"{v:.3g}" if v else "" for v in vals], fontsize=6, rotation=90,
                             padding=2)
            ax.set_xticks(np.arange(len(keys)), labels, fontsize=7)
            ax.set_title(f"{rows[0]['op']} {mode}: {title}", fontsize=9)
            ax.margins(y=0.25)
            if metric == "median_ms":
                ax.set_yscale("log")
            else:
                ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax_row[0].legend(fontsize=7)
    fig.suptitle(f"{meta['device_name']} | torch {meta['torch_version']} | {meta['threads']} threads | "
                 f"{meta['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt_ms(ms: float) -> str:
    return f"{ms:.4g}"


def table(rows: list[dict], meta: dict) -> str:
    """Fixed-width text: one line per case, one column per provider. Ours show
    ``ms  x-vs-eager/x-vs-compile  %BW`` (one speed-up per baseline of the op), the baselines ``ms  %BW``."""
    provs = list(dict.fromkeys(r["provider"] for r in rows))
    bases = _speedup_bases(rows)
    ours = {r["provider"] for r in rows if r["provider"] not in bases}
    by = {(_case_key(r), r["provider"]): r for r in rows}
    keys = list(dict.fromkeys(_case_key(r) for r in rows))

    def cell(r: dict | None, p: str) -> str:
        if r is None:
            return "-"
        if r.get("error"):
            return "FAILED"
        text = f"{_fmt_ms(r['median_ms'])}ms"
        if p in ours:
            sp = [f"{r[f'speedup_vs_{b}']:.2f}x" if r.get(f"speedup_vs_{b}") else "-" for b in bases]
            text += " " + "/".join(sp)
        return f"{text} {r['pct_copy_bw']:.0f}%"

    head = ("mode", "shape", "layout", "dtype")
    body = [list(k) + [cell(by.get((k, p)), p) for p in provs] for k in keys]
    speedups = "/".join(f"x-{b.removeprefix('ext-')}" for b in bases)
    cols = list(head) + [p + (f" (ms {speedups} %BW)" if p in ours else " (ms %BW)") for p in provs]
    widths = [max(len(str(c)) for c in col) for col in zip(cols, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    bw = ", ".join(f"{d}: {v:.1f} GB/s" for d, v in meta["copy_gbps"].items())
    title = (f"{rows[0]['op']} on {meta['device_name']} ({meta['device']}, {meta['threads']} threads); "
             f"best copy bandwidth {bw}; times: median of reps, cold cache")
    return "\n".join([title, line(cols), line("-" * w for w in widths)] + [line(b) for b in body])


def _show(path: Path) -> str:
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def default_out_dir(op: str, device: str) -> Path:
    return REPO / "results" / f"{op}-{device}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_op(module, device: str, quick: bool = False, batch: int | None = None,
           out_dir: Path | None = None) -> bool:
    """Bench one op on one device, write CSV/JSON/PNG, print the table. True when every provider passed."""
    meta = metadata(device)
    out_dir = Path(out_dir) if out_dir else default_out_dir(module.OP, device)
    stem = f"{module.OP}-{device}"

    def save(rows: list[dict], complete: bool = False) -> list[Path]:
        # Rewritten after every case, so a run cut short (a time limit on a lent GPU) still leaves data.
        meta["complete"] = complete
        meta["copy_gbps"] = {str(d).removeprefix("torch."): v for (dev, d), v in _copy_gbps.items()
                             if dev == device}
        return write_results(rows, meta, out_dir, stem)

    rows: list[dict] = []
    interrupted = False
    try:
        bench(module, device, quick, batch, on_case=save, rows=rows)
    except KeyboardInterrupt:  # Ctrl-C, or a time limit's SIGTERM (stop_on_sigterm): report the cases done
        interrupted = True
    paths = save(rows, complete=not interrupted)
    if rows:
        paths.append(plot(rows, meta, out_dir / f"{stem}.png"))
        print()
        print(table(rows, meta))
    print("results: " + ", ".join(_show(p) for p in paths))
    failed = [r for r in rows if r["error"]]
    if failed:
        print(f"{len(failed)} provider run(s) FAILED the correctness guard or raised; see the 'error' column")
    if interrupted:
        print(f"INTERRUPTED: {module.OP} on {device} stopped before its last case; the table holds the cases done")
        raise KeyboardInterrupt
    return not failed


def stop_on_sigterm() -> None:
    """Make SIGTERM (what ``timeout`` sends) stop the run as Ctrl-C does, so run_op still writes its results
    and prints the table of the cases done."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


def main(module, argv=None) -> int:
    """The standalone command line of an op's script: ``python bench/bench_<op>.py [--device cpu|cuda]
    [--quick] [--batch N] [--dtypes LIST] [--out DIR]``. Exit status 1 when any provider failed."""
    dtypes_str = lambda ts: ",".join(str(t).removeprefix("torch.") for t in ts)  # noqa: E731
    parser = argparse.ArgumentParser(description=module.__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer cases, shorter measurements")
    parser.add_argument("--batch", type=int, help=f"batch size N (default {module.DEFAULT_BATCH})")
    parser.add_argument("--dtypes", help="comma-separated, e.g. float16,bfloat16,float32 (default per device: "
                        + ", ".join(f"{d}: {dtypes_str(v)}" for d, v in module.DTYPES.items()) + ")")
    parser.add_argument("--out", help=f"output directory (default results/{module.OP}-<device>-<timestamp>)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    if args.dtypes:
        dtypes = tuple(getattr(torch, d.strip(), None) for d in args.dtypes.split(",") if d.strip())
        if not dtypes or not all(isinstance(d, torch.dtype) for d in dtypes):
            parser.error(f"--dtypes: expected torch dtype names (float16, bfloat16, float32, ...), got {args.dtypes!r}")
        module.DTYPES[args.device] = dtypes
    stop_on_sigterm()
    try:
        return 0 if run_op(module, args.device, args.quick, args.batch, args.out) else 1
    except KeyboardInterrupt:
        return 130
