from __future__ import annotations

import numpy as np
import pytest

from medsight.core import ConfigError, Geometry, UnsupportedFormatError, Volume
from medsight.io import detect_format, read, write
from medsight.io.formats import output_format


def test_detects_every_format_by_content(tmp_path, testdata, make_series):
    v = Volume(np.arange(24, dtype=np.uint8).reshape(1, 2, 3, 4), Geometry())
    for name in ("a.nii.gz", "a.nii", "a.nrrd", "a.mha"):
        write(v, tmp_path / name)
    write(v, tmp_path / "a.png", slice_index=0)
    write(v, tmp_path / "a.jpg", slice_index=1)
    folder, _ = make_series()
    expected = {
        "a.nii.gz": "nifti",
        "a.nii": "nifti",
        "a.nrrd": "nrrd",
        "a.mha": "mha",
        "a.png": "png",
        "a.jpg": "jpeg",
    }
    for name, fmt in expected.items():
        # renamed files are still recognised: the content decides
        renamed = tmp_path / f"renamed_{fmt}.bin"
        renamed.write_bytes((tmp_path / name).read_bytes())
        assert detect_format(tmp_path / name) == fmt
        if fmt != "nifti" or not name.endswith(".gz"):
            assert detect_format(renamed) == fmt
    assert detect_format(folder) == "dicom-series"
    assert detect_format(testdata("MR_small.dcm")) == "dicom"


def test_dicom_without_preamble_is_read(make_series, tmp_path):
    import pydicom

    folder, written = make_series(shape=(1, 8, 8))
    ds = pydicom.dcmread(next(folder.iterdir()))
    del ds.file_meta
    ds.preamble = None
    bare = tmp_path / "bare"
    pydicom.dcmwrite(bare, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert bare.read_bytes()[:2] == b"\x08\x00"  # starts with group 0008, no 'DICM'
    assert detect_format(bare) == "dicom"
    np.testing.assert_array_equal(read(bare).array, written.array)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("x.nii.gz", "nifti"),
        ("x.NII", "nifti"),
        ("x.nrrd", "nrrd"),
        ("x.mha", "mha"),
        ("x.png", "png"),
        ("out", "dicom-series"),
    ],
)
def test_output_format_from_name(name, fmt):
    assert output_format(name) == fmt


@pytest.mark.parametrize(
    ("name", "hint"), [("x.mhd", "detached"), ("x.dcm", "series folder"), ("x.tiff", "not a supported")]
)
def test_unsupported_output(name, hint):
    with pytest.raises(UnsupportedFormatError, match=hint):
        output_format(name)


def test_options_for_the_wrong_format_are_errors(tmp_path):
    v = Volume(np.zeros((1, 1, 4, 4), np.uint8), Geometry())
    write(v, tmp_path / "a.nii.gz")
    with pytest.raises(ConfigError, match="apply to DICOM only"):
        read(tmp_path / "a.nii.gz", series_uid="1.2")
    with pytest.raises(ConfigError, match="PNG/JPEG output"):
        write(v, tmp_path / "b.nii.gz", window=(1, 2))
