"""Files that declare enormous images are refused from their header, before decoding, in little memory."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsight.core import ConfigError, InputError
from medsight.io import read
from medsight.io.limits import max_image_bytes, set_max_image_bytes


def _png(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def _refused_cheaply(path: Path, match: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=match):
            read(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6, f"{peak / 1e6:.0f} MB allocated before refusing"


@pytest.fixture
def budget():
    yield set_max_image_bytes
    set_max_image_bytes(None)


def test_rle_dicom_declaring_65535_squared(testdata, tmp_path, budget):
    import pydicom

    ds = pydicom.dcmread(testdata("MR_small_RLE.dcm"))
    ds.Rows = ds.Columns = 65535
    ds.save_as(tmp_path / "bomb.dcm")
    _refused_cheaply(tmp_path / "bomb.dcm", r"65535 x 65535.*8\.0 GiB once decoded.*MEDSIGHT_MAX_IMAGE_BYTES")
    budget(10**12)  # with the budget out of the way, the RLE data present still gives it away
    _refused_cheaply(tmp_path / "bomb.dcm", r"RLE data holds \d+ bytes.*truncated or corrupt")


def test_raw_dicom_series_file_declaring_a_huge_image_is_skipped_in_a_folder(make_series, caplog):
    import pydicom

    folder, volume = make_series(shape=(4, 8, 8))
    files = sorted(folder.iterdir())
    ds = pydicom.dcmread(files[0])
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 4
    ds.save_as(folder / "zz_bomb.dcm")
    loaded = read(folder)
    assert loaded.spatial_shape == volume.spatial_shape
    assert "zz_bomb.dcm declares an image of 4 x 65535 x 65535" in caplog.text


def test_png_declaring_65535_squared(tmp_path):
    _refused_cheaply(_png(tmp_path / "bomb.png", 65535, 65535), r"declares more pixels than any")


def test_png_declaring_more_than_its_bytes_can_hold(tmp_path):
    _refused_cheaply(_png(tmp_path / "big.png", 12000, 12000), r"12000x12000 pixels .* holds only \d+ bytes")


def test_nifti_declaring_a_huge_volume(tmp_path):
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    image.header.set_data_shape((30000, 30000, 30000))
    path = tmp_path / "bomb.nii"
    header = image.header.binaryblock
    path.write_bytes(header + b"\0" * 4 + b"\0" * 128)
    _refused_cheaply(path, r"30000 x 30000 x 30000")


def test_nrrd_declaring_a_huge_volume(tmp_path):
    path = tmp_path / "bomb.nrrd"
    path.write_bytes(
        b"NRRD0004\ntype: short\ndimension: 3\nsizes: 40000 40000 40000\nencoding: raw\nendian: little\n\n" + b"\0" * 64
    )
    _refused_cheaply(path, r"40000 x 40000 x 40000")


def test_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv("MEDSIGHT_MAX_IMAGE_BYTES", "1e6")
    assert max_image_bytes() == 10**6
    monkeypatch.setenv("MEDSIGHT_MAX_IMAGE_BYTES", "lots")
    with pytest.raises(ConfigError, match="must be a number of bytes"):
        max_image_bytes()


def test_a_small_budget_refuses_a_real_image(testdata, budget):
    budget(1000)
    with pytest.raises(InputError, match="above the 1000 bytes budget"):
        read(testdata("CT_small.dcm"))
