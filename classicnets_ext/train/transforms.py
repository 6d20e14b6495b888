"""The lecture notes' input tricks: mean subtraction, random crops and flips, AlexNet's PCA colour lighting,
the ten-crop test, and LeNet-5's random affine distortions of digits.

Randomness is a function of (seed, epoch, sample index) alone, never of a process-wide stream: a sample is
cropped the same way whichever rank of a distributed run draws it and whether or not the run was resumed in
between, so 1 process x batch 2B and 2 processes x batch B see identical inputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MEAN_MODES = ("image", "channel", "none")


@torch.no_grad()
def dataset_statistics(split, mode: str, batch: int = 256):
    """One pass over the training split: (mean, std, pca). The mean: per-pixel image C x L x L for
    ``"image"`` (AlexNet), per channel C x 1 x 1 for ``"channel"`` (VGG), zeros for ``"none"``; std: per
    channel (C x 1 x 1); both in [0, 1] pixel units. For RGB data, ``pca``: sqrt of the 3 x 3 pixel
    covariance's eigenvalues (row 0) over its eigenvectors (columns of rows 1-3), which PCA lighting needs."""
    total, squares, count, outer = None, None, 0, torch.zeros(3, 3, dtype=torch.float64)
    for start in range(0, len(split), batch):
        x = split.source.load(split.indices[start:start + batch]).to(torch.float64) / 255
        total = x.sum(0) if total is None else total + x.sum(0)
        squares = x.square().sum((0, 2, 3)) if squares is None else squares + x.square().sum((0, 2, 3))
        count += len(x)
        if x.shape[1] == 3:
            pixels = x.permute(1, 0, 2, 3).reshape(3, -1)
            outer += pixels @ pixels.T
    mean_image = total / count
    pca = None
    if mean_image.shape[0] == 3:
        rgb = mean_image.mean((1, 2))
        cov = outer / (count * mean_image[0].numel()) - torch.outer(rgb, rgb)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        pca = torch.cat([eigenvalues.clamp_min(0).sqrt().unsqueeze(0), eigenvectors]).float()  # row 0: sqrt(lambda)
    if mode == "image":
        mean = mean_image
    elif mode == "channel":
        mean = mean_image.mean((1, 2), keepdim=True)
    else:
        mean = torch.zeros(mean_image.shape[0], 1, 1, dtype=torch.float64)
    channel_mean = mean_image.mean((1, 2))
    std = (squares / (count * mean_image[0].numel()) - channel_mean.square()).clamp_min(1e-12).sqrt()
    return mean.float(), std.view(-1, 1, 1).float(), pca


