"""The torch-free runtime for 3D segmenters: MONAI's sliding windows matched in NumPy, and a
segmentation package predicted with NumPy and onnxruntime alone gives the label maps, volumes and
probability maps the PyTorch-side predictor gives, also in a process where PyTorch cannot be
imported (``medsight predict``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the export extra is not installed (pip install 'medsight[export]')")

from monai.inferers import sliding_window_inference

from medsight.core import Geometry, Volume, VolumeMetadata
from medsight.core.errors import ConfigError, InputError
from medsight.export import export_package
from medsight.inference import Predictor
from medsight.inference.runtime import predict_package, predict_volumes, runs_without_torch
from medsight.inference.window import gaussian_weights, sliding_window, window_starts
from medsight.io import read, write, write_dicom_series
from tests.export.runs import trained
from tests.inference.test_runtime import _BLOCK


@pytest.mark.parametrize(
    ("shape", "patch", "overlap", "mirror"),
    [
        ((2, 40, 50, 37), (16, 24, 20), 0.5, False),  # several windows, the last flush with each edge
        ((2, 10, 30, 12), (16, 24, 20), 0.5, False),  # smaller than a patch along two axes: padded, centred
        ((2, 16, 24, 20), (16, 24, 20), 0.5, True),  # exactly one patch; mirrored passes
        ((2, 33, 29, 41), (8, 8, 8), 0.25, False),
        ((2, 5, 5, 5), (4, 4, 4), 0.9, True),  # a step of one voxel
    ],
)
def test_sliding_windows_equal_monais(shape, patch, overlap, mirror):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 3, padding=1), torch.nn.Tanh(),
                              torch.nn.Conv3d(3, 3, 3, padding=1)).eval()  # fmt: skip
    image = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
    flips = [tuple(a for a in (2, 3, 4) if m >> (a - 2) & 1) for m in range(8)] if mirror else [()]
    reference = 0
    with torch.no_grad():
        for axes in flips:
            x = torch.from_numpy(image)[None]
            x = x.flip(axes) if axes else x
            out = sliding_window_inference(x, roi_size=patch, sw_batch_size=3, predictor=net, overlap=overlap,
                                           mode="gaussian")  # fmt: skip
            reference = reference + (out.flip(axes) if axes else out)[0].numpy()
    reference = reference / len(flips)
    calls = []

    def network(patches: np.ndarray) -> np.ndarray:
        calls.append(len(patches))
        with torch.no_grad():
            return net(torch.from_numpy(patches)).numpy()

    got = sliding_window(network, image, patch, batch_size=3, overlap=overlap, mirror=mirror)
    assert got.shape == reference.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, reference, atol=2e-6)
    assert max(calls) <= 3


def test_window_starts_and_weights():
    assert window_starts(40, 16, 0.5) == [0, 8, 16, 24]
    assert window_starts(41, 16, 0.5) == [0, 8, 16, 24, 25]  # the last flush with the edge
    assert window_starts(16, 16, 0.5) == [0]
    weights = gaussian_weights((5, 6, 7))
    assert weights.shape == (5, 6, 7) and weights.max() == pytest.approx(weights[2, 2:4, 3].max())
    assert weights.min() >= 1e-3 and np.allclose(weights, weights[::-1, ::-1, ::-1])
    with pytest.raises(InputError, match=r"\(C, Z, Y, X\)"):
        sliding_window(lambda x: x, np.zeros((4, 4, 4), np.float32), (2, 2, 2))
    with pytest.raises(InputError, match="gave outputs of shape"):
        sliding_window(lambda x: x[:, :, :1], np.zeros((1, 4, 4, 4), np.float32), (2, 2, 2))


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> tuple[Path, Path]:
    """An ONNX package of a one-epoch segmentation model, and a folder of inputs for it: a volume of
    several patches on another grid than training's, the same as a DICOM series, and a test case."""
    root = tmp_path_factory.mktemp("segmenter")
    run, data, _ = trained(root, "segmentation")
    package = export_package(run, root / "package", format="onnx").folder
    inputs = root / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(3)
    image = rng.normal(100, 10, size=(30, 70, 50)).astype(np.float32)
    image[8:18, 20:45, 10:30] += 80
    image[11:15, 28:36, 16:24] += 160
    geometry = Geometry(spacing=(2.0, 0.8, 1.1), origin=(-3.0, 7.0, 1.0))
    write(Volume(image[None], geometry), inputs / "big.nii.gz")
    write_dicom_series(Volume(image[None].astype(np.int16), geometry, VolumeMetadata(modality="MR")),
                       inputs / "big_dicom", patient_id="P9")  # fmt: skip
    shutil.copy(data / "case9.nii.gz", inputs / "case9.nii.gz")
    return package, inputs


