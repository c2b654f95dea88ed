"""The torch-free runtime: a 2D classifier package predicted with NumPy, Pillow and onnxruntime
gives the rows the PyTorch-side predictor gives on onnxruntime (probabilities of every kind against
the task's own, temperatures, DICOM facts), and `medsight predict` runs it in a process where
PyTorch cannot be imported at all."""

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

from medsight.core import Volume, VolumeMetadata
from medsight.core.errors import ConfigError, InputError
from medsight.export import export_package
from medsight.inference import Predictor
from medsight.inference.runtime import class_probabilities, predict_images, runs_without_torch
from medsight.io import read, write_dicom_image
from medsight.tasks.classification import ClassificationTask
from tests.export.runs import trained

_BLOCK = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "monai", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, _NoTorch())
from medsight.cli.main import main
sys.argv = ["medsight", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel", "ordinal"])
def test_probabilities_equal_the_tasks_own(kind):
    classes = {"binary": ["no", "yes"], "multiclass": ["a", "b", "c"], "multilabel": ["x", "y"],
               "ordinal": ["0", "1", "2", "3"]}[kind]  # fmt: skip
    task = ClassificationTask(kind, tuple(classes))
    outputs = {"binary": 1, "multiclass": 3, "multilabel": 2, "ordinal": 3}[kind]
    logits = np.random.default_rng(0).normal(0, 4, size=(64, outputs)).astype(np.float32)
    logits[0] = 40.0  # saturated: no overflow, probabilities still in [0, 1]
    theirs = task.probabilities(torch.from_numpy(logits)).numpy()
    mine = class_probabilities(kind, logits)
    np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
    if kind in ("multiclass", "ordinal"):
        np.testing.assert_allclose(mine.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ConfigError, match="not a classification"):
        class_probabilities("segmentation", logits)


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """ONNX packages of a one-epoch binary and ordinal classifier, with their data folders."""
    found = {}
    for case in ("binary", "ordinal"):
        root = tmp_path_factory.mktemp(case)
        run, data, _ = trained(root, case)
        found[case] = (export_package(run, root / "package", format="onnx").folder, data)
    return found


@pytest.mark.parametrize("case", ["binary", "ordinal"])
def test_a_package_predicts_the_same_rows_without_torch(packages, case, tmp_path):
    package, data = packages[case]
    png = read(data / "img030.png")
    dicom = write_dicom_image(Volume(np.asarray(png.array).astype(np.uint16), png.geometry,
                                     VolumeMetadata(modality="DX", laterality="L", view="CC")),
                              tmp_path / "film.dcm", laterality="L", view="CC", patient_id="P7")  # fmt: skip
    inputs = [data, dicom]
    assert runs_without_torch(package)
    mine = predict_images(package, inputs, batch_size=7)  # batches that do not divide the images
    theirs = Predictor.from_run(package, backend="onnx").predict_files(inputs).table()
    assert list(mine.columns) == list(theirs.columns) and len(mine) == 37
    pd.testing.assert_frame_equal(mine, theirs, check_dtype=False, rtol=1e-5, atol=1e-6)
    assert mine.iloc[-1]["patient_id"] == "P7" and mine.iloc[-1]["laterality"] == "L"


def test_temperatures_kept_in_the_package_are_applied(packages, tmp_path):
    package, data = packages["binary"]
    scaled = tmp_path / "package"
    shutil.copytree(package, scaled)
    (scaled / "temperatures.json").write_text(json.dumps(
        {"temperatures": {"score": {"columns": ["prob"], "softmax": False, "temperature": 2.5}}}))  # fmt: skip
    mine = predict_images(scaled, [data])
    theirs = Predictor.from_run(scaled, backend="onnx").predict_files([data]).table()
    pd.testing.assert_frame_equal(mine, theirs, check_dtype=False, rtol=1e-5, atol=1e-6)
    plain = predict_images(package, [data])
    assert not np.allclose(mine["prob"], plain["prob"])  # softer, and not by accident equal


def test_medsight_predict_runs_where_torch_cannot_be_imported(packages, tmp_path):
    package, data = packages["ordinal"]
    out = tmp_path / "p.csv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", _BLOCK, "predict", str(package), str(data), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    theirs = Predictor.from_run(package, backend="onnx").predict_files([data]).table()
    pd.testing.assert_frame_equal(pd.read_csv(out), theirs, check_dtype=False, rtol=1e-5, atol=1e-6)
    # a DICOM film's report of its probabilities is written without PyTorch too; its heat map needs it
    png = read(data / "img030.png")
    film = write_dicom_image(Volume(np.asarray(png.array).astype(np.uint16), png.geometry,
                                    VolumeMetadata(modality="DX")), tmp_path / "film.dcm", patient_id="P3")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", _BLOCK, "predict", str(package), str(film), "--out", str(out),
                           "--dicom-out", str(tmp_path / "d")], capture_output=True, text=True, timeout=300,
                          env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["0000_film_sr.dcm"]
    done = subprocess.run([sys.executable, "-c", _BLOCK, "predict", str(package), str(film), "--out", str(out),
                           "--dicom-out", str(tmp_path / "d"), "--dicom-overlay"], capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip
    assert done.returncode != 0 and "Grad-CAM heat map, which needs PyTorch" in done.stderr
    # what needs PyTorch still says so, clearly: a run folder (no ONNX network) in the same process
    run = package.parent / "run"
    done = subprocess.run([sys.executable, "-c", _BLOCK, "predict", str(run), str(data), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode != 0 and "no ONNX network" in done.stderr and "PyTorch installed" in done.stderr


def test_what_the_runtime_does_not_predict_is_named(packages, tmp_path):
    package, data = packages["binary"]
    with pytest.raises(InputError, match="not a model package"):
        predict_images(tmp_path, [data])
    (tmp_path / "package.json").write_text(json.dumps({"task": {"kind": "segmentation"}, "onnx": "model.onnx"}))
    assert not runs_without_torch(tmp_path)
    with pytest.raises(ConfigError, match="predicts 2D classifiers"):
        predict_images(tmp_path, [data])
    with pytest.raises(InputError, match="does not exist"):
        predict_images(package, [tmp_path / "missing.png"])


@pytest.mark.parametrize("case", ["detection2d", "detection2d findings"])
def test_a_2d_detector_package_draws_the_same_boxes_without_torch(case, tmp_path):
    """Mammography and chest X-ray detectors: each finding's score and its boxes in the image's own
    pixels equal the PyTorch-side predictor's on the same onnxruntime network; `medsight predict`
    where PyTorch cannot be imported writes the report with each box as a region of its image."""
    from medsight.inference.runtime import runtime_model

    run, data, _ = trained(tmp_path, case)
    package = export_package(run, tmp_path / "package", format="onnx").folder
    spec = json.loads((package / "package.json").read_text())
    spec["task"]["threshold"] = 0.005  # a one-epoch detector is faint: a low threshold gives it boxes
    (package / "package.json").write_text(json.dumps(spec))
    png = read(data / "img031.png")
    film = write_dicom_image(Volume(np.asarray(png.array).astype(np.uint16), png.geometry,
                                    VolumeMetadata(modality="MG")), tmp_path / "film.dcm", modality="MG",
                             laterality="R", view="MLO")  # fmt: skip
    inputs = [data, film]
    assert runs_without_torch(package)
    mine = predict_images(package, inputs, batch_size=5)
    theirs = Predictor.from_run(package, backend="onnx").predict_files(inputs).table()
    assert list(mine.columns) == list(theirs.columns) and "detections" in mine
    pd.testing.assert_frame_equal(mine, theirs, check_dtype=False, rtol=1e-5, atol=1e-6)
    assert sum(len(json.loads(d)) for d in mine["detections"]) > 0
    model, task = runtime_model(package), Predictor.from_run(package, backend="onnx").task
    last = mine.iloc[-1].to_dict()
    assert model.task.findings(last) == task.findings(last) and model.task.label_classes() == ()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", _BLOCK, "predict", str(package), str(film), "--out",
                           str(tmp_path / "p.csv"), "--dicom-out", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    import highdicom

    sr = highdicom.sr.srread(tmp_path / "d" / "0000_film_sr.dcm")
    assert len(sr.content.get_planar_roi_measurement_groups()) == len(json.loads(last["detections"]))
