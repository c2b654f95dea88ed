"""Model packages: every task kind exported through the seam predicts what its run predicts (on
onnxruntime where the package says so, on the exported weights otherwise), on phantom and real
inputs; bad requests are refused with the fix and nothing half-written is left."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medsight.core.errors import ConfigError, InputError, MedsightError
from medsight.data.manifest import Manifest
from medsight.export import export_package
from medsight.inference import Predictor, Uncertainty
from medsight.models import load_checkpoint
from medsight.tasks import ModelPackage
from tests.export.runs import trained

pytest.importorskip("onnxruntime", reason="the export extra is not installed (pip install 'medsight[export]')")


def _inputs(run: Path, data: Path, manifest: Path) -> list[Path]:
    table = pd.read_csv(manifest)
    if ModelPackage.load(run).task_object().spatial_dims == 0:
        return [manifest]
    return [data / name for name in table.loc[table["split"] == "test", "image"].head(3)]


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Two prediction tables agree: numbers within ONNX's float tolerance, everything else equal."""
    assert list(a.columns) == list(b.columns)
    for column in a.columns:
        if column in ("input", "output"):
            continue
        if pd.api.types.is_numeric_dtype(a[column]):
            np.testing.assert_allclose(a[column].to_numpy(float), b[column].to_numpy(float), rtol=1e-3, atol=1e-4)
        elif column in ("detections", "candidate_list"):  # boxes found on (nearly) equal maps
            for x, y in zip(a[column], b[column], strict=True):
                left, right = json.loads(x), json.loads(y)
                assert len(left) == len(right)
                for p, q in zip(left, right, strict=True):
                    assert {k: v for k, v in p.items() if isinstance(v, str)} == {
                        k: v for k, v in q.items() if isinstance(v, str)
                    }
                    numbers = [[v for v in mark.values() if isinstance(v, float | int)] for mark in (p, q)]
                    np.testing.assert_allclose(*numbers, atol=1e-3)
        else:
            assert a[column].tolist() == b[column].tolist(), column


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["binary", "ordinal", "segmentation", "detection", "detection2d findings", "risk image"]
)
def test_a_package_predicts_what_its_run_predicts(tmp_path, case):
    run, data, manifest = trained(tmp_path, case)
    done = export_package(run, tmp_path / "package")
    package = tmp_path / "package"
    assert done.folder == package and done.max_difference is not None and done.max_difference < 1e-3
    names = {p.name for p in package.iterdir()}
    assert {"package.json", "weights.pt", "model.onnx", "export.json", "MODEL_CARD.md", "config.json"} <= names
    assert not names & {"best.pt", "last.pt", "predictions_test.csv", "report.html", "splits.csv", "metrics.jsonl"}
    spec = ModelPackage.load(package)
    assert spec.weights == "weights.pt" and spec.onnx == "model.onnx" and spec.task == ModelPackage.load(run).task
    assert set(load_checkpoint(package / "weights.pt")) == {"model"}  # weights alone, loadable weights-only
    facts = json.loads((package / "export.json").read_text())
    assert facts["files"]["model.onnx"] and facts["parity"]["max_difference"] == done.max_difference

    files = _inputs(run, data, manifest)
    three_d = spec.task_object().spatial_dims == 3
    reference = Predictor.from_run(run, precision="fp32", backend="torch")
    expected = reference.predict_files(files, masks=tmp_path / "run_masks").table()
    onnx = Predictor.from_run(package, backend="onnx")
    assert onnx.backend == "onnx" and onnx.provenance["backend"] == "onnx"
    got = onnx.predict_files(files, masks=tmp_path / "onnx_masks").table()
    _same(got, expected)
    if "output" in expected:  # label maps and overlays on each input's grid, voxel for voxel
        from medsight.io import read

        for x, y in zip(got["output"], expected["output"], strict=True):
            agree = (np.asarray(read(x).array) == np.asarray(read(y).array)).mean()
            assert agree > 0.999
    automatic = Predictor.from_run(package)  # 3D networks stay on PyTorch (as fast or faster there)
    assert automatic.backend == ("torch" if three_d else "onnx")
    torch_package = Predictor.from_run(package, precision="fp32", backend="torch")
    _same(torch_package.predict_files(files, masks=tmp_path / "torch_masks").table(), expected)
    if not three_d and spec.task_object().spatial_dims == 2:  # a prepared manifest, through the cache
        prepared = onnx.prepare(Manifest.load(manifest))
        _same(onnx.predict_split(prepared, "test").table(), reference.predict_split(prepared, "test").table())


