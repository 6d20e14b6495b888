"""``python -m classicnets_ext summary MODEL`` and ``... compare MODEL [MODEL ...]``.

``__main__`` calls :func:`add_parsers` with its subparsers and hands the parsed arguments of these
commands to :func:`run`. Bad input -- an unknown model, a malformed ``--input`` or ``--batch``, an input
the model cannot take -- is one line on stderr and exit status 2, as argparse's own errors.
"""
from __future__ import annotations

import os
import re
import sys

COMMANDS = ("summary", "compare")
INT64_MAX = 2 ** 63 - 1  # the largest size a tensor dimension holds


def add_parsers(sub) -> None:
    summary = sub.add_parser(
        "summary", help="per-layer output shapes, parameters, MACs, activations, receptive fields of a model",
        description="Summarise a registry model layer by layer, as built for inference (eval mode, no aux heads).")
    summary.add_argument("model", metavar="MODEL", help="a registry name (classicnets_ext.models.list_models())")
    summary.add_argument("--input", metavar="CxHxW",
                         help="the input size of one image (default: the model's natural size, e.g. 3x227x227 for "
                              "alexnet_paper, 1x32x32 for lenet5)")
    summary.add_argument("--batch", metavar="N", default="1", help="the batch size (default 1)")
    summary.add_argument("--format", choices=("table", "json", "csv"), default="table")
    summary.add_argument("--plot", metavar="FILE.png", help="also draw per-layer parameters and MACs (matplotlib)")
    compare = sub.add_parser("compare", help="parameters, MACs, depth and activation memory of models side by side",
                             description="Compare registry models at batch 1, each at its natural input size.")
    compare.add_argument("models", nargs="+", metavar="MODEL", help="registry names")
    compare.add_argument("--format", choices=("table", "json"), default="table")


class _UsageError(Exception):
    """A one-line error about an argument: printed as ``<prog>: error: <message>``, exit status 2."""


def _model_names(names: list[str]) -> list[str]:
    from .. import models
    choices = models.list_models()
    for name in names:
        if name.lower() not in choices:  # any case, as get_model takes them
            raise _UsageError(f"argument MODEL: unknown model {name!r} (choose from {', '.join(choices)})")
    return [name.lower() for name in names]


def _input_size(text: str | None, batch: str, natural: tuple[int, ...]) -> tuple[int, ...]:
    if not re.fullmatch(r"[1-9][0-9]*", batch.strip()):
        raise _UsageError(f"argument --batch: expected a positive integer, got {batch!r}")
    if int(batch) > INT64_MAX:  # (torch.zeros would fail with a TypeError about unpacking a long)
        raise _UsageError(f"argument --batch: {batch.strip()} is more than a tensor dimension holds (2^63 - 1)")
    if text is None:
        return (int(batch), *natural)
    if not re.fullmatch(r"[1-9][0-9]*(x[1-9][0-9]*){2}", text.strip().lower()):
        raise _UsageError(f"argument --input: expected CxHxW with positive integers (e.g. "
                          f"{'x'.join(map(str, natural))}), got {text!r}")
    size = tuple(int(v) for v in text.strip().lower().split("x"))
    if max(size) > INT64_MAX:
        raise _UsageError(f"argument --input: {text.strip()!r} has a side of more than a tensor dimension holds "
                          f"(2^63 - 1)")
    return (int(batch), *size)


def _runs(model, input_size) -> bool:
    from .summary import summary
    try:
        summary(model, input_size)
    except (RuntimeError, ValueError, OverflowError):
        return False
    return True


def _run_summary(args) -> int:
    from . import render
    from .summary import build_for_inference, summary

    (name,) = _model_names([args.model])
    if args.plot is not None:  # (an empty name too: it is an error, not "no plot")
        _check_plot_path(args.plot)
    model, natural = build_for_inference(name)
    input_size = _input_size(args.input, args.batch, natural)
    # An input the model cannot take (too small, too large, wrong channels) is --input's error, or --batch's
    # when one image of that size runs.
    try:
        result = summary(model, input_size)
    except (RuntimeError, ValueError, OverflowError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if input_size[0] > 1 and _runs(model, (1, *input_size[1:])):
            raise _UsageError(f"argument --batch: {name} runs on one {render.shape(input_size[1:])} input but not "
                              f"on a batch of {input_size[0]}: {first}") from None
        raise _UsageError(f"argument --input: {name} cannot run on {render.shape(input_size)}: {first}") from None
    if args.plot is not None:
        # Before the output: a reader that leaves early (`| head`) ends the printing with a BrokenPipeError,
        # and the plot must not depend on how much of the table was read.
        try:
            render.plot(result, name, args.plot)
        except OSError as e:  # not writable, ...: found only when matplotlib writes
            raise _UsageError(f"argument --plot: cannot write {args.plot!r}: {e.strerror or e}") from None
        except RuntimeError as e:  # a backend's missing tool: .pgf wants the TeX program of pgf.texsystem
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise _UsageError(f"argument --plot: cannot write {args.plot!r}: {first}") from None
    if args.format == "json":
        print(render.summary_json(result))
    elif args.format == "csv":
        sys.stdout.write(render.summary_csv(result))
    else:
        render.print_summary_table(result, name)
    return 0


def _check_plot_path(path: str) -> None:
    """Before any work: a name, whose folder exists and whose suffix is a format matplotlib writes."""
    if not path.strip():
        raise _UsageError(f"argument --plot: expected a file name such as model.png, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise _UsageError(f"argument --plot: folder {folder!r} does not exist")
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise _UsageError("argument --plot: needs matplotlib, the optional extra 'plot': "
                          "pip install 'classicnets_ext[plot]' (or pip install matplotlib)") from None

    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if os.path.splitext(path)[1].lower().lstrip(".") not in formats:
        raise _UsageError(f"argument --plot: cannot tell the image format of {path!r}: end it in one of "
                          f"{', '.join('.' + f for f in formats)}")


def _run_compare(args) -> int:
    from . import render
    from .summary import compare

    rows = compare(_model_names(args.models))
    if args.format == "json":
        print(render.compare_json(rows))
    else:
        render.print_compare_table(rows)
    return 0


def run(args) -> int:
    """Run the parsed ``summary`` / ``compare`` command; returns the exit status."""
    try:
        return _run_summary(args) if args.command == "summary" else _run_compare(args)
    except _UsageError as e:
        print(f"python -m classicnets_ext {args.command}: error: {e}", file=sys.stderr)
        return 2
