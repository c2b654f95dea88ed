"""Secondary-capture overlays: the slice with most of the label map, in the display window, each
class tinted with a solid outline; valid for dciodvfy; none for an empty map."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.core.labels import class_color
from medsight.io import read
from medsight.io.image2d import apply_window
from tests.conftest import oblique_direction
from tests.export.test_dicom_seg import _dciodvfy

hd = pytest.importorskip("highdicom", reason="the export extra is not installed (pip install 'medsight[export]')")
from medsight.export.dicom_sc import overlay_rgb, write_overlay  # noqa: E402
from medsight.export.dicom_seg import Algorithm  # noqa: E402


def test_the_overlay_tints_each_class_and_draws_its_outline():
    plane = np.arange(100, dtype=np.float32).reshape(10, 10)
    labels = np.zeros((10, 10), np.uint8)
    labels[2:7, 2:7] = 3
    labels[8, 8] = 5
    rgb = overlay_rgb(plane, labels, [(3, "a"), (5, "b")], window=(50.0, 100.0))
    grey = apply_window(plane, (50.0, 100.0))
    outside = labels == 0
    assert (rgb[outside] == grey[outside][:, None]).all()  # untouched, grey in all three channels
    assert tuple(rgb[2, 2]) == class_color(0) and tuple(rgb[8, 8]) == class_color(1)  # outlines solid
    inner = np.rint(0.6 * grey[4, 4] + 0.4 * np.asarray(class_color(0), np.float32)).astype(np.uint8)
    assert tuple(rgb[4, 4]) == tuple(inner)  # inside: tinted
    default = overlay_rgb(plane, np.zeros_like(labels), [(3, "a")])  # percentile window
    assert default[..., 0].min() == 0 and default[..., 0].max() == 255


@pytest.mark.parametrize("oblique", [False, True])
def test_a_secondary_capture_of_the_busiest_slice(make_series, tmp_path, oblique):
    (tmp_path / "w.pt").write_bytes(b"w")
    algorithm = Algorithm.of_weights("model", tmp_path / "w.pt")
    folder, _ = make_series(shape=(5, 12, 10), direction=oblique_direction(30.0) if oblique else None)
    image = read(folder)
    labels = np.zeros(image.spatial_shape, np.uint8)
    labels[1, 2:4, 2:4] = 1
    labels[3, 2:9, 2:8] = 1  # slice 3 has most
    path = write_overlay(image, labels, folder, [(1, "lesion")], tmp_path / "sc.dcm", algorithm=algorithm)
    sc = __import__("pydicom").dcmread(path)
    expected = overlay_rgb(np.asarray(image.array[0, 3]), labels[3], [(1, "lesion")], image.metadata.window)
    np.testing.assert_array_equal(sc.pixel_array, expected)
    assert sc.StudyInstanceUID == image.metadata.study_uid and sc.SeriesInstanceUID != image.metadata.series_uid
    assert list(sc.PatientOrientation) == ["L", "P"]  # rows along +x (left), columns mostly along +y (posterior)
    ours = [e for e in sc.ContributingEquipmentSequence if e.get("ManufacturerModelName") == "model"]
    assert ours and ours[0].DeviceUID == algorithm.device_uid
    assert _dciodvfy(path) == []
    empty = np.zeros_like(labels)
    assert write_overlay(image, empty, folder, [(1, "lesion")], tmp_path / "none.dcm", algorithm=algorithm) is None
    assert not (tmp_path / "none.dcm").exists()
