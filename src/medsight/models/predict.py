"""Run a network over a dataset in batches (evaluation mode, no gradients)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["autocast", "run_model"]


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to ``dtype`` on ``device``'s type; a context that changes nothing when ``dtype`` is None
    (fp32)."""
    return torch.autocast(torch.device(device).type, dtype=dtype) if dtype is not None else nullcontext()


def run_model(
    model: nn.Module,
    data: Dataset,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    num_workers: int = 0,
) -> torch.Tensor:
    """Logits for every item of ``data`` (items are ``(input, target)`` or inputs), on the CPU, in order."""
    device = torch.device(device)
    model = model.to(device).eval()
    outputs = []
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    with torch.no_grad():
        for batch in loader:
            inputs = batch[0] if isinstance(batch, list | tuple) else batch
            with autocast(device, amp_dtype):
                logits = model(inputs.to(device))
            outputs.append(logits.float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)
