"""The ten-crop test against torchvision's ten_crop, and AlexNet's PCA lighting draws against the normal
distribution they are meant to follow, and the training orders of consecutive seeds. (The other input tricks
are checked in test_train.py.)"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _train_helpers import write_image_folder
from classicnets_ext.train import TrainConfig, checkpoint, evaluate, open_data, predict, train
from classicnets_ext.train.data import Split, TensorSource
from classicnets_ext.train.transforms import Pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ten_crop_is_the_softmax_mean_over_torchvisions_ten_crops(tmp_path):
    """evaluate --ten-crop and predict --ten-crop on a folder-trained model (flips allowed, crops reaching the
    whole margin): the softmax averaged over torchvision's four corners, centre and their mirror images of the
    normalised image, computed here from the stored mean and std."""
    TF = pytest.importorskip("torchvision.transforms.v2.functional")
    from classicnets_ext.models import get_model

    data = str(tmp_path / "data")
    write_image_folder(data, per_class=4)
    result = train(TrainConfig(model="lenet5", data=data, epochs=1, batch_size=4, val_fraction=0.5,
                               out=str(tmp_path / "run"), quiet=True))
    state = checkpoint.load_checkpoint(result["checkpoint"])
    model = get_model("lenet5", num_classes=3)
    model.load_state_dict(state["model"])
    model.eval()
    _, val = open_data(data, 1, 32, val_fraction=0.5)
    assert len(val) == 6 and val.source.shift is None and state["flip"] is True
    probs = []
    with torch.no_grad():
        for index in val.indices:
            x = (val.source.load([index])[0].float() / 255 - state["mean"]) / state["std"]  # 1 x 36 x 36
            probs.append(F.softmax(model(torch.stack(TF.ten_crop(x, [32, 32]))), 1).mean(0))
    probs = torch.stack(probs)
    scored = evaluate(result["checkpoint"], data, ten_crop=True)["members"][0]
    assert scored["count"] == 6
    assert scored["loss"] == pytest.approx(F.nll_loss(probs.log(), val.labels).item(), rel=1e-5)
    assert scored["top1"] == pytest.approx((probs.argmax(1) == val.labels).float().mean().item())
    centre = evaluate(result["checkpoint"], data)["members"][0]
    assert abs(centre["loss"] - scored["loss"]) > 1e-4  # the crops do change the scores
    path = val.source.samples[val.indices[0]][0]
    (top,) = predict(result["checkpoint"], [path], topk=3, ten_crop=True)
    expected = probs[0].sort(descending=True)
    assert [label for label, _ in top] == [state["classes"][i] for i in expected.indices.tolist()]
    torch.testing.assert_close(torch.tensor([p for _, p in top]), expected.values, rtol=1e-5, atol=1e-6)


def test_lighting_alphas_are_independent_standard_normals():
    """PCA lighting's three alphas, read off zero images with unit eigenvalues and the identity as eigenvectors
    (the shift is then alpha itself). The third used to take its angle from the first pair's radius draw:
    E[alpha_0^2 alpha_2^2] was 1.11, not E[alpha_0^2] E[alpha_2^2] = 1."""
    n = 200_000
    source = TensorSource(torch.zeros(n, 3, 1, 1, dtype=torch.uint8), torch.zeros(n, dtype=torch.long), ["a"],
                          flip=False, name="zeros")
    pca = torch.cat([torch.ones(1, 3), torch.eye(3)])
    pipeline = Pipeline(torch.zeros(3, 1, 1), 1, 3, flip=False, lighting=1.0, pca=pca, seed=11, random_crop=False)
    alpha = pipeline.train_batch(Split(source, list(range(n))), list(range(n)), epoch=0)[0][:, :, 0, 0].double()
    squares = alpha.square()
    torch.testing.assert_close(alpha.mean(0), torch.zeros(3, dtype=torch.float64), rtol=0, atol=0.015)
    torch.testing.assert_close(squares.mean(0), torch.ones(3, dtype=torch.float64), rtol=0, atol=0.02)
    for i, j in ((0, 1), (0, 2), (1, 2)):  # standard error of each ~0.006 (Var(a^2 b^2) = 8)
        assert abs((squares[:, i] * squares[:, j]).mean().item() - 1) < 0.03, (i, j)


def test_consecutive_seeds_shuffle_apart():
    """An ensemble's members (seeds s, s+1, ...) get unrelated training orders: DistributedSampler shuffles epoch
    e with seed + e, so without loop.sampler_seed member k's epoch e was member 0's epoch e + k. Seed 0's orders
    stay what they were."""
    from classicnets_ext.train.loop import sampler_seed

    def order(seed, epoch, mix=sampler_seed):
        sampler = torch.utils.data.DistributedSampler(range(64), num_replicas=1, rank=0, shuffle=True, seed=mix(seed))
        sampler.set_epoch(epoch)
        return tuple(sampler)

    orders = {(seed, epoch): order(seed, epoch) for seed in range(4) for epoch in range(4)}
    assert len(set(orders.values())) == len(orders)
    assert all(orders[0, epoch] == order(0, epoch, mix=int) for epoch in range(4))


def _rgb_source(n=40, size=5, seed=3):
    """Random RGB images whose channels have different means and spreads and are correlated (a full-rank,
    non-diagonal pixel covariance)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, size, size, generator=g)
    noise = torch.rand(n, 3, size, size, generator=g)
    images = torch.cat([40 + 150 * base + 20 * noise[:, :1], 120 + 60 * noise[:, 1:2] - 50 * base,
                        10 + 30 * noise[:, 2:] + 40 * base * noise[:, 1:2]], 1)
    images = images.round().clamp(0, 255).to(torch.uint8)
    source = TensorSource(images, torch.zeros(n, dtype=torch.long), ["a"], flip=False, name="rgb")
    return images, Split(source, list(range(n)))


