"""Segmentation metrics on binary masks, in world units: Dice, Hausdorff (HD95), normalised surface
Dice, volume difference, and the BraTS 2023 lesion-wise Dice and HD95.

Masks are NumPy arrays of any dimension (2D or 3D) on one grid; ``spacing`` gives the voxel size
along each array axis in millimetres, so distances are right on anisotropic grids. Surfaces are
the mask voxels with a face neighbour outside the mask (as MONAI's ``get_mask_edges`` finds them).

Empty masks are defined, not errors:

==========================  ==============  ==============  ==========  ==========
figure                      both empty      only reference  only pred.  ``nan``?
==========================  ==============  ==============  ==========  ==========
Dice                        1 (agreement)   0               0           never
Hausdorff / HD95            0               ``inf``         ``inf``     never
normalised surface Dice     1               0               0           never
volume difference (ml)      0               -ref volume     +pred vol.  never
==========================  ==============  ==============  ==========  ==========

(BraTS scores an ``inf`` HD95 as 374 mm, the diagonal of its 240x240x155 grid; pass it as
``missing`` where a finite figure is wanted.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from medsight.core.errors import InputError

__all__ = [
    "BRATS_MISSING_HD95",
    "LesionWise",
    "dice",
    "hausdorff_distance",
    "lesion_wise",
    "surface_dice",
    "surface_distances",
    "surface_scores",
    "volume_difference",
]

BRATS_MISSING_HD95 = 374.0
"""The HD95 BraTS gives a lesion missed or falsely found (mm)."""


def _masks(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(prediction), np.asarray(reference)
    if p.shape != r.shape:
        raise InputError(f"prediction {p.shape} and reference {r.shape} must be masks on one grid (same shape)")
    if p.ndim == 0:
        raise InputError("masks must have at least one dimension")
    for name, mask in (("prediction", p), ("reference", r)):
        if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
            raise InputError(f"the {name} must be a binary mask (0/1 or bool); select one label first (label == k)")
    return p.astype(bool), r.astype(bool)


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = (float(spacing),) * ndim if np.isscalar(spacing) else tuple(float(s) for s in spacing)  # type: ignore[arg-type]
    if len(values) != ndim:
        raise InputError(f"spacing needs one value per mask axis ({ndim}), got {len(values)}: {values}")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise InputError(f"spacing must be positive millimetres, got {values}")
    return values


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice coefficient ``2|P∩R| / (|P|+|R|)``; 1 when both masks are empty."""
    p, r = _masks(prediction, reference)
    total = int(p.sum()) + int(r.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(p, r).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(
    prediction: np.ndarray, reference: np.ndarray, spacing: float | Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from every prediction surface voxel to the nearest reference surface voxel,
    and from every reference surface voxel to the nearest prediction one.

    An empty mask has no surface: distances *to* it are ``inf``, distances *from* it an empty array.
    """
    p, r = _masks(prediction, reference)
    step = _spacing(spacing, p.ndim)
    union = p | r
    if not union.any():
        return np.empty(0), np.empty(0)
    # find surfaces inside the union's bounding box plus one voxel (every surface voxel is in it)
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in np.nonzero(union))
    p_surface, r_surface = _surface(p[box]), _surface(r[box])

    def directed(source: np.ndarray, target: np.ndarray) -> np.ndarray:
        if not source.any():
            return np.empty(0)
        if not target.any():
            return np.full(int(source.sum()), np.inf)
        if source.sum() + target.sum() > 0.05 * source.size:  # speckled surfaces: a distance transform
            return ndimage.distance_transform_edt(~target, sampling=step)[source]
        # exact nearest surface voxel by a k-d tree over the (sparse) surface points, in mm: far cheaper
        # than a distance transform of the whole box when the masks are large and smooth
        scale = np.asarray(step)
        distances, _ = cKDTree(np.argwhere(target) * scale).query(np.argwhere(source) * scale)
        return np.asarray(distances, dtype=float)

    return directed(p_surface, r_surface), directed(r_surface, p_surface)


def hausdorff_distance(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    *,
    percentile: float = 95.0,
    missing: float = math.inf,
) -> float:
    """Symmetric Hausdorff distance (mm) at ``percentile`` (95: HD95; 100: the maximum): the larger
    of the two directed percentiles, as MONAI computes it. 0 when both masks are empty;
    ``missing`` (``inf``) when only one is."""
    _check_percentile(percentile)
    return _hausdorff(*surface_distances(prediction, reference, spacing), percentile, missing)


def surface_dice(
    prediction: np.ndarray, reference: np.ndarray, spacing: float | Sequence[float] | None = None, *, tolerance: float
) -> float:
    """Normalised surface Dice (Nikolov et al. 2021, voxel surfaces as in MONAI): the share of both
    surfaces lying within ``tolerance`` mm of the other. 1 when both masks are empty, 0 when one is."""
    _check_tolerance(tolerance)
    return _surface_dice(*surface_distances(prediction, reference, spacing), tolerance)


def surface_scores(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    *,
    tolerance: float,
    percentile: float = 95.0,
    missing: float = math.inf,
) -> tuple[float, float]:
    """:func:`hausdorff_distance` and :func:`surface_dice` from one pass over the two surfaces."""
    _check_percentile(percentile)
    _check_tolerance(tolerance)
    distances = surface_distances(prediction, reference, spacing)
    return _hausdorff(*distances, percentile, missing), _surface_dice(*distances, tolerance)


def _check_percentile(percentile: float) -> None:
    if not 0 <= percentile <= 100:
        raise InputError(f"percentile must be within 0..100, got {percentile}")


def _check_tolerance(tolerance: float) -> None:
    if not tolerance >= 0:
        raise InputError(f"tolerance must be a non-negative distance in mm, got {tolerance}")


def _hausdorff(to_reference: np.ndarray, to_prediction: np.ndarray, percentile: float, missing: float) -> float:
    if to_reference.size == 0 and to_prediction.size == 0:
        return 0.0
    if to_reference.size == 0 or to_prediction.size == 0:
        return float(missing)
    return float(max(np.percentile(to_reference, percentile), np.percentile(to_prediction, percentile)))


def _surface_dice(to_reference: np.ndarray, to_prediction: np.ndarray, tolerance: float) -> float:
    total = to_reference.size + to_prediction.size
    if total == 0:
        return 1.0
    return float((np.sum(to_reference <= tolerance) + np.sum(to_prediction <= tolerance)) / total)


def volume_difference(
    prediction: np.ndarray, reference: np.ndarray, spacing: float | Sequence[float] | None = None
) -> float:
    """Predicted minus reference volume in millilitres (spacing in mm)."""
    p, r = _masks(prediction, reference)
    voxel = float(np.prod(_spacing(spacing, p.ndim))) / 1000.0
    return (int(p.sum()) - int(r.sum())) * voxel


@dataclass(frozen=True)
class LesionWise:
    """BraTS 2023 lesion-wise figures of one case and region.

    Attributes:
        dice: Mean Dice over reference lesions above the size threshold and false-positive
            predicted lesions (each scoring 0); 1 when there are neither.
        hd95: Mean HD95 (mm) over the same, a miss or false positive scoring ``missing``; 0 when
            there are neither.
        true_positives: Reference lesions (above the threshold) that a predicted lesion touches.
        false_negatives: Reference lesions (above the threshold) that none touches.
        false_positives: Predicted lesions that touch no (dilated) reference lesion.
    """

    dice: float
    hd95: float
    true_positives: int
    false_negatives: int
    false_positives: int


def _grow(box: tuple[slice, ...], by: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(b.start - by, 0), min(b.stop + by, n)) for b, n in zip(box, shape, strict=True))


def _union(boxes: Sequence[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(len(boxes[0])))


def lesion_wise(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    *,
    dilation: int = 3,
    min_volume: float = 50.0,
    missing: float = BRATS_MISSING_HD95,
) -> LesionWise:
    """Lesion-wise Dice and HD95 by the BraTS 2023 rules (BraTS-GLI defaults).

    Lesions are connected components (full, 26-neighbour connectivity in 3D). Reference lesions
    closer than ``dilation`` voxels (18-neighbour dilation) are one lesion. A reference lesion is
    matched by every predicted lesion that touches it dilated by ``dilation``; its Dice and HD95
    are against the union of those (``missing`` HD95 when none). Predicted lesions that match no
    reference lesion are false positives, each scoring Dice 0 and HD95 ``missing``. Reference
    lesions of ``min_volume`` mm³ or less are left out of the means (their matches are not false
    positives). HD95 here is :func:`hausdorff_distance` on voxel surfaces; the official script
    weights surface elements by area (DeepMind's ``surface_distance``), which differs slightly.
    """
    if dilation < 0 or min_volume < 0:
        raise InputError(f"dilation and min_volume must be non-negative, got {dilation} and {min_volume}")
    p, r = _masks(prediction, reference)
    step = _spacing(spacing, p.ndim)
    voxel = float(np.prod(step))
    connectivity = ndimage.generate_binary_structure(p.ndim, p.ndim)
    grow = ndimage.generate_binary_structure(p.ndim, min(2, p.ndim))

    def dilated(mask: np.ndarray) -> np.ndarray:
        return ndimage.binary_dilation(mask, structure=grow, iterations=dilation) if dilation else mask

    predicted, _ = ndimage.label(p, structure=connectivity)
    predicted_boxes = ndimage.find_objects(predicted)
    # reference lesions within `dilation` of each other are one: label the dilated reference, keep its voxels
    merged, count = ndimage.label(dilated(r), structure=connectivity)
    lesions = np.where(r, merged, 0)
    lesion_boxes = ndimage.find_objects(lesions, max_label=count)
    matched: set[int] = set()
    dices, distances = [], []
    true_positives = false_negatives = 0
    for lesion in range(1, count + 1):
        box = lesion_boxes[lesion - 1]
        if box is None:
            continue
        # work in boxes around the lesion (grown by the dilation) and its matches: the same figures
        # as on the whole grid, without dilating and comparing millions of voxels per lesion
        grown = _grow(box, dilation + 1, p.shape)
        own_near = lesions[grown] == lesion
        touching = np.unique(predicted[grown][dilated(own_near)])
        touching = touching[touching != 0]
        matched.update(int(t) for t in touching)
        if own_near.sum() * voxel <= min_volume:
            continue
        window = _grow(_union([box, *(predicted_boxes[t - 1] for t in touching)]), 1, p.shape)
        own = lesions[window] == lesion
        found = np.isin(predicted[window], touching)
        dices.append(dice(found, own))
        distance = hausdorff_distance(found, own, step)
        distances.append(missing if math.isinf(distance) else distance)
        if touching.size:
            true_positives += 1
        else:
            false_negatives += 1
    false_positives = len(set(np.unique(predicted[predicted != 0]).tolist()) - matched)
    scored = len(dices) + false_positives
    if scored == 0:
        return LesionWise(1.0, 0.0, 0, 0, 0)
    return LesionWise(
        dice=float(sum(dices) / scored),
        hd95=float((sum(distances) + missing * false_positives) / scored),
        true_positives=true_positives,
        false_negatives=false_negatives,
        false_positives=false_positives,
    )
