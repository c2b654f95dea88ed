"""Run a network over a dataset in batches (evaluation mode, no gradients), and the numeric mode a
trained run predicts in."""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medsight.core.hardware import native_bf16

__all__ = ["Autocast", "autocast", "predicting_in", "run_model", "trained_dtype"]


class Autocast(nn.Module):
    """A network run under autocast to ``dtype``, its outputs returned in float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        with autocast(inputs.device, self.dtype):
            return self.model(inputs).float()


def predicting_in(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """``model`` run under autocast to ``dtype`` (:class:`Autocast`), or itself where ``dtype`` is
    None (fp32)."""
    return model if dtype is None else Autocast(model, dtype)


def trained_dtype(spatial_dims: int, run_dir: str | os.PathLike[str]) -> torch.dtype | None:
    """The autocast dtype a run's model predicts in by default: bf16 for a 3D model trained in bf16
    (the run's ``environment.json`` says) on a CPU that runs bf16 natively, None (fp32) otherwise.
    What is fitted on its outputs when training ends (a second stage, postprocessing) is fitted in
    the same mode, so that it meets the outputs it was fitted on."""
    if spatial_dims != 3 or not native_bf16():
        return None
    try:
        trained = json.loads((Path(run_dir) / "environment.json").read_text()).get("numeric_mode", {}).get("mode", "")
    except (OSError, ValueError, AttributeError):
        trained = ""
    return torch.bfloat16 if str(trained).startswith("bf16") else None


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