def _inputs(folder: Path) -> list[Path]:
    return [folder / "big.nii.gz", folder / "big_dicom", folder / "case9.nii.gz"]


def test_a_segmenter_package_predicts_the_same_maps_without_torch(segmenter, tmp_path):
    package, folder = segmenter
    inputs = _inputs(folder)
    assert runs_without_torch(package, backend="onnx")
    assert not runs_without_torch(package, backend="auto")  # PyTorch is installed here: its bf16 windows are faster
    assert not runs_without_torch(package, backend="torch")
    mine = predict_volumes(package, inputs, masks=tmp_path / "mine", probabilities=True)
    theirs = Predictor.from_run(package, backend="onnx").predict_files(inputs, masks=tmp_path / "theirs",
                                                                      probabilities=True).table()  # fmt: skip
    assert list(mine.columns) == list(theirs.columns) and len(mine) == 3
    assert mine.iloc[1]["patient_id"] == "P9"
    volumes = [c for c in mine.columns if c.startswith("volume_ml_")]
    assert sorted(volumes) == ["volume_ml_core", "volume_ml_lesion"]
    pd.testing.assert_frame_equal(mine[volumes], theirs[volumes], rtol=1e-3, atol=0.01)
    for (_, a), (_, b) in zip(mine.iterrows(), theirs.iterrows(), strict=True):
        assert Path(a["output"]).parent == tmp_path / "mine" and Path(a["output"]).name == Path(b["output"]).name
        ours, reference, source = read(a["output"]), read(b["output"]), read(a["input"])
        assert ours.spatial_shape == source.spatial_shape and ours.geometry.isclose(source.geometry)
        assert np.mean(ours.array == reference.array) > 0.9995  # onnxruntime both: equal but for rounding ties
        p, q = read(a["probabilities"]).array.astype(int), read(b["probabilities"]).array.astype(int)
        assert p.shape == (2, *source.spatial_shape) and np.abs(p - q).max() <= 1
    eager = Predictor.from_run(package, backend="torch", precision="fp32")
    table = eager.predict_files(inputs[:1], masks=tmp_path / "eager").table()
    agreement = np.mean(read(table.iloc[0]["output"]).array == read(mine.iloc[0]["output"]).array)
    assert agreement > 0.999  # the network in PyTorch: equal but for float differences at boundaries


