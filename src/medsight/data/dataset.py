"""PyTorch datasets over cached, preprocessed images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from medsight.core.errors import InputError
from medsight.data.cache import ImageCache

__all__ = ["ImageDataset"]


class ImageDataset(Dataset):
    """Items ``(image, target)``: float ``(C, S, S)`` in [0, 1] (augmented if asked) and the target.

    Args:
        cache: Preprocessed images.
        targets: One row per cached image: a class/grade ``(N,)`` or findings ``(N, L)``
            (``nan`` = unknown).
        indices: Which cached images this dataset serves (e.g. the training split).
        augment: Random transforms applied to each item (e.g. :func:`build_augmentation`), or None.
    """

    def __init__(
        self,
        cache: ImageCache,
        targets: np.ndarray,
        indices: np.ndarray | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        targets = np.asarray(targets, dtype=np.float32)
        if len(targets) != len(cache):
            raise InputError(f"{len(targets)} targets for {len(cache)} cached images")
        self.cache = cache
        self.targets = targets
        self.indices = np.arange(len(cache)) if indices is None else np.asarray(indices)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(self.indices[item])
        image = torch.from_numpy(np.asarray(self.cache.images[index], dtype=np.float32) / 255.0)
        if self.augment is not None:
            image = torch.as_tensor(self.augment(image)).clamp_(0.0, 1.0)
        return image.contiguous(), torch.tensor(np.atleast_1d(self.targets[index])).squeeze(0)
