"""What a run tells its user: a progress bar per epoch, metrics per epoch in CSV and JSON, a PNG of the
curves. Only rank 0 reports; ``quiet`` keeps the bar and the per-epoch lines off (the final line stays)."""
from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import time

FIELDS = ("epoch", "step", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
          "images_per_s", "seconds", "elapsed")


def check_folder(path: str, flag: str) -> None:
    """Make ``path`` a folder and write a file in it, before any work whose results would have nowhere to go;
    a ValueError naming ``flag`` when that fails (it, or a folder it would go in, is a file; no permission; a
    read-only file system)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{flag}: {path} cannot be a folder: {probe} is a file")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(f"{flag}: cannot write into {path}: {error.strerror or error}") from None


class Reporter:
    def __init__(self, out: str | None, enabled: bool, quiet: bool):
        self.out, self.enabled, self.quiet = out, enabled, quiet

    def log(self, message: str) -> None:
        if self.enabled and not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def notice(self, message: str) -> None:
        """Printed to stderr even when quiet: resuming, falling back past a bad checkpoint."""
        if self.enabled:
            print(message, file=sys.stderr, flush=True)

    def always(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def bar(self, total: int, initial: int, description: str):
        return _Bar(total, initial, description, self.enabled and not self.quiet)

    def write_metrics(self, history: list[dict], plot: bool = False) -> None:
        """CSV and JSON (each epoch); the PNG with ``plot`` (at the end: matplotlib costs ~0.5 s a figure)."""
        if not (self.enabled and self.out):
            return
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, "metrics.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            for row in history:
                writer.writerow({k: row.get(k) for k in FIELDS})
        with open(os.path.join(self.out, "metrics.json"), "w") as f:
            json.dump(history, f, indent=1)
        if plot and history:
            plot_curves(history, os.path.join(self.out, "curves.png"))


def plot_curves(history: list[dict], path: str) -> bool:
    """Loss and top-1 per epoch, train and val, as a PNG; False (and nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, style in (("train", "-"), ("val", "--")):
        ax_loss.plot(epochs, [row[f"{key}_loss"] for row in history], style, marker=".", label=key)
        ax_acc.plot(epochs, [100 * row[f"{key}_top1"] for row in history], style, marker=".", label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 %", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


class _Bar:
    """tqdm when installed; otherwise nothing (the per-epoch line still prints)."""

    def __init__(self, total: int, initial: int, description: str, enabled: bool):
        self.bar, self.start, self.images = None, time.perf_counter(), 0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, desc=description, leave=False, dynamic_ncols=True,
                                file=sys.stderr)
            except ImportError:
                pass

    def update(self, images: int, loss: float, top1: float, lr: float) -> None:
        self.images += images
        if self.bar is not None:
            rate = self.images / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{100 * top1:.2f}%", img_s=f"{rate:.0f}", lr=f"{lr:.2g}",
                                 refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
