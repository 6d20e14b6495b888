"""Whole networks of the model zoo: ours against the same model on stock PyTorch layers, eager and compiled.

Per model, at its natural input size (227 for alexnet_paper, 32 for lenet5, 224 otherwise): inference (eval,
``no_grad``) and a training step (train mode, forward + cross-entropy + backward) in images/s; opt-in,
autocast-inference (fp32 model and input in eval mode, a ``torch.autocast`` region per call, bf16 for an fp32
case). Providers share one set of weights per case (each its own copy of the model):

* ``ext-cpu`` / ``ext-cuda`` / ``ext-triton``: the model on that backend of ours (our LRN, max-pool, fused
  pool->LRN, Inception and FC kernels; everything else is torch's), as the zoo builds it: channels-last weights;
* ``eager``: the same model on the ``reference`` backend (stock torch layers), with the weights' layout of stock
  PyTorch: NCHW (as torchvision builds them) for an NCHW input, channels-last for a channels-last one;
* ``compile``: ``torch.compile`` of that model (Inductor, which picks its own layout; max-autotune on the GPU).

Dropout is set to p=0 so every provider computes the same function (the guard compares their outputs); its
cost is negligible next to the convolutions. ResNets' residual branches start scaled down (``_condition``), or
the deepest are too ill-conditioned at initialisation for that comparison. CPU: fp32, NCHW, batch 8 and 1.
GPU: fp16 and bf16, channels_last, batch 64, 1 and 256. The table gives images/s and ours' speed-ups over eager
/ compile.

Standalone: ``python bench/bench_models.py [--device cpu|cuda] [--models alexnet_paper,...|all] [--quick]
[--modes inference,train-step] [--batch N] [--dtypes ...] [--threads N] [--out DIR]``. ``--quick`` keeps the
first batch and shortens the measurements; it also keeps only the first model, unless ``--models`` names them
(gpu_suite.sh: both target networks' inference in one short step).
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import classicnets_ext
from classicnets_ext import models
from classicnets_ext.models.resnet import BasicBlock, Bottleneck

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Net  # noqa: E402

OP = "models"

# The default set: issue 8's speed targets, the networks whose time our kernels touch most (LRN, overlapping
# pools, fused pool->LRN, Inception). Each case compiles the whole network for the ``compile`` provider (about a
# minute per case on 2 CPU cores, several for GoogLeNet's training step), so more networks are opt-in:
# ``--models zfnet,googlenet,alexnet,resnet50`` or ``--models all``.
DEFAULT_MODELS = ("alexnet_paper", "googlenet_paper")
MODES = ("inference", "train-step")
# Opt-in (``--modes``): fp32 model and input in eval mode, each call in its own ``torch.autocast`` region under
# ``no_grad`` -- the inference a user of mixed precision writes -- in the case's dtype (bf16 for an fp32 case).
AUTOCAST = "autocast-inference"
MODE_CHOICES = MODES + (AUTOCAST,)
DEFAULT_BATCH = {"cpu": (8, 1), "cuda": (64, 1, 256)}
DTYPES = {"cpu": (torch.float32,), "cuda": (torch.float16, torch.bfloat16)}
LAYOUT = {"cpu": "nchw", "cuda": "channels_last"}
NETS: list[Net] = []


def set_models(names, device: str) -> None:
    """NETS for ``names`` (registry names) on ``device``: (C, H, W) from the registry, the device's layout."""
    NETS[:] = [Net(n, models.get_model_entry(n).input_size, {"model": n}, (LAYOUT[device],)) for n in names]


_base_models: dict[str, torch.nn.Module] = {}


def _base(name: str) -> torch.nn.Module:
    """One set of weights per network (every provider copies it), dropout off, on the CPU in fp32, residual
    branches scaled down (_condition)."""
    if name not in _base_models:
        torch.manual_seed(0)
        model = models.get_model(name)
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        _condition(model)
        _base_models[name] = model
    return _base_models[name]


def _condition(model: torch.nn.Module) -> None:
    """Each residual branch's last BatchNorm weight set to 1 / sqrt(number of blocks), so that the blocks'
    sum stays of order 1 however deep the network (Fixup's and SkipInit's argument; torchvision's
    ``zero_init_residual`` is the limit 0, which would leave the branches' convolutions unchecked).

    At torchvision's initialisation (weights 1, eval statistics mean 0, var 1) every block adds a branch of
    about the size of its input, so ResNet-152's eval logits reach ~1e8, and correct implementations that
    round differently -- eager on NCHW weights, ours on channels-last ones with folded BatchNorm,
    torch.compile -- disagree past the guard on a few logits; in training, ResNet-101's first-layer gradient
    differed by 9% of its norm between eager and ours (compile's alike). Scaled: 3e-7 and 1%. The work per
    image is the same: only values change."""
    ends = [m.bn3 if isinstance(m, Bottleneck) else m.bn2 for m in model.modules()
            if isinstance(m, (BasicBlock, Bottleneck))]
    for bn in ends:
        torch.nn.init.constant_(bn.weight, len(ends) ** -0.5)