@pytest.mark.slow
def test_a_package_predicts_a_real_dicom_image_as_its_run_does(tmp_path, testdata):
    run, _, _ = trained(tmp_path, "binary")
    export_package(run, tmp_path / "package")
    real = [Path(testdata("CT_small.dcm")), Path(testdata("MR_small.dcm"))]
    expected = Predictor.from_run(run, precision="fp32", backend="torch").predict_files(real).table()
    got = Predictor.from_run(tmp_path / "package").predict_files(real).table()
    assert Predictor.from_run(tmp_path / "package").backend == "onnx"
    _same(got, expected)


@pytest.mark.slow
def test_the_model_card_carries_the_validation_figures_and_the_package_no_patient_data(tmp_path):
    from medsight.validation import evaluate_run

    run, _, _ = trained(tmp_path, "binary")
    card = export_package(run, tmp_path / "before", format="torch")
    assert card.max_difference is None and "model.onnx" not in card.files
    assert "was not evaluated" in (tmp_path / "before" / "MODEL_CARD.md").read_text()
    assert ModelPackage.load(tmp_path / "before").onnx is None
    with pytest.raises(ConfigError, match="medsight export"):
        Predictor.from_run(tmp_path / "before", backend="onnx")
    assert Predictor.from_run(tmp_path / "before").backend == "torch"

    evaluation = evaluate_run(run, split="test", bootstrap=20)
    export_package(run, tmp_path / "after")
    text = (tmp_path / "after" / "MODEL_CARD.md").read_text()
    auc = evaluation.figures["auc"]
    assert f"| auc | {auc.estimate:.3f} | [{auc.low:.3f}, {auc.high:.3f}] |" in text
    assert "sha256" in text and "opset" in text
    metrics = json.loads((tmp_path / "after" / "metrics_test.json").read_text())
    assert metrics["cases"] == evaluation.cases
    carried = "".join(p.read_text(errors="replace") for p in (tmp_path / "after").glob("*.json"))
    saved = pd.read_csv(run / "predictions_test.csv")
    assert not any(f'"{case}"' in carried for case in saved["case_id"].astype(str))  # no case listed


