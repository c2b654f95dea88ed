"""Class activation maps (Zhou et al. 2016) of image classifiers, and boxes drawn from them.

A classifier whose head is a linear layer over globally pooled features (every registered 2D
network: ResNets, DenseNet-121, EfficientNet) weighs each feature map by the head's weight for a
class; the weighted sum is where the network saw that class. Boxes around the map's strongest
region localise a finding without any box in training (as ChestX-ray8's authors did).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from scipy import ndimage
from torch import nn

from medsight.core.errors import ConfigError, InputError

__all__ = ["cam_box", "class_activation_maps"]


def class_activation_maps(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(B, K)`` and class activation maps ``(B, K, h, w)`` of ``images``.

    The maps are the head's weights applied to the last feature map (spatial, with as many
    channels as the head takes) computed before the head runs.

    Raises:
        ConfigError: the network's last layer is not a linear head over pooled feature maps.
    """
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ConfigError(f"{type(model).__name__} has no linear head: class activation maps need one")
    head = heads[-1]
    seen: list[torch.Tensor] = []

    def keep(_: nn.Module, __: object, output: object) -> None:
        if (isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[1] == head.in_features
                and output.shape[-2] * output.shape[-1] > 1):  # fmt: skip
            seen.append(output)

    def stop(_: nn.Module, __: object) -> None:
        seen.append(torch.empty(0))  # a marker: feature maps after the head are not its input

    hooks = [m.register_forward_hook(keep) for m in model.modules() if m is not model]
    hooks.append(head.register_forward_pre_hook(stop))
    try:
        with torch.no_grad():
            logits = model(images)
    finally:
        for hook in hooks:
            hook.remove()
    before = seen[: next((i for i, t in enumerate(seen) if t.numel() == 0), len(seen))]
    if not before:
        raise ConfigError(f"{type(model).__name__}: no feature map of {head.in_features} channels feeds its head")
    features = before[-1].float()
    maps = torch.einsum("kc,bchw->bkhw", head.weight.detach().float(), features)
    return logits.float(), maps


def cam_box(cam: np.ndarray, size: int, *, fraction: float = 0.5) -> tuple[float, float, float, float, float, float]:
    """The box ``x0, y0, x1, y1`` (pixels of a ``size``-pixel square image) around the region of a
    class activation map ``(h, w)`` that holds its maximum and stays at or above ``fraction`` of
    its range (the map resized to the image, bilinear), and the maximum's position ``x, y`` (the
    pixel's centre)."""
    if cam.ndim != 2 or not np.all(np.isfinite(cam)):
        raise InputError(f"a class activation map is a finite (h, w) array; got shape {cam.shape}")
    up = F.interpolate(torch.from_numpy(np.ascontiguousarray(cam, np.float32))[None, None], size=(size, size),
                       mode="bilinear", align_corners=False)[0, 0].numpy()  # fmt: skip
    low, high = float(up.min()), float(up.max())
    peak = np.unravel_index(int(np.argmax(up)), up.shape)
    centre = (float(peak[1]) + 0.5, float(peak[0]) + 0.5)
    if high <= low:
        return 0.0, 0.0, float(size), float(size), *centre
    regions, _ = ndimage.label(up >= low + fraction * (high - low), structure=np.ones((3, 3), bool))
    ys, xs = np.nonzero(regions == regions[peak])
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1), *centre
