"""Bench results: the run's metadata, the rows' fields, CSV/JSON files, the plot and the text table."""
from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

import classicnets_ext
from timing import cpu_flush_bytes

REPO = Path(__file__).resolve().parent.parent
BASELINES = ("eager", "compile")
# How a row's error starts when its provider was not run: the case had no eager output to check it against.
SKIPPED = "skipped: "
# How eager's row's error starts when eager lacks the case's dtype on the device (torch's CPU LRN has no bf16)
# and the others were checked against eager run in float32 instead: not a failure.
UNSUPPORTED = "unsupported: "


def cpu_capability() -> str:
    """The CPU kernels torch runs (eager; inductor reads ATEN_CPU_CAPABILITY the same way), in the variable's
    spelling: avx512, avx2, default, ... Asked of torch, not read from the variable, which torch ignores when it
    does not accept the value (e.g. "AVX2": torch then runs its own choice, AVX-512 where the CPU has it)."""
    return torch.backends.cpu.get_cpu_capability().lower()


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
        # torch's (eager's, compile's) and our _C's, which picks its kernels by the same variable on its own.
        "cpu_capability": cpu_capability(),
        "ext_cpu_capability": info.get("cpu_capability"),
        "threads": torch.get_num_threads(),
        # What each CPU call is timed after: a flush of this many bytes (timing.cpu_flush_bytes).
        "cpu_flush_bytes": cpu_flush_bytes() if device == "cpu" else None,
        "git_commit": _git_commit(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# The metadata repeated in every CSV row, so CSVs from several machines can simply be concatenated.
CSV_META = ("device_name", "torch_version", "triton_version", "cuda_version", "ext_version", "cpu_capability",
            "ext_cpu_capability", "threads", "date")
ROW_FIELDS = ("op", "case", "mode", "shape", "layout", "dtype", "provider", "median_ms", "q20_ms", "q80_ms", "reps",
              "gbps", "pct_copy_bw", "speedup_vs_eager", "speedup_vs_compile", "first_call_s", "error")


def _speedup_bases(rows: list[dict]) -> list[str]:
    """The baselines the rows carry a speed-up against (``speedup_vs_<base>`` keys), in their order."""
    return [k.removeprefix("speedup_vs_") for k in (rows[0] if rows else {}) if k.startswith("speedup_vs_")] \
        or list(BASELINES)


def _row_fields(rows: list[dict]) -> tuple[str, ...]:
    """ROW_FIELDS, with one speed-up column per baseline of the op (eager and compile unless it names more)."""
    i, j = ROW_FIELDS.index("speedup_vs_eager"), ROW_FIELDS.index("speedup_vs_compile") + 1
    return ROW_FIELDS[:i] + tuple(f"speedup_vs_{b}" for b in _speedup_bases(rows)) + ROW_FIELDS[j:]


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
    return (r["mode"], r["case"], r["shape"], r["layout"], r["dtype"])


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
        labels = [f"{case}\n{shape}\n{layout} {dtype}" for _, case, shape, layout, dtype in keys]
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
            if r["error"].startswith(UNSUPPORTED):
                return "n/a"
            return "skipped" if r["error"].startswith(SKIPPED) else "FAILED"
        text = f"{_fmt_ms(r['median_ms'])}ms"
        if p in ours:
            sp = [f"{r[f'speedup_vs_{b}']:.2f}x" if r.get(f"speedup_vs_{b}") else "-" for b in bases]
            text += " " + "/".join(sp)
        return f"{text} {r['pct_copy_bw']:.0f}%"

    head = ("mode", "case", "shape", "layout", "dtype")
    body = [list(k) + [cell(by.get((k, p)), p) for p in provs] for k in keys]
    speedups = "/".join(f"x-{b.removeprefix('ext-')}" for b in bases)
    cols = list(head) + [p + (f" (ms {speedups} %BW)" if p in ours else " (ms %BW)") for p in provs]
    widths = [max(len(str(c)) for c in col) for col in zip(cols, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    bw = ", ".join(f"{d}: {v:.1f} GB/s" for d, v in meta["copy_gbps"].items())
    title = (f"{rows[0]['op']} on {meta['device_name']} ({meta['device']}, {meta['threads']} threads); "
             f"best copy bandwidth {bw}; times: median of reps, cold cache"
             + ("; speed-ups: median of the ratios of interleaved rounds" if meta["device"] == "cpu" else ""))
    return "\n".join([title, line(cols), line("-" * w for w in widths)] + [line(b) for b in body])


def _show(path: Path) -> str:
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel
