"""Run the benchmarks: every op's script, on the CPU and (when there is one) the GPU.

    python bench/run.py [--device cpu|cuda|all] [--ops lrn,maxpool,pool_lrn,inception,linear,models] [--quick] [--batch N]
                        [--dtypes LIST] [--threads N] [--out DIR]

Per op and device: a progress bar, then results/<op>-<device>-<timestamp>/<op>-<device>.{csv,json,png}
(or DIR/<op>-<device>.*) and a table on stdout. Exit status 1 when any provider failed its correctness
guard or raised, or was skipped because nothing could check it (a bf16/fp16 case that eager lacks is checked
against eager in float32 instead: n/a, not a failure); 2 for a bad flag, before any work; 130
when stopped by Ctrl-C or SIGTERM (e.g. a time limit), after saving and showing the cases done.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import bench_inception  # noqa: E402
import bench_linear  # noqa: E402
import bench_lrn  # noqa: E402
import bench_maxpool  # noqa: E402
import bench_models  # noqa: E402
import bench_pool_lrn  # noqa: E402
import harness  # noqa: E402

# One script per op, and the networks (bench_models: its own runner, images/s instead of GB/s).
OPS = {"lrn": bench_lrn, "maxpool": bench_maxpool, "pool_lrn": bench_pool_lrn, "inception": bench_inception,
       "linear": bench_linear, "models": bench_models}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="classicnets_ext benchmarks")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="default: all = the CPU, plus CUDA when available")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, from: {', '.join(OPS)}")
    parser.add_argument("--quick", action="store_true", help="fewer cases, shorter measurements")
    parser.add_argument("--batch", type=harness.at_least(1),
                        help="batch size for every case (default: per op and device)")
    parser.add_argument("--dtypes", help="comma-separated, e.g. bfloat16,float32, for the op benches (default per "
                        "op and device: fp32 on the CPU, fp16 or fp16+bf16 on CUDA; models: their own)")
    parser.add_argument("--out", help="one output directory for everything (default: results/<op>-<device>-<time>)")
    harness.add_threads_argument(parser)
    args = parser.parse_args(argv)
    harness.set_threads(args.threads)
    dtypes = harness.parse_dtypes(parser, args.dtypes) if args.dtypes is not None else None

    ops = harness.choose(parser, "--ops", args.ops, tuple(OPS))
    harness.check_device(parser, args.device)
    out = harness.writable_dir(parser, "--out", args.out)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]

    harness.stop_on_sigterm()
    ok, start = True, time.perf_counter()
    try:
        for device in devices:
            for op in ops:
                if device not in getattr(OPS[op], "DEVICES", (device,)):
                    continue  # a CPU-only kernel (linear)
                if op == "models":
                    ok &= bench_models.run_models(device, bench_models.DEFAULT_MODELS, args.quick, args.batch, out)
                else:
                    if dtypes is not None:
                        OPS[op].DTYPES = {**OPS[op].DTYPES, device: dtypes}
                    ok &= harness.run_op(OPS[op], device, args.quick, args.batch, out)
                print()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: run_op has saved and shown what it did; run nothing more
        print(f"\ninterrupted; total wall time {time.perf_counter() - start:.0f} s")
        return 130
    print(f"total wall time {time.perf_counter() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
