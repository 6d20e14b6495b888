"""Training: what our loop costs, and what our layers buy in a training step.

1. Loop overhead. LeNet-5 on mnist5k, one process: the wall time per epoch of ``classicnets_ext.train`` (train
   steps, the validation pass, the checkpoint, the metrics files and PNG) against a minimal hand-written
   PyTorch loop over the same model, optimizer and data (the training images mean-subtracted, normalised and
   centre-cropped once, up front, then shuffled batches of forward / cross-entropy / backward / SGD step, and
   the same validation pass). Our loop runs ``--no-augment`` for the like-for-like ratio (target <= 1.15) and
   with its default augmentation (per-sample seeded crops) for information. Per-epoch times are the medians of
   epochs 2..N (epoch 1 pays for warm-up).
2. Training steps of ``alexnet_paper`` and ``googlenet_paper`` (forward, cross-entropy incl. GoogLeNet's aux
   heads, backward, SGD step): images/s on our backend (``auto``: our LRN / max-pool / fused pool->LRN /
   Inception kernels) and on the ``reference`` backend (stock torch layers), side by side.

``python bench/bench_train.py [--epochs 4] [--batch 64] [--step-batch 8] [--device cpu] [--skip-steps]
[--out results/bench_train]``; prints two tables and writes ``bench_train.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import classicnets_ext  # noqa: E402
from classicnets_ext.models import get_model  # noqa: E402
from classicnets_ext.train import TrainConfig, open_data, train  # noqa: E402
from classicnets_ext.train.evaluate import logits_of  # noqa: E402
from classicnets_ext.train.transforms import Pipeline, dataset_statistics  # noqa: E402


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def ours(epochs: int, batch: int, augment: bool) -> list[float]:
    """Per-epoch times of our loop (differences of the epoch-end timestamps)."""
    with tempfile.TemporaryDirectory() as out:
        result = train(TrainConfig(model="lenet5", data="mnist5k", epochs=epochs, batch_size=batch, augment=augment,
                                   out=out, quiet=True))
    ends = [row["elapsed" if clock is time.perf_counter else "cpu_elapsed"] for row in result["history"]]
    return [b - a for a, b in zip(ends, ends[1:])]


def minimal(epochs: int, batch: int, lr=0.03, momentum=0.9, weight_decay=5e-4) -> list[float]:
    """The hand-written loop: tensors prepared once, then nothing but the training math and a val pass."""
    train_split, val_split = open_data("mnist5k", 1, 32)
    mean, std, _ = dataset_statistics(train_split, "channel")
    prep = Pipeline(mean, 32, 1, flip=False, std=std)
    x_train, y_train = prep.eval_batch(train_split, list(range(len(train_split))))
    x_val, y_val = prep.eval_batch(val_split, list(range(len(val_split))))
    torch.manual_seed(0)
    model = get_model("lenet5")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    times = []
    for epoch in range(epochs):
        start = clock()
        model.train()
        for idx in torch.randperm(len(x_train)).split(batch):
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(x_val.split(2 * batch),
                                                                                 y_val.split(2 * batch)))
        times.append(clock() - start)
    assert 0 <= correct <= len(y_val)
    return times[1:]


def step_rate(name: str, backend: str, batch: int, device: str, reps: int) -> float:
    """Training steps per second x batch, on ``backend``, median of ``reps`` steps after one warm-up."""
    torch.manual_seed(0)
    model = get_model(name, num_classes=1000).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    c, h, w = classicnets_ext.models.get_model_entry(name).input_size
    x = torch.randn(batch, c, h, w, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    times = []
    with classicnets_ext.use_backend(backend):
        for i in range(reps + 1):
            if device == "cuda":
                torch.cuda.synchronize()
            start = clock()
            out = model(x)
            loss = F.cross_entropy(logits_of(out), y)
            if hasattr(out, "logits"):
                loss = loss + 0.3 * sum(F.cross_entropy(a, y) for a in out[1:] if a is not None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(clock() - start)
    return batch / statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per loop (the first is warm-up)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--step-batch", type=int, default=8, help="batch of the alexnet/googlenet steps")
    parser.add_argument("--reps", type=int, default=3, help="timed steps per network and backend")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clock", choices=tuple(CLOCK), default="wall",
                        help="cpu: process CPU time, for a machine other jobs load (one thread: --threads 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--skip-steps", action="store_true", help="only the loop-overhead part")
    parser.add_argument("--out", default=os.path.join("results", "bench_train"))
    args = parser.parse_args(argv)
    global clock
    clock = CLOCK[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)

    results = {"threads": torch.get_num_threads(), "torch": torch.__version__, "device": args.device,
               "clock": args.clock}
    # Interleaved, so that a change of machine load hits both loops alike.
    runs = {"ours --no-augment": [], "ours (augment)": [], "minimal loop": []}
    for _ in range(2):
        runs["minimal loop"] += minimal(args.epochs, args.batch)
        runs["ours --no-augment"] += ours(args.epochs, args.batch, augment=False)
        runs["ours (augment)"] += ours(args.epochs, args.batch, augment=True)
    base = statistics.median(runs["minimal loop"])
    print(f"\nLeNet-5 on mnist5k, batch {args.batch}, {torch.get_num_threads()} thread(s): {args.clock} seconds per epoch "
          f"(median of {len(runs['minimal loop'])})")
    print(f"{'loop':<20} {'s/epoch':>9} {'x minimal':>10}")
    results["loop"] = {}
    for name, times in runs.items():
        median = statistics.median(times)
        results["loop"][name] = {"seconds_per_epoch": median, "ratio": median / base, "samples": times}
        print(f"{name:<20} {median:9.3f} {median / base:10.3f}")

    if not args.skip_steps:
        print(f"\nTraining step (fwd + loss + bwd + SGD), batch {args.step_batch}, {args.device}: images/s")
        print(f"{'network':<18} {'ours':>9} {'reference':>10} {'speed-up':>9}")
        results["steps"] = {}
        for name in ("alexnet_paper", "googlenet_paper"):
            rate = {b: step_rate(name, b, args.step_batch, args.device, args.reps) for b in ("auto", "reference")}
            results["steps"][name] = rate
            print(f"{name:<18} {rate['auto']:9.1f} {rate['reference']:10.1f} {rate['auto'] / rate['reference']:8.2f}x")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_train.json"), "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
