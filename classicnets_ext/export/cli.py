"""``python -m classicnets_ext export MODEL [--format onnx|pt2] --out FILE``: a registry model to a deployable
file. The format defaults to the one ``FILE``'s suffix names (``.onnx``, ``.pt2``); a suffix that names the
other format is an error.

* ``onnx``: ``torch.onnx.export(..., dynamo=True)``, then ``onnx.checker`` and one onnxruntime run against
  eager PyTorch (the max difference is printed);
* ``pt2``: ``torch.export.export`` + ``torch.export.save``, then loaded back and run against eager. Another
  process loads it with ``import classicnets_ext`` (which registers the ops) and ``torch.export.load``.

Bad input -- an unknown model, a malformed or too large ``--input``, a ``--model-arg`` the builder rejects, a
``--weights`` file that does not fit -- is one line naming the argument, ``python -m classicnets_ext export:
error: argument ...``, and exit status 2, as argparse's own errors and the other commands'.
"""
from __future__ import annotations

import argparse
import ast
import math
import os
import sys
import time
import warnings

COMMANDS = ("export",)
FORMATS = ("onnx", "pt2")
INT64_MAX = 2 ** 63 - 1  # the largest size a tensor dimension holds


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX or a torch.export .pt2 archive, and check it",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="a registered model name (list_models())")
    p.add_argument("--format", choices=FORMATS, help="default: from the suffix of --out")
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument("--weights", help="a state_dict file (torch.save) to load, torchvision's included")
    p.add_argument("--input", help="per-sample input size C x H x W, e.g. 3x227x227 (default: the model's)")
    p.add_argument("--dynamic-batch", action="store_true", help="a dynamic batch dimension (default: batch 1)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument of the model builder, e.g. order=paper or groups=1 (repeatable)")


def _model_kwargs(items: list[str]) -> dict:
    kwargs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"argument --model-arg: expected KEY=VALUE, got {item!r}")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value  # a bare string: order=paper
    return kwargs


def _file_size(path: str) -> int:
    """The file and, for an ONNX model with external weights, its data file."""
    data = path + ".data"
    return os.path.getsize(path) + (os.path.getsize(data) if os.path.exists(data) else 0)


def _difference(got, expected) -> str:
    if expected.numel() == 0:  # a model with no outputs (num_classes=0): nothing to differ
        return "max |difference| 0 (an empty output)"
    diff = (got.float() - expected.float()).abs().max().item()
    scale = expected.float().abs().max().item()
    return f"max |difference| {diff:.3g} (relative to max |output| {scale:.3g}: {diff / scale if scale else 0.0:.3g})"


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _memory_bytes() -> int | None:
    """This machine's physical memory; None where the OS does not say (sysconf is POSIX)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _build_error(name: str, kwargs: dict, weights, error: Exception) -> str:
    """What a failed build (``error``) is about, as ``argument ARG: reason``: the weights file when the model
    builds without it (on the meta device: nothing allocated), else the builder's arguments (and why they fail
    without the weights)."""
    import torch

    from .. import models

    if weights is not None:
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (the failed build has given its warnings)
                models.get_model(name, **kwargs)
        except Exception as e:  # the arguments fail without the weights too
            error = e
        else:
            return f"argument --weights: {_first_line(error)}"
    return f"argument --model-arg: {_first_line(error)}"


def run(args) -> int:
    import torch

    from .. import models
    from . import _api

    def fail(message: str) -> int:  # as argparse's errors and the other commands' (summary, compare)
        print(f"python -m classicnets_ext export: error: {message}", file=sys.stderr)
        return 2

    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        return fail(f"argument --out: folder {folder!r} does not exist")
    suffix = os.path.splitext(args.out)[1].lower().lstrip(".")
    if args.format is None:
        if suffix not in FORMATS:
            return fail(f"argument --format: needed when --out does not end in {' or '.join('.' + f for f in FORMATS)}")
        args.format = suffix
    elif suffix in FORMATS and suffix != args.format:
        return fail(f"argument --out: {args.out!r} ends in .{suffix} but --format is {args.format}")
    choices = models.list_models()
    if args.model.lower() not in choices:  # any case, as get_model takes them
        return fail(f"argument MODEL: unknown model {args.model!r} (choose from {', '.join(choices)})")
    batches = (1, 3) if args.dynamic_batch else (1,)
    try:
        size = _api.parse_input_size(args.input) if args.input else models.get_model_entry(args.model).input_size
        if max(size) > INT64_MAX:  # (torch.randn would fail with a TypeError about unpacking a long)
            raise ValueError(f"argument --input: {args.input.strip()!r} has a side of more than a tensor dimension "
                             f"holds (2^63 - 1)")
        kwargs = _model_kwargs(args.model_arg)
    except ValueError as e:  # (the messages name their argument)
        return fail(_first_line(e))
    # The inputs are float32, made before the model runs: one that cannot fit in memory is the user's error
    # (allocating it may not fail at once: the OS can hand out memory it does not have, until it is written).
    needed, memory = 4 * sum(batches) * math.prod(size), _memory_bytes()
    if memory is not None and needed > memory:
        return fail(f"argument --input: {'x'.join(map(str, size))} needs {needed / 2 ** 30:,.1f} GiB of float32 "
                    f"inputs, more than this machine's {memory / 2 ** 30:,.1f} GiB of memory")
    try:
        model = models.get_model(args.model, weights=args.weights, **kwargs).eval()
    except Exception as e:  # whatever a builder raises on a value it cannot take (TypeError, ValueError, ...)
        if not kwargs and args.weights is None:  # the registry's model as it is: a bug, not a usage error
            raise
        return fail(_build_error(args.model, kwargs, args.weights, e))
    torch.manual_seed(0)
    try:
        inputs = [torch.randn(b, *size) for b in batches]
    except (RuntimeError, MemoryError) as e:  # more than the allocator can give
        return fail(f"argument --input: {'x'.join(map(str, size))} inputs cannot be made: {_first_line(e)}")
    try:  # eager first: an input the model cannot take is the user's error, not the exporter's
        with torch.no_grad():
            expected = [model(xb) for xb in inputs]
    except (RuntimeError, ValueError) as e:
        return fail(f"argument --input: {args.model} cannot run on {'x'.join(map(str, size))}: {_first_line(e)}")
    x = inputs[0]
    start = time.perf_counter()
    try:
        if args.format == "onnx":
            _api.export_onnx(model, x, args.out, dynamic_batch=args.dynamic_batch)
        else:
            _api.export_pt2(model, x, args.out, dynamic_batch=args.dynamic_batch)
    except _api.UnsupportedExportError as e:
        return fail(str(e))
    except OSError as e:
        return fail(f"argument --out: cannot write {args.out!r}: {e.strerror or e}")
    seconds = time.perf_counter() - start
    print(f"wrote {args.out}: {args.model} {'x'.join(map(str, size))}, {_file_size(args.out) / 1e6:.1f} MB, "
          f"exported in {seconds:.1f} s")
    if args.format == "onnx":
        import onnx

        onnx.checker.check_model(args.out, full_check=True)
        print("onnx.checker: ok")
        session = _api.onnxruntime_session(args.out)
        for xb, ref in zip(inputs, expected):
            got = _api.run_onnxruntime(args.out, xb, session=session)
            print(f"onnxruntime vs eager, batch {xb.shape[0]}: {_difference(got, ref)}")
    else:
        program = torch.export.load(args.out)
        for xb, ref in zip(inputs, expected):
            with torch.no_grad():
                got = program.module()(xb)
            print(f"loaded .pt2 vs eager, batch {xb.shape[0]}: {_difference(got, ref)}")
    return 0