_MASK = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """Chris Wellons' lowbias32 integer hash on int64 tensors holding 32-bit values (products wrap mod 2^64;
    the low 32 bits, all we keep, are exact)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK
    return x ^ (x >> 16)


def sample_uniform(seed: int, epoch: int, index: torch.Tensor, stream: int) -> torch.Tensor:
    """U[0, 1) numbers, one per sample index, a pure function of (seed, epoch, index, stream)."""
    key = _hash32(torch.tensor([(seed * 0x9E3779B1 + epoch * 0x85EBCA6B + stream * 0xC2B2AE35) & _MASK]))
    return _hash32((_hash32(index.to(torch.int64) & _MASK) ^ key)).double().div_(2.0 ** 32).float()


# LeNet-5's distortions (LeCun et al. 1998, Section III-B: "planar affine transformations ... translations,
# scaling, squeezing ... and horizontal shearing", which took its MNIST test error from 0.95% to 0.8%), plus a
# rotation: per image and epoch, a rotation up to DISTORT_DEGREES either way, x and y scaled apart by up to
# DISTORT_SCALE (scaling and squeezing) and a horizontal shear up to DISTORT_SHEAR, each uniform; translation is
# the random crop's. LeNet-5 on mnist5k, 20 epochs, seeds 100-111: 97.55% mean held-out top-1 without, 97.82% with
# 10 deg / 0.1 / 0.1, 98.02% with these (97.88% over 24 seeds; docs/training.md).
DISTORT_DEGREES, DISTORT_SCALE, DISTORT_SHEAR = 20.0, 0.2, 0.3
_DISTORT_STREAMS = 4  # sample_uniform streams 6-9 (0-5: crop, flip, lighting)
_LIGHTING_ANGLE = 10  # the stream of lighting's third normal's angle (drawn per batch: only lighting reads it)

def distort_images(x: torch.Tensor, u: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Normalised images x (N x C x L x L) each warped by its random affine map about the image centre
    (bilinear); ``u``: 4 x N uniform draws in [0, 1) (rotation, x scale, y scale, shear). Pixels from outside
    the image are ``background``, the normalised zero pixel (-mean / std): the warp moves x minus it and adds
    it back where each pixel lands, so a per-pixel mean image stays where it was."""
    angle = (2 * u[0] - 1) * math.radians(DISTORT_DEGREES)
    sx, sy = (1 + (2 * u[k] - 1) * DISTORT_SCALE for k in (1, 2))
    shear = (2 * u[3] - 1) * DISTORT_SHEAR
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid's theta maps output to input coordinates (x right, y down, in [-1, 1])
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos / sx, (shear - sin) / sx, zero], 1),
                         torch.stack([sin / sy, cos / sy, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).add_(background)


WHOLE_SOURCE_BYTES = 1 << 28  # an in-memory source up to this size in float is normalised once, not per batch


def window_offsets(channels: int, height: int, width: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat offsets (C*S*S, int64) of the S x S window at (0, 0) of a contiguous C x H x W image, and of the
    same window mirrored left-right. A batch of crops is then one ``index_select`` of the storage at
    ``image * C*H*W + dy * W + dx + offsets``: indexing with four broadcast index tensors costs ~30x more on
    the CPU, and ``take`` / ``gather`` as much when their second OpenMP thread is contended."""
    grid = (torch.arange(channels)[:, None, None] * (height * width) + torch.arange(s)[:, None] * width
            + torch.arange(s))
    return grid.reshape(-1), grid.flip(-1).reshape(-1)


class Pipeline:
    """Makes float batches for a model from a split: x = crop(flip((image/255 - mean) / std)) (+ lighting).

    ``crop``: the model's input size S; ``channels``: the model's input channels (grey data is repeated to 3
    for an RGB model). ``flip`` / ``lighting``: the augmentation switches (lighting: the std of AlexNet's
    alpha, 0.1 in the paper; used only on RGB data). ``shift``: the largest distance in pixels of a random
    crop (and of the ten-crop test's corners) from the centre crop; None: anywhere in the image. ``distort``:
    LeNet-5's random affine distortion of each training image (see DISTORT_DEGREES), before its crop.
    """

    def __init__(self, mean: torch.Tensor, crop: int, channels: int, flip: bool, lighting: float = 0.0,
                 pca: torch.Tensor | None = None, seed: int = 0, random_crop: bool = True,
                 std: torch.Tensor | None = None, shift: int | None = None, distort: bool = False):
        self.mean, self.crop, self.channels, self.random_crop, self.shift = mean, crop, channels, random_crop, shift
        self.distort = distort
        self.std = torch.ones(()) if std is None else std
        self._plan, self._whole = None, None
        self.flip, self.lighting, self.pca, self.seed = flip, lighting if pca is not None else 0.0, pca, seed

    def _source_ids(self, split, indices: list[int]) -> torch.Tensor:
        return split.source_indices[torch.as_tensor(indices, dtype=torch.long)]

    def _normalized_source(self, source) -> torch.Tensor | None:
        """An in-memory source's images all normalised once (float N x C x L x L, kept while the source is the
        one batches come from), so that a batch is one gather instead of a gather, a conversion and three
        passes of arithmetic; None for sources decoded per batch (files) or too big to double in float."""
        images = getattr(source, "images", None)
        if images is None or images.numel() * 4 > WHOLE_SOURCE_BYTES:
            return None
        if self._whole is None or self._whole[0] is not source:
            self._whole = source, self.normalized(images)
        return self._whole[1]

    def _prepared(self, split, indices: list[int]) -> torch.Tensor:
        ids = self._source_ids(split, indices)
        whole = self._normalized_source(split.source)
        if whole is not None:
            return whole[ids]
        return self.normalized(split.source.load(ids.tolist()))

    def normalized(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> (x / 255 - mean) / std."""
        return images.float().div_(255).sub_(self.mean).div_(self.std)

    def _to_model(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3] != self.channels:
            x = x.expand(*x.shape[:-3], self.channels, *x.shape[-2:])
        return x.contiguous()

    def train_batch(self, split, indices: list[int], epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Distortions (if on), random S x S crops (else the centre crops), flips (if on) and lighting (if on),
        each drawn from the sample's own seed; one gather for the whole batch."""
        ids = self._source_ids(split, indices)
        x = self._normalized_source(split.source)  # crops are gathered from the whole source when it is cached
        rows_of = ids
        if x is None:
            x, rows_of = self.normalized(split.source.load(ids.tolist())), torch.arange(len(ids))
        n, (c, h, w), s = len(indices), x.shape[1:], self.crop
        start, mirrored, u, grid, grid_mirrored = self._epoch_plan(len(split.source), epoch, (c, h, w))
        if self.distort:
            x, rows_of = distort_images(x[rows_of], u[6:, ids], -self.mean / self.std), torch.arange(n)
        window = torch.where(mirrored[ids][:, None], grid_mirrored, grid) if self.flip else grid
        flat = (rows_of * (c * h * w) + start[ids])[:, None] + window
        out = x.view(-1).index_select(0, flat.view(-1)).view(n, c, s, s)
        if self.lighting:
            u = u[:, ids]
            # Box-Muller normals for AlexNet's alpha ~ N(0, lighting^2); shift = sum_i alpha_i sqrt(l_i) p_i. The
            # third takes a radius and an angle of its own: sharing a draw with the first pair ties their sizes.
            angle = sample_uniform(self.seed, epoch, ids, _LIGHTING_ANGLE)
            radius = (-2 * torch.log1p(-u[3])).sqrt()
            alpha = torch.stack([radius * torch.cos(2 * torch.pi * u[4]), radius * torch.sin(2 * torch.pi * u[4]),
                                 (-2 * torch.log1p(-u[5])).sqrt() * torch.cos(2 * torch.pi * angle)], 1)
            shift = (alpha * self.lighting * self.pca[0]) @ self.pca[1:].T
            out = out + shift[:, :, None, None] / self.std
        return self._to_model(out), split.labels[torch.as_tensor(indices, dtype=torch.long)]

    def _epoch_plan(self, count: int, epoch: int, shape: tuple[int, int, int]) -> tuple:
        """The epoch's draws for all ``count`` images of the source at once (kept for the epoch): per image,
        its window's flat start ``dy * W + dx`` and whether it is mirrored, the raw draws (lighting reads
        them), and the window offsets for images of ``shape``."""
        key = (epoch, count, shape)
        if self._plan is None or self._plan[0] != key:
            everyone, (c, h, w), s = torch.arange(count), shape, self.crop
            streams = 6 + (_DISTORT_STREAMS if self.distort else 0)
            u = torch.stack([sample_uniform(self.seed, epoch, everyone, k) for k in range(streams)])
            if self.random_crop:
                dy, dx = (lo + (u[k] * (hi - lo + 1)).long().clamp_max(hi - lo)
                          for k, (lo, hi) in ((0, self._offsets(h)), (1, self._offsets(w))))
            else:
                dy, dx = (torch.full((count,), (side - s) // 2, dtype=torch.int64) for side in (h, w))
            self._plan = key, (dy * w + dx, u[2] < 0.5, u, *window_offsets(c, h, w, s))
        return self._plan[1]

    def eval_batch(self, split, indices: list[int], ten_crop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The centre crop (N x C x S x S), or with ``ten_crop`` the four corners and the centre, each also
        flipped when flips are allowed (N x 10 x C x S x S; N x 5 x ... for digits)."""
        x = self._prepared(split, indices)
        y = split.labels[torch.as_tensor(indices, dtype=torch.long)]
        return self._to_model(self.crops(x, ten_crop)), y

    def _offsets(self, side: int) -> tuple[int, int]:
        """The first and last offset of a crop along a side of ``side`` pixels: within ``shift`` of the
        centre crop's, and inside the image."""
        last = side - self.crop
        if self.shift is None:
            return 0, last
        centre = last // 2
        return max(0, centre - self.shift), min(last, centre + self.shift)

    def crops(self, x: torch.Tensor, ten_crop: bool) -> torch.Tensor:
        size, s = x.shape[-1], self.crop
        c = (size - s) // 2
        if not ten_crop:
            return x[..., c:c + s, c:c + s]
        lo, e = self._offsets(size)  # the corners: as far as the training crops reach
        views = [x[..., a:a + s, b:b + s] for a, b in ((lo, lo), (lo, e), (e, lo), (e, e), (c, c))]
        if self.flip:
            views += [v.flip(-1) for v in views]
        return torch.stack(views, 1)
