"""Registry of networks: MONAI architectures behind one small, typed builder."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from medsight.core.errors import ConfigError

__all__ = ["GlobalPool", "ModelChoice", "ModelSpec", "Pooling", "build_model", "register_model", "registered_models"]


@dataclass(frozen=True)
class ModelSpec:
    """A registered network.

    Attributes:
        name: Registry name (``"resnet18"``).
        build: ``build(spatial_dims, in_channels, num_outputs) -> nn.Module``.
        first_conv: State-dict key of the input convolution's weight (for 3->1 channel adaptation).
        head: Prefix of the classification head's parameters (replaced when fine-tuning).
        description: One line for ``medsight models``.
        pool: Attribute path of the global pooling before the head (replaced by ``pooling``).
        dense: True for networks whose output is a map (one value per pixel or voxel, e.g. a
            U-Net), False for those that output one vector per image (classifiers).
        tabular: True for networks of a feature vector per case (``(B, F)``: clinical covariates,
            image-derived measurements), not of images; ``in_channels`` is then the number of features.
    """

    name: str
    build: Callable[[int, int, int], nn.Module]
    first_conv: str
    head: str
    description: str
    pool: str = ""
    dense: bool = False
    tabular: bool = False


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a network to the registry."""
    if spec.name in _REGISTRY:
        raise ConfigError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def registered_models() -> dict[str, ModelSpec]:
    """All registered networks by name."""
    import medsight.models.zoo  # noqa: F401  (registers the built-in networks)

    return dict(sorted(_REGISTRY.items()))


Pooling = Literal["avg", "max", "lse"]


class ModelChoice(BaseModel):
    """A recipe's (and a model package's) ``model`` section: which network, and how it starts."""

    model_config = ConfigDict(extra="forbid")
    name: str = "resnet18"
    pretrained: str | None = None  # a checkpoint file the user has
    freeze_epochs: int = Field(0, ge=0)
    pooling: Pooling = "avg"  # global pooling before the head (max/lse: small findings)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # before a classifier's head; MC dropout samples it at prediction


class GlobalPool(nn.Module):
    """Global pooling of a feature map to ``(B, C, 1, ...)``.

    ``avg`` is the networks' own; ``max`` keeps the strongest response anywhere; ``lse``
    (log-sum-exp, Wang et al. 2017, ChestX-ray8) lies between them: ``log(mean(exp(r x))) / r``,
    close to the max for large ``r``. A finding that covers a few cells of the feature map (a
    nodule, a calcification cluster) is averaged away by ``avg`` but not by ``max``/``lse``.
    """

    def __init__(self, kind: Pooling, r: float = 10.0) -> None:
        super().__init__()
        self.kind, self.r = kind, r

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}" + (f", r={self.r}" if self.kind == "lse" else "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        if self.kind == "avg":
            pooled = flat.mean(-1)
        elif self.kind == "max":
            pooled = flat.amax(-1)
        else:
            pooled = (torch.logsumexp(self.r * flat.float(), -1) - math.log(flat.shape[-1])).to(x.dtype) / self.r
        return pooled.reshape(*pooled.shape, *([1] * (x.ndim - 2)))


def build_model(
    name: str,
    *,
    spatial_dims: int = 2,
    in_channels: int = 3,
    num_outputs: int = 1,
    pooling: Pooling = "avg",
    dropout: float = 0.0,
    tabular: bool = False,
) -> nn.Module:
    """Build a registered network with fresh weights.

    Args:
        name: Registry name, e.g. ``"resnet18"``, ``"densenet121"``, ``"efficientnet-b0"``.
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: Input channels (1 grey, 3 colour, 4 for four MRI contrasts...).
        num_outputs: Size of the output layer (classes, findings, or ordinal thresholds).
        pooling: Global pooling before the head: ``avg`` (the network's own), ``max`` or
            ``lse`` (:class:`GlobalPool`); for small findings in large images.
        dropout: When above 0, a dropout layer before the last linear layer (the head), which
            Monte Carlo dropout samples at prediction.
        tabular: The caller feeds feature vectors ``(B, in_channels)`` rather than images.

    Raises:
        ConfigError: an unknown name, a network of images for features or the reverse, or bad sizes.
    """
    models = registered_models()
    if name not in models:
        close = difflib.get_close_matches(name, list(models), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model {name!r}.{hint} Models: {', '.join(models)}")
    for label, value, allowed in (("spatial_dims", spatial_dims, (2, 3)),):
        if value not in allowed:
            raise ConfigError(f"{label} must be one of {allowed}, got {value}")
    if in_channels < 1 or num_outputs < 1:
        raise ConfigError(f"in_channels and num_outputs must be positive, got {in_channels} and {num_outputs}")
    if pooling not in ("avg", "max", "lse"):
        raise ConfigError(f"pooling must be 'avg', 'max' or 'lse', got {pooling!r}")
    spec = models[name]
    if spec.tabular != tabular:
        kind = [n for n, m in models.items() if m.tabular == tabular]
        raise ConfigError(
            f"model {name!r} takes {'a feature vector per case' if spec.tabular else 'images'}, but this task gives "
            f"it {'feature vectors' if tabular else 'images'}; use one of: {', '.join(kind)}"
        )
    model = spec.build(spatial_dims, in_channels, num_outputs)
    if pooling != "avg":
        if not spec.pool:
            raise ConfigError(f"model {name!r} does not say where its global pooling is; use pooling: avg")
        parent_path, _, attribute = spec.pool.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, attribute, GlobalPool(pooling))
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must lie in [0, 1), got {dropout}")
    if dropout > 0:
        heads = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not heads:
            raise ConfigError(f"model {name!r} has no linear head to put dropout before; use dropout: 0")
        path, head = heads[-1]
        parent_path, _, attribute = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, attribute, nn.Sequential(nn.Dropout(dropout), head))
    return model
