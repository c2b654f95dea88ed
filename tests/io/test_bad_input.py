"""Every bad input named in the foundation issue gets its own error type and a message with the fix."""

from __future__ import annotations

import shutil

import pytest

from medsight.core import GeometryError, InputError, SeriesError, UnsupportedFormatError
from medsight.io import read


def test_truncated_dicom_pixel_data(make_series, tmp_path):
    folder, _ = make_series()
    src = sorted(folder.iterdir())[0]
    data = src.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-100])  # ends inside the pixel data
    with pytest.raises(InputError, match="is truncated: pixel data holds"):
        read(cut)


def test_dicom_truncated_inside_header(make_series, tmp_path):
    folder, _ = make_series()
    data = sorted(folder.iterdir())[0].read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:600])
    with pytest.raises(InputError, match="truncated"):
        read(cut)


def test_truncated_file_in_a_series_is_named(make_series):
    folder, _ = make_series()
    victim = folder / "slice_0003.dcm"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"slice_0003\.dcm is truncated"):
        read(folder)


def test_text_file_named_dcm(tmp_path):
    fake = tmp_path / "scan.dcm"
    fake.write_text("patient notes, not an image\n" * 10)
    with pytest.raises(InputError, match=r"scan\.dcm is not a DICOM file.*text or other file named \.dcm"):
        read(fake)


def test_series_with_a_missing_slice(make_series):
    folder, _ = make_series()
    (folder / "slice_0004.dcm").unlink()
    with pytest.raises(SeriesError, match=r"gap.*slice_0003\.dcm and slice_0005\.dcm.*1 slice\(s\) missing"):
        read(folder)


def test_two_series_in_one_folder(make_series, tmp_path):
    a, _ = make_series("a")
    b, _ = make_series("b", seed=2)
    mixed = tmp_path / "mixed"
    shutil.copytree(a, mixed)
    for f in b.iterdir():
        shutil.copy(f, mixed / f"b_{f.name}")
    with pytest.raises(SeriesError, match=r"holds 2 series.*series_uid='largest'"):
        read(mixed)


def test_duplicate_slice_positions(make_series):
    folder, _ = make_series()
    shutil.copy(folder / "slice_0001.dcm", folder / "again.dcm")
    with pytest.raises(SeriesError, match=r"duplicate slice position.*(again|slice_0001)\.dcm"):
        read(folder)


def test_multiframe_without_spacing(testdata, tmp_path):
    import pydicom

    ds = pydicom.dcmread(testdata("SC_rgb_2frame.dcm"))
    ds.Modality, ds.SOPClassUID = "CT", "1.2.840.10008.5.1.4.1.1.2"  # frames of a CT are slices, not time
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.save_as(tmp_path / "ct_2frame.dcm")
    with pytest.raises(GeometryError, match=r"without slice spacing.*--slice-spacing"):
        read(tmp_path / "ct_2frame.dcm")


def test_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"folder .*empty is empty"):
        read(empty)


def test_unknown_extension(tmp_path):
    odd = tmp_path / "volume.xyz"
    odd.write_bytes(b"\x00\x01\x02 some binary blob" * 20)
    with pytest.raises(UnsupportedFormatError, match=r"unknown format \(extension '\.xyz'\).*NIfTI"):
        read(odd)


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        read(tmp_path / "nope.nii.gz")


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"is empty \(0 bytes\)"):
        read(empty)


def test_corrupt_gzip(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(InputError, match="corrupt gzip"):
        read(bad)


def test_non_image_dicom(testdata):
    with pytest.raises(InputError, match="holds no image"):
        read(testdata("rtplan.dcm"))


def test_dicomdir_file(testdata):
    with pytest.raises(InputError, match="DICOMDIR"):
        read(testdata("DICOMDIR"))
