"""2D images for classification: deterministic preprocessing (cached once) and random augmentation.

Preprocessing turns any Volume (8-bit photo, 16-bit radiograph, 12-bit mammogram) into a
square uint8 array ``(C, size, size)``: display window, channel conversion, pad to square
(aspect kept), resize. Augmentation is MONAI's random transforms (each a parameter sampler
plus a deterministic operation, reproducible with a seed), applied to float images in [0, 1].
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    Rand2DElastic,
    RandAdjustContrast,
    RandAffine,
    RandFlip,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandScaleIntensity,
)
from pydantic import BaseModel, ConfigDict, Field

from medsight.transforms.prepare2d import (
    Preprocess2D,
    boxes_from_prepared,
    boxes_to_prepared,
    map_to_image,
    prepare_image,
)

__all__ = [
    "Augment2D",
    "Augmenter",
    "Preprocess2D",
    "boxes_from_prepared",
    "boxes_to_prepared",
    "build_augmentation",
    "map_to_image",
    "prepare_image",
]


class Augment2D(BaseModel):
    """Probabilities and ranges of the random augmentations (0 switches one off).

    ``mode``: ``batch`` augments whole batches at once on the training device
    (:class:`~medsight.transforms.batch2d.BatchAugmenter`, the fast default); ``item``
    augments each image in the DataLoader with MONAI transforms (:func:`build_augmentation`).
    """

    model_config = ConfigDict(extra="forbid")
    mode: Literal["batch", "item"] = "batch"
    flip: float = Field(0.5, ge=0, le=1)
    rotate_degrees: float = Field(15.0, ge=0, le=180)
    rotate: float = Field(0.5, ge=0, le=1)
    zoom: float = Field(0.3, ge=0, le=1)
    zoom_range: tuple[float, float] = (0.9, 1.1)
    elastic: float = Field(0.0, ge=0, le=1)  # opt-in: the most expensive transform (2x the others)
    brightness_contrast: float = Field(0.3, ge=0, le=1)
    gamma: float = Field(0.3, ge=0, le=1)
    blur: float = Field(0.1, ge=0, le=1)
    noise: float = Field(0.1, ge=0, le=1)


class Augmenter:
    """Random 2D augmentation: MONAI transforms run without metadata tracking (2x faster).

    Call it on a ``(C, H, W)`` float tensor; ``set_random_state(seed)`` makes it reproducible.
    """

    def __init__(self, compose: Compose) -> None:
        self.compose = compose

    def set_random_state(self, seed: int) -> Augmenter:
        self.compose.set_random_state(seed)
        return self

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        tracking = get_track_meta()
        set_track_meta(False)  # plain tensors: MONAI's MetaTensor bookkeeping costs ~1 ms per image
        try:
            return torch.as_tensor(self.compose(image))
        finally:
            set_track_meta(tracking)


def build_augmentation(spec: Augment2D, *, seed: int | None = None) -> Augmenter:
    """Random transforms for ``(C, H, W)`` float images in [0, 1]; reproducible with ``seed``.

    Rotation and zoom share one resampling (``RandAffine``), applied when either fires.
    """
    affine = 1.0 - (1.0 - spec.rotate) * (1.0 - spec.zoom)
    scale = (spec.zoom_range[0] - 1.0, spec.zoom_range[1] - 1.0) if spec.zoom > 0 else None
    transforms = [
        RandFlip(prob=spec.flip, spatial_axis=1),
        RandAffine(
            prob=affine,
            rotate_range=np.radians(spec.rotate_degrees) if spec.rotate > 0 else None,
            scale_range=scale,
            padding_mode="zeros",
        ),
        Rand2DElastic(spacing=(32, 32), magnitude_range=(1, 2), prob=spec.elastic, padding_mode="zeros"),
        RandScaleIntensity(factors=0.15, prob=spec.brightness_contrast),
        RandAdjustContrast(prob=spec.gamma, gamma=(0.8, 1.25)),
        RandGaussianSmooth(prob=spec.blur, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)),
        RandGaussianNoise(prob=spec.noise, std=0.02),
    ]
    augmenter = Augmenter(Compose(transforms))
    if seed is not None:
        augmenter.set_random_state(seed)
    return augmenter
