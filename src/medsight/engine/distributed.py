"""What several processes (torchrun, DDP) need beyond DistributedDataParallel itself."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["gather", "is_main_process", "world_size"]


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
