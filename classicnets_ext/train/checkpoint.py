"""Crash-safe checkpoints.

A checkpoint is written to a temporary file in the same folder, flushed and fsync'ed, renamed over its final
name (atomic on POSIX) and the folder fsync'ed: a crash leaves either the old set of files or the new one,
never a half-written file under a checkpoint's name. Older ones are pruned only after the new one is in
place, so the last good checkpoint survives any failure. Loading tries the newest first; a file that does not
load (truncated, corrupt) is reported and the previous one used.

Loading unpickles with ``weights_only=True``: a checkpoint holds tensors and plain containers only, so a crafted
file cannot run code in ``evaluate`` or ``predict`` (a full unpickler calls whatever the file names).
"""
from __future__ import annotations

import os
import pickle
import random
import re
import sys

import torch

FORMAT = 1
# Every checkpoint this library has written holds these (evaluate, predict and --resume read them).
REQUIRED = ("model_name", "input_size", "classes", "mean", "std", "mean_mode", "flip", "pca", "config", "model",
            "optimizer", "scheduler", "scaler", "rng", "epoch", "batch", "step", "running", "history", "world_size",
            "batch_size")
_NAME = re.compile(r"^ckpt-e(\d+)-s(\d+)\.pt$")


def checkpoint_name(epoch: int, step: int) -> str:
    return f"ckpt-e{epoch:04d}-s{step:09d}.pt"


def _atomic_write(path: str, write) -> None:
    """write(f) into a temp file beside ``path``, fsync, rename over ``path``, fsync the folder: a crash leaves
    the old file or the new one, never a partial one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj, path: str) -> None:
    """``torch.save`` to ``path`` through temp file + fsync + rename (+ fsync of the folder)."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_copy(source: str, path: str) -> None:
    """Copy a finished checkpoint file to ``path`` the same crash-safe way (no unpickling and re-pickling)."""
    import shutil

    with open(source, "rb") as src:
        _atomic_write(path, lambda dst: shutil.copyfileobj(src, dst, 1 << 22))


def list_checkpoints(folder: str) -> list[str]:
    """The checkpoint files in ``folder``, oldest first (by step)."""
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(2)), name) for name in os.listdir(folder) if (m := _NAME.match(name))]
    return [os.path.join(folder, name) for _, name in sorted(found)]


def _numpy_globals() -> list:
    """What checkpoints written before the RNG states were plain lists hold besides tensors: numpy's RNG state as
    an ndarray (its class, dtype and rebuilder, under numpy 2's and numpy 1's module names). Rebuilding an ndarray
    runs no code of the file's choosing."""
    try:
        import numpy
    except ImportError:
        return []
    rebuild = numpy.ndarray.__reduce__(numpy.zeros(1))[0]  # numpy._core (2.x) or numpy.core (1.x) .multiarray
    found = [numpy.ndarray, numpy.dtype, (rebuild, "numpy.core.multiarray._reconstruct"),
             (rebuild, "numpy._core.multiarray._reconstruct")]
    dtypes = getattr(numpy, "dtypes", None)  # numpy >= 1.25: each dtype its own class
    return found + ([dtypes.UInt32DType] if dtypes is not None else [])


def load_checkpoint(path: str) -> dict:
    """A checkpoint's dict (tensors on the CPU); a ValueError naming the file when it does not load, holds
    anything but tensors and plain containers, or lacks a key of REQUIRED."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):  # a damaged file of the old, zip-less format
            raise ValueError(f"checkpoint {path} does not load (UnpicklingError: {str(error)[:200]})") from None
        refused = re.search(r"(?i)unsupported global:? (?:GLOBAL )?(\S+)", str(error))
        what = refused.group(1) if refused else "objects other than tensors and plain containers"
        raise ValueError(f"checkpoint {path} does not load: it refers to {what}, which no training checkpoint "
                         "holds (refused: unpickling it could run code)") from None
    except Exception as error:
        raise ValueError(f"checkpoint {path} does not load ({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a classicnets_ext training checkpoint (format {FORMAT})")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(map(repr, missing))}: not a whole classicnets_ext "
                         "training checkpoint")
    return state


def latest_good(folder: str, log=None, set_aside: bool = False) -> tuple[str, dict] | None:
    """(path, state) of the newest checkpoint in ``folder`` that loads; each bad one is reported (``log``,
    default stderr) and passed over. None when there is none. ``set_aside`` (a run about to resume): each bad
    file is renamed to ``<name>.bad``, kept for inspection but no longer a checkpoint, so that the resumed
    run's own checkpoints, whose steps may be lower, are the newest ones again when it prunes and resumes."""
    log = log or (lambda message: print(message, file=sys.stderr))
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path)
        except ValueError as error:
            if set_aside:
                os.replace(path, path + ".bad")
                error = f"{error} (set aside as {os.path.basename(path)}.bad)"
            log(f"warning: {error}; falling back to the previous checkpoint")
    return None


def prune(folder: str, keep: int, newest: str) -> None:
    """Delete all but the newest ``keep`` checkpoints up to ``newest``, the one just written, which is never
    deleted (called once it is safely in place)."""
    paths = list_checkpoints(folder)
    if keep <= 0 or newest not in paths:
        return
    for path in paths[:paths.index(newest) + 1][:-keep]:
        os.unlink(path)


def rng_state() -> dict:
    """The process's RNG states as tensors, lists and numbers, which ``weights_only`` loading accepts."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy
    except ImportError:
        return state
    numpy_state = numpy.random.get_state(legacy=False)
    numpy_state["state"] = {"key": numpy_state["state"]["key"].tolist(), "pos": int(numpy_state["state"]["pos"])}
    state["numpy"] = numpy_state
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy

        numpy.random.set_state(state["numpy"])  # the dict above, or an older checkpoint's tuple with an ndarray
