"""A ResNet that scores every cell of an image instead of the whole image (2D lesion detection).

The registry's ResNets end in global pooling and one vector per image. For detection, the same
backbone keeps its feature maps: a small feature pyramid joins the stride-8, 16 and 32 stages
(lateral 1x1 convolutions, nearest upsampling, added) and a 3x3 + 1x1 head gives one logit per
8x8-pixel cell. Being fully convolutional, a network trained on small patches scores whole
images. The backbone keeps the classifier's parameter names (``conv1``, ``layer1``...), so a
classifier checkpoint loads into it; the head lives under ``fc`` as the classifier's did, so
transfer learning freezes and replaces the same parts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from torch import nn

from medsight.core.errors import ConfigError
from medsight.models.registry import build_model
from medsight.transforms.prepare2d import CELL  # pixels per output cell along each side

__all__ = ["CELL", "ResNetCells"]


class _Pyramid(nn.Module):
    def __init__(self, widths: tuple[int, int, int], features: int, prior: float, outputs: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(w, features, 1) for w in widths)
        self.head = nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(features, outputs, 1))  # fmt: skip
        nn.init.constant_(self.head[-1].bias, math.log(prior / (1 - prior)))

    def forward(self, c2: torch.Tensor, c3: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        top = self.lateral[2](c4)
        middle = self.lateral[1](c3) + F.interpolate(top, size=c3.shape[-2:], mode="nearest")
        fine = self.lateral[0](c2) + F.interpolate(middle, size=c2.shape[-2:], mode="nearest")
        return self.head(fine)


class ResNetCells(nn.Module):
    """``(B, C, H, W)`` images -> ``(B, K, ceil(H/8), ceil(W/8))`` logits: per cell, one per finding.

    Args:
        name: A registered 2D ResNet (``resnet10``, ``resnet18``, ``resnet34``, ``resnet50``).
        in_channels: Image channels.
        features: Channels of the pyramid and head.
        prior: Every cell's probability before training (a small value keeps the rare positive
            cells from being swamped at the start, as in RetinaNet).
        outputs: Findings scored per cell (K).
    """

    def __init__(
        self, name: str, in_channels: int, *, features: int = 128, prior: float = 0.01, outputs: int = 1
    ) -> None:
        super().__init__()
        if not name.startswith("resnet"):
            raise ConfigError(
                f"2D detection scores image cells with a ResNet backbone (resnet10, resnet18, resnet34, resnet50); "
                f"got {name!r}"
            )
        if not 0 < prior < 1:
            raise ConfigError(f"the prior probability of a cell must lie in (0, 1), got {prior}")
        if outputs < 1:
            raise ConfigError(f"a cell map scores one or more findings, got outputs={outputs}")
        backbone = build_model(name, spatial_dims=2, in_channels=in_channels, num_outputs=1)
        for part in ("conv1", "bn1", "act", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, part, getattr(backbone, part))
        widths = tuple(_width(getattr(backbone, f"layer{k}")) for k in (2, 3, 4))
        self.fc = _Pyramid(widths, features, prior, outputs)  # type: ignore[arg-type]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act(self.bn1(self.conv1(images))))
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return self.fc(c2, c3, self.layer4(c3))


def _width(stage: nn.Module) -> int:
    """Output channels of a ResNet stage (its last convolution's)."""
    convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels)
