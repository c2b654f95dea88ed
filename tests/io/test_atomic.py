"""A failed write leaves nothing behind and never damages what was there."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.core import Geometry, InputError, Volume
from medsight.io import write, write_dicom_series


@pytest.fixture
def volume():
    return Volume(np.arange(60, dtype=np.int16).reshape(1, 3, 4, 5), Geometry())


class WriteFailedError(Exception):
    pass


def test_failed_nifti_write_leaves_no_file(tmp_path, volume, monkeypatch):
    import nibabel as nib

    def explode(img, path):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise WriteFailedError("disk full")

    monkeypatch.setattr(nib, "save", explode)
    with pytest.raises(WriteFailedError):
        write(volume, tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path, volume, monkeypatch):
    target = tmp_path / "out.nrrd"
    write(volume, target)
    before = target.read_bytes()
    import SimpleITK as sitk

    monkeypatch.setattr(sitk, "WriteImage", lambda *a, **k: (_ for _ in ()).throw(WriteFailedError("killed")))
    with pytest.raises(WriteFailedError):
        write(volume, target, overwrite=True)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.nrrd"]


def test_failed_dicom_series_leaves_no_folder(tmp_path, volume, monkeypatch):
    import pydicom

    calls = {"n": 0}
    real = pydicom.dcmwrite

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise WriteFailedError("network drive vanished")
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmwrite", flaky)
    with pytest.raises(WriteFailedError):
        write_dicom_series(volume, tmp_path / "series")
    assert list(tmp_path.iterdir()) == []


def test_existing_outputs_are_not_overwritten_by_default(tmp_path, volume):
    write(volume, tmp_path / "a.mha")
    with pytest.raises(InputError, match=r"already exists.*--overwrite"):
        write(volume, tmp_path / "a.mha")
    write(volume, tmp_path / "series")
    with pytest.raises(InputError, match=r"not empty.*--overwrite"):
        write(volume, tmp_path / "series")
    write(volume, tmp_path / "series", overwrite=True)
    assert len(list((tmp_path / "series").iterdir())) == 3


def test_missing_parent_folder(tmp_path, volume):
    with pytest.raises(InputError, match="does not exist"):
        write(volume, tmp_path / "no" / "such" / "a.nii.gz")
