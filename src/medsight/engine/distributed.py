"""What several processes (torchrun, DDP) need beyond DistributedDataParallel itself."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from medsight.core.errors import ConfigError

__all__ = [
    "barrier",
    "broadcast_buffers",
    "gather",
    "is_main_process",
    "launched_by_torchrun",
    "process_group",
    "rank",
    "world_size",
]

log = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    """True inside a process that ``torchrun`` started as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


@contextmanager
def process_group(device: str = "auto") -> Iterator[bool]:
    """Join the process group ``torchrun`` describes in the environment, for the block's duration.

    Yields True when a group was joined (nccl on CUDA, gloo on CPU; each process takes the GPU
    of its LOCAL_RANK), False in a single process or when a group already exists (the caller
    owns it). On success the group is torn down behind a barrier, so no rank leaves while
    another still talks; on an error it is torn down at once and torchrun stops the others.
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        yield False
        return
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        local, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= count:
            raise ConfigError(
                f"process {local} on this machine has no GPU of its own ({count} GPU(s)): start at most "
                f"{count} processes per machine, or train on CPUs with --device cpu"
            )
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    log.info("process %d of %d joined the %s group", dist.get_rank(), dist.get_world_size(), dist.get_backend())
    try:
        yield True
    except BaseException:
        # no barrier: the other ranks may be inside a collective; torchrun stops them
        dist.destroy_process_group()
        raise
    dist.barrier()
    dist.destroy_process_group()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if world_size() > 1:
        dist.barrier()


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0, or without a process group: the process that writes and prints."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor from every rank along dim 0, in rank order (shards may differ in size).

    Metrics must be computed on the gathered predictions of the whole validation set, not
    averaged per rank (AUC of shards is not the AUC of the set).
    """
    if world_size() == 1:
        return tensor
    parts: list[torch.Tensor | None] = [None] * world_size()
    dist.all_gather_object(parts, tensor.detach().cpu())
    return torch.cat([p for p in parts if p is not None], dim=0).to(tensor.device)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics) before scoring.

    DistributedDataParallel broadcasts buffers at the start of each training forward, but the
    forward itself then updates them from each rank's own batch: after an epoch the ranks hold
    slightly different statistics. Validation must score the model rank 0 saves, on every shard.
    """
    if world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)
