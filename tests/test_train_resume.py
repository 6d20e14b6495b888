"""--resume: a plain --resume continues the run with every setting it began with (bit-exactly), says so when
there is nothing to resume even under --quiet, and refuses a run folder of the other kind (a single model's
against an ensemble's). Kill-and-resume lives in test_train_crash.py."""
from __future__ import annotations

import os

import pytest
import torch

from _train_helpers import assert_same_weights, write_image_folder
from classicnets_ext.__main__ import main
from classicnets_ext.train import checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# Every setting whose CLI default used to replace the run's own on a plain --resume, set away from its default.
SETTINGS = {"seed": 3, "augment": False, "std": "none", "lighting": 0.3, "val_fraction": 0.25}
FLAGS = ["--seed", "3", "--no-augment", "--std", "none", "--lighting", "0.3", "--val-fraction", "0.25"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_a_plain_resume_keeps_seed_augment_std_lighting_and_val_fraction(tmp_path, capsys):
    """Stopped after one step (mid-epoch), resumed with --resume alone: the same weights as the run that was
    never stopped, and the same stored settings. --seed 0, augmentation on, --std channel, --lighting 0.1 and
    --val-fraction 0.1 used to come back from the CLI's defaults: the resume was refused (--std, --seed) or
    trained on other inputs."""
    data = tmp_path / "data"
    write_image_folder(data, per_class=4)
    argv = ["train", "lenet5", "--data", str(data), "--batch-size", "4", "--epochs", "2", "--quiet"]
    assert main(argv + ["--out", str(tmp_path / "whole")] + FLAGS) == 0
    assert main(argv + ["--out", str(tmp_path / "cut"), "--max-steps", "1"] + FLAGS) == 0
    capsys.readouterr()
    assert main(argv + ["--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().err
    whole = checkpoint.load_checkpoint(str(tmp_path / "whole" / "model.pt"))
    cut = checkpoint.load_checkpoint(str(tmp_path / "cut" / "model.pt"))
    assert cut["step"] == whole["step"] == 6  # 9 training images in batches of 4, 2 epochs
    assert {k: cut["config"][k] for k in SETTINGS} == {k: whole["config"][k] for k in SETTINGS} == SETTINGS
    assert_same_weights(cut["model"], whole["model"])  # bitwise


def test_a_given_setting_still_overrides_or_is_refused_on_resume(tmp_path, capsys):
    """Given again on --resume, a setting the checkpoint does not fix applies from then on (--augment, as
    --distort does); one it fixes is refused as before (--std: the stored statistics are for the other)."""
    data = tmp_path / "data"
    write_image_folder(data, per_class=4)
    out = str(tmp_path / "run")
    argv = ["train", "lenet5", "--data", str(data), "--batch-size", "4", "--quiet", "--out", out]
    assert main(argv + ["--epochs", "1"] + FLAGS) == 0
    assert main(argv + ["--epochs", "2", "--resume", "--std", "channel"]) == 2
    assert "was trained with --std none, not channel" in _one_line_error(capsys)
    assert main(argv + ["--epochs", "2", "--resume", "--augment"]) == 0
    config = checkpoint.load_checkpoint(os.path.join(out, "model.pt"))["config"]
    assert config["augment"] is True and {k: config[k] for k in SETTINGS if k != "augment"} == {
        k: v for k, v in SETTINGS.items() if k != "augment"}


def test_resume_without_a_checkpoint_says_so_under_quiet(tmp_path, capsys):
    data = tmp_path / "data"
    write_image_folder(data, per_class=3)
    out = tmp_path / "run"
    assert main(["train", "lenet5", "--data", str(data), "--max-steps", "1", "--quiet", "--resume",
                 "--out", str(out)]) == 0
    assert f"--resume: no checkpoint in {out / 'checkpoints'} yet: starting from scratch" in capsys.readouterr().err


@pytest.mark.parametrize("layout, flags, message", [
    ("ensemble", [], "--ensemble: {out} holds an ensemble's members (member-1, member-2, member-10); pass "
                     "--ensemble 3 to continue it"),
    ("single", ["--ensemble", "2"], "--ensemble 2: {out} holds a single model's run (checkpoints/); drop "
                                    "--ensemble to continue it"),
])
@pytest.mark.parametrize("resume", [["--resume"], []])
def test_a_run_folder_of_the_other_kind_is_refused(layout, flags, message, resume, tmp_path, capsys):
    """--resume without --ensemble K on an ensemble's folder used to train a new single model beside its
    members; with --ensemble K on a single model's folder, K new members beside its checkpoints."""
    out = tmp_path / "run"
    if layout == "ensemble":
        for k in (1, 2, 10):
            (out / f"member-{k}" / "checkpoints").mkdir(parents=True)
    else:
        (out / "checkpoints").mkdir(parents=True)
        (out / "checkpoints" / checkpoint.checkpoint_name(1, 26)).write_bytes(b"")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(["train", "lenet5", "--data", "digits", "--quiet", "--out", str(out), *resume, *flags]) == 2
    assert message.format(out=out) in _one_line_error(capsys)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing trained


def test_a_mid_epoch_resume_with_workers_is_bit_exact(tmp_path):
    """With --workers, each epoch's DataLoader drew its workers' base seed from torch's global generator, and
    a resumed epoch's new loader drew again: every dropout mask after the resume shifted (GoogLeNet's weights
    were off by 0.8). lenet5 has no dropout, so the stored RNG state shows it: it must equal the unstopped run's."""
    data = tmp_path / "data"
    write_image_folder(data, per_class=4)
    argv = ["train", "lenet5", "--data", str(data), "--batch-size", "4", "--epochs", "1", "--quiet",
            "--workers", "1"]
    assert main(argv + ["--out", str(tmp_path / "whole")]) == 0
    assert main(argv + ["--out", str(tmp_path / "cut"), "--max-steps", "1"]) == 0
    assert main(argv + ["--out", str(tmp_path / "cut"), "--resume"]) == 0
    whole = checkpoint.load_checkpoint(str(tmp_path / "whole" / "model.pt"))
    cut = checkpoint.load_checkpoint(str(tmp_path / "cut" / "model.pt"))
    assert cut["step"] == whole["step"] == 3
    assert_same_weights(cut["model"], whole["model"])
    assert torch.equal(cut["rng"][0]["torch"], whole["rng"][0]["torch"])


def test_a_plain_resume_keeps_the_runs_epochs(tmp_path, capsys):
    """--epochs defaulted to 20 on --resume as well: a 3-epoch run stopped after its first epoch went on to
    epoch 20 (and a 22-epoch run resumed after epoch 20 reported itself finished). Given again, --epochs still
    extends the run, logged."""
    data = tmp_path / "data"
    write_image_folder(data, per_class=4)
    out = str(tmp_path / "run")
    argv = ["train", "lenet5", "--data", str(data), "--batch-size", "4", "--out", out]
    assert main(argv + ["--epochs", "3", "--max-steps", "3", "--quiet"]) == 0  # 3 steps an epoch
    assert main(argv + ["--resume", "--quiet"]) == 0
    state = checkpoint.load_checkpoint(os.path.join(out, "model.pt"))
    assert (state["epoch"], state["step"], state["config"]["epochs"]) == (3, 9, 3)
    capsys.readouterr()
    assert main(argv + ["--resume", "--epochs", "4"]) == 0
    assert "--resume: --epochs 4 (the run had 3)" in capsys.readouterr().err
    assert checkpoint.load_checkpoint(os.path.join(out, "model.pt"))["step"] == 12


def test_a_refused_run_leaves_no_folder(tmp_path, capsys):
    """A mistyped --data, or data that leaves no training image, was refused after --out had been made."""
    assert main(["train", "lenet5", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")]) == 2
    data = tmp_path / "data"
    write_image_folder(data, per_class=1)
    assert main(["train", "lenet5", "--data", str(data), "--val-fraction", "0.9", "--out",
                 str(tmp_path / "b" / "run")]) == 2
    capsys.readouterr()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "run").exists()


def test_a_one_image_training_split_is_named_as_such(tmp_path, capsys):
    """BatchNorm on a training split of one image blamed --batch-size, which was not the cause."""
    data = tmp_path / "data"
    write_image_folder(data, per_class=2)
    assert main(["train", "resnet18", "--data", str(data), "--image-size", "32", "--val-fraction", "0.8",
                 "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert "the training split holds 1 image(s)" in err and "--val-fraction" in err, err


def test_the_api_checks_evaluate_predict_and_visualize_counts(tmp_path):
    """The CLI checked these, the Python API did not: batch_size=0 failed inside a range(), topk=-1 in
    torch.topk, and topk=0 answered nothing."""
    from classicnets_ext.train import evaluate, predict, visualize

    for call, message in [(lambda: evaluate("none.pt", "digits", batch_size=0), "batch_size must be >= 1, got 0"),
                          (lambda: predict("none.pt", "x.png", topk=0), "topk must be >= 1, got 0"),
                          (lambda: predict("none.pt", "x.png", topk=-1), "topk must be >= 1, got -1"),
                          (lambda: visualize("none.pt", str(tmp_path), top=0), "top must be >= 1, got 0")]:
        with pytest.raises(ValueError, match=message):
            call()


class _FakeDist:
    """Rank ``rank`` of ``world`` processes without a process group (Dist's methods, loop.py's use of them):
    every other rank is scripted to hold what this one holds, so a sum is ``world`` times this rank's values.
    ``broadcast`` hands a non-zero rank rank 0's choice of checkpoint, ``path``."""

    def __init__(self, rank: int, world: int = 2, path: str | None = None):
        self.rank, self.world, self.local_rank, self.path = rank, world, 0, path
        self.summed = []  # what this rank passed to each sum(), in order

    def sum(self, values: dict) -> dict:
        self.summed.append(dict(values))
        return {k: v * self.world for k, v in values.items()}

    def gather(self, obj) -> list:
        return [obj] * self.world

    def sync_buffers(self, model) -> None:
        pass

    def broadcast(self, obj):
        return self.path if obj is None else obj


def _as_rank(monkeypatch, dist: _FakeDist) -> None:
    from classicnets_ext.train import loop

    monkeypatch.setattr(loop, "Dist", lambda device_kind: dist)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda model, device_ids=None: model)


def test_a_resumed_rank_restores_its_own_rng_state():
    """Each rank stores its RNG state (each draws its own dropout) and must get its own back: rank 1 restoring
    rank 0's state would draw rank 0's dropout masks from then on. With another process count a rank past the
    stored ones reseeds as a fresh run's rank does."""
    import random

    from classicnets_ext.train import TrainConfig
    from classicnets_ext.train.loop import _restore_rng

    saved = checkpoint.rng_state()
    try:
        states = []
        for seed in (11, 22):
            torch.manual_seed(seed)
            random.seed(seed)
            states.append(checkpoint.rng_state())
        config = TrainConfig(model="lenet5", data="digits", seed=3)
        for rank in (0, 1):
            torch.manual_seed(99)
            _restore_rng({"rng": states, "step": 7}, config, _FakeDist(rank))
            assert torch.equal(torch.get_rng_state(), states[rank]["torch"]), rank
            assert random.getstate() == states[rank]["python"], rank
        torch.manual_seed(3 + 1_000_003 + 7)  # --seed 3, rank 1, step 7
        expected = torch.get_rng_state()
        _restore_rng({"rng": states[:1], "step": 7}, config, _FakeDist(1))  # stored by one process, resumed by 2
        assert torch.equal(torch.get_rng_state(), expected)
    finally:
        checkpoint.set_rng_state(saved)


def test_ddp_sums_count_each_image_once_across_a_mid_epoch_resume(tmp_path, monkeypatch):
    """Two processes (a scripted Dist: the other rank holds what this one holds). A checkpoint stores the
    running sums already reduced over the ranks, so after a mid-epoch resume only rank 0 starts from them and
    the others from zero: rank 1 restoring them too counted the first part of the epoch twice in the epoch's
    train loss and accuracy. images/s is the images of all ranks over the epoch's time, not rank 0's alone."""
    data = tmp_path / "data"
    write_image_folder(data, per_class=4)  # 11 training images: 6 per rank (one repeated), batches of 2, 2, 2
    out = str(tmp_path / "run")
    argv = ["train", "lenet5", "--data", str(data), "--batch-size", "2", "--epochs", "1", "--quiet", "--out", out]
    first = _FakeDist(0)
    _as_rank(monkeypatch, first)
    assert main(argv + ["--max-steps", "1"]) == 0
    [path] = checkpoint.list_checkpoints(os.path.join(out, "checkpoints"))
    stored = checkpoint.load_checkpoint(path)
    assert (stored["batch"], stored["world_size"], stored["running"]["count"]) == (1, 2, 4)  # 2 images x 2 ranks

    for rank, before in ((1, 0), (0, 4)):  # rank 1 first: rank 0 writes the epoch's checkpoint
        dist = _FakeDist(rank, path=path)
        _as_rank(monkeypatch, dist)
        assert main(argv + ["--resume"]) == 0
        train_sums = [s for s in dist.summed if set(s) == {"loss", "top1", "count"}][0]  # the epoch's first sum
        assert train_sums["count"] == before + 4, (rank, train_sums)  # its own 2 batches of 2 after the resume
        images = [s["n"] for s in dist.summed if set(s) == {"n"}]
        assert images == [4], (rank, dist.summed)
    row = checkpoint.load_checkpoint(os.path.join(out, "model.pt"))["history"][-1]
    assert row["images_per_s"] * row["seconds"] == pytest.approx(8)  # 4 images on each of the 2 ranks
