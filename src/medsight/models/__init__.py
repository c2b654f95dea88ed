"""Networks: a registry over MONAI architectures and loading of the user's own weights.

Public names are imported on first use (see :mod:`medsight.core.lazy`).
"""

from typing import TYPE_CHECKING

from medsight.core.lazy import lazy_exports

if TYPE_CHECKING:
    from medsight.models.registry import ModelSpec, build_model, register_model, registered_models
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

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "medsight.models.transfer": (
            "LoadReport",
            "backbone_parameters",
            "freeze_backbone",
            "load_checkpoint",
            "load_pretrained",
            "unfreeze",
        ),
        "medsight.models.registry": ("ModelSpec", "build_model", "register_model", "registered_models"),
    },
)
