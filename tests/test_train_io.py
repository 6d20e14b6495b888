"""What training reads and writes outside its numbers: checkpoints load without running code a file names
(``weights_only``), old checkpoints still load, incomplete ones are named; an --out that cannot be written is
an error before any work."""
from __future__ import annotations

import os
import re

import numpy
import pytest
import torch

from _train_helpers import write_image_folder
from classicnets_ext.__main__ import main
from classicnets_ext.train import TrainConfig, checkpoint, evaluate, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("io_run")
    write_image_folder(root / "data", per_class=3)
    return train(TrainConfig(model="lenet5", data=str(root / "data"), epochs=1, batch_size=4, out=str(root / "run"),
                             quiet=True))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


class _Payload:
    """Unpickled, it creates ``marker``: what a crafted checkpoint could do with any other function."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_crafted_checkpoint_runs_no_code(run, tmp_path, capsys):
    state = torch.load(run["checkpoint"], weights_only=False)  # our own file: trusted
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "ran"
    torch.save({**state, "history": [_Payload(marker)]}, evil)
    write_image_folder(tmp_path / "images", per_class=1)
    image = next((tmp_path / "images" / "circle").iterdir())
    for argv in (["evaluate", str(evil), "--data", run["data"]], ["predict", str(evil), str(image)],
                 ["visualize", str(evil), "--out", str(tmp_path / "vis")]):
        assert main(argv) == 2, argv
        err = _one_line_error(capsys)
        # (pickle names open io.open before Python 3.12, _io.open from it)
        assert re.search(f"checkpoint {re.escape(str(evil))} does not load: it refers to _?io\\.open", err), err
        assert "could run code" in err
        assert not marker.exists(), argv
    with pytest.raises(ValueError, match="io.open"):
        checkpoint.load_checkpoint(str(evil))
    assert not marker.exists()


def test_new_checkpoints_hold_only_what_weights_only_loads(run):
    state = torch.load(run["checkpoint"], weights_only=True)  # no allow-list: tensors and plain containers
    rng = state["rng"][0]
    assert isinstance(rng["numpy"]["state"]["key"], list) and len(rng["numpy"]["state"]["key"]) == 624
    numpy.random.seed(5)
    expected = numpy.random.rand(3)
    numpy.random.seed(5)
    saved = checkpoint.rng_state()
    numpy.random.rand(3)
    checkpoint.set_rng_state(saved)
    assert (numpy.random.rand(3) == expected).all()


def test_an_old_checkpoint_with_numpys_rng_array_still_loads(run, tmp_path):
    """Checkpoints written before the RNG states were plain lists hold numpy's state as an ndarray: they load
    (and resume) with weights_only, numpy's classes allowed for them alone."""
    state = torch.load(run["checkpoint"], weights_only=False)
    numpy.random.seed(7)
    state["rng"] = [{**state["rng"][0], "numpy": numpy.random.get_state()}]  # the old form: a tuple with an array
    expected = numpy.random.rand(3)
    old = tmp_path / "old.pt"
    torch.save(state, old)
    with pytest.raises(Exception, match="numpy"):
        torch.load(old, weights_only=True)
    loaded = checkpoint.load_checkpoint(str(old))
    checkpoint.set_rng_state(loaded["rng"][0])
    assert (numpy.random.rand(3) == expected).all()
    assert evaluate(str(old), run["data"])["members"][0]["top1"] == run["val"]["val_top1"]
    os.makedirs(tmp_path / "resumed" / "checkpoints")
    torch.save(state, tmp_path / "resumed" / "checkpoints" / os.path.basename(
        checkpoint.list_checkpoints(os.path.join(run["out"], "checkpoints"))[-1]))
    resumed = train(TrainConfig(model="lenet5", data=run["data"], epochs=2, out=str(tmp_path / "resumed"),
                                resume=True, quiet=True))
    assert resumed["step"] == 2 * run["step"]