def test_medsight_predict_segments_where_torch_cannot_be_imported(segmenter, tmp_path):
    package, folder = segmenter
    out = tmp_path / "p.csv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", _BLOCK, "predict", str(package), str(folder / "big.nii.gz"),
                           str(folder / "big_dicom"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "label map(s)" in done.stdout
    table = pd.read_csv(out)
    assert len(table) == 2 and all(Path(p).parent == tmp_path / "p_masks" for p in table["output"])
    theirs = predict_volumes(package, [folder / "big.nii.gz"], masks=tmp_path / "direct")
    assert table.iloc[0]["volume_ml_lesion"] == pytest.approx(theirs.iloc[0]["volume_ml_lesion"], rel=1e-6)
    # DICOM results too: a fractional SEG of the probability maps and the report referring to it
    done = subprocess.run([sys.executable, "-c", _BLOCK, "predict", str(package), str(folder / "big_dicom"),
                           "--out", str(out), "--dicom-out", str(tmp_path / "d"), "--dicom-seg", "fractional",
                           "--dicom-overlay"],
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    import pydicom

    (seg,) = (tmp_path / "d").glob("*_seg.dcm")
    (sr,) = (tmp_path / "d").glob("*_sr.dcm")
    assert pydicom.dcmread(seg).SegmentationType == "FRACTIONAL"
    report = pydicom.dcmread(sr)
    assert report.CurrentRequestedProcedureEvidenceSequence and report.PatientID == "P9"
    assert len(list((tmp_path / "d").glob("*_overlay.dcm"))) == 1  # a label map's overlay needs no PyTorch
    # what needs PyTorch still says so: a run folder (weights, no ONNX network)
    run = package.parent / "run"
    done = subprocess.run([sys.executable, "-c", _BLOCK, "predict", str(run), str(folder / "big.nii.gz"),
                           "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode != 0 and "no ONNX network" in done.stderr and "PyTorch installed" in done.stderr
    # a damaged package is named as such, not as a missing PyTorch
    broken = tmp_path / "broken"
    shutil.copytree(package, broken)
    (broken / "package.json").write_text("{oops")
    done = subprocess.run([sys.executable, "-c", _BLOCK, "predict", str(broken), str(folder / "big.nii.gz"),
                           "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode != 0 and "package.json is unreadable" in done.stderr, done.stderr


def test_bad_inputs_to_the_3d_runtime_are_named(segmenter, tmp_path):
    package, folder = segmenter
    flat = tmp_path / "flat.nii.gz"
    write(Volume(np.zeros((1, 1, 20, 20), np.float32), Geometry()), flat)
    with pytest.raises(InputError, match=r"flat\.nii\.gz.*single slice"):
        predict_volumes(package, [flat], masks=tmp_path / "m")
    two = tmp_path / "two.nii.gz"
    write(Volume(np.zeros((2, 8, 20, 20), np.float32), Geometry()), two)
    with pytest.raises(InputError, match=r"two\.nii\.gz.*reads 1 channel"):
        predict_volumes(package, [two], masks=tmp_path / "m")
    with pytest.raises(InputError, match="does not exist"):
        predict_volumes(package, [tmp_path / "missing.nii.gz"], masks=tmp_path / "m")
    spec = json.loads((package / "package.json").read_text())
    plain = tmp_path / "plain"
    shutil.copytree(package, plain)
    (plain / "package.json").write_text(json.dumps({**spec, "onnx": None}))
    assert not runs_without_torch(plain, backend="onnx")
    with pytest.raises(ConfigError, match="no ONNX network"):
        predict_package(plain, [flat], masks=tmp_path / "m")
    damaged = tmp_path / "damaged"
    shutil.copytree(package, damaged)
    with (damaged / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(InputError, match="checksum"):
        predict_volumes(damaged, [folder / "case9.nii.gz"], masks=tmp_path / "m")
    (damaged / "package.json").write_text(json.dumps({**spec, "preprocess": {"spacing": "fine"}}))
    with pytest.raises(InputError, match="task or plan"):
        predict_volumes(damaged, [folder / "case9.nii.gz"], masks=tmp_path / "m")


def test_a_detector_package_finds_the_same_candidates_without_torch(tmp_path):
    """Lung-nodule style detection: the heat map's candidates (centres in world mm, diameters,
    probabilities), the overlay of the probable ones and the report's findings, as the PyTorch-side
    predictor gives them on the same onnxruntime network; also `medsight predict` where PyTorch
    cannot be imported, with its DICOM report placing the findings."""
    from medsight.export import export_network
    from medsight.inference.runtime import runtime_model
    from medsight.io.atomic import file_sha256
    from medsight.planning import Plan

    run, data, _ = trained(tmp_path, "detection")
    package = export_package(run, tmp_path / "package", format="onnx").folder
    spec = json.loads((package / "package.json").read_text())
    spec["task"].update(overlay_probability=0.0)  # every candidate drawn in the overlay and placed in the report
    (package / "package.json").write_text(json.dumps(spec))
    # a one-epoch detector sees nothing yet: a network that finds the bright balls stands in for it (the
    # finding's log-odds rise with the local mean intensity), exported as the package's network
    norm = Plan.model_validate(spec["preprocess"]).normalization[0]
    middle = (-380.0 - float(norm.mean)) / float(norm.std)  # between lung (-800 HU) and the balls (40 HU)
    seeing = torch.nn.Conv3d(1, 2, 3, padding=1)
    with torch.no_grad():
        seeing.weight[:] = torch.tensor([-3.0, 3.0]).view(2, 1, 1, 1, 1) / 27
        seeing.bias[:] = torch.tensor([3.0 * middle, -3.0 * middle])
    export_network(seeing, torch.zeros((1, 1, *spec["preprocess"]["patch_size"])), package / "model.onnx")
    facts = json.loads((package / "export.json").read_text())
    facts["files"]["model.onnx"] = file_sha256(package / "model.onnx")
    (package / "export.json").write_text(json.dumps(facts))
    scan = read(data / "scan8.nii.gz")
    series = tmp_path / "scan8_dicom"
    write_dicom_series(Volume(np.asarray(scan.array), scan.geometry, VolumeMetadata(modality="CT")), series)
    inputs = [data / "scan8.nii.gz", data / "scan9.nii.gz", series]
    assert runs_without_torch(package, backend="onnx")
    mine = predict_volumes(package, inputs, masks=tmp_path / "mine")
    theirs = Predictor.from_run(package, backend="onnx").predict_files(inputs, masks=tmp_path / "theirs").table()
    assert list(mine.columns) == list(theirs.columns)
    assert mine["candidates"].tolist() == theirs["candidates"].tolist() and mine["candidates"].sum() > 0
    np.testing.assert_allclose(mine["max_probability"], theirs["max_probability"], atol=1e-3)
    model = runtime_model(package)
    eager = Predictor.from_run(package, backend="onnx").task
    for (_, a), (_, b) in zip(mine.iterrows(), theirs.iterrows(), strict=True):
        ours, reference = pd.DataFrame(json.loads(a["candidate_list"])), pd.DataFrame(json.loads(b["candidate_list"]))
        pd.testing.assert_frame_equal(ours, reference, atol=2e-3, check_dtype=False)
        assert np.mean(read(a["output"]).array == read(b["output"]).array) > 0.999
        found, expected = model.task.findings(a.to_dict()), eager.findings(b.to_dict())
        assert len(found) == len(expected) == a["candidates"]
        np.testing.assert_allclose([f.centre_mm for f in found], [f.centre_mm for f in expected], atol=2e-3)
    assert model.task.label_classes() == ((1, "nodule"),) and model.task.probability_structures() == ()
    with pytest.raises(ConfigError, match="no probability maps"):
        predict_volumes(package, inputs[:1], masks=tmp_path / "m", probabilities=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", _BLOCK, "predict", str(package), str(series), "--out",
                           str(tmp_path / "p.csv"), "--backend", "onnx", "--dicom-out", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    import highdicom

    (sr_path,) = (tmp_path / "d").glob("*_sr.dcm")
    sr = highdicom.sr.srread(sr_path)
    balls = [g for g in sr.content.get_volumetric_roi_measurement_groups() if g.roi is not None]
    assert len(balls) == int(mine.iloc[2]["candidates"])  # every candidate is at or above overlay 0.0


def test_real_volumes_segment_alike_in_the_runtime(segmenter, shared_data, tmp_path):
    """Real MR and CT volumes (radiomics test data, NRRD; other grids and intensities than training's)
    give the runtime the label maps the PyTorch-side predictor gives on the same network."""
    package, _ = segmenter
    brain = read(shared_data / "radiomics" / "brain1_image.nrrd")  # its centre: the test stays quick
    corner = tuple(float(v) for v in brain.geometry.index_to_world([0, 80, 80]))
    centre = Volume(np.asarray(brain.array)[:, :, 80:176, 80:176], brain.geometry.replace(origin=corner))
    inputs = [write(centre, tmp_path / "brain1_centre.nrrd"), shared_data / "radiomics" / "breast1_image.nrrd"]
    mine = predict_volumes(package, inputs, masks=tmp_path / "mine")
    theirs = Predictor.from_run(package, backend="onnx").predict_files(inputs, masks=tmp_path / "theirs").table()
    volumes = [c for c in mine.columns if c.startswith("volume_ml_")]
    pd.testing.assert_frame_equal(mine[volumes], theirs[volumes], rtol=1e-3, atol=0.05)
    for a, b, source in zip(mine["output"], theirs["output"], inputs, strict=True):
        assert a.endswith("_seg.nrrd")  # beside the input's format
        ours, reference = read(a), read(b)
        assert ours.geometry.isclose(read(source).geometry)
        assert np.mean(ours.array == reference.array) > 0.999
