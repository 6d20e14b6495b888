"""``python -m classicnets_ext train | evaluate | predict | visualize``: the parsers (``add_parsers``) and their
dispatch (``run``). Importing this module imports argparse only; torch and the rest load when a command runs.

Distributed: ``torchrun --nproc-per-node N -m classicnets_ext train ...`` (``--nnodes`` / ``--rdzv-endpoint``
for several machines); ``torchrun --max-restarts R ... train ... --resume`` restarts crashed workers from the
last checkpoint.
"""
from __future__ import annotations

import argparse
import sys

from . import flags

COMMANDS = ("train", "evaluate", "predict", "visualize")


def _setting(field: str):
    """The argparse type of TrainConfig's ``field``: flags.py's range, written once for the CLI and the API."""
    def parse(text: str):
        try:
            return flags.parse(field, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse


def _positive_int(flag: str):
    """A whole number >= 1 (the flags of evaluate, predict and visualize)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a whole number, not {text!r}") from None
        try:
            return flags.positive_int(flag, value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse


def add_parsers(sub) -> None:
    """Add the four commands to ``sub`` (an ``argparse`` subparsers object)."""
    p = sub.add_parser("train", help="train a model of the zoo (momentum SGD, LR/10 on plateau, augmentation)",
                       description="Train MODEL on DATA the classic way; torchrun for several processes.")
    p.add_argument("model", metavar="MODEL", help="a name from classicnets_ext.models.list_models()")
    p.add_argument("--data", required=True, help="mnist5k, digits, or an ImageFolder directory")
    p.add_argument("--epochs", type=_setting("epochs"), default=None,
                   help="epochs to train in all (default 20; on --resume the run's own)")
    p.add_argument("--batch-size", type=_setting("batch_size"), default=None,
                   help="per process (default: 128; lenet5 32)")
    p.add_argument("--lr", type=_setting("lr"), default=None,
                   help="initial learning rate (default: 0.01; lenet5 0.03)")
    p.add_argument("--momentum", type=_setting("momentum"), default=None, help="(default: 0.9)")
    p.add_argument("--weight-decay", type=_setting("weight_decay"), default=None, help="(default: 5e-4)")
    p.add_argument("--patience", type=_setting("patience"), default=None,
                   help="epochs without a lower val loss before LR / 10 (default 2)")
    p.add_argument("--mean", choices=flags.CHOICES["mean"], default=None,
                   help="subtract the training set's per-pixel mean image (AlexNet; the default) or its "
                        "per-channel mean (VGG; lenet5's default)")
    # --std, --augment, --lighting, --val-fraction and --seed default to None, not to their value (config.DEFAULTS):
    # a plain --resume keeps the run's own.
    p.add_argument("--std", choices=flags.CHOICES["std"], default=None,
                   help="also divide by the training set's per-channel std (unit variance, as LeCun's inputs; "
                        "the default: channel)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crops, flips, lighting and distortions (the default); --no-augment: centre crops")
    p.add_argument("--distort", action=argparse.BooleanOptionalAction, default=None,
                   help="LeNet-5's random affine distortions (rotation, scaling, squeezing, shear) of each training "
                        "image (default: on for mnist5k and digits, off for image folders)")
    p.add_argument("--lighting", type=_setting("lighting"), default=None,
                   help="std of AlexNet's PCA colour lighting (RGB data; 0 = off; default 0.1)")
    p.add_argument("--val-fraction", type=_setting("val_fraction"), default=None, help="(default 0.1)")
    p.add_argument("--image-size", type=_setting("image_size"), default=None,
                   help="input side (default: the model's own; smaller only for adaptive-pool models)")
    p.add_argument("--out", default=None, help="run folder (default runs/MODEL)")
    p.add_argument("--seed", type=_setting("seed"), default=None,
                   help="of the initialisation, sampler order and augmentation (0 <= S < 2**63; default 0)")
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in --out")
    p.add_argument("--amp", action="store_true", help="autocast: fp16 + GradScaler on CUDA, bf16 on the CPU")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="weights and batches channels-last, as the model zoo builds them (default; "
                        "--no-channels-last: NCHW)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--workers", type=_setting("workers"), default=0, help="DataLoader worker processes")
    p.add_argument("--ensemble", type=_setting("ensemble"), default=1,
                   help="train K models (seeds seed..seed+K-1) and score their softmax average")
    p.add_argument("--checkpoint-every", type=_setting("checkpoint_every"), default=0,
                   help="also checkpoint every N steps (0: each epoch only)")
    p.add_argument("--keep", type=_setting("keep"), default=3, help="checkpoints kept")
    p.add_argument("--max-steps", type=_setting("max_steps"), default=None, help="stop after N steps")
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out (with a warning)")
    p.add_argument("--device", choices=flags.CHOICES["device"], default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")

    p = sub.add_parser("evaluate", help="top-1/top-5/loss of checkpoints (several: their ensemble too)")
    p.add_argument("checkpoints", metavar="CHECKPOINT", nargs="+", help="checkpoint files or run folders")
    p.add_argument("--data", required=True, help="mnist5k, digits, or an ImageFolder directory")
    p.add_argument("--ten-crop", action="store_true", help="average over 4 corner + centre crops and flips")
    p.add_argument("--batch-size", type=_setting("batch_size"), default=128)
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")

    p = sub.add_parser("predict", help="top-5 classes of image files")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--top", type=_positive_int("--top"), default=5)
    p.add_argument("--ten-crop", action="store_true")

    p = sub.add_parser("visualize", help="first-layer filters and each conv stage's strongest feature maps (PNG)")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--image", default=None, help="image whose feature maps to draw")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--top", type=_positive_int("--top"), default=8, help="maps per stage")


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; bad input is one line on stderr and exit status 2."""
    from .data import DataError

    try:
        return _COMMANDS[args.command](args)
    except (DataError, ValueError, FileNotFoundError, FloatingPointError) as error:  # FloatingPointError: --lr
        print(f"error: {error}", file=sys.stderr)
        return 2


def _train(args) -> int:
    from .loop import TrainConfig, train

    fields = TrainConfig.__dataclass_fields__
    train(TrainConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    return 0


def _evaluate(args) -> int:
    from .evaluate import evaluate

    result = evaluate(args.checkpoints, args.data, ten_crop=args.ten_crop, batch_size=args.batch_size,
                      skip_bad=args.skip_bad)
    if args.json:
        import json

        print(json.dumps(result, indent=1))
        return 0
    crops = "ten-crop" if args.ten_crop else "centre crop"
    print(f"{'checkpoint':<48} {'top-1':>8} {'top-5':>8} {'loss':>8}   ({result['members'][0]['count']} images, {crops})")
    rows = [(m["checkpoint"], m) for m in result["members"]]
    if result["ensemble"]:
        rows.append((f"ensemble of {len(result['members'])} (softmax mean)", result["ensemble"]))
    for name, m in rows:
        print(f"{name[-48:]:<48} {100 * m['top1']:7.2f}% {100 * m['top5']:7.2f}% {m['loss']:8.4f}")
    return 0


def _predict(args) -> int:
    from .evaluate import predict

    for path, top in zip(args.images, predict(args.checkpoint, args.images, args.top, args.ten_crop)):
        print(f"{path}: " + ", ".join(f"{label} {100 * p:.2f}%" for label, p in top))
    return 0


def _visualize(args) -> int:
    import os

    from .visualize import visualize

    index = visualize(args.checkpoint, args.out, args.image, args.top)
    print(os.path.join(args.out, index["filters"]["file"]) + f"  ({index['filters']['layer']} "
          f"{'x'.join(map(str, index['filters']['shape']))})")
    for stage in index["stages"]:
        print(os.path.join(args.out, stage["file"]) + f"  ({stage['layer']} {'x'.join(map(str, stage['shape']))})")
    return 0


_COMMANDS = {"train": _train, "evaluate": _evaluate, "predict": _predict, "visualize": _visualize}
