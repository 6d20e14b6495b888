"""The process group of a run under ``torchrun`` (DistributedDataParallel: gloo on the CPU, NCCL on GPUs), or a
one-process stand-in with the same methods."""
from __future__ import annotations

import os
import sys

import torch


class Dist:
    """The process group when torchrun started us (WORLD_SIZE > 1), else a one-process stand-in."""

    def __init__(self, device_kind: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1 and not torch.distributed.is_initialized():
            # torch.distributed.nn binds `group.WORLD` as a default argument when it is imported. Imported after
            # init_process_group (DDP imports it lazily, through torch._dynamo), it pins the default group for good:
            # destroy_process_group then cannot join gloo's threads, and a worker can abort at exit ("terminate
            # called without an active exception": a gloo thread releasing a finished collective's tensors takes
            # the GIL while the interpreter finalizes, pytorch/pytorch#179291). Imported first, the defaults are None.
            from torch.distributed import nn as _  # noqa: F401
            torch.distributed.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo",
                                                 **attempt_store(self.rank, self.world))

    def sum(self, values: dict) -> dict:
        if self.world == 1:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (on every rank)."""
        if self.world == 1:
            return [obj]
        box = [None] * self.world
        torch.distributed.all_gather_object(box, obj)
        return box

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's buffers on every rank. DDP broadcasts them at the start of each training forward, and then
        each rank's BatchNorm updates its running statistics from its own batch: after an epoch's last step the
        ranks hold different statistics, and only rank 0's are saved. Validation must score the saved model."""
        if self.world > 1:
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def attempt_store(rank: int, world: int) -> dict:
    """init_process_group's store under a torchrun that may restart its workers.

    torchrun (c10d rendezvous) hands every attempt the same store server, its own, and torch no longer keys the
    process group's entries by attempt (pytorch/pytorch#135712). A restarted worker can then read the address a
    dead worker of the previous attempt published and fail to connect ("Connection refused"), or wait on it
    forever: 3 of 11 runs of our max-restarts scenario did, none of 26 since. With one agent (one node),
    TORCHELASTIC_RESTART_COUNT is the same for every worker of an attempt and new for each, so it keys the
    attempt's entries, as torch did before 2.5. Across nodes each agent counts on its own, so there we keep
    torch's store and rank 0 says how to opt out of the sharing (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1).
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}  # our own launch, or torchrun without the shared store: each attempt gets a fresh one
    if env.get("GROUP_WORLD_SIZE", "1") != "1":
        if rank == 0 and env.get("TORCHELASTIC_MAX_RESTARTS", "0") != "0":
            print("warning: torchrun shares one store across restarts, where a restarted worker can pick up a dead "
                  "worker's address (pytorch/pytorch#135712): start torchrun with "
                  "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 on every node", file=sys.stderr)
        return {}
    from torch.distributed.constants import default_pg_timeout

    store = torch.distributed.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world, is_master=False,
                                       timeout=default_pg_timeout)
    attempt = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {"store": torch.distributed.PrefixStore(f"classicnets_ext/attempt-{attempt}", store), "rank": rank,
            "world_size": world}