def _instance(name: str, x: torch.Tensor, training: bool) -> torch.nn.Module:
    """Ours: the model as the zoo builds it (channels-last weights), whatever the input's layout."""
    return copy.deepcopy(_base(name)).to(device=x.device, dtype=x.dtype).train(training)


def _stock_instance(name: str, x: torch.Tensor, training: bool) -> torch.nn.Module:
    """The baselines: the model in the layout a user of stock PyTorch has -- NCHW weights as torchvision builds
    them for an NCHW input, channels-last weights for a channels-last one. (Inductor picks its own layout.)"""
    fmt = torch.contiguous_format if x.is_contiguous() else torch.channels_last
    return _instance(name, x, training).to(memory_format=fmt)


def _logits(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # GoogLeNetOutputs in train mode: the main head


def case(mode, shape, dtype, layout, params):
    name, n = params["model"], shape[0]
    # Under autocast the model and input are fp32 and the case's dtype is the one autocast computes in.
    autocast = mode == AUTOCAST
    data_dtype, dtype = harness.autocast_dtypes(dtype) if autocast else (dtype, dtype)

    def make_inputs(device):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g).to(device=device, dtype=data_dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        classes = 10 if name == "lenet5" else 1000
        return {"x": x, "target": torch.randint(0, classes, (n,), generator=g).to(device)}

    def bind(make_model, inputs):
        x, target = inputs["x"], inputs["target"]
        model = make_model(name, x, mode == "train-step")
        if mode == "inference":
            def run():
                with torch.no_grad():
                    return (_logits(model(x)),)
            return run
        if autocast:
            def run():
                with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype):
                    return (_logits(model(x)),)
            return run
        first = next(model.parameters())

        def run():
            for p in model.parameters():
                p.grad = None
            out = model(x)
            outs = out if isinstance(out, tuple) else (out,)
            # GoogLeNet's aux heads weigh 0.3 in the loss, as in the paper.
            loss = sum((1.0 if i == 0 else 0.3) * F.cross_entropy(o.float(), target) for i, o in enumerate(outs))
            loss.backward()
            return loss.detach(), first.grad  # the first layer's gradient went through the whole backward
        return run

    # The row's "op" is the network's name (the CSV's first column, the plot's title). nbytes: whole networks
    # are not bandwidth-bound; the rows carry images/s instead (see run_models).
    return harness.Case(name, mode, shape, dtype, layout, 0, make_inputs, bind, params=dict(params))


def providers(device: str) -> list[harness.Provider]:
    mode = harness.gpu_compile_mode() if device == "cuda" else None

    def compiled():
        cache = {}

        def make(name, x, training):
            key = (name, x.dtype, training)
            if key not in cache:
                cache[key] = torch.compile(_stock_instance(name, x, training), dynamic=False, mode=mode)
            return cache[key]
        return make

    # ours() wraps a callable for each of our backends; here the callable builds that provider's model.
    return harness.ours(device, _instance, "max_pool2d") + [
        harness.Provider("eager", lambda: _stock_instance, backend="reference"),
        harness.Provider("compile", compiled, backend="reference"),
    ]


