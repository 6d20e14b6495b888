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
