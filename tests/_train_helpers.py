"""Shared by the training tests: a tiny ImageFolder written on the spot, and comparing two checkpoints'
weights."""
from __future__ import annotations

import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_image_folder(root, classes=("circle", "square", "stripes"), per_class=6, size=40, split=False, seed=0):
    """PNG images of a few drawable shapes, one class per shape, random colours and offsets: learnable in a
    few steps. ``split``: ``train/`` and ``val/`` subtrees (two thirds / one third)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    paths = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            sub = ("train" if i < per_class * 2 // 3 else "val") if split else ""
            folder = os.path.join(root, sub, name)
            os.makedirs(folder, exist_ok=True)
            yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
            cy, cx = (size // 2 + torch.randint(-4, 5, (2,), generator=g)).tolist()
            if c % 3 == 0:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (size // 4) ** 2
            elif c % 3 == 1:
                mask = ((yy - cy).abs() < size // 4) & ((xx - cx).abs() < size // 4)
            else:
                mask = (xx // 4) % 2 == 0
            colour = torch.randint(60, 256, (3,), generator=g)
            image = (mask.unsqueeze(-1) * colour + torch.randint(0, 30, (size, size, 3), generator=g)).clamp(0, 255)
            path = os.path.join(folder, f"{i:03d}.png")
            Image.fromarray(image.to(torch.uint8).numpy()).save(path)
            paths.append(path)
    return paths


def weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def assert_same_weights(a: dict, b: dict, atol=0.0, rtol=0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=rtol, msg=lambda m: f"{key}: {m}")
