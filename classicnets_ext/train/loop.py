"""The training loop: momentum SGD with weight decay, LR / 10 on a validation-loss plateau, crash-safe
checkpoints with exact resume, and DistributedDataParallel when started by ``torchrun``.

Exact resume: a checkpoint holds the model, optimizer, scheduler, grad scaler, RNG states and the position in
the epoch (the sampler's permutation is a function of seed and epoch, so the position is a batch index); the
augmentation draws from per-sample seeds. A resumed run therefore computes what the uninterrupted run would.

Distributed: ``torchrun`` sets RANK / WORLD_SIZE; each process trains on its ``DistributedSampler`` shard
with ``--batch-size`` images per step, DDP averages the gradients (gloo on the CPU, NCCL on GPUs), metrics are
summed across ranks, and only rank 0 writes.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import flags
from .config import DEFAULTS, TrainConfig, given_settings, with_recipe
from .data import DataError, check_data, open_data, resolve_data, same_data, split_by_fraction, split_files
from .distributed import Dist
from .evaluate import averaged, logits_of, member_log_probs, score
from .report import Reporter, check_folder
from .transforms import Pipeline, dataset_statistics

AUX_WEIGHT = 0.3  # GoogLeNet (Szegedy et al. 2014, Section 5): aux losses added with weight 0.3
_STEP_DELAY = float(os.environ.get("CLASSICNETS_TRAIN_STEP_DELAY", "0"))  # tests: widen the kill window


def _check_model_and_device(config: TrainConfig) -> None:
    """The model name and the device: checked before the run folder is made, so a mistyped command leaves none."""
    from ..models import get_model_entry

    try:
        get_model_entry(config.model)
    except ValueError as error:
        raise ValueError(f"MODEL: {error}") from None
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch")


def _device(config: TrainConfig, dist: Dist) -> torch.device:
    kind = config.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    return torch.device(kind)


def _loss(output, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, main logits); GoogLeNet's aux heads add their weighted losses in train mode."""
    logits = logits_of(output)
    loss = F.cross_entropy(logits.float(), y)
    if logits is not output:
        for aux in output[1:]:
            if aux is not None:
                loss = loss + AUX_WEIGHT * F.cross_entropy(aux.float(), y)
    return loss, logits


class _EpochBatches(torch.utils.data.Dataset):
    """One epoch's remaining batches as a map-style dataset, so a DataLoader's workers can build them."""

    def __init__(self, pipeline: Pipeline, split, batches: list[list[int]], epoch: int):
        self.pipeline, self.split, self.batches, self.epoch = pipeline, split, batches, epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        try:
            return self.pipeline.train_batch(self.split, self.batches[i], self.epoch)
        except DataError as error:
            # Returned, not raised: a DataLoader worker would wrap it in a new error whose message is the
            # worker's whole traceback; the loop raises it as it is, one line as with --workers 0.
            return error


def sampler_seed(seed: int) -> int:
    """The seed of the training order. DistributedSampler shuffles epoch e with seed + e, so consecutive seeds
    (an ensemble's members) would walk one sequence of orders shifted by an epoch: member k's epoch e is member
    0's epoch e + k. A multiplicative hash spreads them apart; seed 0 keeps its orders."""
    return (seed * 0x9E3779B97F4A7C15) % 2 ** 63


def train(config: TrainConfig) -> dict:
    """Train ``config.model`` (``config.ensemble`` members with seeds seed, seed+1, ...); returns the summary
    (val scores, checkpoint paths, and for an ensemble each member's and the ensemble's scores)."""
    if isinstance(config.model, str):  # names in any case, as get_model takes them: the recipe, runs/<name>, resume
        config = dataclasses.replace(config, model=config.model.lower())
    given = given_settings(config)
    config = dataclasses.replace(with_recipe(config), data=resolve_data(config.data))
    out = config.out or os.path.join("runs", config.model)
    _check_model_and_device(config)
    check_data(config.data)  # a mistyped name, before the run folder is made
    made = not os.path.exists(out)
    check_folder(out, "--out")  # before the first epoch, not when its checkpoint is written
    _check_layout(out, config.ensemble)
    # A process group this run starts (under torchrun, see Dist) is this run's to destroy, as torch asks: the
    # destruction joins gloo's threads, none of which may outlive the interpreter (see Dist). A caller's own
    # group is left alone.
    owned = torch.distributed.is_available() and not torch.distributed.is_initialized()
    try:
        if config.ensemble <= 1:
            return _train_one(config, given)
        results = [_train_one(dataclasses.replace(config, seed=config.seed + k, ensemble=1,
                                                  out=os.path.join(out, f"member-{k + 1}")), given)
                   for k in range(config.ensemble)]
        return _ensemble_report(config, out, results)
    except BaseException:
        if made:  # a run refused before it wrote anything (data that leaves no training images) leaves no folder
            _remove_empty_folders(out)
        raise
    finally:
        if owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _remove_empty_folders(path: str) -> None:
    """Remove ``path`` and the folders under it if none of them holds a file."""
    for root, _, files in os.walk(path, topdown=False):
        if files or os.listdir(root):
            return
        os.rmdir(root)


