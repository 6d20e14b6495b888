"""What did the conv layers learn? (The lecture notes' question, and ZFNet's.) Two pictures:

* ``filters.png``: the first conv layer's kernels as an image grid (RGB kernels in colour), each scaled to
  its own min..max, as in Krizhevsky et al.'s Figure 3;
* ``stageK_NAME.png`` for an image: per conv stage (the last conv layer, or Inception block, at each spatial
  resolution) the feature maps with the strongest mean activation, strongest first.
"""
from __future__ import annotations

import json
import os

import torch

from . import flags
from .evaluate import build_from_state, read_scored_image, resolve_checkpoint
from .report import check_folder

TILE = 48  # each filter / map is upscaled (nearest) to at least this many pixels


def _normalized(t: torch.Tensor) -> torch.Tensor:
    """Each map (leading dim) scaled to [0, 1] on its own."""
    flat = t.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    scale = (high - low).clamp_min(1e-12)
    return (t - low.view(-1, *[1] * (t.dim() - 1))) / scale.view(-1, *[1] * (t.dim() - 1))


def grid(tiles: torch.Tensor, columns: int | None = None) -> torch.Tensor:
    """N x C x h x w in [0, 1] -> one uint8 H x W x C image: tiles upscaled to >= TILE px, 2 px gaps."""
    n, c, h, w = tiles.shape
    k = max(1, -(-TILE // max(h, w)))
    tiles = tiles.repeat_interleave(k, 2).repeat_interleave(k, 3)
    h, w = h * k, w * k
    columns = columns or max(1, int(n ** 0.5 + 0.999))
    rows = -(-n // columns)
    canvas = torch.ones(c, rows * (h + 2) + 2, columns * (w + 2) + 2)
    for i in range(n):
        r, col = divmod(i, columns)
        canvas[:, 2 + r * (h + 2):2 + r * (h + 2) + h, 2 + col * (w + 2):2 + col * (w + 2) + w] = tiles[i]
    return (canvas.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)


def save_png(image: torch.Tensor, path: str) -> None:
    from PIL import Image

    array = image.numpy()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)


def first_conv_weight(model: torch.nn.Module) -> tuple[str, torch.Tensor]:
    from ..models.lenet import TableConv2d

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            return name, module.weight.detach()
        if isinstance(module, TableConv2d):
            return name, module.dense_weight().detach()
    raise ValueError("CHECKPOINT: the model has no convolution layer")


def _stage_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Conv layers and Inception blocks in forward order; convs inside an Inception block are the block's
    business (in eval mode it runs as one op and they never run alone)."""
    from ..models.lenet import TableConv2d
    from ..nn import Inception

    found, inside = [], ()
    for name, module in model.named_modules():
        if inside and name.startswith(inside):
            continue
        if isinstance(module, Inception):
            found.append((name, module))
            inside = name + "."
        elif isinstance(module, (torch.nn.Conv2d, TableConv2d)) and not name.startswith(("aux1", "aux2")):
            found.append((name, module))
    return found


@torch.no_grad()
def feature_maps(model, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(module name, C x H x W output) of each conv stage for one input (1 x C x S x S): the last conv layer
    or Inception block before the spatial size changes."""
    outputs = []
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: outputs.append((name, o[0].float())))
             for name, module in _stage_modules(model)]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    stages = []
    for i, (name, out) in enumerate(outputs):
        if i + 1 == len(outputs) or outputs[i + 1][1].shape[-2:] != out.shape[-2:]:
            stages.append((name, out))
    return stages


def visualize(checkpoint: str, out: str, image: str | None = None, top: int = 8) -> dict:
    """Write ``filters.png`` and, with ``image``, one PNG per conv stage of its ``top`` strongest maps, plus
    ``index.json`` describing them. Returns that description."""
    flags.positive_int("top", top)
    _, state = resolve_checkpoint(checkpoint)
    model, pipeline = build_from_state(state)
    if image is not None:  # read before anything is written: a bad image leaves no half-made folder
        pixels = read_scored_image(state, image)
    check_folder(out, "--out")  # creates it, once the reads above went well
    name, weight = first_conv_weight(model)
    o, i, kh, kw = weight.shape
    tiles = _normalized(weight) if i == 3 else _normalized(weight.reshape(o * i, 1, kh, kw))
    save_png(grid(tiles, columns=None if i == 3 else max(i, int(o ** 0.5 + 0.999))), os.path.join(out, "filters.png"))
    index = {"filters": {"file": "filters.png", "layer": name, "shape": [o, i, kh, kw]}, "stages": []}
    if image is not None:
        x = pipeline.normalized(pixels)
        x = pipeline._to_model(pipeline.crops(x.unsqueeze(0), ten_crop=False))
        for k, (layer, maps) in enumerate(feature_maps(model, x), start=1):
            strength = maps.clamp_min(0).mean((1, 2))
            order = strength.argsort(descending=True)[:top]
            file = f"stage{k}_{layer.replace('.', '_')}.png"
            save_png(grid(_normalized(maps[order]).unsqueeze(1)), os.path.join(out, file))
            index["stages"].append({"file": file, "layer": layer, "shape": list(maps.shape),
                                    "channels": order.tolist(), "mean_activation": strength[order].tolist()})
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    return index