def test_rgb_statistics_are_per_channel():
    """dataset_statistics on RGB data, read in several batches: --mean channel is the three channel means
    (C x 1 x 1), --mean image the mean image, std each channel's population std (about its own mean), all in
    [0, 1] units. (The other tests use grey digits, where a global mean is a channel mean.)"""
    from classicnets_ext.train.transforms import dataset_statistics

    images, split = _rgb_source()
    x = images.double() / 255
    expected_std = x.std((0, 2, 3), correction=0).view(3, 1, 1).float()
    for mode, expected_mean in (("channel", x.mean((0, 2, 3)).view(3, 1, 1)), ("image", x.mean(0)),
                                ("none", torch.zeros(3, 1, 1))):
        mean, std, _ = dataset_statistics(split, mode, batch=16)
        assert mean.shape == expected_mean.shape and std.shape == (3, 1, 1), mode
        torch.testing.assert_close(mean, expected_mean.float(), rtol=0, atol=1e-6)
        torch.testing.assert_close(std, expected_std, rtol=1e-5, atol=1e-6)
    assert (x.mean((0, 2, 3)).max() - x.mean((0, 2, 3)).min()) > 0.2  # (channel means a grey mean would miss)


def test_rgb_pca_is_the_centred_pixel_covariances():
    """AlexNet lighting's PCA: row 0 the square roots of the eigenvalues of the (centred, population) 3 x 3 pixel
    covariance, in eigh's ascending order; rows 1-3 its unit eigenvectors as columns."""
    from classicnets_ext.train.transforms import dataset_statistics

    images, split = _rgb_source()
    pixels = (images.double() / 255).permute(1, 0, 2, 3).reshape(3, -1)
    cov = torch.cov(pixels, correction=0)
    _, _, pca = dataset_statistics(split, "channel", batch=16)
    assert pca.shape == (4, 3)
    pca = pca.double()
    eigenvalues, vectors = pca[0].square(), pca[1:]
    torch.testing.assert_close(eigenvalues, torch.linalg.eigvalsh(cov), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(cov @ vectors, vectors * eigenvalues, rtol=0, atol=1e-6)  # columns: eigenvectors
    torch.testing.assert_close(vectors @ torch.diag(eigenvalues) @ vectors.T, cov, rtol=0, atol=1e-6)


def test_lighting_shift_uses_the_eigenvector_columns_in_normalised_units():
    """The lighting shift is sum_i alpha_i lighting sqrt(lambda_i) p_i with p_i the i-th column of pca[1:]
    (a non-symmetric orthogonal matrix here, distinct eigenvalues), added to the normalised image divided by
    std: alpha read off the same draws with unit eigenvalues, identity eigenvectors and no std."""
    n, lighting = 64, 0.1
    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (n, 3, 1, 1), dtype=torch.uint8, generator=g)
    source = TensorSource(images, torch.zeros(n, dtype=torch.long), ["a"], flip=False, name="rgb")
    split = Split(source, list(range(n)))
    vectors = torch.linalg.qr(torch.randn(3, 3, generator=g)).Q
    assert (vectors - vectors.T).abs().max() > 0.1
    root = torch.tensor([0.5, 0.2, 0.05])
    mean, std = torch.tensor([0.4, 0.5, 0.3]).view(3, 1, 1), torch.tensor([0.25, 0.5, 2.0]).view(3, 1, 1)
    plain = Pipeline(torch.zeros(3, 1, 1), 1, 3, flip=False, lighting=1.0, pca=torch.cat([torch.ones(1, 3),
                     torch.eye(3)]), seed=5, random_crop=False)
    lit = Pipeline(mean, 1, 3, flip=False, lighting=lighting, pca=torch.cat([root.unsqueeze(0), vectors]), seed=5,
                   random_crop=False, std=std)
    indices = list(range(n))
    alpha = plain.train_batch(split, indices, epoch=2)[0][:, :, 0, 0] - images[:, :, 0, 0].float() / 255
    out = lit.train_batch(split, indices, epoch=2)[0][:, :, 0, 0]
    normalised = (images[:, :, 0, 0].float() / 255 - mean.view(3)) / std.view(3)
    shift = (alpha * lighting * root) @ vectors.T  # in [0, 1] pixel units
    assert shift.abs().max() > 0.01
    torch.testing.assert_close(out, normalised + shift / std.view(3), rtol=0, atol=1e-5)


def test_read_image_crops_the_centre_of_a_non_square_image(tmp_path):
    """read_image resizes the shorter side and crops the centre: of a wide image and of a tall one, whose
    middle third alone is bright, only the bright band is left."""
    from PIL import Image

    from classicnets_ext.train.data import read_image

    band = torch.zeros(20, 60, 3, dtype=torch.uint8)
    band[:, 20:40] = torch.tensor([200, 100, 50], dtype=torch.uint8)
    for name, array in (("wide", band), ("tall", band.transpose(0, 1))):
        path = str(tmp_path / f"{name}.png")
        Image.fromarray(array.contiguous().numpy()).save(path)
        rgb = read_image(path, 3, 20)
        assert rgb.shape == (3, 20, 20), name
        assert (rgb == torch.tensor([200, 100, 50], dtype=torch.uint8).view(3, 1, 1)).all(), name
        grey = read_image(path, 1, 10)
        assert grey.shape == (1, 10, 10) and (grey > 100).all(), name
