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


def test_a_heat_map_is_drawn_where_it_is_strong_and_leaves_the_rest_grey():
    from medsight.export.dicom_sc import heat_rgb

    plane = np.arange(120, dtype=np.float32).reshape(10, 12)
    heat = np.zeros((10, 12), np.float32)
    heat[2:5, 3:6] = 1.0
    heat[7, 9] = -3.0  # negative evidence is not drawn
    rgb = heat_rgb(plane, heat, window=(60.0, 120.0))
    grey = apply_window(plane, (60.0, 120.0))
    cold = heat <= 0
    assert (rgb[cold] == grey[cold][:, None]).all()
    hot = rgb[2:5, 3:6].reshape(-1, 3).astype(int)
    assert (np.abs(hot[:, 0] - hot[:, 2]) > 20).all()  # coloured (inferno at its top is yellow), not grey
    with pytest.raises(Exception, match="not on the image's grid"):
        heat_rgb(plane, heat[:5])


def test_the_prepared_grid_maps_back_onto_the_image():
    from medsight.core import Volume
    from medsight.core.geometry import Geometry
    from medsight.transforms.image2d import Preprocess2D, map_to_image, prepare_image

    image = np.zeros((1, 1, 40, 100), np.float32)  # wide: padded top and bottom into a square
    image[0, 0, 10:20, 70:90] = 255.0  # a bright block
    spec = Preprocess2D(size=50, channels=1, window="percentile")
    prepared = prepare_image(Volume(image, Geometry()), spec)[0].astype(np.float32)
    back = map_to_image(prepared, (40, 100))
    assert back.shape == (40, 100)
    bright = back > 127
    rows, cols = np.nonzero(bright)
    assert rows.min() >= 9 and rows.max() <= 20 and cols.min() >= 69 and cols.max() <= 90  # where it was
    assert bright[12:18, 73:87].all() and not bright[:, :60].any()


@pytest.mark.slow
def test_predict_draws_a_classifiers_heat_map_over_each_dicom_image(tmp_path):
    """A package predicting on onnxruntime: the heat map comes from its PyTorch weights, drawn over
    the DICOM image on its own (non-square) grid; a PNG input gets none."""
    import pandas as pd
    import pydicom
    from typer.testing import CliRunner

    from medsight.cli.main import app
    from medsight.core import Volume, VolumeMetadata
    from medsight.export import export_package
    from medsight.io import write_dicom_image
    from tests.export.runs import trained

    pytest.importorskip("onnxruntime", reason="the export extra is not installed (pip install 'medsight[export]')")
    run, data, _ = trained(tmp_path, "binary")
    package = export_package(run, tmp_path / "package", format="onnx").folder
    png = read(data / "img030.png")
    wide = np.pad(np.asarray(png.array), ((0, 0), (0, 0), (0, 0), (0, 20)))  # not square: the map is cut back
    dicom = write_dicom_image(Volume(wide.astype(np.uint16), png.geometry, VolumeMetadata(modality="DX")),
                              tmp_path / "x.dcm")  # fmt: skip
    assert list(pydicom.dcmread(dicom).PatientOrientation) == ["L", "F"]  # as a PA chest film says it (DX must)
    out = tmp_path / "d"
    result = CliRunner().invoke(app, ["predict", str(package), str(dicom), str(data / "img031.png"), "--out",
                                      str(tmp_path / "p.csv"), "--dicom-out", str(out), "--dicom-overlay"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wrote 1 heat-map overlay(s)" in result.output  # the PNG gets none: not DICOM
    (path,) = out.glob("*_heatmap.dcm")
    sc, source = pydicom.dcmread(path), pydicom.dcmread(dicom)
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.PatientID == source.PatientID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID and sc.Manufacturer == "medsight"
    assert sc.pixel_array.shape == (*wide.shape[-2:], 3)
    row = pd.read_csv(tmp_path / "p.csv").iloc[0]
    title = sc.SeriesDescription.split("heat map: ", 1)[1]
    target, probability = title.rsplit(" ", 1)
    assert float(probability) == pytest.approx(float(row["prob"]) if target == "positive" else 1 - float(row["prob"]),
                                               abs=0.011)  # fmt: skip
    assert _dciodvfy(path) == []
