"""What a careless user meets in the first hour: NaN voxels, converting onto the source, windows
that make no sense, folders of mixed files, 3D inputs to 2D models, outputs that cannot be written."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medsight.cli.main import app
from medsight.core import Geometry, Volume, VolumeMetadata
from medsight.io import read, write

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def with_nan(tmp_path):
    array = np.linspace(-100, 300, 2 * 16 * 16, dtype=np.float32).reshape(1, 2, 16, 16)
    array[0, 0, :3, :3] = np.nan
    array[0, 1, 0, 0] = np.inf
    return write(Volume(array, Geometry()), tmp_path / "nan.nii.gz")


def test_info_counts_nan_voxels_and_keeps_them_out_of_the_range(with_nan):
    result = invoke("info", with_nan, "--json")
    info = json.loads(result.output)
    assert info["nonfinite_voxels"] == 10 and info["intensity_range"] == pytest.approx([-100 + 400 / 511 * 3, 300.0])
    table = invoke("info", with_nan)
    assert "10 voxel(s) are NaN or infinite" in table.output


def test_convert_to_png_refuses_nan_or_fills_it_when_asked(with_nan, tmp_path):
    refused = invoke("convert", with_nan, tmp_path / "a.png", "--slice", 0, "--window", "auto")
    assert refused.exit_code == 1 and "10 of 512 pixel values are NaN or infinite" in refused.output
    assert "--nonfinite fill" in refused.output and not (tmp_path / "a.png").exists()
    filled = invoke("convert", with_nan, tmp_path / "a.png", "--slice", 0, "--window", "auto", "--nonfinite", "fill")
    assert filled.exit_code == 0, filled.output
    png = read(tmp_path / "a.png").array[0, 0]
    assert png[:3, :3].max() == 0 and png.max() > 100  # NaN shown as background, the rest not black
    assert png[8].std() > 0


@pytest.mark.parametrize("window", ["nan,nan", "0,inf", "40,0", "40,-5"])
def test_a_window_that_cannot_map_values_is_an_error(make_series, tmp_path, window):
    folder, _ = make_series()
    result = invoke("convert", folder, tmp_path / "s.png", "--slice", 0, "--window", window)
    assert result.exit_code == 1 and "finite centre and a positive, finite width" in result.output


def test_convert_never_writes_onto_its_input(make_series, tmp_path):
    folder, _ = make_series()
    before = sorted(p.read_bytes() for p in folder.iterdir())
    for target in (folder, tmp_path):  # the series itself, or a folder holding it
        result = invoke("convert", folder, target, "--overwrite")
        assert result.exit_code == 1 and "would destroy the source" in result.output, target
    assert sorted(p.read_bytes() for p in folder.iterdir()) == before
    assert invoke("convert", folder, tmp_path / "ct.nii.gz").exit_code == 0
    again = invoke("convert", tmp_path / "ct.nii.gz", tmp_path / "ct.nii.gz", "--overwrite")
    assert again.exit_code == 1 and "would destroy the source" in again.output


def test_dicom_to_dicom_keeps_the_source_attributes(tmp_path):
    array = np.arange(3 * 8 * 8, dtype=np.int16).reshape(1, 3, 8, 8)
    source = tmp_path / "mr"
    write(Volume(array, Geometry(spacing=(3.0, 0.9, 0.9)), VolumeMetadata(modality="MR")), source, modality="MR")
    for path in source.iterdir():  # make it look like a scanner's series
        ds = pydicom.dcmread(path)
        ds.EchoTime, ds.RepetitionTime, ds.Manufacturer = "12.5", "2200", "ACME Medical"
        ds.SeriesDescription, ds.StudyDate, ds.PatientName = "T2 axial", "20190412", "Doe^Jane"
        ds.save_as(path)
    result = invoke("convert", source, tmp_path / "copy")
    assert result.exit_code == 0, result.output
    a = pydicom.dcmread(sorted(source.iterdir())[0])
    b = pydicom.dcmread(sorted((tmp_path / "copy").iterdir())[0])
    for keyword in ("EchoTime", "RepetitionTime", "Manufacturer", "SeriesDescription", "StudyDate", "PatientName",
                    "PatientID", "StudyInstanceUID", "FrameOfReferenceUID"):  # fmt: skip
        assert b[keyword].value == a[keyword].value, keyword
    assert b.SeriesInstanceUID != a.SeriesInstanceUID and b.SOPInstanceUID != a.SOPInstanceUID
    assert a.SeriesInstanceUID in b.DerivationDescription and b.ImageType[0] == "DERIVED"
    np.testing.assert_array_equal(read(tmp_path / "copy").array, read(source).array)


def test_predict_output_is_checked_before_any_work(tmp_path):
    (tmp_path / "folder").mkdir()
    for out, message in ((tmp_path / "folder", "is a folder"), (tmp_path / "missing" / "p.csv", "does not exist")):
        result = invoke("predict", tmp_path / "no-run", tmp_path, "--out", out)
        assert result.exit_code == 1 and message in result.output  # not "not a run folder": --out comes first
