"""Lung-field cropping of chest CT: the box holds every nodule and little else; other images keep their grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsight.core.errors import InputError
from medsight.data.phantoms import make_phantom
from medsight.io import read
from medsight.transforms.volume3d import lung_box, preprocess_case


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    out = tmp_path_factory.mktemp("luna")
    make_phantom("lung-nodule-det", out, cases=3, seed=4)
    return out


def test_the_lung_box_holds_every_nodule_and_a_fraction_of_the_scan(chest):
    annotations = pd.read_csv(chest / "annotations.csv")
    for mhd in sorted(chest.glob("subset*/*.mhd")):
        scan = read(mhd)
        box = lung_box(np.asarray(scan.array), scan.geometry.spacing)
        share = np.prod([b - a for a, b in box]) / np.prod(scan.spatial_shape)
        assert 0.15 < share < 0.6
        for row in annotations[annotations.seriesuid == mhd.stem].itertuples():
            index = scan.geometry.world_to_index([row.coordX, row.coordY, row.coordZ])
            assert all(a <= i < b for i, (a, b) in zip(index, box, strict=True)), (mhd.stem, index, box)


def test_without_air_inside_a_body_the_whole_grid_is_kept():
    solid = np.full((1, 10, 20, 20), 40.0, np.float32)
    assert lung_box(solid, (2.0, 1.0, 1.0)) == ((0, 10), (0, 20), (0, 20))
    outside_only = solid.copy()
    outside_only[0, :, :3, :] = -1000  # air along an edge: around the body, not lungs
    assert lung_box(outside_only, (2.0, 1.0, 1.0)) == ((0, 10), (0, 20), (0, 20))


def test_a_box_of_air_inside_the_body_is_cropped_with_its_margin():
    image = np.full((1, 30, 60, 60), 40.0, np.float32)
    image[0, :, :, :2] = -1000  # outside the body
    image[0, 10:20, 20:30, 30:40] = -850  # a lung
    case = preprocess_case(image, (2.0, 1.0, 1.0), (2.0, 1.0, 1.0), crop="lungs")
    assert case.box == ((5, 25), (10, 40), (20, 50))  # 10 mm each side
    with pytest.raises(InputError, match="nonzero, lungs or none"):
        preprocess_case(image, (2.0, 1.0, 1.0), (2.0, 1.0, 1.0), crop="lung")


def test_findings_smaller_than_a_coarse_voxel_keep_one():
    """Resampled by nearest neighbour to a grid 3x coarser, one-voxel findings mostly vanish; with
    ``keep_regions`` each keeps the voxel nearest its centre, and the rest of the map is unchanged."""
    rng = np.random.default_rng(0)
    label = np.zeros((30, 60, 60), np.uint8)
    cells = rng.choice(10 * 20 * 14, size=40, replace=False)  # one speck per coarse voxel, left of x = 42
    specks = np.stack(np.unravel_index(cells, (10, 20, 14)), -1) * 3 + rng.integers(0, 3, size=(40, 3))
    label[tuple(specks.T)] = 1
    label[10:22, 20:44, 45:57] = 2  # a large structure: resampled as before
    image = np.zeros((1, *label.shape), np.float32)
    plain = preprocess_case(image, (1.0, 1.0, 1.0), (3.0, 3.0, 3.0), label=label, crop="none")
    kept = preprocess_case(image, (1.0, 1.0, 1.0), (3.0, 3.0, 3.0), label=label, crop="none", keep_regions=True)
    assert (plain.label == 1).sum() < len(specks)  # nearest neighbour loses some
    assert (kept.label == 1).sum() == len(specks)  # each kept, once
    for z, y, x in specks:  # each at the coarse voxel holding its centre
        assert kept.label[z // 3, y // 3, x // 3] == 1
    changed = kept.label != plain.label
    assert np.all(kept.label[changed] == 1) and np.all(plain.label[changed] == 0)
    np.testing.assert_array_equal(kept.label == 2, plain.label == 2)
    same = preprocess_case(image, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), label=label, crop="none", keep_regions=True)
    np.testing.assert_array_equal(same.label, label)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ((2, 7, 9, 11), (20, 5, 30)),
        ((1, 40, 33, 17), (13, 66, 17)),
        ((3, 1, 5, 6), (4, 1, 12)),
        ((1, 6, 6, 6), (6, 6, 6)),
    ],
)
def test_resampling_equals_pytorch_interpolate(source, target):
    """The NumPy resampling (prediction runs it without PyTorch) against PyTorch's own interpolation:
    trilinear with align_corners=False for intensities, nearest-exact for label maps."""
    torch = pytest.importorskip("torch")
    from medsight.transforms.volume3d import resample

    rng = np.random.default_rng(sum(source))
    image = rng.normal(size=source).astype(np.float32) * 100
    kept = image.copy()
    reference = torch.nn.functional.interpolate(torch.from_numpy(image)[None], size=target, mode="trilinear",
                                                align_corners=False)[0].numpy()  # fmt: skip
    got = resample(image, target)
    assert got.dtype == np.float32 and got.shape == (source[0], *target)
    np.testing.assert_allclose(got, reference, atol=2e-3, rtol=1e-5)
    labels = rng.integers(0, 5, size=source).astype(np.uint8)
    nearest = torch.nn.functional.interpolate(torch.from_numpy(labels)[None].float(), size=target,
                                              mode="nearest-exact")[0].numpy().astype(np.uint8)  # fmt: skip
    painted = resample(labels, target, labels=True)
    assert painted.dtype == np.uint8
    np.testing.assert_array_equal(painted, nearest)
    np.testing.assert_array_equal(image, kept)  # the input is left as it was
