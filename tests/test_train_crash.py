"""Training under crashes and on several processes: SIGKILL mid-epoch then --resume gives the uninterrupted
run's weights; 2-process DDP (torchrun, gloo) with batch B equals 1 process with batch 2B on the same samples;
``torchrun --max-restarts`` with --resume survives a worker killed mid-run (slow).

The runs are LeNet-5 on scikit-learn's digits on the CPU, one thread per process. The killed runs sleep
``CLASSICNETS_TRAIN_STEP_DELAY`` seconds per step so that the kill lands mid-epoch, after a step checkpoint.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from _train_helpers import ROOT, assert_same_weights, weights
from classicnets_ext.train import TrainConfig, list_checkpoints, train

# DDP averages the two ranks' gradients where one process sums one batch: the same math in another order.
# After a few SGD steps the weights agree to fp32 reduction error (measured: ~1e-7 absolute).
DDP_TOL = dict(rtol=1e-4, atol=1e-5)


pytestmark = pytest.mark.usefixtures("one_thread")


def _env(**extra):
    # PYTHONFAULTHANDLER: a worker that dies by a signal (a rare SIGABRT at exit, seen in CI) prints every
    # thread's Python stack into the stderr the assertion shows.
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
            "PYTHONFAULTHANDLER": "1", **extra}


def _wait_for(predicate, process, timeout=240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended (exit {process.returncode}) before the kill point:\n"
                                 f"{process.stderr.read()[-3000:] if process.stderr else ''}")
        time.sleep(0.02)
    process.kill()
    raise AssertionError("the kill point was not reached in time")


def _step_of(path: str) -> int:
    return int(re.search(r"-s(\d+)\.pt$", path).group(1))


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path, capsys):
    # 26 steps per epoch (1,617 training digits / 64); step checkpoints every 8; kill in epoch 2 after step 34.
    common = dict(model="lenet5", data="digits", epochs=2, checkpoint_every=8, quiet=True, batch_size=64)
    reference = train(TrainConfig(out=str(tmp_path / "reference"), **common))
    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "classicnets_ext", "train", "lenet5", "--data", "digits", "--epochs", "2",
         "--checkpoint-every", "8", "--batch-size", "64", "--quiet", "--out", str(out)],
        env=_env(CLASSICNETS_TRAIN_STEP_DELAY="0.1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: any(_step_of(p) >= 34 for p in list_checkpoints(out / "checkpoints")), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "model.pt").exists()  # it really died before the end
    resumed = train(TrainConfig(out=str(out), resume=True, **{**common, "quiet": False}))
    message = re.search(r"resumed from .*: epoch (\d+), batch (\d+), step (\d+)", capsys.readouterr().err)
    assert message and message.group(1) == "2" and int(message.group(2)) > 0  # mid-epoch 2
    assert resumed["step"] == reference["step"] == 52
    assert_same_weights(weights(resumed["checkpoint"]), weights(reference["checkpoint"]))  # bitwise
    assert [r["val_loss"] for r in resumed["history"]] == [r["val_loss"] for r in reference["history"]]


def _torchrun(*args, nproc=2, extra=(), program=("-m", "classicnets_ext", "train")):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *extra,
            *program, *map(str, args)]


def test_ddp_two_processes_equal_one_process_double_batch(tmp_path):
    single = train(TrainConfig(model="lenet5", data="digits", batch_size=32, max_steps=5, out=str(tmp_path / "one"),
                               quiet=True))
    result = subprocess.run(_torchrun("lenet5", "--data", "digits", "--batch-size", 16, "--max-steps", 5, "--quiet",
                                      "--out", tmp_path / "two"), env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    two = torch.load(tmp_path / "two" / "model.pt", weights_only=False)
    assert two["step"] == 5 and two["world_size"] == 2
    a, b = weights(single["checkpoint"]), two["model"]
    assert_same_weights(a, b, **DDP_TOL)
    # ... and training did move them (by far more than the tolerance).
    initial = (torch.manual_seed(0), __import__("classicnets_ext").models.get_model("lenet5"))[1].state_dict()
    assert max((a[k] - initial[k]).abs().max().item() for k in a) > 100 * DDP_TOL["atol"]
    # One writer: rank 0's checkpoint only, and its reduced counters cover both ranks' 5 x 16 images.
    assert len(list_checkpoints(tmp_path / "two" / "checkpoints")) == 1 and two["running"]["count"] == 160


def test_ddp_validation_scores_the_saved_batchnorm_statistics(tmp_path):
    """DDP hands rank 0's buffers to every rank at each training forward, then each rank's BatchNorm updates
    its own running statistics: rank 1 used to score its half of the held-out split with statistics nobody
    saved, so the logged val loss (and ReduceLROnPlateau's input) was not the checkpoint's."""
    from _train_helpers import write_image_folder
    from classicnets_ext.train import evaluate

    write_image_folder(tmp_path / "data", per_class=4, size=32)  # 12 images: 8 to train, 4 held out
    result = subprocess.run(_torchrun("resnet18", "--data", tmp_path / "data", "--image-size", 32, "--val-fraction",
                                      0.34, "--batch-size", 2, "--epochs", 1, "--quiet", "--out", tmp_path / "run"),
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    logged = json.loads((tmp_path / "run" / "metrics.json").read_text())[-1]
    scored = evaluate(str(tmp_path / "run" / "model.pt"), str(tmp_path / "data"))["members"][0]
    assert scored["count"] == 4
    assert logged["val_loss"] == pytest.approx(scored["loss"], rel=1e-5)


_GLOO_THREADS_AFTER_TRAIN = """
import os, sys
from classicnets_ext.train import TrainConfig, train
train(TrainConfig(model="lenet5", data="digits", batch_size=16, max_steps=2, out=sys.argv[1], quiet=True))
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
print(f"rank {os.environ['RANK']}: {sorted(n for n in names if 'gloo' in n)}")
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread names from /proc (Linux)")
def test_train_under_torchrun_leaves_no_gloo_thread_behind(tmp_path):
    """train() destroys the process group it started, and the group really goes: no gloo thread outlives it.
    One that did could take the GIL while the interpreter finalizes and abort the worker at exit. It did in 10 of
    45 looped runs of the max-restarts test's reference command: torch.distributed.nn, imported by DDP after the
    group existed, kept the group alive through its default arguments."""
    script = tmp_path / "worker.py"
    script.write_text(_GLOO_THREADS_AFTER_TRAIN)
    result = subprocess.run(_torchrun(tmp_path / "run", program=(str(script),)), env=_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(re.findall(r"rank \d: \[[^]]*\]", result.stdout)) == ["rank 0: []", "rank 1: []"], result.stdout


def _descendants(pid: int) -> list[int]:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_restarted_workers_key_the_process_group_by_attempt(monkeypatch, capsys):
    """Under a one-node torchrun that shares its store, each attempt's process-group entries live under its
    restart count, so a restarted worker never reads a dead worker's address (pytorch/pytorch#135712)."""
    from classicnets_ext.train.distributed import attempt_store as _attempt_store

    server = torch.distributed.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False,
                                        timeout=datetime.timedelta(seconds=10))  # a missing key fails, not hangs
    for name, value in {"TORCHELASTIC_USE_AGENT_STORE": "True", "GROUP_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(server.port), "TORCHELASTIC_MAX_RESTARTS": "3"}.items():
        monkeypatch.setenv(name, value)
    server.set("default_pg/rank_1", "a dead worker's address")  # what the attempt before left behind
    for attempt in ("0", "1"):
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", attempt)
        kwargs = _attempt_store(rank=1, world=2)
        assert (kwargs["rank"], kwargs["world_size"]) == (1, 2)
        kwargs["store"].set("default_pg/rank_1", f"attempt {attempt}")
        assert server.get(f"classicnets_ext/attempt-{attempt}/default_pg/rank_1") == f"attempt {attempt}".encode()
    assert server.get("default_pg/rank_1") == b"a dead worker's address"
    # Several nodes: each agent counts restarts on its own, so torch's store stays, and rank 0 says what to set.
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    assert _attempt_store(rank=1, world=4) == {} and capsys.readouterr().err == ""
    assert _attempt_store(rank=0, world=4) == {}
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in capsys.readouterr().err
    # No shared store (our own launch, or torchrun with the sharing off): init_process_group's defaults.
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "1")
    assert _attempt_store(rank=0, world=2) == {}


@pytest.mark.slow
def test_torchrun_max_restarts_survives_a_killed_worker(tmp_path):
    out = tmp_path / "elastic"
    args = ("lenet5", "--data", "digits", "--epochs", 2, "--batch-size", 16, "--checkpoint-every", 10,
            "--resume", "--quiet", "--out", out)
    process = subprocess.Popen(_torchrun(*args, extra=("--max-restarts", "3")), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_env(CLASSICNETS_TRAIN_STEP_DELAY="0.1"))
    _wait_for(lambda: any(_step_of(p) >= 20 for p in list_checkpoints(out / "checkpoints")), process)
    workers = [p for p in _descendants(process.pid) if "classicnets_ext train" in _cmdline(p)]
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-4000:]
    assert "resumed from" in stderr or "resumed from" in stdout
    final = torch.load(out / "model.pt", weights_only=False)
    # The same 2-process run without the kill. (Not 1 process x 32: DistributedSampler pads the 1,617 digits
    # to 1,618, so each epoch's last batch differs from the single process's.)
    reference = subprocess.run(_torchrun(*args[:-1], tmp_path / "ref"), env=_env(), capture_output=True, text=True,
                               timeout=600)
    assert reference.returncode == 0, reference.stderr[-4000:]
    expected = torch.load(tmp_path / "ref" / "model.pt", weights_only=False)
    assert final["step"] == expected["step"] == 2 * 51
    assert_same_weights(final["model"], expected["model"])  # bitwise: the restart changed nothing