def _train_one(config: TrainConfig, given: frozenset[str]) -> dict:
    from ..models import get_model_entry

    entry = get_model_entry(config.model)  # known: _check_model_and_device
    device_kind = "cuda" if config.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    dist = Dist(device_kind if config.device == "auto" else config.device)
    device = _device(config, dist)
    out = config.out or os.path.join("runs", config.model)
    folder = os.path.join(out, "checkpoints")
    report = Reporter(out, dist.rank == 0, config.quiet)

    path, resumed = _resume_point(config, dist, folder, out, report)
    channels = entry.input_size[0]
    crop = config.image_size or entry.input_size[-1]
    if resumed:
        stored = resumed["config"]
        config = dataclasses.replace(config, **{k: stored[k] for k in DEFAULTS if k not in given and k in stored})
        _check_resumable(resumed, config, dist, crop)
    data = _open_run_data(config, channels, crop, resumed, dist, report)

    torch.manual_seed(config.seed)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = entry.builder(num_classes=len(data.classes), memory_format=memory_format).to(device)
    batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    torch.manual_seed(config.seed + 1_000_003 * dist.rank)  # the same init everywhere, each rank its own dropout
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                           patience=config.patience)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    epoch, start_batch, step, history = 0, 0, 0, []
    running = {"loss": 0.0, "top1": 0.0, "count": 0.0}
    spent = {"elapsed": 0.0, "cpu_elapsed": 0.0}  # wall and CPU time of the run before this process
    if resumed:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
        _apply_new_settings(resumed["config"], config, optimizer, scheduler, report)
        epoch, start_batch, step, history = resumed["epoch"], resumed["batch"], resumed["step"], resumed["history"]
        _restore_rng(resumed, config, dist)
        if dist.rank == 0:  # the stored sums are already reduced over all ranks
            running = dict(resumed["running"])
        # Checkpoints before the clock was stored: the last finished epoch's time, when it made it in.
        spent = resumed.get("elapsed") or {k: history[-1].get(k, 0.0) if history else 0.0 for k in spent}
        report.notice(f"resumed from {path}: " + (f"epoch {epoch + 1}, batch {start_batch}, step {step}"
                                                  if epoch < config.epochs else
                                                  f"the run had finished its {epoch} epochs (step {step})"))

    net = model
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)
    sampler = torch.utils.data.DistributedSampler(data.train, num_replicas=dist.world, rank=dist.rank,
                                                  shuffle=True, seed=sampler_seed(config.seed))
    val_positions = list(range(dist.rank, len(data.val), dist.world))

    def save(next_epoch: int, next_batch: int) -> str | None:
        sums = dist.sum(running)  # every rank joins the reductions; rank 0 writes
        rngs = dist.gather(ckpt.rng_state())
        if dist.rank != 0:
            return None
        path = os.path.join(folder, ckpt.checkpoint_name(next_epoch, step))
        ckpt.atomic_save({
            "format": ckpt.FORMAT, "model_name": config.model, "input_size": (channels, crop, crop),
            "mean_mode": config.mean, **data.stored(), "config": dataclasses.asdict(config),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rngs, "epoch": next_epoch, "batch": next_batch, "step": step,
            "running": sums, "history": history, "world_size": dist.world, "batch_size": config.batch_size,
            "elapsed": elapsed()}, path)
        ckpt.prune(folder, config.keep, newest=path)
        return path

    def elapsed() -> dict:
        return {"elapsed": time.perf_counter() - start_time, "cpu_elapsed": time.process_time() - cpu_start}

    start_time, cpu_start = time.perf_counter() - spent["elapsed"], time.process_time() - spent["cpu_elapsed"]
    # The resumed checkpoint stays the run's latest until a newer one is written: a run resumed after its last
    # epoch was saved (killed before model.pt) writes nothing new.
    last = path if dist.rank == 0 else None
    # (A finished run resumed with a lower --max-steps is finished, not stopped: it reports its last epoch.)
    stopped = config.max_steps is not None and step >= config.max_steps and epoch < config.epochs
    dropped_logged = False
    while epoch < config.epochs and not stopped:
        sampler.set_epoch(epoch)
        positions = list(sampler)
        batches = [positions[i:i + config.batch_size] for i in range(0, len(positions), config.batch_size)]
        if batch_norm and len(batches) > 1 and len(batches[-1]) == 1:
            # BatchNorm cannot normalise one image whose maps shrink to 1 x 1 (a small --image-size). The
            # DistributedSampler gives every rank as many positions, so every rank drops its batch alike; the
            # image left out differs from epoch to epoch.
            batches.pop()
            if not dropped_logged:
                report.log(f"--batch-size {config.batch_size}: each epoch's last batch would hold 1 image, which "
                           f"{config.model}'s BatchNorm cannot train on: it is left out")
                dropped_logged = True
        loader = _EpochBatches(data.pipeline, data.train, batches[start_batch:], epoch)
        if config.workers > 0:
            # A loader draws its workers' base seed from the generator it is given, else from torch's global
            # one, and it starts afresh on a resumed epoch: that extra draw shifted every dropout mask after a
            # --resume. The workers draw nothing random (augmentation is hashed per sample), so any fixed seed
            # serves.
            seed = torch.Generator().manual_seed(config.seed + epoch)
            loader = torch.utils.data.DataLoader(loader, batch_size=None, num_workers=config.workers, generator=seed)
        bar = report.bar(len(batches), start_batch, f"epoch {epoch + 1}/{config.epochs}")
        net.train()
        epoch_start, images = time.perf_counter(), 0
        for b, batch in enumerate(loader, start=start_batch):
            if isinstance(batch, DataError):
                raise batch
            x, y = batch
            x, y = x.to(device, memory_format=memory_format, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=config.amp):
                loss, logits = _loss(_forward(net, x, config, crop, entry.input_size[-1], len(data.train), dist.world), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            n = len(y)
            images += n
            running["loss"] += float(loss.detach()) * n
            running["top1"] += float((logits.detach().argmax(1) == y).sum())
            running["count"] += n
            if not math.isfinite(running["loss"]):
                raise FloatingPointError(f"the training loss is {running['loss']} at step {step}: lower --lr")
            bar.update(n, running["loss"] / running["count"], running["top1"] / running["count"],
                       optimizer.param_groups[0]["lr"])
            if _STEP_DELAY:
                time.sleep(_STEP_DELAY)
            if config.max_steps is not None and step >= config.max_steps:
                last, stopped = save(epoch, b + 1), True
                break
            if config.checkpoint_every and step % config.checkpoint_every == 0 and b + 1 < len(batches):
                last = save(epoch, b + 1)
        bar.close()
        if stopped:
            break
        seconds = time.perf_counter() - epoch_start
        train_sums = dist.sum(running)
        net.eval()
        dist.sync_buffers(model)
        # The bare module: parameters are in sync, and DDP's forward could start collectives (buffer
        # broadcasts) that ranks with unequal val shards would not match.
        val = averaged(dist.sum(score(member_log_probs(model, data.pipeline, data.val, val_positions,
                                                       config.batch_size * 2, device,
                                                       channels_last=config.channels_last),
                                      data.val.labels[val_positions])))
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step(val["loss"])
        history.append({"epoch": epoch + 1, "step": step, "lr": lr,
                        "train_loss": train_sums["loss"] / train_sums["count"],
                        "train_top1": train_sums["top1"] / train_sums["count"], "val_loss": val["loss"],
                        "val_top1": val["top1"], "val_top5": val["top5"],
                        "images_per_s": dist.sum({"n": images})["n"] / seconds, "seconds": seconds})
        _log_epoch(report, config, history[-1], optimizer.param_groups[0]["lr"])
        epoch, start_batch = epoch + 1, 0
        running = {"loss": 0.0, "top1": 0.0, "count": 0.0}
        # The run's wall and CPU time so far, across resumes (bench: per epoch; CPU time: a loaded machine's
        # bench), recorded before the save so that a resumed run's metrics keep it.
        history[-1].update(elapsed())
        last = save(epoch, 0)
        report.write_metrics(history)

    report.write_metrics(history, plot=True)
    result = {"model": config.model, "data": config.data, "seed": config.seed, "out": out, "checkpoint": last,
              "step": step, "epochs": epoch, "seconds": time.perf_counter() - start_time, "history": history,
              "val": {k: history[-1][k] for k in ("val_loss", "val_top1", "val_top5")} if history else None}
    if dist.rank == 0 and last is not None:
        ckpt.atomic_copy(last, os.path.join(out, "model.pt"))
        result["checkpoint"] = os.path.join(out, "model.pt")
    if history and not stopped:
        v = history[-1]
        report.always(f"{config.model} on {config.data}: val top-1 {100 * v['val_top1']:.2f}% top-5 "
                      f"{100 * v['val_top5']:.2f}% loss {v['val_loss']:.4f} after {epoch} epochs, {step} steps, "
                      f"{result['seconds']:.1f} s -> {result['checkpoint']}")
    elif stopped and last is not None:  # mid-epoch: no validation score to give, but where the run is
        report.always(f"{config.model} on {config.data}: stopped at --max-steps {config.max_steps} (epoch {epoch + 1}, "
                      f"step {step}), {result['seconds']:.1f} s -> {result['checkpoint']}; --resume continues it")
    return result


def _resume_point(config: TrainConfig, dist: Dist, folder: str, out: str,
                  report: Reporter) -> tuple[str | None, dict | None]:
    """The checkpoint the run goes on from, and what it holds ((None, None): a fresh start). Rank 0 decides;
    every rank then reads the file (a shared file system)."""
    path = None
    if dist.rank == 0 and ckpt.list_checkpoints(folder):
        if not config.resume:
            raise ValueError(f"--out: {out} already holds checkpoints; pass --resume to continue that run, "
                             "or choose another --out")
        path = _pick_resume(folder, report)
    elif dist.rank == 0 and config.resume:
        report.notice(f"--resume: no checkpoint in {folder} yet: starting from scratch")
    path = dist.broadcast(path)
    return path, ckpt.load_checkpoint(path) if path else None


@dataclass
class _RunData:
    """A run's two splits, and the statistics and augmentation settings fixed at its start: stored in every
    checkpoint, so that --resume, evaluate and predict see the images as training did."""
    train: object
    val: object
    classes: list
    files: object  # split_files(val): what --resume checks the tree against
    flip: bool  # whether a mirror image keeps its class (ten-crop reads it too)
    mean: torch.Tensor
    std: torch.Tensor
    pca: object
    shift: object
    distort: bool
    pipeline: Pipeline

    def stored(self) -> dict:
        return {"classes": self.classes, "mean": self.mean, "std": self.std, "flip": self.flip, "pca": self.pca,
                "shift": self.shift, "distort": self.distort, "split_files": self.files}


def _open_run_data(config: TrainConfig, channels: int, crop: int, resumed: dict | None, dist: Dist,
                   report: Reporter) -> _RunData:
    classes = resumed["classes"] if resumed else None
    with warnings.catch_warnings():
        if dist.rank != 0:  # --skip-bad's warnings, once (every rank reads the same files)
            warnings.simplefilter("ignore")
        train_split, val_split = open_data(config.data, channels, crop, config.val_fraction, config.skip_bad, classes)
    files = split_files(val_split)
    if resumed and resumed.get("split_files") not in (None, files):
        raise ValueError(f"--resume: the images under --data {config.data} changed since the run began "
                         f"({resumed['split_files'][0]} then, {files[0] if files else 'another layout'} now): the "
                         "held-out split, drawn from the list of files, would change and take training images; "
                         "restore them or start a new --out")
    flip = train_split.source.flip
    if config.augment and not flip:
        report.log(f"{config.data}: horizontal flips off (a mirrored digit is another shape)")
    if resumed:
        # Runs from before the digits' crop bound (DIGIT_SHIFT) or their distortions stored no shift or distort:
        # they go on as they began (an explicit --distort / --no-distort still decides).
        mean, std, pca, shift = resumed["mean"], resumed["std"], resumed["pca"], resumed.get("shift")
        distort = resumed.get("distort", False)
    else:
        mean, std, pca = dataset_statistics(train_split, config.mean)
        shift, distort = train_split.source.shift, train_split.source.distort
        if config.std == "none":
            std = torch.ones_like(std)
    distort = config.augment and (distort if config.distort is None else config.distort)
    if distort:
        report.log(f"{config.data}: LeNet-5's random affine distortions on (--no-distort: off)")
    pipeline = Pipeline(mean, crop, channels, flip and config.augment, config.lighting if config.augment else 0.0,
                        pca, config.seed, random_crop=config.augment, std=std, shift=shift, distort=distort)
    return _RunData(train_split, val_split, train_split.source.classes, files, flip, mean, std, pca, shift,
                    distort, pipeline)


def _restore_rng(resumed: dict, config: TrainConfig, dist: Dist) -> None:
    rng = resumed["rng"]
    ckpt.set_rng_state(rng[dist.rank] if len(rng) == dist.world else rng[0])
    if len(rng) != dist.world and dist.rank > 0:
        # Another process count (allowed at an epoch boundary): ranks without a state of their own draw
        # their own dropout, as a fresh run's ranks do, instead of rank 0's masks.
        torch.manual_seed(config.seed + 1_000_003 * dist.rank + resumed["step"])


def _forward(net, x: torch.Tensor, config: TrainConfig, crop: int, native: int, train_images: int, world: int):
    """``net(x)``, with the two errors a user's flags cause deep inside a model said in the flags' terms."""
    try:
        return net(x)
    except RuntimeError as error:  # a fixed-size network fed another size fails deep inside
        if crop == native:
            raise
        raise ValueError(f"--image-size {crop}: {config.model} does not take {crop}x{crop} inputs "
                         f"(its own size is {native}): {str(error)[:300]}") from None
    except ValueError as error:  # every batch of one image, not just a trailing one (dropped by the loop)
        if "more than 1 value per channel" not in str(error):
            raise
        if -(-train_images // world) == 1:  # the split, not the batch size: each process gets one image
            per = f" for {world} processes" if world > 1 else ""
            raise ValueError(f"the training split holds {train_images} image(s){per}, and {config.model}'s "
                             f"BatchNorm cannot train on one image at a time: add images or lower "
                             f"--val-fraction") from None
        raise ValueError(f"--batch-size {config.batch_size}: {config.model}'s BatchNorm cannot train on one image "
                         f"at a time here ({error})") from None


def _log_epoch(report: Reporter, config: TrainConfig, row: dict, new_lr: float) -> None:
    report.log(f"epoch {row['epoch']}/{config.epochs}: train loss {row['train_loss']:.4f} "
               f"top-1 {100 * row['train_top1']:.2f}% | val loss {row['val_loss']:.4f} top-1 "
               f"{100 * row['val_top1']:.2f}% top-5 {100 * row['val_top5']:.2f}% | lr {row['lr']:.3g} | "
               f"{row['images_per_s']:.0f} img/s")
    if new_lr < row["lr"]:
        report.log(f"ReduceLROnPlateau: val loss has not improved for {config.patience + 1} epochs: "
                   f"lr {row['lr']:.3g} -> {new_lr:.3g}")


def _pick_resume(folder: str, report: Reporter) -> str | None:
    found = ckpt.latest_good(folder, log=report.notice, set_aside=True)
    if found is None:
        report.notice(f"warning: no checkpoint in {folder} loads: starting from scratch")
        return None
    return found[0]


def _apply_new_settings(stored: dict, config: TrainConfig, optimizer, scheduler, report: Reporter) -> None:
    """The optimizer's and the scheduler's settings that ``config`` changes from the run's stored config, set on
    the resumed optimizer / scheduler (whose loaded state holds the old ones) and logged: resuming with a lower
    --lr is the notes' (and AlexNet's) manual LR drop. A setting not given on the command line is the run's
    (given_settings), and one given as before leaves the resumed state as it is, including an LR that
    ReduceLROnPlateau has lowered since."""
    if stored.get("epochs") != config.epochs:
        report.log(f"--resume: --epochs {config.epochs} (the run had {stored.get('epochs')})")
    for field in ("lr", "momentum", "weight_decay"):
        if stored.get(field) != getattr(config, field):
            was = optimizer.param_groups[0][field]
            for group in optimizer.param_groups:
                group[field] = getattr(config, field)
            report.log(f"--resume: {flags.flag(field)} {getattr(config, field):g} (the run had "
                       f"{stored.get(field)}; its optimizer was at {was:g})")
    if stored.get("patience") != config.patience:
        scheduler.patience = config.patience
        report.log(f"--resume: --patience {config.patience} (the run had {stored.get('patience')})")


def _check_resumable(state: dict, config: TrainConfig, dist: Dist, crop: int) -> None:
    stored = state["config"]
    if state["model_name"] != config.model:
        raise ValueError(f"--resume: the checkpoint is of {state['model_name']!r}, not MODEL {config.model!r}")
    if not same_data(stored["data"], config.data):
        raise ValueError(f"--resume: the checkpoint trained on --data {stored['data']!r}, not {config.data!r}")
    if state["batch"] and (state["world_size"], state["batch_size"]) != (dist.world, config.batch_size):
        raise ValueError(f"--resume: the checkpoint stopped mid-epoch with {state['world_size']} process(es) x "
                         f"--batch-size {state['batch_size']}; resume with the same")
    # The stored mean and std were computed for this input size and these modes, and are kept on resume.
    fixed = {"--image-size": (state["input_size"][-1], crop), "--mean": (state["mean_mode"], config.mean),
             "--std": (stored.get("std", "channel"), config.std)}
    if split_by_fraction(config.data):  # the held-out split, and with it the training split and its statistics
        fixed["--val-fraction"] = (stored["val_fraction"], config.val_fraction)
    if state["batch"]:  # mid-epoch: the sampler's order, a function of the seed, must carry on as it was
        fixed["--seed"] = (stored["seed"], config.seed)
        if config.epochs <= state["epoch"]:
            # The loop would not run and the run would end on a model in the middle of an epoch that has no
            # validation score, reported with the previous epoch's.
            raise ValueError(f"--resume: the checkpoint stopped in the middle of epoch {state['epoch'] + 1}; pass "
                             f"--epochs {state['epoch'] + 1} or more to finish it")
    for flag, (was, now) in fixed.items():
        if was != now:
            how = "stopped mid-epoch with" if flag == "--seed" else "was trained with"
            raise ValueError(f"--resume: the checkpoint {how} {flag} {was}, not {now}; resume with the same")


def _check_layout(out: str, ensemble: int) -> None:
    """A ValueError when ``out`` holds the other kind of run: a single model's checkpoints/ beside an ensemble's
    member-K/ folders would each be resumed (or trained anew) as the wrong kind, silently."""
    members = sorted((name for name in os.listdir(out) if re.fullmatch(r"member-\d+", name)),
                     key=lambda name: int(name[7:])) if os.path.isdir(out) else []
    if ensemble <= 1 and members:
        raise ValueError(f"--ensemble: {out} holds an ensemble's members ({', '.join(members)}); pass --ensemble "
                         f"{len(members)} to continue it, or choose another --out")
    if ensemble > 1 and ckpt.list_checkpoints(os.path.join(out, "checkpoints")):
        raise ValueError(f"--ensemble {ensemble}: {out} holds a single model's run (checkpoints/); drop --ensemble "
                         "to continue it, or choose another --out")


def _ensemble_report(config: TrainConfig, out: str, results: list[dict]) -> dict:
    from .evaluate import evaluate

    dist_rank = int(os.environ.get("RANK", "0"))
    summary = {"members": results, "ensemble": None}
    if dist_rank != 0 or any(r["checkpoint"] is None for r in results):
        return summary
    scores = evaluate([os.path.abspath(r["checkpoint"]) for r in results], config.data, skip_bad=config.skip_bad)
    summary.update(scores)
    report = Reporter(out, True, config.quiet)
    for k, member in enumerate(scores["members"]):
        report.always(f"member {k + 1} (seed {results[k]['seed']}): val top-1 {100 * member['top1']:.2f}% "
                      f"top-5 {100 * member['top5']:.2f}% loss {member['loss']:.4f}")
    e = scores["ensemble"]
    report.always(f"ensemble of {len(results)}: val top-1 {100 * e['top1']:.2f}% top-5 {100 * e['top5']:.2f}% "
                  f"loss {e['loss']:.4f} (best member {100 * max(m['top1'] for m in scores['members']):.2f}%, "
                  f"lowest member loss {min(m['loss'] for m in scores['members']):.4f})")
    import json

    with open(os.path.join(out, "ensemble.json"), "w") as f:
        json.dump(scores, f, indent=1)
    return summary
