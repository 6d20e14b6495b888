"""``python -m classicnets_ext export MODEL [--format onnx|pt2] --out FILE``: a registry model to a deployable
file. The format defaults to the one ``FILE``'s suffix names (``.onnx``, ``.pt2``); a suffix that names the
other format is an error.

* ``onnx``: ``torch.onnx.export(..., dynamo=True)``, then ``onnx.checker`` and one onnxruntime run against
  eager PyTorch (the max difference is printed);
* ``pt2``: ``torch.export.export`` + ``torch.export.save``, then loaded back and run against eager. Another
  process loads it with ``import classicnets_ext`` (which registers the ops) and ``torch.export.load``.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import time

COMMANDS = ("export",)
FORMATS = ("onnx", "pt2")


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX or a torch.export .pt2 archive, and check it",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a registered model name (list_models())")
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


def run(args) -> int:
    import torch

    from .. import models
    from . import _api

    def fail(message: str) -> int:
        print(f"export: {message}", file=sys.stderr)
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
    try:
        size = _api.parse_input_size(args.input) if args.input else models.get_model_entry(args.model).input_size
        kwargs = _model_kwargs(args.model_arg)
        model = models.get_model(args.model, weights=args.weights, **kwargs).eval()
    except (ValueError, TypeError, RuntimeError, OSError) as e:  # a bad name, --model-arg value, weights file
        return fail(_first_line(e))
    torch.manual_seed(0)
    batches = (1, 3) if args.dynamic_batch else (1,)
    inputs = [torch.randn(b, *size) for b in batches]
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