def table(rows: list[dict], meta: dict) -> str:
    """One line per case: images/s per provider, and ours' speed-ups over eager / compile."""
    provs = list(dict.fromkeys(r["provider"] for r in rows))
    by = {(r["params"]["model"], r["mode"], r["shape"], r["dtype"], r["provider"]): r for r in rows}
    keys = list(dict.fromkeys((r["params"]["model"], r["mode"], r["shape"], r["dtype"]) for r in rows))

    def cell(r):
        if r is None:
            return "-"
        if r.get("error"):
            return "skipped" if r["error"].startswith(harness.SKIPPED) else "FAILED"
        text = f"{r['images_per_s']:.4g}"
        if r["provider"] not in harness.BASELINES:
            text += " " + "/".join(f"{r[f'speedup_vs_{b}']:.2f}x" if r.get(f"speedup_vs_{b}") else "-"
                                   for b in harness.BASELINES)
        return text

    cols = ["model", "mode", "shape", "dtype"] + [p + (" (img/s x-eager/x-compile)" if p not in harness.BASELINES
                                                       else " (img/s)") for p in provs]
    body = [list(k) + [cell(by.get((*k, p))) for p in provs] for k in keys]
    widths = [max(len(str(c)) for c in col) for col in zip(cols, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    title = (f"models on {meta['device_name']} ({meta['device']}, {meta['threads']} threads); images/s from the "
             f"median time per call; speed-ups: the median of paired per-round ratios on the CPU, the ratio of "
             f"medians on CUDA")
    return "\n".join([title, line(cols), line("-" * w for w in widths)] + [line(b) for b in body])


def _add_images_per_s(csv_path: Path, rows: list[dict]) -> None:
    """The harness's CSV has the op benches' columns; add images/s after median_ms (rows in the same order)."""
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, written = list(reader.fieldnames or []), list(reader)
    if "images_per_s" in fields or len(written) != len(rows):
        return
    fields.insert(fields.index("median_ms"), "images_per_s")
    for line, r in zip(written, rows):
        line["images_per_s"] = f"{r['images_per_s']:.5g}" if r.get("images_per_s") else ""
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(written)


def run_models(device: str, names=DEFAULT_MODELS, quick: bool = False, batch: int | None = None,
               out_dir: Path | None = None, modes=MODES, every_model: bool = False) -> bool:
    """Bench ``names`` on ``device`` in ``modes``; CSV/JSON/PNG in ``out_dir`` and the table on stdout, as
    ``run_op``. ``quick`` benches the first model only, unless ``every_model``. True when every provider passed
    its correctness guard."""
    global MODES
    set_models(names, device)
    nets = NETS[:]
    # The harness's quick cases take its first net: one net at a time then keeps them all.
    groups = [[net] for net in nets] if quick and every_model else [nets]
    meta = harness.metadata(device)
    out_dir = Path(out_dir) if out_dir else harness.default_out_dir(OP, device)
    stem = f"{OP}-{device}"
    rows: list[dict] = []

    def save(rows, complete=False):
        for r in rows:
            if r.get("median_ms"):
                r["images_per_s"] = int(r["shape"].split("x")[0]) / r["median_ms"] * 1e3
                r["gbps"] = r["pct_copy_bw"] = None  # not bandwidth-bound: no GB/s for whole networks
        meta["complete"] = complete
        paths = harness.write_results(rows, meta, out_dir, stem)
        _add_images_per_s(paths[0], rows)
        return paths

    interrupted = False
    t0 = time.perf_counter()
    saved_modes, MODES = MODES, tuple(modes)  # (the harness reads this module's MODES and NETS)
    try:
        for group in groups:
            NETS[:] = group
            harness.bench(sys.modules[__name__], device, quick, batch, on_case=save, rows=rows)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        MODES, NETS[:] = saved_modes, nets
    paths = save(rows, complete=not interrupted)
    if rows:
        # One plot per network: a figure of every network's cases side by side would be unreadably wide.
        for name in dict.fromkeys(r["params"]["model"] for r in rows):
            mine = [r for r in rows if r["params"]["model"] == name]
            paths.append(harness.plot(mine, meta, out_dir / f"{stem}-{name}.png"))
        print()
        print(table(rows, meta))
    print(f"results: {', '.join(str(p) for p in paths)} ({time.perf_counter() - t0:.0f} s)")
    ok = harness.report_failures(rows)
    if interrupted:
        raise KeyboardInterrupt
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--models",
                        help=f"comma-separated registry names, or 'all' (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--quick", action="store_true",
                        help="first batch, shorter measurements; the first model unless --models names them")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODE_CHOICES)}")
    parser.add_argument("--batch", type=harness.at_least(1), help=f"batch size (default per device: {DEFAULT_BATCH})")
    parser.add_argument("--dtypes", help="comma-separated torch dtypes (default: cpu float32, cuda float16,bfloat16)")
    parser.add_argument("--out", help="output directory (default results/models-<device>-<timestamp>)")
    harness.add_threads_argument(parser)
    args = parser.parse_args(argv)
    harness.check_device(parser, args.device)
    harness.set_threads(args.threads)
    known = models.list_models()
    named = args.models is not None
    text = args.models if named else ",".join(DEFAULT_MODELS)
    names = known if text.strip() == "all" else harness.choose(parser, "--models", text, known)
    modes = harness.choose(parser, "--modes", args.modes, MODE_CHOICES)
    if args.dtypes is not None:
        DTYPES[args.device] = harness.parse_dtypes(parser, args.dtypes)
    out = harness.writable_dir(parser, "--out", args.out)
    harness.stop_on_sigterm()
    try:
        return 0 if run_models(args.device, names, args.quick, args.batch, out, modes, every_model=named) else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