def test_a_checkpoint_missing_keys_is_named(run, tmp_path, capsys):
    state = torch.load(run["checkpoint"], weights_only=False)
    del state["classes"], state["config"]
    torch.save(state, tmp_path / "part.pt")
    assert main(["evaluate", str(tmp_path / "part.pt"), "--data", run["data"]]) == 2
    assert f"checkpoint {tmp_path / 'part.pt'} lacks 'classes', 'config'" in _one_line_error(capsys)


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs sysfs: a folder no one may write in, root too")
def test_an_unwritable_out_fails_before_any_work(run, capsys):
    """--out in a folder that cannot be written used to fail with a traceback once the first epoch was done
    (only an --out that is a file was caught up front)."""
    for out, why in (("/sys/kernel", "Permission denied"), ("/sys/kernel/run", "Operation not permitted"),
                     ("/sys/classicnets_run/sub", "Operation not permitted")):
        for argv in (["train", "lenet5", "--data", run["data"], "--quiet"], ["visualize", run["checkpoint"]]):
            assert main(argv + ["--out", out]) == 2, (argv, out)
            err = _one_line_error(capsys)
            assert err.startswith(f"error: --out: cannot write into {out}: ") and why in err, err


def test_a_mistyped_command_leaves_no_run_folder(tmp_path, capsys):
    """A bad model name or an absent device is reported before the run folder is made (making it up front,
    to catch an unwritable --out, once left an empty one behind)."""
    out = tmp_path / "run"
    bad = [(["train", "nosuchnet"], "error: MODEL: unknown model 'nosuchnet'")]
    if not torch.cuda.is_available():
        bad.append((["train", "lenet5", "--device", "cuda"], "error: --device cuda: no CUDA device"))
    for argv, message in bad:
        assert main(argv + ["--data", "digits", "--quiet", "--out", str(out)]) == 2
        assert _one_line_error(capsys).startswith(message)
        assert not out.exists()


