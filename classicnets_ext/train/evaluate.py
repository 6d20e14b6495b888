"""Scoring trained models: top-1/top-5/loss on a split, ensembles (softmax averaged over members, each
member's score beside the ensemble's), the ten-crop test, and top-5 predictions for image files."""
from __future__ import annotations

import math
import os
import warnings

import torch
import torch.nn.functional as F

from . import flags
from .checkpoint import latest_good, load_checkpoint
from .data import (BUILTIN, DataError, Split, check_data, digit_inset, load_size, open_data, read_image, same_data,
                   split_files)
from .transforms import Pipeline


def resolve_checkpoint(path: str) -> tuple[str, dict]:
    """A checkpoint file, or a run folder (its ``model.pt``, else its newest good checkpoint)."""
    if os.path.isdir(path):
        final = os.path.join(path, "model.pt")
        if os.path.exists(final):
            return final, load_checkpoint(final)
        found = latest_good(os.path.join(path, "checkpoints"))
        if found is None:
            raise ValueError(f"CHECKPOINT: {path} holds neither model.pt nor a loadable checkpoints/ckpt-*.pt")
        return found
    if not os.path.exists(path):
        raise ValueError(f"CHECKPOINT: no such file {path!r}")
    return path, load_checkpoint(path)


def build_from_state(state: dict, device="cpu") -> tuple[torch.nn.Module, Pipeline]:
    """The trained model (eval mode) and the pipeline that feeds it (its stored mean, crop and flip)."""
    from ..models import get_model

    model = get_model(state["model_name"], num_classes=len(state["classes"]))
    model.load_state_dict(state["model"])
    model.to(device).eval()
    channels, crop = state["input_size"][0], state["input_size"][-1]
    # "shift" is absent from checkpoints made before the digits' crop bound (DIGIT_SHIFT): the whole margin.
    return model, Pipeline(state["mean"], crop, channels, flip=state["flip"], std=state["std"],
                           shift=state.get("shift"))


def logits_of(output) -> torch.Tensor:
    """The main logits of a model's output (GoogLeNet returns a namedtuple with aux logits in train mode)."""
    return output.logits if hasattr(output, "logits") else output


@torch.no_grad()
def member_log_probs(model, pipeline: Pipeline, split: Split, positions: list[int], batch_size: int, device,
                     ten_crop: bool = False, channels_last: bool = False) -> torch.Tensor:
    """Log-softmax probabilities (len(positions) x classes, fp32, CPU) on centre crops, or the log of the
    softmax averaged over the ten crops with ``ten_crop``. Logs, not probabilities: a confidently wrong
    model's probability for the label underflows to 0, and its loss must still count in full. No positions
    (a DDP rank past the end of a val split smaller than the world): a 0 x 0 tensor, which scores nothing."""
    if not positions:
        return torch.empty(0, 0)
    out = []
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for start in range(0, len(positions), batch_size):
        x, _ = pipeline.eval_batch(split, positions[start:start + batch_size], ten_crop)
        n = len(x)
        if ten_crop:
            x = x.flatten(0, 1)
        x = x.to(device, memory_format=memory_format)
        log_probs = F.log_softmax(logits_of(model(x)).float(), dim=1)
        if ten_crop:
            log_probs = log_mean_exp(log_probs.view(n, -1, log_probs.shape[-1]), 1)
        out.append(log_probs.cpu())
    return torch.cat(out)


def log_mean_exp(log_probs: torch.Tensor, dim: int) -> torch.Tensor:
    """log(mean(exp(log_probs))) along ``dim``, stably: the log of the crops' averaged softmaxes."""
    return torch.logsumexp(log_probs, dim) - math.log(log_probs.shape[dim])


