"""Batch augmentation: each operation against an independent reference (scipy.ndimage or the
formula), firing rates, reproducibility, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from medsight.core import InputError
from medsight.transforms.batch2d import BatchAugmenter, gaussian_blur, warp
from medsight.transforms.image2d import Augment2D

OFF = dict(flip=0, rotate=0, zoom=0, elastic=0, brightness_contrast=0, gamma=0, blur=0, noise=0)


def only(**on) -> Augment2D:
    return Augment2D(**{**OFF, **on})


def test_nothing_fires_nothing_changes_and_flip_is_exact():
    images = torch.rand(6, 3, 20, 24)
    torch.testing.assert_close(BatchAugmenter(only())(images), images, rtol=0, atol=0)
    torch.testing.assert_close(BatchAugmenter(only(flip=1.0))(images), images.flip(-1), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("angle", "zoom", "shape"), [(0.4, 1.0, (32, 32)), (-1.1, 1.3, (32, 32)), (0.7, 0.85, (24, 40))]
)
def test_warp_matches_scipy_affine_transform(angle, zoom, shape):
    """scipy maps output (row, col) to input M @ (o - c) + c; the same rotation and zoom."""
    image = ndimage.gaussian_filter(np.random.default_rng(0).random(shape), 1.5)
    ours = warp(torch.from_numpy(image)[None, None].float(), torch.tensor([angle]), torch.tensor([zoom]))[0, 0]
    m = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) / zoom
    centre = (np.array(shape) - 1) / 2
    reference = ndimage.affine_transform(image, m, offset=centre - m @ centre, order=1, mode="constant")
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    source = np.einsum("ij,jkl->ikl", m, np.stack([rows, cols]) - centre[:, None, None]) + centre[:, None, None]
    inside = (source[0] >= 1) & (source[0] <= shape[0] - 2) & (source[1] >= 1) & (source[1] <= shape[1] - 2)
    assert inside.mean() > 0.4
    np.testing.assert_allclose(ours.numpy()[inside], reference[inside], atol=1e-5)


def test_warp_by_a_quarter_turn_is_rot90_and_displacement_shifts():
    image = torch.rand(2, 1, 16, 16)
    quarter = warp(image, torch.full((2,), math.pi / 2), torch.ones(2))
    torch.testing.assert_close(quarter, torch.rot90(image, -1, (2, 3)), atol=1e-5, rtol=0)
    shift = torch.zeros(2, 2, 16, 16)
    shift[:, 0] = 1.0  # every output pixel reads one pixel to its right
    moved = warp(image, torch.zeros(2), torch.ones(2), shift)
    torch.testing.assert_close(moved[..., :-1], image[..., 1:], atol=1e-5, rtol=0)
    angle, zoom = torch.tensor([0.3, 0.3]), torch.tensor([1.2, 1.2])
    mirrored = warp(image, angle, zoom, flip=torch.tensor([True, False]))  # flip folded into the resampling
    torch.testing.assert_close(mirrored[0], warp(image.flip(-1), angle, zoom)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(mirrored[1], warp(image, angle, zoom)[1], atol=1e-5, rtol=0)


def test_blur_matches_scipy_with_its_own_sigmas_per_image():
    images = torch.rand(2, 2, 30, 26, dtype=torch.float64)
    sigma_y, sigma_x = torch.tensor([0.4, 1.0]), torch.tensor([0.9, 0.3])
    ours = gaussian_blur(images, sigma_y, sigma_x)
    radius = math.ceil(3 * 1.0)
    for b in range(2):
        for c in range(2):
            reference = ndimage.gaussian_filter(
                images[b, c].numpy(), (float(sigma_y[b]), float(sigma_x[b])), mode="mirror", radius=radius
            )
            np.testing.assert_allclose(ours[b, c].numpy(), reference, atol=1e-6)


def test_intensity_transforms_follow_their_formulas():
    images = torch.rand(64, 1, 8, 8) * 0.6 + 0.2
    torch.manual_seed(0)
    scaled = BatchAugmenter(only(brightness_contrast=1.0))(images)
    factor = (scaled / images).flatten(1)
    assert torch.allclose(factor, factor[:, :1], atol=1e-5)  # one factor per image
    assert float(factor.min()) >= 0.85 - 1e-5 and float(factor.max()) <= 1.15 + 1e-5
    contrasted = BatchAugmenter(only(gamma=1.0))(images)
    low, high = images.amin((1, 2, 3), keepdim=True), images.amax((1, 2, 3), keepdim=True)
    unit, out = (images - low) / (high - low), (contrasted - low) / (high - low)
    inner = (unit > 0.05) & (unit < 0.95)
    gamma = (torch.log(out[inner]) / torch.log(unit[inner])).reshape(-1)
    assert float(gamma.min()) >= 0.8 - 1e-3 and float(gamma.max()) <= 1.25 + 1e-3
    torch.testing.assert_close(contrasted.amin((1, 2, 3)), images.amin((1, 2, 3)))  # the range is kept
    noisy = BatchAugmenter(only(noise=1.0))(images) - images
    assert 0 < float(noisy.std()) < 0.02


@pytest.mark.parametrize("name", ["flip", "brightness_contrast", "gamma", "blur", "noise", "rotate"])
def test_each_transform_fires_at_its_rate(name):
    images = torch.rand(3000, 1, 6, 6) * 0.5 + 0.25
    torch.manual_seed(1)
    changed = ~torch.isclose(BatchAugmenter(only(**{name: 0.3}))(images), images, atol=1e-6).flatten(1).all(1)
    assert abs(float(changed.float().mean()) - 0.3) < 0.035


def test_seeded_runs_repeat_and_everything_stays_in_range():
    images = torch.rand(8, 3, 32, 32)
    augment = BatchAugmenter(Augment2D(elastic=0.5))
    torch.manual_seed(5)
    first = augment(images)
    torch.manual_seed(5)
    torch.testing.assert_close(augment(images), first, rtol=0, atol=0)
    assert first.shape == images.shape and float(first.min()) >= 0 and float(first.max()) <= 1
    assert not torch.equal(augment(images), first)
    assert augment(images[:0]).shape == (0, 3, 32, 32)


@pytest.mark.parametrize("spec", [only(flip=1.0), only(rotate=1.0, zoom=1.0), Augment2D(elastic=1.0, flip=0.5)])
def test_maps_move_with_their_images_and_keep_their_codes(spec):
    """A bright square and its map code (3) stay together through every geometric change; intensity
    changes leave the map alone and never invent a code."""
    images = torch.zeros(16, 1, 48, 40)
    maps = torch.zeros(16, 48, 40, dtype=torch.uint8)
    for k in range(16):
        y, x = 4 + 2 * k, 6 + k
        images[k, 0, y : y + 10, x : x + 12] = 1.0
        maps[k, y : y + 10, x : x + 12] = 3
    torch.manual_seed(0)
    moved_images, moved_maps = BatchAugmenter(spec).with_maps(images, maps)
    assert moved_maps.dtype == torch.uint8 and set(moved_maps.unique().tolist()) <= {0, 3}
    bright, coded = moved_images[:, 0] > 0.5, moved_maps == 3
    agreement = (bright & coded).sum() / (bright | coded).sum()
    assert agreement > 0.85
    channels = maps[:, None].repeat(1, 2, 1, 1)  # (B, K, H, W) maps work too
    torch.manual_seed(0)
    _, moved = BatchAugmenter(spec).with_maps(images, channels)
    assert torch.equal(moved[:, 0], moved_maps) and torch.equal(moved[:, 1], moved_maps)
    torch.manual_seed(0)
    torch.testing.assert_close(BatchAugmenter(spec)(images), moved_images)  # the same draws as without maps
    with pytest.raises(InputError, match="do not cover the images"):
        BatchAugmenter(spec).with_maps(images, maps[:, :20])


def test_bad_input_is_named():
    with pytest.raises(InputError, match=r"float \(B, C, H, W\)"):
        BatchAugmenter(Augment2D())(torch.rand(3, 32, 32))
    with pytest.raises(InputError, match="uint8"):
        BatchAugmenter(Augment2D())(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
