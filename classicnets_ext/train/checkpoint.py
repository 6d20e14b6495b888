"""Crash-safe checkpoints.

A checkpoint is written to a temporary file in the same folder, flushed and fsync'ed, renamed over its final
name (atomic on POSIX) and the folder fsync'ed: a crash leaves either the old set of files or the new one,
never a half-written file under a checkpoint's name. Older ones are pruned only after the new one is in
place, so the last good checkpoint survives any failure. Loading tries the newest first; a file that does not
load (truncated, corrupt) is reported and the previous one used.
"""
from __future__ import annotations

import os
import random
import re
import sys

import torch

FORMAT = 1
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


def load_checkpoint(path: str) -> dict:
    """A checkpoint's dict (tensors on the CPU); a ValueError naming the file when it does not load."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ValueError(f"checkpoint {path} does not load ({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a classicnets_ext training checkpoint (format {FORMAT})")
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
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy

        state["numpy"] = numpy.random.get_state()
    except ImportError:
        pass
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy

        numpy.random.set_state(state["numpy"])
