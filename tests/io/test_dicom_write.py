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


@pytest.mark.parametrize(
    ("modality", "laterality", "view", "expected"),
    [
        ("MG", "L", "CC", ["A", "R"]),
        ("MG", "R", "CC", ["P", "L"]),
        ("MG", "L", "MLO", ["A", "FR"]),
        ("MG", "R", "MLO", ["P", "FL"]),
        ("MG", "R", "ML", ["P", "F"]),
        ("MG", None, "CC", []),  # which breast is not said: no guess
        ("DX", None, "PA", ["L", "F"]),
        ("DX", None, "AP", ["R", "F"]),
        ("CR", None, "LL", ["P", "F"]),
        ("DX", None, None, ["L", "F"]),  # a film whose view is not said: as a PA chest film is hung
    ],
)
def test_projection_images_say_where_their_rows_and_columns_point(tmp_path, modality, laterality, view, expected):
    """PatientOrientation by the radiographic conventions (what a secondary capture of the image, e.g.
    a heat map, must repeat); a mammogram whose side is not said gets none; an explicit one wins."""
    values = np.zeros((1, 1, 8, 6), np.uint16)
    path = write_dicom_image(Volume(values), tmp_path / "a.dcm", modality=modality, laterality=laterality, view=view)
    written = pydicom.dcmread(path).get("PatientOrientation")
    assert (list(written) if written else []) == expected
    path = write_dicom_image(Volume(values), tmp_path / "b.dcm", modality=modality, laterality=laterality, view=view,
                             orientation=("P", "F"))  # fmt: skip
    assert list(pydicom.dcmread(path).PatientOrientation) == ["P", "F"]


def test_a_wrong_orientation_is_refused(tmp_path):
    with pytest.raises(InputError, match="letters A, P, R, L, H, F"):
        write_dicom_image(Volume(np.zeros((1, 1, 4, 4), np.uint16)), tmp_path / "a.dcm", orientation=("left", "F"))
    with pytest.raises(InputError, match="two directions"):
        write_dicom_image(Volume(np.zeros((1, 1, 4, 4), np.uint16)), tmp_path / "a.dcm", orientation=("L",))
    assert not (tmp_path / "a.dcm").exists()


@pytest.mark.parametrize(
    ("modality", "laterality", "view", "photometric"),
    [("MG", "L", "MLO", "MONOCHROME2"), ("MG", "R", "CC", "MONOCHROME1"), ("DX", None, "PA", "MONOCHROME2"),
     ("DX", None, None, "MONOCHROME1"), ("CR", None, None, "MONOCHROME2")],
)  # fmt: skip
def test_projection_images_validate(tmp_path, modality, laterality, view, photometric):
    """dciodvfy (Debian dicom3tools) finds no error in what the writer makes; the window, laterality
    and view read back (an unpaired body part's U as no side)."""
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed")
    values = np.random.default_rng(1).integers(0, 4000, size=(1, 1, 12, 10)).astype(np.uint16)
    path = write_dicom_image(Volume(values, Geometry(spacing=(1.0, 0.1, 0.1))), tmp_path / "a.dcm", modality=modality,
                             laterality=laterality, view=view, photometric=photometric)  # fmt: skip
    found = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    assert [line for line in (found.stdout + found.stderr).splitlines() if line.startswith("Error")] == []
    back = read(path)
    assert back.metadata.laterality == laterality and (back.metadata.view or None) == view
    assert back.metadata.window is not None
