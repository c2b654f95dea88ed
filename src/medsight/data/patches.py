"""Patches of preprocessed volumes: random ones for training (foreground oversampled), fixed ones for validation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from medsight.core.errors import InputError
from medsight.data.volume_cache import IGNORE_INDEX, VolumeCache

__all__ = ["FindingPatches", "PatchDataset", "ValidationPatches", "extract_patch"]


def extract_patch(
    image: np.ndarray, label: np.ndarray, centre: Sequence[int], patch: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The ``patch``-sized box around ``centre`` (zero-padded where it leaves the volume) of a
    ``(C, *spatial)`` image and its label map (``spatial`` or ``(K, *spatial)``: one map per channel)."""
    starts = [int(c) - p // 2 for c, p in zip(centre, patch, strict=True)]
    out_image = np.zeros((image.shape[0], *patch), np.float32)
    lead = label.shape[: label.ndim - len(patch)]
    out_label = np.zeros((*lead, *patch), np.uint8)
    source, target = [], []
    for start, size, extent in zip(starts, patch, image.shape[1:], strict=True):
        low, high = max(start, 0), min(start + size, extent)
        if high <= low:  # the box misses the volume along this axis: all padding
            return out_image, out_label
        source.append(slice(low, high))
        target.append(slice(low - start, high - start))
    out_image[(slice(None), *target)] = image[(slice(None), *source)]
    out_label[(..., *target)] = label[(..., *source)]
    return out_image, out_label


class PatchDataset(Dataset):
    """Random training patches ``(image (C, *patch) float32, label (*patch) uint8)``.

    Each draw picks an item at random; with probability ``oversample`` the patch holds a voxel of
    a random class present in that item (at its centre, or with ``jitter`` anywhere in the central
    ``jitter`` share of the patch along each axis: a network that only ever sees small objects at
    the centre learns to find them only there), else it lies anywhere in the volume. Randomness
    comes from NumPy's global generator, which the training loop seeds (per DataLoader worker too).
    """

    def __init__(
        self,
        cache: VolumeCache,
        items: Sequence[int],
        patch: Sequence[int],
        samples: int,
        oversample: float,
        *,
        jitter: float = 0.0,
    ) -> None:
        if not items:
            raise InputError("no training images: the train split has no labelled case")
        if not 0.0 <= jitter <= 1.0:
            raise InputError(f"jitter is a share of the patch, 0 to 1; got {jitter}")
        self.cache, self.items, self.patch = cache, list(items), tuple(int(p) for p in patch)
        self.samples, self.oversample, self.jitter = int(samples), float(oversample), float(jitter)

    def __len__(self) -> int:
        return self.samples

    def _centre(self, item: int) -> np.ndarray:
        entry = self.cache.items[item]
        present = [k for k, where in entry.locations.items() if len(where)]
        if present and np.random.random_sample() < self.oversample:
            where = entry.locations[present[np.random.randint(len(present))]]
            return self._moved(where[np.random.randint(len(where))])
        return self._anywhere(item)

    def _anywhere(self, item: int) -> np.ndarray:
        """A random voxel of ``item``."""
        return np.array([np.random.randint(0, s) for s in self.cache.items[item].shape])

    def _moved(self, chosen: np.ndarray) -> np.ndarray:
        """``chosen`` moved anywhere in the central ``jitter`` share of the patch (unmoved without jitter)."""
        if not self.jitter:
            return chosen
        reach = np.array(self.patch) * self.jitter / 2
        return chosen + np.rint(np.random.uniform(-reach, reach)).astype(chosen.dtype)

    def _draw(self) -> tuple[int, np.ndarray]:
        """The item and the centre of the next patch."""
        item = self.items[np.random.randint(len(self.items))]
        return item, self._centre(item)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        item, centre = self._draw()
        image, label = extract_patch(self.cache.image(item), self.cache.label(item), centre, self.patch)
        return torch.from_numpy(image), torch.from_numpy(label)


class FindingPatches(PatchDataset):
    """Random training patches in which every finding (a connected foreground region of a label
    map) is equally likely to appear, however many voxels it fills.

    :class:`PatchDataset` centres its foreground patches on a random voxel of a class, so a 30 mm
    nodule (~4,000 voxels at 2 mm) is drawn a thousand times as often as a 4 mm one (a few voxels)
    that sits in the same scan. Here a foreground draw picks one finding of the training items
    uniformly, then one of its voxels (moved by ``jitter`` as there); other draws lie anywhere in a
    random item. The findings are found once, at construction (26-connected regions of each item's
    label map, up to ``voxels_per_finding`` voxels kept of each).
    """

    def __init__(
        self,
        cache: VolumeCache,
        items: Sequence[int],
        patch: Sequence[int],
        samples: int,
        oversample: float,
        *,
        jitter: float = 0.0,
        voxels_per_finding: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(cache, items, patch, samples, oversample, jitter=jitter)
        rng = np.random.default_rng(seed)
        self.findings: list[tuple[int, np.ndarray]] = []
        for item in self.items:
            if not self.cache.items[item].locations:  # no foreground at all
                continue
            label = np.asarray(self.cache.label(item))
            regions, _ = ndimage.label((label > 0) & (label != IGNORE_INDEX), structure=np.ones((3, 3, 3), bool))
            for where in ndimage.value_indices(regions, ignore_value=0).values():
                voxels = np.stack(where, axis=1)
                keep = rng.choice(len(voxels), size=min(len(voxels), voxels_per_finding), replace=False)
                self.findings.append((item, voxels[np.sort(keep)]))

    def _draw(self) -> tuple[int, np.ndarray]:
        if self.findings and np.random.random_sample() < self.oversample:
            item, voxels = self.findings[np.random.randint(len(self.findings))]
            return item, self._moved(voxels[np.random.randint(len(voxels))])
        item = self.items[np.random.randint(len(self.items))]
        return item, self._anywhere(item)


class ValidationPatches(Dataset):
    """Fixed patches for the per-epoch validation figure: per item, one centred on a foreground voxel
    (when there is one) and one at the volume's centre. Whole-volume figures come from evaluation."""

    def __init__(self, cache: VolumeCache, items: Sequence[int], patch: Sequence[int]) -> None:
        self.cache, self.patch = cache, tuple(int(p) for p in patch)
        self.plan: list[tuple[int, np.ndarray]] = []
        for item in items:
            entry = cache.items[item]
            foreground = [where for where in entry.locations.values() if len(where)]
            if foreground:
                rng = np.random.default_rng(item)
                where = foreground[int(rng.integers(len(foreground)))]
                self.plan.append((item, where[int(rng.integers(len(where)))]))
            self.plan.append((item, np.array(entry.shape) // 2))

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        item, centre = self.plan[index]
        image, label = extract_patch(self.cache.image(item), self.cache.label(item), centre, self.patch)
        return torch.from_numpy(image), torch.from_numpy(label)