@pytest.mark.slow
def test_bad_exports_and_backends_are_refused_with_the_fix(tmp_path, monkeypatch):
    import medsight.export.package as package_module
    import medsight.inference.onnx as onnx_module

    run, _, _ = trained(tmp_path, "binary")
    with pytest.raises(InputError, match="run folder"):
        export_package(run, run, overwrite=True)
    with pytest.raises(InputError, match="run folder"):
        export_package(run, tmp_path, overwrite=True)  # would replace the folder holding the run
    assert (run / "best.pt").is_file()
    with pytest.raises(InputError, match="not a medsight run folder"):
        export_package(tmp_path / "data", tmp_path / "nothing")
    with pytest.raises(ConfigError, match="format"):
        export_package(run, tmp_path / "x", format="tflite")  # type: ignore[arg-type]

    monkeypatch.setattr(package_module, "_TOLERANCE", -1.0)  # any difference fails the check
    with pytest.raises(MedsightError, match="differ from PyTorch"):
        export_package(run, tmp_path / "failed")
    assert not (tmp_path / "failed").exists()  # nothing half-written
    monkeypatch.undo()

    export_package(run, tmp_path / "package")
    with pytest.raises(InputError, match="not empty"):
        export_package(run, tmp_path / "package")
    export_package(run, tmp_path / "package", overwrite=True, weights="last")
    assert json.loads((tmp_path / "package" / "export.json").read_text())["weights"] == "last"
    with pytest.raises(ConfigError, match="fp32"):
        Predictor.from_run(tmp_path / "package", backend="onnx", precision="bf16")
    with pytest.raises(ConfigError, match="backend"):
        Predictor.from_run(tmp_path / "package", backend="tensorrt")  # type: ignore[arg-type]
    onnx = Predictor.from_run(tmp_path / "package")
    with pytest.raises(ConfigError, match="torch backend"):
        onnx.models(Uncertainty("mc-dropout", samples=2))
    with pytest.raises(InputError, match="shape"):
        onnx.model(torch.zeros(1, 3, 32, 32))  # the package reads one channel

    monkeypatch.setattr(onnx_module, "onnxruntime_available", lambda: False)
    assert Predictor.from_run(tmp_path / "package").backend == "torch"  # auto falls back to the weights
    with pytest.raises(ConfigError, match=r"pip install 'medsight\[export\]'"):
        Predictor.from_run(tmp_path / "package", backend="onnx")
    monkeypatch.undo()

    weights = tmp_path / "package" / "weights.pt"
    stored = bytearray(weights.read_bytes())
    stored[len(stored) // 2] ^= 0xFF  # one byte changed after export
    weights.write_bytes(bytes(stored))
    with pytest.raises(InputError, match=r"weights\.pt does not match the checksum"):
        Predictor.from_run(tmp_path / "package", backend="torch")
    (tmp_path / "package" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(InputError, match=r"model\.onnx does not match the checksum"):
        Predictor.from_run(tmp_path / "package", backend="onnx")
    facts = json.loads((tmp_path / "package" / "export.json").read_text())
    (tmp_path / "package" / "export.json").write_text(json.dumps({**facts, "files": {}}))  # nothing recorded
    with pytest.raises(InputError, match="not an ONNX network"):
        Predictor.from_run(tmp_path / "package", backend="onnx")
    (tmp_path / "package" / "model.onnx").unlink()
    with pytest.raises(InputError, match="no such ONNX file"):
        Predictor.from_run(tmp_path / "package", backend="onnx")


@pytest.mark.slow
def test_export_and_predict_from_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from medsight.cli.main import app

    runner = CliRunner()
    run, data, manifest = trained(tmp_path, "binary")
    files = _inputs(run, data, manifest)
    package = tmp_path / "package"
    done = runner.invoke(app, ["export", str(run), "--out", str(package)])
    assert done.exit_code == 0, done.output
    assert "wrote the onnx package" in done.output and "within" in done.output
    for backend in ("auto", "torch"):
        target = tmp_path / f"{backend}.csv"
        result = runner.invoke(app, ["predict", str(package), *map(str, files), "--out", str(target),
                                     "--backend", backend])  # fmt: skip
        assert result.exit_code == 0, result.output
    expected = Predictor.from_run(run, precision="fp32", backend="torch").predict_files(files).table()
    for backend in ("auto", "torch"):
        _same(pd.read_csv(tmp_path / f"{backend}.csv"), expected.assign(input=expected["input"].astype(str)))
    again = runner.invoke(app, ["export", str(run), "--out", str(package)])
    assert again.exit_code == 1 and "not empty" in again.output and "--overwrite" in again.output
    wrong = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "x"), "--format", "tflite"])
    assert wrong.exit_code == 1 and "--format must be onnx or torch" in wrong.output
    typo = runner.invoke(app, ["predict", str(package), str(files[0]), "--backend", "onx"])
    assert typo.exit_code == 1 and "backend must be auto, torch or onnx" in typo.output
    dicom = runner.invoke(app, ["predict", str(package), str(files[0]), "--out", str(tmp_path / "d.csv"),
                                "--dicom-out", str(tmp_path / "dicom")])  # fmt: skip
    assert dicom.exit_code == 0 and f"{files[0]}: not a DICOM input" in dicom.output  # a PNG: the CSV only
    assert list((tmp_path / "dicom").iterdir()) == []
