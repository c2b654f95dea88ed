from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from medsight.core import Geometry, InputError, Volume, VolumeMetadata
from medsight.transforms.image2d import Augment2D, Preprocess2D, build_augmentation, prepare_image


def test_rgb_photo_is_padded_square_and_resized():
    rgb = np.zeros((3, 1, 40, 80), np.uint8)
    rgb[0] = 200
    out = prepare_image(Volume(rgb), Preprocess2D(size=32, channels=3))
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
    assert out[0, 16, 16] == 200 and out[0, 0, 16] == 0  # aspect kept: black bars top and bottom


def test_twelve_bit_radiograph_uses_its_window_or_percentiles():
    values = np.linspace(0, 4095, 64 * 64).reshape(1, 1, 64, 64).astype(np.uint16)
    windowed = Volume(values, Geometry(), VolumeMetadata(window=(2048.0, 1024.0)))
    out = prepare_image(windowed, Preprocess2D(size=64, channels=1))
    assert out[0].min() == 0 and out[0].max() == 255
    assert (out[0] == 0).mean() == pytest.approx(0.375, abs=0.02)  # below the window: 1536 / 4096
    percentile = prepare_image(windowed, Preprocess2D(size=64, channels=1, window="percentile"))
    assert (percentile[0] == 0).mean() < 0.02


def test_grey_to_three_channels_and_colour_to_grey():
    grey = np.full((1, 1, 8, 8), 100, np.uint8)
    assert (prepare_image(Volume(grey), Preprocess2D(size=8, channels=3)) == 100).all()
    colour = np.stack([np.full((1, 8, 8), v, np.uint8) for v in (255, 0, 0)])
    assert prepare_image(Volume(colour), Preprocess2D(size=8, channels=1))[0, 4, 4] == 76  # 0.299 * 255


def test_bad_channels_and_unknown_options():
    with pytest.raises(InputError, match="1- or 3-channel"):
        prepare_image(Volume(np.zeros((2, 1, 8, 8), np.uint8)), Preprocess2D(size=8))
    with pytest.raises(ValidationError):
        Preprocess2D(sise=8)


def test_augmentation_is_reproducible_and_stays_in_range():
    image = torch.rand(3, 64, 64)
    a = build_augmentation(Augment2D(), seed=3)
    b = build_augmentation(Augment2D(), seed=3)
    outs_a = [a(image) for _ in range(5)]
    outs_b = [b(image) for _ in range(5)]
    for x, y in zip(outs_a, outs_b, strict=True):
        torch.testing.assert_close(x, y)
        assert x.shape == image.shape
    assert not all(torch.equal(x, image) for x in outs_a)
    off = build_augmentation(
        Augment2D(flip=0, rotate=0, zoom=0, elastic=0, brightness_contrast=0, gamma=0, blur=0, noise=0)
    )
    torch.testing.assert_close(off(image), image)