def score(log_probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """Sums (to reduce across ranks before dividing): NLL of the log-probabilities, top-1 and top-5 hits,
    count."""
    if len(labels) == 0:
        return {"loss": 0.0, "top1": 0.0, "top5": 0.0, "count": 0.0}
    k = min(5, log_probs.shape[1])
    top = log_probs.topk(k, dim=1).indices
    hits = top == labels.unsqueeze(1)
    nll = -log_probs.gather(1, labels.unsqueeze(1)).sum()
    return {"loss": float(nll), "top1": float(hits[:, 0].sum()), "top5": float(hits.any(1).sum()),
            "count": float(len(labels))}


def averaged(sums: dict) -> dict:
    n = max(sums["count"], 1.0)
    return {"loss": sums["loss"] / n, "top1": sums["top1"] / n, "top5": sums["top5"] / n, "count": int(sums["count"])}


def open_eval_split(state: dict, data: str, skip_bad: bool = False) -> Split:
    """What to score on: for the training data itself, its held-out split (same seeded split); for a tree
    with ``val/``, that; for any other tree, all of it."""
    config, channels, crop = state["config"], state["input_size"][0], state["input_size"][-1]
    classes = state["classes"]
    trained_on = same_data(config["data"], data)
    if data in BUILTIN or trained_on or os.path.isdir(os.path.join(data, "val")):
        _, val = open_data(data, channels, crop, config["val_fraction"], skip_bad, classes=classes, which="val")
        if data in BUILTIN and val.source.classes != classes:
            raise DataError(f"--data: {data}'s classes differ from the checkpoint's")
        stored, files = state.get("split_files"), split_files(val)
        if trained_on and stored is not None and stored != files:
            warnings.warn(f"the images under {data} changed since the model was trained ({stored[0]} then, "
                          f"{files[0] if files else 'another layout'} now): the held-out split drawn from them now "
                          "differs and may hold training images", stacklevel=2)
        return val
    from .data import FolderSource, _folder_samples

    check_data(data)
    if config["data"] not in BUILTIN and not os.path.isabs(config["data"]):
        # Runs before --data was stored absolute: the relative path named a tree seen from a directory we do
        # not know, so this may be the training tree, whose every image would then be scored.
        warnings.warn(f"the checkpoint stores --data as the relative path {config['data']!r}, which is not "
                      f"{data} from {os.getcwd()}: scoring all of {data}; if the model was trained on it, "
                      "evaluate from the directory training started in to score its held-out split", stacklevel=2)
    samples, _ = _folder_samples(data, classes)
    source = FolderSource(samples, classes, channels, load_size(crop), data, _inset(state))
    source.drop_unreadable(skip_bad)
    return Split(source, list(range(len(source))))


def _inset(state: dict) -> int | None:
    """read_image's ``inset`` for image files scored by a checkpoint: a model trained on a built-in digit set
    saw each 28 x 28 digit image framed in its input (data.digit_inset), and a file is framed the same way; a
    model trained on image files sees them as it was trained, filling the input."""
    return digit_inset(state["input_size"][-1]) if state["config"]["data"] in BUILTIN else None


def read_scored_image(state: dict, path: str) -> torch.Tensor:
    """An image file as a checkpoint's model is shown it (uint8, at the training images' load size, framed as
    its training images were): predict's and visualize's input."""
    return read_image(path, state["mean"].shape[0], load_size(state["input_size"][-1]), _inset(state))


def checkpoint_log_probs(state: dict, data: str, ten_crop: bool = False, batch_size: int = 128, device="cpu",
                         skip_bad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-softmax probabilities, labels) of a loaded checkpoint over what it is scored on (open_eval_split)."""
    split = open_eval_split(state, data, skip_bad)
    model, pipeline = build_from_state(state, device)
    positions = list(range(len(split)))
    return member_log_probs(model, pipeline, split, positions, batch_size, device, ten_crop), split.labels


def checkpoint_probs(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax probabilities, labels): ``checkpoint_log_probs`` exponentiated (bench_ensemble.py's input)."""
    log_probs, labels = checkpoint_log_probs(*args, **kwargs)
    return log_probs.exp(), labels


def evaluate(checkpoints: list[str], data: str, ten_crop: bool = False, batch_size: int = 128, device="cpu",
             skip_bad: bool = False) -> dict:
    """{"members": [{"checkpoint", "loss", "top1", "top5", "count"}...], "ensemble": {...} or None}: each
    checkpoint alone, and for several their softmax average. All must share the class list. One path may be
    given as it is, not in a list."""
    flags.positive_int("batch_size", batch_size)
    if isinstance(checkpoints, (str, os.PathLike)):  # a str would otherwise be iterated character by character
        checkpoints = [checkpoints]
    states = [resolve_checkpoint(path) for path in checkpoints]
    classes = states[0][1]["classes"]
    for path, state in states[1:]:
        if state["classes"] != classes:
            raise ValueError(f"CHECKPOINT: {path} was trained on other classes than {states[0][0]}")
    members, total = [], None
    labels = None
    for path, state in states:
        log_probs, split_labels = checkpoint_log_probs(state, data, ten_crop, batch_size, device, skip_bad)
        if labels is None:
            labels = split_labels
        elif not torch.equal(labels, split_labels):
            raise ValueError(f"CHECKPOINT: {path} scores another split of {data} than {states[0][0]}")
        members.append({"checkpoint": path, **averaged(score(log_probs, labels))})
        total = log_probs if total is None else torch.logaddexp(total, log_probs)  # log of the softmaxes' sum
    ensemble = averaged(score(total - math.log(len(states)), labels)) if len(states) > 1 else None
    return {"members": members, "ensemble": ensemble, "ten_crop": ten_crop, "data": data}


@torch.no_grad()
def predict(checkpoint: str, images: list[str], topk: int = 5, ten_crop: bool = False) -> list[list[tuple[str, float]]]:
    """Per image file (one path may be given as it is), its ``topk`` (class name, probability) pairs, most
    probable first."""
    flags.positive_int("topk", topk)
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    _, state = resolve_checkpoint(checkpoint)
    model, pipeline = build_from_state(state)
    results = []
    for path in images:
        x = pipeline.normalized(read_scored_image(state, path))
        crops = pipeline.crops(x.unsqueeze(0), ten_crop)
        crops = pipeline._to_model(crops.flatten(0, 1) if ten_crop else crops)
        probs = F.softmax(logits_of(model(crops)).float(), dim=1).mean(0)
        values, indices = probs.topk(min(topk, len(probs)))
        results.append([(state["classes"][i], float(v)) for v, i in zip(values, indices.tolist())])
    return results
