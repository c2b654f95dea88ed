"""A data set's fingerprint: what self-configuration needs to know about its images and labels.

Per case: voxel spacing and grid size, the channels' intensities inside the foreground (a
sample, for robust percentiles), each label's volume and connected components. Over the data
set: the medians and spreads a :class:`~medsight.planning.plan.Plan` is made from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import ndimage

from medsight.core.errors import InputError
from medsight.core.volume import Volume

__all__ = ["CaseFacts", "ChannelStats", "Fingerprint", "case_facts", "fingerprint"]

_SAMPLES_PER_CASE = 10_000  # foreground intensities kept per case and channel (nnU-Net keeps 10 000)


@dataclass(frozen=True)
class CaseFacts:
    """What one case contributes to the fingerprint.

    Attributes:
        spacing: Voxel size ``(z, y, x)`` in mm.
        shape: Grid size ``(z, y, x)``.
        nonzero_shape: Size of the box around the non-zero voxels of any channel (what is left
            after cropping to the body/brain).
        samples: Per channel, a random sample of intensities inside the foreground (the label's
            foreground when there is a label, else the non-zero voxels).
        label_volumes: Volume in ml of each label value present (background left out).
        components: Per label value, the sizes in ml of its connected components.
        foreground_components: Sizes in ml of the connected components of all labels together.
    """

    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    nonzero_shape: tuple[int, int, int]
    samples: tuple[np.ndarray, ...]
    label_volumes: dict[int, float]
    components: dict[int, tuple[float, ...]]
    foreground_components: tuple[float, ...] = ()


def case_facts(image: Volume, label: Volume | None = None, *, seed: int = 0, ignore: int | None = None) -> CaseFacts:
    """The facts of one case: its image (channels first) and, when given, its label map on the same
    grid, whose ``ignore`` code (voxels that are neither background nor a structure) counts as
    background here.

    Raises:
        InputError: the label map is on another grid than the image, or holds non-integer values.
    """
    array = np.asarray(image.array)
    spacing = image.geometry.spacing
    voxel_ml = float(np.prod(spacing)) / 1000.0
    labels = None
    if label is not None:
        if label.spatial_shape != image.spatial_shape:
            raise InputError(
                f"the label map's grid {label.spatial_shape} differs from the image's {image.spatial_shape}; "
                "a label map must be drawn on its image's grid"
            )
        labels = np.asarray(label.array[0])
        if labels.dtype.kind == "f":
            if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
                raise InputError("the label map holds non-integer values; label maps hold class codes 0, 1, 2...")
            labels = labels.astype(np.int64)
        if ignore is not None:
            labels = np.where(labels == ignore, 0, labels)
    nonzero = np.any(array != 0, axis=0)
    foreground = labels > 0 if labels is not None and np.any(labels > 0) else nonzero
    if not foreground.any():
        foreground = np.ones(image.spatial_shape, dtype=bool)
    rng = np.random.default_rng(seed)
    where = np.flatnonzero(foreground)
    chosen = where if where.size <= _SAMPLES_PER_CASE else rng.choice(where, _SAMPLES_PER_CASE, replace=False)
    samples = tuple(np.asarray(channel.reshape(-1)[chosen], dtype=np.float64) for channel in array)
    box = _box_shape(nonzero) if nonzero.any() else image.spatial_shape
    volumes: dict[int, float] = {}
    components: dict[int, tuple[float, ...]] = {}
    if labels is not None:
        structure = ndimage.generate_binary_structure(3, 3)
        for value in np.unique(labels):
            if value == 0:
                continue
            mask = labels == value
            volumes[int(value)] = float(mask.sum()) * voxel_ml
            parts, count = ndimage.label(mask, structure=structure)
            sizes = np.bincount(parts.reshape(-1))[1:] if count else np.zeros(0)
            components[int(value)] = tuple(float(s) * voxel_ml for s in sorted(sizes, reverse=True))
        parts, count = ndimage.label(labels > 0, structure=structure)
        sizes = np.bincount(parts.reshape(-1))[1:] if count else np.zeros(0)
        union = tuple(float(s) * voxel_ml for s in sorted(sizes, reverse=True))
    else:
        union = ()
    return CaseFacts(tuple(spacing), image.spatial_shape, box, samples, volumes, components, union)  # type: ignore[arg-type]


def _box_shape(mask: np.ndarray) -> tuple[int, int, int]:
    extent = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    return tuple(int(e[-1] - e[0] + 1) for e in extent)  # type: ignore[return-value]


class ChannelStats(BaseModel):
    """Foreground intensities of one channel over the data set."""

    model_config = ConfigDict(extra="forbid")
    mean: float
    std: float
    p00_5: float
    p99_5: float
    median: float


class Fingerprint(BaseModel):
    """What planning reads about a data set (saved inside the plan).

    Attributes:
        cases: How many cases.
        modality: ``CT``, ``MR``... as given (CT intensities are Hounsfield units and are
            normalised with data-set statistics; others per image).
        spacings: Every case's spacing ``(z, y, x)`` mm.
        shapes: Every case's grid size.
        median_spacing, median_shape: Their medians.
        nonzero_shrink: Median share of the grid kept when cropped to the non-zero box.
        channels: Per channel, foreground intensity statistics.
        labels: Label values seen.
        median_volume_ml: Per label value, the median volume over the cases that have it.
        single_component_share: Per label value, the share of cases where it is one connected
            component (what "keep the largest component" postprocessing asks).
        smallest_component_ml: Per label value, the 5th percentile of component volumes.
        smallest_foreground_ml: The 5th percentile of the volumes of connected foreground regions
            (all labels together); None without labels.
    """

    model_config = ConfigDict(extra="forbid")
    cases: int
    modality: str
    spacings: list[tuple[float, float, float]]
    shapes: list[tuple[int, int, int]]
    median_spacing: tuple[float, float, float]
    median_shape: tuple[float, float, float]
    nonzero_shrink: float
    channels: list[ChannelStats]
    labels: list[int]
    median_volume_ml: dict[int, float]
    single_component_share: dict[int, float]
    smallest_component_ml: dict[int, float]
    smallest_foreground_ml: float | None = None


def fingerprint(facts: Iterable[CaseFacts], *, modality: str = "MR") -> Fingerprint:
    """Summarise the facts of every case.

    Raises:
        InputError: no cases, or cases with different numbers of channels.
    """
    cases = list(facts)
    if not cases:
        raise InputError("a fingerprint needs at least one case")
    counts = {len(c.samples) for c in cases}
    if len(counts) != 1:
        raise InputError(f"cases have different numbers of channels ({sorted(counts)}); every case needs the same")
    spacings = np.array([c.spacing for c in cases], dtype=float)
    shapes = np.array([c.shape for c in cases], dtype=float)
    kept = [float(np.prod(c.nonzero_shape) / np.prod(c.shape)) for c in cases]
    channels = []
    for k in range(counts.pop()):
        values = np.concatenate([c.samples[k] for c in cases])
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise InputError(f"channel {k} has no finite value in any case's foreground")
        low, median, high = np.percentile(values, [0.5, 50, 99.5])
        channels.append(ChannelStats(mean=float(values.mean()), std=float(values.std()), p00_5=float(low),
                                     p99_5=float(high), median=float(median)))  # fmt: skip
    labels = sorted({v for c in cases for v in c.label_volumes})
    median_volume = {v: float(np.median([c.label_volumes[v] for c in cases if v in c.label_volumes])) for v in labels}
    with_label = {v: [c for c in cases if v in c.components] for v in labels}
    single = {v: float(np.mean([len(c.components[v]) == 1 for c in with_label[v]])) for v in labels}
    smallest = {v: float(np.percentile(_sizes(with_label[v], v), 5)) for v in labels}
    regions = [size for c in cases for size in c.foreground_components]
    return Fingerprint(
        cases=len(cases),
        modality=modality.upper(),
        spacings=[tuple(map(float, s)) for s in spacings],  # type: ignore[misc]
        shapes=[tuple(map(int, s)) for s in shapes],  # type: ignore[misc]
        median_spacing=tuple(map(float, np.median(spacings, axis=0))),  # type: ignore[arg-type]
        median_shape=tuple(map(float, np.median(shapes, axis=0))),  # type: ignore[arg-type]
        nonzero_shrink=float(np.median(kept)),
        channels=channels,
        labels=labels,
        median_volume_ml=median_volume,
        single_component_share=single,
        smallest_component_ml=smallest,
        smallest_foreground_ml=float(np.percentile(regions, 5)) if regions else None,
    )


def _sizes(cases: Sequence[CaseFacts], value: int) -> np.ndarray:
    return np.array([size for c in cases for size in c.components[value]], dtype=float)
