from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medsight.core import Geometry, InputError, Volume
from medsight.io import read, write


def test_real_fundus_photo_reads_as_rgb(tmp_path):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image not installed")
    rgb = skimage_data.retina()
    Image.fromarray(rgb).save(tmp_path / "retina.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "retina.png")
    png = read(tmp_path / "retina.png")
    assert png.array.shape == (3, 1, *rgb.shape[:2]) and png.metadata.channel_names == ("R", "G", "B")
    np.testing.assert_array_equal(np.moveaxis(png.array[:, 0], 0, -1), rgb)
    jpg = read(tmp_path / "retina.jpg")
    assert jpg.metadata.source_format == "jpeg"
    assert np.abs(jpg.array.astype(int) - png.array).mean() < 3


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_grey_png_round_trip_keeps_bit_depth(tmp_path, dtype):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, np.iinfo(dtype).max, size=(1, 1, 30, 40)).astype(dtype)
    write(Volume(arr, Geometry()), tmp_path / "g.png")
    back = read(tmp_path / "g.png")
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, arr)
    assert back.metadata.spacing_assumed


def test_palette_and_alpha_images(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[:5] = (255, 0, 0)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    p = read(tmp_path / "p.png")
    assert p.array.shape == (3, 1, 10, 12) and tuple(p.array[:, 0, 0, 0]) == (255, 0, 0)
    rgba = np.dstack([rgb, np.full((10, 12), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    assert read(tmp_path / "opaque.png").channels == 3
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    assert read(tmp_path / "alpha.png").metadata.channel_names == ("R", "G", "B", "A")


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40), np.uint8)
    arr[:, :10] = 255  # bright band on the left
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    v = read(tmp_path / "rot.jpg")
    assert v.spatial_shape == (1, 40, 20)
    assert v.array[0, 0, :10].mean() > 200  # band now on top


def test_png_refuses_values_it_cannot_hold(tmp_path):
    ct = Volume(np.array([[[[-1000, 0], [500, 3000]]]], np.int16), Geometry())
    with pytest.raises(InputError, match=r"do not fit.*--window"):
        write(ct, tmp_path / "ct.png")
    assert not (tmp_path / "ct.png").exists()
    write(ct, tmp_path / "ct.png", window=(40.0, 400.0))
    assert read(tmp_path / "ct.png").array.ravel().tolist() == [0, 102, 255, 255]


def test_png_needs_a_slice_for_3d(tmp_path):
    v = Volume(np.zeros((1, 3, 4, 4), np.uint8), Geometry())
    with pytest.raises(InputError, match="pass slice_index"):
        write(v, tmp_path / "x.png")
    with pytest.raises(InputError, match=r"outside 0\.\.2"):
        write(v, tmp_path / "x.png", slice_index=5)
    write(v, tmp_path / "x.png", slice_index=2)


def test_corrupt_png(tmp_path):
    good = tmp_path / "g.png"
    write(Volume(np.zeros((1, 1, 50, 50), np.uint8), Geometry()), good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:60])
    with pytest.raises(InputError, match="not a readable PNG/JPEG"):
        read(bad)
