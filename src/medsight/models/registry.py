"""Registry of networks: MONAI architectures behind one small, typed builder."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from medsight.core.errors import ConfigError

__all__ = ["ModelSpec", "build_model", "register_model", "registered_models"]


@dataclass(frozen=True)
class ModelSpec:
    """A registered network.

    Attributes:
        name: Registry name (``"resnet18"``).
        build: ``build(spatial_dims, in_channels, num_outputs) -> nn.Module``.
        first_conv: State-dict key of the input convolution's weight (for 3->1 channel adaptation).
        head: Prefix of the classification head's parameters (replaced when fine-tuning).
        description: One line for ``medsight models``.
    """

    name: str
    build: Callable[[int, int, int], nn.Module]
    first_conv: str
    head: str
    description: str


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


def build_model(name: str, *, spatial_dims: int = 2, in_channels: int = 3, num_outputs: int = 1) -> nn.Module:
    """Build a registered network with fresh weights.

    Args:
        name: Registry name, e.g. ``"resnet18"``, ``"densenet121"``, ``"efficientnet-b0"``.
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: Input channels (1 grey, 3 colour, 4 for four MRI contrasts...).
        num_outputs: Size of the output layer (classes, findings, or ordinal thresholds).
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
    return models[name].build(spatial_dims, in_channels, num_outputs)
