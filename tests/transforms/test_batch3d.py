"""3D batch augmentation: labels follow images, millimetres not voxels, thick slices kept, seeded."""

from __future__ import annotations

import numpy as np
import torch

from medsight.transforms.batch3d import BatchAugmenter3D

OFF = {"rotation_p": 0, "scale_p": 0, "elastic_p": 0, "flip_p": 0, "blur_p": 0, "bias_field_p": 0,
       "brightness_p": 0, "gamma_p": 0, "noise_p": 0}  # fmt: skip


def _labels(shape=(16, 24, 24)):
    labels = torch.zeros(2, *shape, dtype=torch.uint8)
    labels[:, 4:12, 6:18, 8:14] = 1
    labels[:, 6:10, 9:15, 9:12] = 2
    return labels


def test_everything_off_changes_nothing():
    labels = _labels()
    images = torch.randn(2, 3, *labels.shape[1:])
    out_images, out_labels = BatchAugmenter3D(**OFF)(images, labels)
    assert torch.equal(out_images, images) and torch.equal(out_labels, labels)


def test_labels_move_with_their_images():
    torch.manual_seed(0)
    labels = _labels()
    images = labels[:, None].float().repeat(1, 2, 1, 1, 1)  # the image is the label map
    spatial = {**OFF, "rotation_p": 1, "scale_p": 1, "elastic_p": 1, "flip_p": 0.5}
    out_images, out_labels = BatchAugmenter3D(spacing=(2.0, 1.0, 1.0), **spatial)(images, labels)
    assert not torch.equal(out_labels, labels)
    agreement = (out_images[:, 0].round() == out_labels.float()).float().mean()
    assert agreement > 0.97  # they differ only where bilinear and nearest sampling part at edges
    assert set(out_labels.unique().tolist()) <= {0, 1, 2}


def test_rotation_acts_in_millimetres():
    """A ball in millimetres (an ellipsoid of anisotropic voxels) keeps its volume when rotated."""
    spacing = (3.0, 1.0, 1.0)
    z, y, x = np.ogrid[:20, :48, :48]
    ball = ((z - 10) * 3.0) ** 2 + (y - 24.0) ** 2 + (x - 24.0) ** 2 < 18**2
    labels = torch.from_numpy(ball[None].repeat(4, 0).astype(np.uint8))
    torch.manual_seed(1)
    augment = BatchAugmenter3D(spacing=spacing, **{**OFF, "rotation_p": 1, "rotation_degrees": 45})
    _, rotated = augment(labels[:, None].float(), labels)
    volumes = rotated.flatten(1).sum(1).float() / labels.flatten(1).sum(1).float()
    assert torch.all((volumes - 1).abs() < 0.05), volumes
    for sample in rotated.numpy():  # still a ball: as wide in millimetres along every axis
        where = np.argwhere(sample > 0)
        extents = (where.max(0) - where.min(0) + 1) * np.array(spacing)
        assert np.all(np.abs(extents - extents.mean()) <= 3.5), extents


def test_a_thick_axis_is_neither_flipped_nor_rotated_out_of_plane():
    labels = torch.zeros(4, 8, 32, 32, dtype=torch.uint8)
    for z in range(8):
        labels[:, z, 8:24, 8:24] = z % 3  # each slice its own value, in the middle of the plane
    torch.manual_seed(2)
    augment = BatchAugmenter3D(spacing=(8.0, 1.0, 1.0), thick_axis=0,
                               **{**OFF, "rotation_p": 1, "flip_p": 1, "scale_p": 1})  # fmt: skip
    _, out = augment(labels[:, None].float(), labels)
    for z in range(8):
        values = set(out[:, z].unique().tolist()) - {0}
        assert values <= {z % 3}, (z, values)


def test_intensity_changes_leave_labels_alone_and_runs_repeat():
    labels = _labels()
    images = torch.rand(2, 1, *labels.shape[1:])
    intensity = {**OFF, "blur_p": 1, "bias_field_p": 1, "brightness_p": 1, "gamma_p": 1, "noise_p": 1}
    torch.manual_seed(3)
    first_images, first_labels = BatchAugmenter3D(**intensity)(images, labels)
    assert torch.equal(first_labels, labels) and not torch.allclose(first_images, images)
    torch.manual_seed(3)
    second_images, _ = BatchAugmenter3D(**intensity)(images, labels)
    assert torch.equal(first_images, second_images)


def test_intensity_alone_changes_a_copy_reproducibly():
    images = torch.rand(3, 2, 12, 16, 16) + 0.1
    before = images.clone()
    changes = {"blur_p": 1, "bias_field_p": 1, "brightness_p": 1, "gamma_p": 1, "noise_p": 1}
    augment = BatchAugmenter3D(**{**OFF, **changes})
    torch.manual_seed(4)
    first = augment.intensity(images)
    torch.manual_seed(4)
    again = augment.intensity(images)
    assert torch.equal(images, before)  # the caller's tensor is untouched
    assert torch.equal(first, again) and first.shape == images.shape
    assert all(not torch.allclose(first[i], images[i]) for i in range(3))  # every sample changed
    assert torch.equal(BatchAugmenter3D(**OFF).intensity(images), images)
