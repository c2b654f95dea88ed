"""Segmentation metrics against MONAI's implementations and brute-force references, edge cases included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage
from scipy.spatial.distance import cdist

from medsight.core.errors import InputError
from medsight.metrics.segmentation import (
    BRATS_MISSING_HD95,
    dice,
    hausdorff_distance,
    lesion_wise,
    surface_dice,
    surface_distances,
    volume_difference,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")

SPACINGS = [(1.0, 1.0, 1.0), (0.7, 0.9, 3.5), (2.0, 0.5, 1.25)]


def _blobs(rng: np.random.Generator, shape=(24, 20, 16), count=3) -> np.ndarray:
    """Random smooth-edged blobs (a mask with several components and holes)."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    return field > np.quantile(field, 1 - 0.02 * count)


def _monai(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(mask.astype(np.float32))[None, None]


def _brute_surface_distances(p: np.ndarray, r: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Surface voxels by their 6-neighbourhood, written out; all pairwise distances in mm."""

    def surface(mask):
        padded = np.pad(mask, 1)
        inner = np.ones_like(mask)
        for axis in range(mask.ndim):
            for shift in (-1, 1):
                inner &= np.roll(padded, shift, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
        return np.argwhere(mask & ~inner) * np.asarray(spacing)

    sp, sr = surface(p), surface(r)
    pairwise = cdist(sp, sr)
    return pairwise.min(axis=1), pairwise.min(axis=0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("spacing", SPACINGS)
def test_dice_hd95_and_nsd_agree_with_monai_and_brute_force(seed, spacing):
    rng = np.random.default_rng(seed)
    reference = _blobs(rng)
    prediction = ndimage.binary_dilation(reference, iterations=1) ^ (_blobs(rng, count=1) & reference)
    expected_dice = float(compute_dice(_monai(prediction), _monai(reference), include_background=True))
    assert dice(prediction, reference) == pytest.approx(expected_dice, abs=1e-6)

    to_ref, to_pred = surface_distances(prediction, reference, spacing)
    brute_ref, brute_pred = _brute_surface_distances(prediction, reference, spacing)
    np.testing.assert_allclose(np.sort(to_ref), np.sort(brute_ref), atol=1e-6)
    np.testing.assert_allclose(np.sort(to_pred), np.sort(brute_pred), atol=1e-6)

    for percentile in (95, 100):
        ours = hausdorff_distance(prediction, reference, spacing, percentile=percentile)
        theirs = compute_hausdorff_distance(_monai(prediction), _monai(reference), include_background=True,
                                            percentile=percentile, spacing=list(spacing))  # fmt: skip
        assert ours == pytest.approx(float(theirs), abs=1e-5)
        brute = max(np.percentile(brute_ref, percentile), np.percentile(brute_pred, percentile))
        assert ours == pytest.approx(brute, abs=1e-6)

    for tolerance in (0.0, 1.0, 2.5):
        ours = surface_dice(prediction, reference, spacing, tolerance=tolerance)
        theirs = compute_surface_dice(_monai(prediction), _monai(reference), [tolerance], include_background=True,
                                      spacing=list(spacing))  # fmt: skip
        assert ours == pytest.approx(float(theirs), abs=1e-6)
        brute = (np.sum(brute_ref <= tolerance) + np.sum(brute_pred <= tolerance)) / (brute_ref.size + brute_pred.size)
        assert ours == pytest.approx(brute, abs=1e-9)


def test_anisotropic_spacing_changes_distances_along_its_axis_only():
    reference = np.zeros((9, 9, 9), bool)
    reference[4, 4, 4] = True
    shifted_z = np.roll(reference, 2, axis=2)
    shifted_x = np.roll(reference, 2, axis=0)
    spacing = (1.0, 1.0, 3.0)
    assert hausdorff_distance(shifted_z, reference, spacing) == pytest.approx(6.0)
    assert hausdorff_distance(shifted_x, reference, spacing) == pytest.approx(2.0)
    assert volume_difference(shifted_z, reference, spacing) == 0.0


def test_empty_masks_are_defined():
    empty = np.zeros((6, 6, 6), bool)
    full = empty.copy()
    full[2:4, 2:4, 2:4] = True
    assert dice(empty, empty) == 1.0 and dice(full, empty) == 0.0 and dice(empty, full) == 0.0
    assert hausdorff_distance(empty, empty) == 0.0
    assert math.isinf(hausdorff_distance(full, empty)) and math.isinf(hausdorff_distance(empty, full))
    assert hausdorff_distance(empty, full, missing=BRATS_MISSING_HD95) == 374.0
    assert surface_dice(empty, empty, tolerance=1) == 1.0
    assert surface_dice(full, empty, tolerance=1) == 0.0 and surface_dice(empty, full, tolerance=1) == 0.0
    assert volume_difference(full, empty, (1.0, 2.0, 0.5)) == pytest.approx(8 / 1000)
    assert volume_difference(empty, full, 10.0) == pytest.approx(-8.0)
    assert dice(full, full) == 1.0 and hausdorff_distance(full, full) == 0.0


def test_a_mask_touching_the_grid_border_has_a_surface_there():
    reference = np.ones((4, 4, 4), bool)  # the whole grid: every outer voxel is surface
    to_ref, _ = surface_distances(reference, reference)
    assert to_ref.size == 4**3 - 2**3 and np.all(to_ref == 0)


def test_bad_masks_and_spacing_are_refused():
    mask = np.zeros((4, 4), bool)
    with pytest.raises(InputError, match="same shape"):
        dice(mask, np.zeros((4, 5), bool))
    with pytest.raises(InputError, match="binary mask"):
        dice(np.full((4, 4), 2), mask)
    with pytest.raises(InputError, match="one value per mask axis"):
        hausdorff_distance(mask, mask, (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="positive millimetres"):
        hausdorff_distance(mask, mask, (1.0, float("nan")))
    with pytest.raises(InputError, match="tolerance"):
        surface_dice(mask, mask, tolerance=-1)


def _cube(shape, corner, side):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(c, c + side) for c in corner)] = True
    return mask


SHAPE = (40, 40, 40)


def test_lesion_wise_perfect_missed_and_false_positive_lesions():
    big = _cube(SHAPE, (2, 2, 2), 5)  # 125 voxels > 50
    other = _cube(SHAPE, (25, 25, 25), 5)
    both = big | other
    assert lesion_wise(both, both) == lesion_wise(both, both).__class__(1.0, 0.0, 2, 0, 0)
    missed = lesion_wise(big, both)  # one of two lesions found exactly, one missed
    assert (missed.dice, missed.hd95) == (pytest.approx(0.5), pytest.approx(374 / 2))
    assert (missed.true_positives, missed.false_negatives, missed.false_positives) == (1, 1, 0)
    extra = lesion_wise(both, big)  # one right, one false positive
    assert (extra.dice, extra.hd95, extra.false_positives) == (pytest.approx(0.5), pytest.approx(187.0), 1)
    empty = np.zeros(SHAPE, bool)
    assert lesion_wise(empty, empty) == lesion_wise(empty, empty).__class__(1.0, 0.0, 0, 0, 0)
    only_fp = lesion_wise(big, empty)
    assert (only_fp.dice, only_fp.hd95, only_fp.false_positives) == (0.0, 374.0, 1)


def test_lesion_wise_small_lesions_and_dilation():
    big = _cube(SHAPE, (2, 2, 2), 5)
    small = _cube(SHAPE, (25, 25, 25), 3)  # 27 voxels: under the 50 mm³ threshold at 1 mm
    reference = big | small
    result = lesion_wise(reference, reference)
    assert (result.dice, result.true_positives, result.false_positives) == (1.0, 1, 0)  # small one: not scored, not FP
    assert lesion_wise(reference, reference, (2.0, 2.0, 2.0)).true_positives == 2  # 216 mm³ at 2 mm: scored
    # a prediction near (within the dilation of) a lesion but not on it matches it
    near = _cube(SHAPE, (9, 2, 2), 3)  # 2 voxels beyond the big cube
    assert lesion_wise(near, big).false_positives == 0 and lesion_wise(near, big, dilation=1).false_positives == 1
    # two reference parts 2 voxels apart are one lesion with dilation 3 (one Dice over both), two without
    split = _cube(SHAPE, (2, 2, 2), 5) | _cube(SHAPE, (9, 2, 2), 5)
    half = _cube(SHAPE, (2, 2, 2), 5)
    merged = lesion_wise(half, split)
    assert merged.dice == pytest.approx(dice(half, split)) and merged.false_negatives == 0
    apart = lesion_wise(half, split, dilation=0)
    assert apart.dice == pytest.approx(0.5) and apart.false_negatives == 1


def test_lesion_wise_matches_the_whole_image_figures_for_one_lesion():
    rng = np.random.default_rng(3)
    reference = ndimage.binary_dilation(_cube(SHAPE, (10, 10, 10), 12), iterations=2)
    prediction = reference ^ (rng.random(SHAPE) < 0.05) & reference
    spacing = (1.0, 1.0, 2.0)
    result = lesion_wise(prediction, reference, spacing)
    assert result.dice == pytest.approx(dice(prediction, reference))
    assert result.hd95 == pytest.approx(hausdorff_distance(prediction, reference, spacing))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.8, 0.8)])
def test_large_smooth_masks_give_the_same_distances_as_monai(spacing):
    """Smooth masks with sparse surfaces are measured by a k-d tree, speckled ones by a distance
    transform: both agree with MONAI."""
    z, y, x = np.ogrid[:40, :48, :48]
    reference = (z - 20) ** 2 + (y - 24) ** 2 + (x - 24) ** 2 < 15**2
    prediction = (z - 21) ** 2 / 1.2 + (y - 22) ** 2 + (x - 25) ** 2 < 14**2
    to_ref, _ = surface_distances(prediction, reference, spacing)
    assert to_ref.size < 0.05 * reference.size  # the sparse (k-d tree) path
    for percentile in (95, 100):
        theirs = compute_hausdorff_distance(_monai(prediction), _monai(reference), include_background=True,
                                            percentile=percentile, spacing=list(spacing))  # fmt: skip
        assert hausdorff_distance(prediction, reference, spacing, percentile=percentile) == pytest.approx(
            float(theirs), abs=1e-5
        )
    theirs = compute_surface_dice(_monai(prediction), _monai(reference), [1.5], include_background=True,
                                  spacing=list(spacing))  # fmt: skip
    assert surface_dice(prediction, reference, spacing, tolerance=1.5) == pytest.approx(float(theirs), abs=1e-6)


def _lesion_wise_on_the_whole_grid(p, r, spacing, dilation=3, min_volume=50.0, missing=374.0):
    """The BraTS 2023 rules written out on full arrays, as the official script does them."""
    full = ndimage.generate_binary_structure(3, 3)
    grow = ndimage.generate_binary_structure(3, 2)
    voxel = float(np.prod(spacing))
    pred, _ = ndimage.label(p, full)
    merged, count = ndimage.label(ndimage.binary_dilation(r, grow, iterations=dilation), full)
    gt = np.where(r, merged, 0)
    tp_components, scores = [], []
    for lesion in range(1, count + 1):
        own = gt == lesion
        touching = [t for t in np.unique(pred[ndimage.binary_dilation(own, grow, iterations=dilation)]) if t]
        tp_components += touching
        if own.sum() * voxel <= min_volume:
            continue
        found = np.isin(pred, touching)
        hd = hausdorff_distance(found, own, spacing)
        scores.append((dice(found, own), missing if math.isinf(hd) else hd))
    fp = len(set(np.unique(pred[pred > 0])) - set(tp_components))
    n = len(scores) + fp
    if n == 0:
        return 1.0, 0.0
    return sum(d for d, _ in scores) / n, (sum(h for _, h in scores) + missing * fp) / n


@pytest.mark.parametrize("seed", range(3))
def test_lesion_wise_agrees_with_the_rules_written_out_on_the_whole_grid(seed):
    rng = np.random.default_rng(seed)
    reference = _blobs(rng, shape=(30, 40, 40), count=4)
    prediction = ndimage.binary_dilation(reference, iterations=1) & ~_blobs(rng, shape=(30, 40, 40), count=2)
    prediction |= _blobs(rng, shape=(30, 40, 40), count=1)  # false positives too
    spacing = (2.0, 1.0, 0.9)
    ours = lesion_wise(prediction, reference, spacing, min_volume=20)
    assert (ours.dice, ours.hd95) == pytest.approx(_lesion_wise_on_the_whole_grid(prediction, reference, spacing,
                                                                                   min_volume=20))  # fmt: skip
