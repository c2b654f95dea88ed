"""The CLI prints a table or JSON, converts files, and turns errors into one line and exit 1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from medsight.cli.main import app
from medsight.io import read

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_info_table_for_a_series(make_series):
    folder, _ = make_series()
    result = invoke("info", folder)
    assert result.exit_code == 0, result.output
    for text in ("dicom-series", "CT", "(1, 6, 24, 20)", "(2.5, 0.8, 0.7)", "LPS", "series in folder (1)"):
        assert text in result.output


def test_info_json_has_exact_geometry(make_series):
    folder, volume = make_series()
    result = invoke("info", folder, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["shape"] == [1, 6, 24, 20]
    np.testing.assert_allclose(info["origin"], volume.geometry.origin)
    np.testing.assert_allclose(info["far_corner"], volume.geometry.far_corner(volume.spatial_shape))
    assert info["orientation"] == "LPS"
    assert info["intensity_range"] == [float(volume.array.min()), float(volume.array.max())]
    assert len(info["series_in_folder"]) == 1


def test_info_lists_several_series_and_shows_the_largest(two_series):
    both, _, _ = two_series
    result = invoke("info", both, "--json")
    info = json.loads(result.output)
    assert info["shape"] == [1, 6, 8, 8]
    assert [s["files"] for s in info["series_in_folder"]] == [6, 4]


def test_convert_series_to_nifti_and_back(make_series, tmp_path):
    folder, volume = make_series()
    result = invoke("convert", folder, tmp_path / "ct.nii.gz")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    back = read(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(back.array, volume.array)
    result = invoke("convert", tmp_path / "ct.nii.gz", tmp_path / "again", "--modality", "CT")
    assert result.exit_code == 0, result.output
    again = read(tmp_path / "again")
    np.testing.assert_array_equal(again.array, volume.array)
    assert again.geometry.isclose(volume.geometry, atol=1e-3)


def test_convert_ct_slice_to_png_with_window(make_series, tmp_path):
    folder, _ = make_series()
    result = invoke("convert", folder, tmp_path / "s.png", "--slice", 2, "--window", "40,400")
    assert result.exit_code == 0, result.output
    png = read(tmp_path / "s.png")
    assert png.array.dtype == np.uint8 and png.spatial_shape == (1, 24, 20)


def test_convert_monochrome1_to_png_shows_it_like_a_viewer(testdata, tmp_path):
    result = invoke("convert", testdata("RG1_UNCI.dcm"), tmp_path / "cxr.png", "--window", "auto")
    assert result.exit_code == 0, result.output
    png = read(tmp_path / "cxr.png").array[0, 0].astype(float)
    # lungs (centre left/right) are darker than the mediastinum and the bones at the edge
    h, w = png.shape
    lungs = png[h // 3 : h // 2, w // 5 : w // 3].mean()
    spine = png[h // 3 : h // 2, int(w * 0.47) : int(w * 0.53)].mean()
    assert lungs < spine


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("info", "{tmp}/missing.nii.gz"), "no such file or folder"),
        (("info", "{tmp}/notes.dcm"), "is not a DICOM file"),
        (("convert", "{tmp}/notes.dcm", "{tmp}/x.nii.gz"), "is not a DICOM file"),
        (("convert", "{series}", "{tmp}/out.xyz"), "not a supported output"),
        (("convert", "{series}", "{tmp}/out.png"), "--slice N"),
        (("convert", "{series}", "{tmp}/out.png", "--slice", "0", "--window", "wide"), "CENTRE,WIDTH"),
    ],
)
def test_errors_are_one_line_without_traceback(make_series, tmp_path, args, message):
    folder, _ = make_series()
    (tmp_path / "notes.dcm").write_text("not dicom")
    result = invoke(*(a.format(tmp=tmp_path, series=folder) for a in args))
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().startswith("error:")


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "notes.dcm").write_text("not dicom")
    result = invoke("--debug", "info", tmp_path / "notes.dcm")
    assert result.exit_code != 0
    assert result.exception is not None and type(result.exception).__name__ == "InputError"


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.startswith("medsight ")


def test_progress_bar_keeps_one_row_per_stage(monkeypatch):
    from rich.progress import Progress

    from medsight.cli.common import progress_bar

    rows = []
    original = Progress.add_task
    monkeypatch.setattr(Progress, "add_task", lambda self, text, **kw: rows.append(text) or original(self, text, **kw))
    with progress_bar() as update:
        for step in range(1, 4):
            update(f"training | epoch 1/2 · loss {1 / step:.3f}", step, 3)
        update("training | epoch 2/2 · loss 0.200 · val auc 0.810 (epoch 1)", 1, 3)
        update("preprocessing images", 1, 5)
    assert rows == ["training | epoch 1/2 · loss 1.000", "preprocessing images"]


def test_help_paragraphs_wrap_at_the_terminal_not_at_the_source():
    result = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    assert any("estimate how long it will take on this CPU" in line for line in lines)  # not split after "long"

    def helps(typer_app):
        for info in typer_app.registered_commands:
            yield info.help or ""
        for group in typer_app.registered_groups:
            yield from helps(group.typer_instance)

    assert all("\n" not in p for text in helps(app) for p in text.split("\n\n") if not p.startswith("\b"))
