"""Projection images (MG/DX/CR) written as DICOM read back exactly, MONOCHROME1 included."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medsight.core import Geometry, InputError, Volume
from medsight.io import read, write_dicom_image


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_mammogram_round_trip(tmp_path, photometric):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4096, size=(1, 1, 40, 30)).astype(np.uint16)
    path = write_dicom_image(
        Volume(values, Geometry(spacing=(1.0, 0.1, 0.1))),
        tmp_path / "img.dicom",
        modality="MG",
        photometric=photometric,
        laterality="L",
        view="MLO",
    )
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == pydicom.uid.DigitalMammographyXRayImageStorageForPresentation
    assert (ds.ImageLaterality, ds.ViewPosition, ds.BitsStored) == ("L", "MLO", 12)
    back = read(path, invert_monochrome1=True)
    np.testing.assert_array_equal(back.array, values)
    assert back.geometry.spacing[1:] == pytest.approx((0.1, 0.1))
    # GDCM shows MONOCHROME1 inverted too: both readers agree with what was written
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0], values[0, 0])


def test_projection_images_refuse_what_they_cannot_hold(tmp_path):
    with pytest.raises(InputError, match=r"integers 0\.\.65535"):
        write_dicom_image(Volume(np.full((1, 1, 4, 4), -3, np.int16)), tmp_path / "a.dcm")
    with pytest.raises(InputError, match="one channel and one slice"):
        write_dicom_image(Volume(np.zeros((1, 2, 4, 4), np.uint16)), tmp_path / "a.dcm")
    with pytest.raises(InputError, match="for a projection image"):
        write_dicom_image(Volume(np.zeros((1, 1, 4, 4), np.uint16)), tmp_path / "a.dcm", modality="CT")
    assert not (tmp_path / "a.dcm").exists()
