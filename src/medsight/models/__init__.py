"""Networks: a registry over MONAI architectures and loading of the user's own weights."""

from medsight.models.registry import ModelChoice, ModelSpec, build_model, register_model, registered_models
from medsight.models.transfer import (
    LoadReport,
    backbone_parameters,
    freeze_backbone,
    load_checkpoint,
    load_pretrained,
    unfreeze,
)

__all__ = [
    "LoadReport",
    "ModelChoice",
    "ModelSpec",
    "backbone_parameters",
    "build_model",
    "freeze_backbone",
    "load_checkpoint",
    "load_pretrained",
    "register_model",
    "registered_models",
    "unfreeze",
]
