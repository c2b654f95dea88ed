"""Deletion/insertion curves, energy in the box and the randomisation statistic, on cases whose
answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from medsight.core.errors import InputError
from medsight.explain import box_energy, deletion_insertion, rank_correlation


def _region_probability(batch: torch.Tensor) -> torch.Tensor:
    """A 'network' whose probability is the mean brightness of the top-left 4x4 region."""
    return batch[:, 0, :4, :4].mean(dim=(1, 2))


def _image() -> torch.Tensor:
    image = torch.full((1, 16, 16), 0.1)
    image[0, :4, :4] = 1.0
    return image


def test_curves_start_and_end_where_they_must_and_a_true_map_beats_chance():
    image = _image()
    truth = np.zeros((16, 16), np.float32)
    truth[:4, :4] = 1.0
    curves = deletion_insertion(_region_probability, image, truth, steps=16)
    assert curves.fractions[0] == 0 and curves.fractions[-1] == 1 and len(curves.deletion) == 17
    start, blurred = float(_region_probability(image[None])[0]), curves.deletion[-1]
    for curve in (curves.deletion, curves.deletion_random):
        assert curve[0] == pytest.approx(start) and curve[-1] == pytest.approx(blurred)
    for curve in (curves.insertion, curves.insertion_random):
        assert curve[0] == pytest.approx(blurred) and curve[-1] == pytest.approx(start)
    # the 16 region pixels are 1/16 of the image: the first step of deletion removes them all
    assert curves.deletion[1] == pytest.approx(blurred) and curves.insertion[1] == pytest.approx(start)
    reference = np.trapezoid(curves.deletion, curves.fractions) if hasattr(np, "trapezoid") else None
    if reference is not None:
        assert curves.deletion_auc == pytest.approx(reference)
    summary = curves.summary()
    spread = start - blurred  # what blurring takes away
    assert spread > 0.1 and summary["faithfulness"] > 0.5 * spread  # ideal (1 - 1/16) of it, less a noisy random order
    backwards = deletion_insertion(_region_probability, image, -truth, steps=16).summary()
    assert backwards["faithfulness"] < -0.5 * spread  # a map pointing everywhere but the evidence
    assert backwards["deletion_auc_random"] == pytest.approx(summary["deletion_auc_random"])  # same seed


def test_curves_refuse_a_map_of_another_grid_or_with_nans():
    with pytest.raises(InputError, match="does not fit"):
        deletion_insertion(_region_probability, _image(), np.zeros((8, 8)))
    bad = np.zeros((16, 16))
    bad[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        deletion_insertion(_region_probability, _image(), bad)


def test_energy_in_the_box_by_hand():
    flat = np.ones((10, 20))
    box = np.array([[0, 0, 5, 4]])  # 20 of 200 pixels
    even = box_energy(flat, box)
    assert even.energy == pytest.approx(0.1) and even.chance == pytest.approx(0.1)
    inside = np.zeros((10, 20))
    inside[1, 2] = 3.0
    inside[8, 15] = -5.0  # evidence against is not mass in or out
    hit = box_energy(inside, box)
    assert hit.energy == 1.0 and hit.hit
    outside = np.zeros((10, 20))
    outside[9, 19] = 1.0
    outside[0, 0] = 1.0
    miss = box_energy(outside, box)
    assert miss.energy == pytest.approx(0.5)
    assert np.isnan(box_energy(np.zeros((10, 20)), box).energy)
    clipped = box_energy(flat, np.array([[15.5, 8, 40, 30]]))  # partly outside: columns 15-19, rows 8-9
    assert clipped.chance == pytest.approx(10 / 200)
    two = box_energy(flat, np.array([[0, 0, 5, 4], [0, 0, 5, 4]]))  # overlapping boxes count once
    assert two.chance == pytest.approx(0.1)


def test_energy_in_the_box_refuses_bad_boxes():
    with pytest.raises(InputError, match="at least one box"):
        box_energy(np.ones((4, 4)), np.zeros((0, 4)))
    with pytest.raises(InputError, match="x1 >= x0"):
        box_energy(np.ones((4, 4)), np.array([[3, 0, 1, 2]]))
    with pytest.raises(InputError, match="2D map"):
        box_energy(np.ones((2, 4, 4)), np.array([[0, 0, 1, 1]]))


def test_rank_correlation_is_spearmans_and_undefined_for_a_flat_map():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    mixed = a + 0.5 * b
    assert rank_correlation(a, mixed) == pytest.approx(stats.spearmanr(a.ravel(), mixed.ravel()).statistic)
    assert rank_correlation(a, a**3) == pytest.approx(1.0)
    assert np.isnan(rank_correlation(a, np.zeros((8, 8))))
    with pytest.raises(InputError, match="cannot be compared"):
        rank_correlation(a, np.zeros((4, 4)))


def test_mask_energy_in_3d_by_hand_and_within_a_region():
    from medsight.explain.faithfulness import mask_energy

    found = np.zeros((4, 5, 6))
    found[1, 2, 3], found[2, 2, 3], found[0, 0, 0] = 3.0, 1.0, 2.0  # 4 of 6 in the lesion; peak in it
    found[3, 4, 5] = -5.0  # negative evidence is not mass
    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 2, 3] = True
    energy = mask_energy(found, mask)
    assert energy.energy == pytest.approx(4 / 6) and energy.chance == pytest.approx(2 / 120) and energy.hit
    region = np.zeros_like(mask)
    region[:2] = True  # the window: the first two slices
    inside = mask_energy(found, mask, region)
    assert inside.energy == pytest.approx(3 / 5) and inside.chance == pytest.approx(1 / 60) and inside.hit
    with pytest.raises(InputError, match="must be one shape"):
        mask_energy(found, mask[:2])
