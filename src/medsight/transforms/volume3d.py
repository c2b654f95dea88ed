"""Deterministic 3D preprocessing: crop to the non-zero box, resample to a spacing, normalise.

Each step is invertible where prediction needs it: :class:`Preprocessed` records the crop box
and the shapes, so per-class probabilities made on the preprocessed grid can be resampled and
pasted back onto the source grid (:func:`restore`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medsight.core.errors import InputError

__all__ = ["IGNORE_INDEX", "Preprocessed", "crop_box", "keep_lost_regions", "lung_box", "normalize",
           "preprocess_case", "resample", "restore"]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocessed:
    """A case on the network's grid, and how to go back.

    Attributes:
        image: ``(C, Z, Y, X)`` float32, normalised, at ``spacing``.
        label: ``(Z, Y, X)`` uint8 class indices on the same grid, or None.
        spacing: The grid's actual spacing (mm), ``(z, y, x)``.
        source_shape: The case's original grid.
        box: The crop box on the original grid, ``((z0, z1), (y0, y1), (x0, x1))``.
    """

    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    source_shape: tuple[int, int, int]
    box: tuple[tuple[int, int], ...]


def crop_box(image: np.ndarray) -> tuple[tuple[int, int], ...]:
    """The box around voxels that are non-zero in any channel (the whole grid when there are none)."""
    nonzero = np.any(image != 0, axis=0)
    if not nonzero.any():
        return tuple((0, s) for s in nonzero.shape)
    box = []
    for axis in range(3):
        hit = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def lung_box(
    image: np.ndarray, spacing: Sequence[float], *, margin_mm: float = 10.0, air_hu: float = -400.0
) -> tuple[tuple[int, int], ...]:
    """The box around the lung fields of a chest CT ``(C, Z, Y, X)`` in HU (first channel), grown by
    ``margin_mm``: air below ``air_hu`` that does not reach the edges of the axial plane (the air
    around the body), in components of at least 2 % of the largest. The whole grid when there is no
    such air (not a chest CT, or a scan cut inside the lungs)."""
    hu = np.asarray(image[0])
    step = [max(1, round(2.0 / s)) for s in spacing]  # ~2 mm is fine enough to find the lungs
    coarse = hu[:: step[0], :: step[1], :: step[2]] < air_hu
    parts, count = ndimage.label(coarse)
    whole = tuple((0, int(n)) for n in hu.shape)
    if count == 0:
        return whole
    edges = np.concatenate([parts[:, 0, :].ravel(), parts[:, -1, :].ravel(), parts[:, :, 0].ravel(),
                            parts[:, :, -1].ravel()])  # fmt: skip
    sizes = np.bincount(parts.ravel(), minlength=count + 1)
    sizes[0] = 0
    sizes[np.unique(edges)] = 0
    if sizes.max() == 0:
        log.debug("no air inside the body: the lung box is the whole scan")
        return whole
    keep = sizes >= 0.02 * sizes.max()
    keep[0] = False
    where = np.argwhere(keep[parts])
    box = []
    for axis in range(3):
        margin = int(np.ceil(margin_mm / spacing[axis]))
        low = int(where[:, axis].min()) * step[axis] - margin
        high = (int(where[:, axis].max()) + 1) * step[axis] + margin
        box.append((max(low, 0), min(high, hu.shape[axis])))
    return tuple(box)


def _target_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, int, int]:
    return tuple(max(1, round(float(n) * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))  # type: ignore[return-value]


IGNORE_INDEX = 255  # the class index of voxels no loss or metric counts (a task's ignore label)


def resample(array: np.ndarray, shape: Sequence[int], *, labels: bool = False) -> np.ndarray:
    """``(C, Z, Y, X)`` resampled to ``shape``: trilinear for intensities and probabilities (float32),
    nearest neighbour for label maps (``labels``, dtype kept). Voxel centres scale with the extent
    (PyTorch's ``interpolate`` with ``align_corners=False``, ``nearest-exact`` for labels, to float
    rounding). NumPy alone: prediction runs without PyTorch (:mod:`medsight.inference.runtime`)."""
    shape = tuple(int(n) for n in shape)
    if tuple(array.shape[1:]) == shape:
        return array
    if labels:
        out = array
        for axis, n in enumerate(shape):
            m = out.shape[axis + 1]
            nearest = np.minimum(np.floor((np.arange(n) + 0.5) * (m / n)).astype(np.intp), m - 1)
            out = np.take(out, nearest, axis=axis + 1)
        return out
    out = np.asarray(array, np.float32)
    # shrinking axes first keeps the arrays in between small
    for axis in sorted(range(3), key=lambda a: shape[a] / out.shape[a + 1]):
        out = _linear(out, axis + 1, shape[axis])
    return out


def _linear(array: np.ndarray, axis: int, n: int) -> np.ndarray:
    """``array`` linearly resampled to ``n`` samples along ``axis`` (edges held, half-voxel centres)."""
    m = array.shape[axis]
    if m == n:
        return array
    where = np.clip((np.arange(n) + 0.5) * (m / n) - 0.5, 0.0, m - 1)
    low = np.floor(where).astype(np.intp)
    high = np.minimum(low + 1, m - 1)
    weight = np.expand_dims((where - low).astype(np.float32), tuple(a for a in range(array.ndim) if a != axis))
    out = np.take(array, low, axis=axis)
    out *= 1.0 - weight
    out += np.take(array, high, axis=axis) * weight
    return out


def keep_lost_regions(source: np.ndarray, resampled: np.ndarray) -> np.ndarray:
    """``resampled`` (a label map ``(Z, Y, X)`` resampled from ``source`` by :func:`resample`) with
    each connected region (26-connected, per label value) of ``source`` that resampling lost
    entirely marked at the voxel nearest its centre: a finding smaller than a voxel of the coarser
    grid stays a finding."""
    scale = np.array(source.shape, float) / np.array(resampled.shape, float)
    if np.all(scale <= 1):
        return resampled  # nothing is lost on a grid as fine or finer
    out = resampled
    for value in np.unique(source[source > 0]):
        regions, count = ndimage.label(source == value, structure=np.ones((3, 3, 3), bool))
        if count == 0:
            continue
        index = np.arange(1, count + 1)
        centres = np.asarray(ndimage.center_of_mass(regions > 0, regions, index), float).reshape(-1, 3)
        found = np.isin(index, resample(regions[None], resampled.shape, labels=True))  # regions left on the grid
        for centre in centres[~found]:
            # align_corners=False: source index i sits at target (i + 0.5) / scale - 0.5
            nearest = np.clip(np.rint((centre + 0.5) / scale - 0.5).astype(int), 0, np.array(resampled.shape) - 1)
            if value == IGNORE_INDEX and out[tuple(nearest)] != 0:
                continue  # an ignored region never takes a class's voxel
            if out is resampled:
                out = resampled.copy()
            out[tuple(nearest)] = value
    return out


def normalize(
    image: np.ndarray,
    schemes: Sequence[str],
    *,
    clips: Sequence[tuple[float, float] | None],
    means: Sequence[float | None],
    stds: Sequence[float | None],
    masks: Sequence[bool],
) -> np.ndarray:
    """Per channel: ``ct`` clips then z-scores with the given statistics; ``zscore`` uses the image's
    own (inside its non-zero region when ``mask``, the rest set to 0); ``none`` leaves it."""
    if len(schemes) != image.shape[0]:
        raise InputError(f"the plan normalises {len(schemes)} channel(s); the image has {image.shape[0]}")
    out = np.empty(image.shape, dtype=np.float32)
    for k, scheme in enumerate(schemes):
        channel = image[k].astype(np.float32)
        if scheme == "ct":
            low, high = clips[k]  # type: ignore[misc]
            out[k] = (np.clip(channel, low, high) - float(means[k])) / float(stds[k])  # type: ignore[arg-type]
        elif scheme == "zscore":
            region = channel != 0 if masks[k] else np.ones(channel.shape, bool)
            values = channel[region] if region.any() else channel.reshape(-1)
            scaled = (channel - values.mean()) / max(float(values.std()), 1e-8)
            out[k] = np.where(region, scaled, 0.0) if masks[k] else scaled
        else:
            out[k] = channel
    return out


def preprocess_case(
    image: np.ndarray,
    spacing: Sequence[float],
    target_spacing: Sequence[float],
    *,
    label: np.ndarray | None = None,
    crop: bool | str = True,
    normalization: dict[str, list] | None = None,
    keep_regions: bool = False,
) -> Preprocessed:
    """Crop, resample to ``target_spacing`` and normalise one case. ``crop``: ``nonzero`` (or True)
    to the box around non-zero voxels, ``lungs`` to the lung fields of a chest CT
    (:func:`lung_box`), ``none`` (or False) not at all.

    ``normalization`` holds lists ``schemes``, ``clips``, ``means``, ``stds``, ``masks`` (one entry
    per channel); ``label`` holds class indices on the image's grid. ``keep_regions``: every
    connected region of the label map keeps at least one voxel (:func:`keep_lost_regions`).

    Raises:
        InputError: NaN or infinite intensities (they would poison every statistic).
    """
    if image.ndim != 4:
        raise InputError(f"a case image is (C, Z, Y, X); got shape {image.shape}")
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise InputError("the image holds NaN or infinite values; fix or mask them before segmentation")
    source_shape = tuple(int(s) for s in image.shape[1:])
    mode = {True: "nonzero", False: "none"}.get(crop, crop)  # type: ignore[call-overload]
    if mode == "lungs":
        box = lung_box(image, spacing)
    elif mode == "nonzero":
        box = crop_box(image)
    elif mode == "none":
        box = tuple((0, s) for s in source_shape)
    else:
        raise InputError(f"crop must be nonzero, lungs or none; got {crop!r}")
    window = tuple(slice(a, b) for a, b in box)
    cropped = image[(slice(None), *window)]
    shape = _target_shape(cropped.shape[1:], spacing, target_spacing)
    actual = tuple(float(n * s / m) for n, s, m in zip(cropped.shape[1:], spacing, shape, strict=True))
    if normalization is not None:  # normalise before resampling: statistics of the measured voxels
        cropped = normalize(cropped, normalization["schemes"], clips=normalization["clips"],
                            means=normalization["means"], stds=normalization["stds"],
                            masks=normalization["masks"])  # fmt: skip
    resampled = resample(cropped.astype(np.float32), shape)
    resampled_label = None
    if label is not None:
        resampled_label = resample(label[window][None].astype(np.uint8), shape, labels=True)[0]
        if keep_regions:
            resampled_label = keep_lost_regions(label[window], resampled_label)
    return Preprocessed(resampled.astype(np.float32), resampled_label, actual, source_shape, box)  # type: ignore[arg-type]


def restore(probabilities: np.ndarray, case: Preprocessed, *, background: Sequence[float] | None = None) -> np.ndarray:
    """Per-class probabilities ``(K, z, y, x)`` on the preprocessed grid, back on the source grid:
    resampled to the crop box and pasted in; outside it every class gets ``background`` (class 0
    certain for softmax outputs, all regions absent for sigmoid ones)."""
    box_shape = tuple(b - a for a, b in case.box)
    inside = resample(probabilities.astype(np.float32), box_shape)
    fill = np.zeros(len(probabilities), np.float32) if background is None else np.asarray(background, np.float32)
    out = np.empty((len(probabilities), *case.source_shape), np.float32)
    out[:] = fill[:, None, None, None]
    out[(slice(None), *(slice(a, b) for a, b in case.box))] = inside
    return out