def test_evaluate_and_predict_commands_pass_their_options_on(run, capsys):
    """The command line's evaluate --ten-crop --json prints what evaluate(..., ten_crop=True) returns (not the
    centre crop's scores), and predict --top K lists K classes per image."""
    import json

    assert main(["evaluate", run["checkpoint"], "--data", run["data"], "--ten-crop", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    ten, centre = (evaluate(run["checkpoint"], run["data"], ten_crop=crop) for crop in (True, False))
    assert ten["members"][0]["loss"] != centre["members"][0]["loss"]  # (the two can be told apart)
    assert printed == json.loads(json.dumps(ten))
    folder = os.path.join(run["data"], "circle")
    image = os.path.join(folder, sorted(os.listdir(folder))[0])
    for top in (2, 1):
        assert main(["predict", run["checkpoint"], image, "--top", str(top)]) == 0
        (line,) = capsys.readouterr().out.splitlines()
        assert line.startswith(f"{image}: ")
        labels = line[len(image) + 2:].split(", ")
        assert len(labels) == top, line
        assert all(label.rsplit(" ", 1)[0] in ("circle", "square", "stripes") and label.endswith("%")
                   for label in labels), line


def test_score_counts_top5_hits_and_sums_the_nll():
    """evaluate.score on random log-probabilities against a hand count: top-5 is a hit among the five most
    likely classes (all of them where there are fewer), top-1 the argmax, loss the summed NLL."""
    from classicnets_ext.train.evaluate import score

    g = torch.Generator().manual_seed(0)
    for classes in (10, 7, 3):
        log_probs = torch.log_softmax(torch.randn(400, classes, generator=g), 1)
        labels = torch.randint(0, classes, (400,), generator=g)
        ranks = (log_probs > log_probs.gather(1, labels[:, None])).sum(1)  # 0: the most likely (no ties here)
        top5 = log_probs.topk(min(5, classes), 1).indices.eq(labels[:, None]).any(1).sum().item()
        assert top5 == (ranks < 5).sum().item()
        got = score(log_probs, labels)
        assert got["top5"] == top5 and got["top1"] == (log_probs.argmax(1) == labels).sum().item(), classes
        assert got["count"] == 400
        assert got["loss"] == pytest.approx(-log_probs.gather(1, labels[:, None]).sum().item(), rel=1e-6)
        if classes > 5:
            assert 0 < (ranks == 4).sum().item() and top5 < 400  # (a top-4 count would be lower)
        else:
            assert top5 == 400


def _tiles(path, count, columns, side):
    """The tiles of a grid() image read back from its PNG (side px each, 2 px gaps), row-major."""
    from PIL import Image

    image = torch.from_numpy(numpy.array(Image.open(path)))
    out = []
    for i in range(count):
        r, c = divmod(i, columns)
        out.append(image[2 + r * (side + 2):2 + r * (side + 2) + side, 2 + c * (side + 2):2 + c * (side + 2) + side])
    return out


def test_visualize_scales_each_filter_and_feeds_the_normalised_image(run, tmp_path):
    """filters.png: every first-layer kernel scaled to its own min..max (each tile spans 0..255); the stage
    maps: those of the image normalised as training normalised it ((x/255 - mean) / std, centre crop)."""
    from classicnets_ext.train.evaluate import build_from_state, read_scored_image
    from classicnets_ext.train.visualize import feature_maps, first_conv_weight, visualize

    folder = os.path.join(run["data"], "square")
    image = os.path.join(folder, sorted(os.listdir(folder))[0])
    index = visualize(run["checkpoint"], str(tmp_path / "vis"), image=image, top=4)
    state = checkpoint.load_checkpoint(run["checkpoint"])
    model, _ = build_from_state(state)
    _, weight = first_conv_weight(model)
    o, i, kh, kw = weight.shape
    assert i == 1  # grey: one tile per (filter, input channel)
    columns, side = max(i, int(o ** 0.5 + 0.999)), kh * -(-48 // kh)
    tiles = _tiles(tmp_path / "vis" / "filters.png", o * i, columns, side)
    assert all(tile.min() == 0 and tile.max() == 255 for tile in tiles), [(t.min(), t.max()) for t in tiles]
    low, high, flat = weight.min(), weight.max(), weight.flatten(1)
    short = ((flat.min(1).values - low) / (high - low) > 0.01) | ((high - flat.max(1).values) / (high - low) > 0.01)
    assert short.any()  # (one scale for all would leave these tiles short of 0 or 255)
    assert not torch.equal(state["mean"], torch.zeros_like(state["mean"])) and (state["std"] != 1).all()
    pixels = read_scored_image(state, image)
    crop = state["input_size"][-1]
    c = (pixels.shape[-1] - crop) // 2
    x = ((pixels.float() / 255 - state["mean"]) / state["std"])[:, c:c + crop, c:c + crop].unsqueeze(0)
    stages = feature_maps(model, x)
    assert [stage["layer"] for stage in index["stages"]] == [name for name, _ in stages]
    for stage, (_, maps) in zip(index["stages"], stages):
        strength = maps.clamp_min(0).mean((1, 2))
        expected = strength.sort(descending=True).values[:4]
        torch.testing.assert_close(torch.tensor(stage["mean_activation"]), expected, rtol=1e-4, atol=1e-6)


def test_feature_maps_take_the_last_conv_at_each_resolution():
    """A conv stage is the last conv layer before the spatial size changes: of two convs at one resolution, the
    second (the first's maps are never shown)."""
    from classicnets_ext.train.visualize import feature_maps

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(2, 3, 3, padding=1),
                              torch.nn.MaxPool2d(2), torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 5, 3, padding=1), torch.nn.Conv2d(5, 6, 3))
    x = torch.randn(1, 1, 8, 8)
    stages = feature_maps(net.eval(), x)
    assert [name for name, _ in stages] == ["2", "6", "7"]
    torch.testing.assert_close(stages[0][1], net[:3](x)[0])
    torch.testing.assert_close(stages[1][1], net[:7](x)[0])
    assert [tuple(maps.shape) for _, maps in stages] == [(3, 8, 8), (5, 4, 4), (6, 2, 2)]
