"""Start from weights the user has: state_dict or full checkpoint, remapped and adapted."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsight.core.errors import InputError
from medsight.models.registry import ModelSpec

__all__ = ["LoadReport", "backbone_parameters", "freeze_backbone", "load_checkpoint", "load_pretrained", "unfreeze"]

log = logging.getLogger(__name__)

_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "ema_state_dict")
_PREFIXES = ("module.", "model.", "net.", "network.", "backbone.", "encoder.")


@dataclass
class LoadReport:
    """What happened to each weight when loading a checkpoint."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file (kept fresh)
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model (ignored)
    mismatched: list[str] = field(default_factory=list)  # same name, other shape (kept fresh)
    adapted: list[str] = field(default_factory=list)  # reshaped to fit (e.g. 3 -> 1 input channels)

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)}, adapted {len(self.adapted)}, kept fresh {len(self.missing)} missing "
            f"and {len(self.mismatched)} mismatched, ignored {len(self.unexpected)} unexpected"
        )


def load_checkpoint(path: str | os.PathLike[str]) -> Any:
    """A checkpoint's contents, unpickled with ``weights_only=True``: tensors, numbers, strings and
    containers only; a file that would run code or build other objects is refused.

    Raises:
        InputError: no such file, or not a loadable weights-only checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or pickled-object files
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        reason = (
            f"it holds a pickled {found.group(1)} object, which could run code"
            if found
            else f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'unreadable'}"
        )
        raise InputError(
            f"{path} is not a loadable PyTorch checkpoint ({reason}); medsight loads state_dicts and dicts "
            "of tensors only (no pickled code)"
        ) from exc


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    data = load_checkpoint(path)
    for key in _CONTAINER_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputError(f"{path} holds no state_dict (a dict of tensors, possibly under {_CONTAINER_KEYS})")
    return data


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _torchvision_densenet(key: str) -> str:
    """torchvision DenseNet names -> MONAI's (``denselayer1.norm1`` -> ``denselayer1.layers.norm1``)."""
    key = re.sub(r"(denselayer\d+)\.(norm|relu|conv)(\d)", r"\1.layers.\2\3", key)
    return re.sub(r"^classifier\.", "class_layers.out.", key)


def load_pretrained(model: nn.Module, path: str | os.PathLike[str], spec: ModelSpec) -> LoadReport:
    """Load what fits of a checkpoint into ``model``; report the rest.

    Handles DDP/Lightning-style prefixes (``module.``, ``model.``...), checkpoints that wrap
    the weights (``{"state_dict": ...}``), torchvision DenseNet names, and a 3-channel first
    convolution loaded into a 1-channel model (weights averaged over the colour channels).
    Tensors whose shape does not fit (typically the head when the classes differ) keep
    their fresh initialisation.
    """
    source = {_torchvision_densenet(_strip(k)): v for k, v in _state_dict(Path(path)).items()}
    target = model.state_dict()
    report = LoadReport()
    merged = dict(target)
    for key, value in source.items():
        if key not in target:
            report.unexpected.append(key)
            continue
        want = target[key]
        if value.shape == want.shape:
            merged[key] = value.to(want.dtype)
            report.loaded.append(key)
        elif key == spec.first_conv and value.ndim == want.ndim and value.shape[1] == 3 and want.shape[1] == 1:
            merged[key] = value.mean(dim=1, keepdim=True).to(want.dtype)
            report.adapted.append(key)
        else:
            report.mismatched.append(key)
    report.missing = [k for k in target if k not in source]
    model.load_state_dict(merged)
    if not report.loaded:
        raise InputError(
            f"none of the {len(source)} tensors in {path} fit this model: is it a checkpoint of another "
            f"architecture? (first keys: {list(source)[:3]})"
        )
    log.info("%s: %s", Path(path).name, report.summary())
    return report


def backbone_parameters(model: nn.Module, spec: ModelSpec) -> list[nn.Parameter]:
    """Every parameter outside the classification head (what transfer learning warms up around)."""
    return [parameter for name, parameter in model.named_parameters() if not name.startswith(spec.head)]


def freeze_backbone(model: nn.Module, spec: ModelSpec) -> int:
    """Train only the head; return the number of frozen parameter tensors."""
    frozen = 0
    for name, parameter in model.named_parameters():
        trainable = name.startswith(spec.head)
        parameter.requires_grad_(trainable)
        frozen += int(not trainable)
    return frozen


def unfreeze(model: nn.Module) -> None:
    """Make every parameter trainable again (after warming up the head)."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)
