"""Command line: ``python -m classicnets_ext info`` (build and runtime facts), ``... bench [args]``, the
network analysis's ``summary`` / ``compare`` (``classicnets_ext.analysis.cli``), ``... export MODEL --format
onnx|pt2 --out FILE`` (``classicnets_ext.export.cli``) and ``train`` / ``evaluate`` / ``predict`` /
``visualize`` (``classicnets_ext.train.cli``)."""
from __future__ import annotations

import argparse
import os
import runpy
import sys

from .analysis import cli as analysis_cli
from .export import cli as export_cli


def info() -> str:
    import torch

    import classicnets_ext
    from classicnets_ext import _backend, _extension

    lines = [f"classicnets_ext {classicnets_ext.__version__}",
             f"torch            {torch.__version__} (CUDA {torch.version.cuda or 'none'})"]
    try:
        import triton
        lines.append(f"triton           {triton.__version__}" + (" (interpreter)" if _backend._TRITON_INTERPRET else ""))
    except ImportError:
        lines.append("triton           not installed")
    if torch.cuda.is_available():
        lines.append(f"GPU              {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})")
    else:
        lines.append("GPU              none visible")
    build = _extension.build_info()
    if build:
        compiled = "cpu" + (", cuda" if build["cuda"] else "")
        notes = [note for note, shown in (("512-bit ops at half width", build["cpu_capability"] == "avx512"
                                           and not build["cpu_avx512_full_width"]),
                                          ("+ AVX512-BF16 in bf16 linear", build["cpu_avx512_bf16"])) if shown]
        isa = build["cpu_capability"] + (f" ({'; '.join(notes)})" if notes else "")
        lines.append(f"compiled         {compiled}; CPU kernels use {isa}")
        if build["cuda"]:
            lines.append(f"CUDA archs       {build['cuda_archs'] or 'default'}")
    else:
        lines.append(f"compiled         _C failed to load: {_extension.LOAD_ERROR}")
    lines.append(f"backends         {', '.join(_backend.available_backends())} (current: {_backend.get_backend()})")
    for name in _backend.BACKENDS:
        why = _backend._why_unavailable(name)
        if why:
            lines.append(f"  {name:<9} unavailable: {why}")
    return "\n".join(lines)


def _quiet_when_the_reader_leaves(command) -> int:
    """``command()``'s exit status; a reader that leaves early (`... | head`) ends the command with status 1 and
    no BrokenPipeError traceback (Python's documented recipe: the rest of the output goes to devnull). Flushed
    in here, so that the last lines meet a closed pipe now, not at exit, where nothing could catch it."""
    try:
        status = command()
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _print_info() -> int:
    print(info())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m classicnets_ext")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, compiled backends, CUDA archs, available backends")
    sub.add_parser("bench", help="run bench/run.py of the source checkout (arguments are passed on)",
                   add_help=False)
    from .train import cli as train_cli  # argparse only: torch loads when a command runs

    analysis_cli.add_parsers(sub)
    export_cli.add_parsers(sub)
    train_cli.add_parsers(sub)
    args, rest = parser.parse_known_args(argv)
    for cli in (analysis_cli, export_cli, train_cli):
        if args.command in cli.COMMANDS:
            if rest:
                parser.error(f"unrecognized arguments: {' '.join(rest)}")
            return _quiet_when_the_reader_leaves(lambda: cli.run(args))
    if args.command == "info":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return _quiet_when_the_reader_leaves(_print_info)
    runner = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "run.py")
    if not os.path.exists(runner):
        print("the bench lives in the source checkout (bench/run.py); run it from there", file=sys.stderr)
        return 2
    sys.argv = [runner, *rest]
    runpy.run_path(runner, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
