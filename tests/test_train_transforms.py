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
