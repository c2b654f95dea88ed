"""train -> evaluate -> predict -> compare through the CLI, on tiny phantoms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medsight.cli.main import app
from medsight.data import build_manifest
from medsight.data.phantoms import make_phantom

runner = CliRunner()
FAST = ["--set", "preprocess.size=48", "--set", "train.batch_size=16", "--set", "train.precision=fp32"]


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_grading_train_evaluate_predict_compare(tmp_path):
    root = make_phantom("dr-grading", tmp_path / "fundus", cases=50, seed=3)
    build_manifest(root).save(tmp_path / "m.csv")
    invoke("data", "split", tmp_path / "m.csv", "--stratify", "target", "--seed", 0)  # one split for both runs
    for run, seed in (("a", 0), ("b", 1)):
        invoke("train", "--recipe", "dr-grading", "--data", tmp_path / "m.csv", "--out", tmp_path / run, "--epochs", 1,
               *FAST, "--set", f"train.seed={seed}")  # fmt: skip
        result = invoke("evaluate", tmp_path / run, "--bootstrap", 50)
        assert "qwk" in result.output and "referable auc" in result.output
    report = json.loads((tmp_path / "a" / "metrics_test.json").read_text())
    assert report["cases"] > 0 and {"qwk", "accuracy"} <= set(report["metrics"])
    point = report["referable"]["operating_points"]["youden"]
    assert 0 <= point["sensitivity"]["low"] <= point["sensitivity"]["estimate"] <= point["sensitivity"]["high"] <= 1
    images = sorted((root / "train_images").glob("*.png"))[:3]
    invoke("predict", tmp_path / "a", *images, "--out", tmp_path / "p.csv")
    predictions = pd.read_csv(tmp_path / "p.csv")
    assert len(predictions) == 3 and predictions.filter(like="prob_").sum(axis=1).round(4).eq(1.0).all()
    result = invoke("compare", tmp_path / "a", tmp_path / "b", "--json", "--bootstrap", 200)
    compared = json.loads(result.output)
    test = compared["tests"]["referable_auc"]
    assert 0.0 <= test["p_value"] <= 1.0
    # the test clusters by patient (Obuchowski where a patient has both eyes in the split, else DeLong);
    # the difference's CI resamples patients
    scored = pd.read_csv(tmp_path / "a" / "predictions_test.csv")
    assert compared["patients"] == scored["patient_id"].nunique() and compared["cases"] == len(scored)
    expected = "Obuchowski" if compared["patients"] < compared["cases"] else "DeLong"
    assert test["method"] == expected and test["clusters"] == compared["patients"]
    ci = test["difference_ci"]
    assert ci["low"] <= test["difference"] <= ci["high"] and ci["estimate"] == pytest.approx(test["difference"])
    table = invoke("compare", tmp_path / "a", tmp_path / "b", "--bootstrap", 50).output
    assert f"{compared['patients']} patients" in table and expected in table


@pytest.mark.slow
def test_mammography_scores_are_fused_to_breast_and_exam(tmp_path):
    root = make_phantom("mammo-screening", tmp_path / "mg", cases=12, seed=2)
    invoke("train", "--recipe", "mammo-screening", "--data", root, "--out", tmp_path / "run", "--epochs", 1, *FAST,
           "--set", "task.fusion=attention")  # fmt: skip
    assert (tmp_path / "run.manifest.csv").is_file()  # a data folder was read into a manifest first
    invoke("evaluate", tmp_path / "run", "--bootstrap", 20)
    report = json.loads((tmp_path / "run" / "metrics_test.json").read_text())
    assert report["fused"]["exam"]["count"] * 4 == report["cases"]
    assert report["fused"]["breast"]["count"] * 2 == report["cases"]
    assert report["fusion"]["method"] == "attention" and report["fusion"]["temperature"] > 0  # fitted on val
    # new exams: one row per view with its DICOM facts, then breasts and exams fused the same way
    tested = pd.read_csv(tmp_path / "run" / "predictions_test.csv")
    study = next(p for p in (root / "images").iterdir() if any(p.name in str(c) for c in tested["image"]))
    invoke("predict", tmp_path / "run", study, "--out", tmp_path / "p.csv")
    views = pd.read_csv(tmp_path / "p.csv")
    assert len(views) == 4 and set(views["laterality"]) == {"L", "R"} and set(views["view"]) == {"CC", "MLO"}
    assert views["study_id"].nunique() == 1
    same = tested.assign(name=tested["image"].map(lambda p: Path(p).name)).set_index("name")["prob"]
    np.testing.assert_allclose(views["prob"], same.loc[views["input"].map(lambda p: Path(p).name)], atol=1e-4)
    breasts, exams = pd.read_csv(tmp_path / "p_breasts.csv"), pd.read_csv(tmp_path / "p_exams.csv")
    assert len(breasts) == 2 and len(exams) == 1 and exams["prob"].iloc[0] == pytest.approx(breasts["prob"].max())


def test_bad_recipe_key_is_one_line(tmp_path):
    args = ["train", "--recipe", "dr-grading", "--data", str(tmp_path), "--out", str(tmp_path / "r")]
    result = runner.invoke(app, [*args, "--set", "train.epoch=2"])
    assert result.exit_code == 1 and "did you mean 'epochs'" in result.output


@pytest.mark.slow
def test_nproc_trains_one_model_in_two_processes(tmp_path):
    """`--nproc 2` runs torchrun (gloo on CPU): class-balanced sampling is sharded, rank 0 alone
    writes the run, and the validation metrics it logs are those of the whole val split."""
    root = make_phantom("dr-grading", tmp_path / "fundus", cases=40, seed=4)
    result = invoke("train", "--recipe", "dr-grading", "--data", root, "--out", tmp_path / "run", "--epochs", 1,
                    "--nproc", 2, *FAST, "--device", "cpu")  # fmt: skip
    assert "starting 2 processes" in result.output
    run = tmp_path / "run"
    assert {"best.pt", "last.pt", "splits.csv", "recipe.json", "metrics.jsonl"} <= {p.name for p in run.iterdir()}
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    invoke("evaluate", run, "--split", "val", "--bootstrap", 10)
    report = json.loads((run / "metrics_val.json").read_text())
    assert report["metrics"]["qwk"]["estimate"] == pytest.approx(logged["val_qwk"], abs=1e-6)
    assert report["referable"]["auc"]["estimate"] == pytest.approx(logged["val_referable_auc"], abs=1e-6)


@pytest.mark.slow
def test_pretrained_backbone_stays_frozen_while_the_head_warms_up(tmp_path):
    import torch

    from medsight.models import build_model

    source = build_model("resnet18", spatial_dims=2, in_channels=3, num_outputs=10)  # another head, as ImageNet's
    torch.save({"state_dict": source.state_dict()}, tmp_path / "pretrained.pt")
    root = make_phantom("dr-grading", tmp_path / "fundus", cases=24, seed=5)
    args = ["train", "--recipe", "dr-grading", "--data", root, *FAST, "--epochs", 1, "--set", "model.freeze_epochs=1"]
    result = runner.invoke(app, [str(a) for a in [*args, "--out", tmp_path / "random"]])
    assert result.exit_code == 1 and "Set model.pretrained" in result.output
    invoke(*args, "--out", tmp_path / "run", "--set", f"model.pretrained={tmp_path / 'pretrained.pt'}")
    trained = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    before = source.state_dict()
    backbone = [k for k in trained if not k.startswith("fc.") and k in before and trained[k].is_floating_point()]
    assert backbone and all(torch.equal(trained[k], before[k]) for k in backbone if "running" not in k)


@pytest.mark.slow
def test_a_finding_unknown_for_every_test_case_is_reported_undefined(tmp_path):
    """CheXpert leaves findings blank: one blank on the whole test split must not crash evaluate."""
    root = make_phantom("cxr-findings", tmp_path / "cxr", cases=60, seed=1)
    manifest = build_manifest(root)
    manifest.save(tmp_path / "m.csv")
    invoke("train", "--recipe", "cxr-findings", "--data", tmp_path / "m.csv", "--out", tmp_path / "run", "--epochs", 1,
           *FAST)  # fmt: skip
    table = pd.read_csv(tmp_path / "m.csv", dtype={"case_id": str})
    splits = pd.read_csv(tmp_path / "run" / "splits.csv", dtype={"case_id": str}).set_index("case_id")["split"]
    finding = next(c for c in table.columns if c.startswith("target_"))
    table.loc[table["case_id"].map(splits).eq("test"), finding] = np.nan
    table.to_csv(tmp_path / "blank.csv", index=False)
    (tmp_path / "blank.meta.json").write_text((tmp_path / "m.meta.json").read_text())
    result = invoke("evaluate", tmp_path / "run", "--data", tmp_path / "blank.csv", "--bootstrap", 20)
    name = finding.removeprefix("target_")
    assert f"auc {name}" in result.output and "undefined (no case of the split has a known label)" in result.output
    report = json.loads((tmp_path / "run" / "metrics_test.json").read_text())
    assert report["findings"][name] == {"known_cases": 0, "undefined": "no case of the split has a known label"}
    others = [f for f in report["findings"].values() if f["known_cases"] > 0]
    assert others and all("auc" in f for f in others)
    assert any(name in w for w in report["warnings"])


def test_one_class_training_data_is_refused_before_training(tmp_path):
    root = make_phantom("mammo-screening", tmp_path / "mg", cases=24, seed=1)
    manifest = build_manifest(root)
    manifest.save(tmp_path / "m.csv")
    table = pd.read_csv(tmp_path / "m.csv", dtype={"case_id": str})
    table["target"] = 0  # every view benign
    table.to_csv(tmp_path / "m.csv", index=False)
    result = runner.invoke(app, ["train", "--recipe", "mammo-screening", "--data", str(tmp_path / "m.csv"),
                                 "--out", str(tmp_path / "run"), "--epochs", "1", *FAST])  # fmt: skip
    assert result.exit_code == 1
    assert "the train split holds one class only (['negative']" in result.output
    assert "re-split with `medsight data split --stratify`" in result.output
    assert not (tmp_path / "run" / "last.pt").exists()


def test_ctrl_c_says_where_the_run_stopped_and_how_to_resume(tmp_path, monkeypatch):
    import medsight.engine.fit as engine

    def interrupted(recipe, manifest, out, **kwargs):
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").write_text(json.dumps({"epoch": 2}) + "\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "fit", interrupted)
    (tmp_path / "m.csv").write_text("case_id,patient_id,image,target\n")
    result = runner.invoke(app, ["train", "--recipe", "dr-grading", "--data", str(tmp_path / "m.csv"),
                                 "--out", str(tmp_path / "run"), "--epochs", "5"])  # fmt: skip
    assert result.exit_code == 130
    assert f"interrupted: {tmp_path / 'run'} stopped after epoch 2 of 5" in result.output
    assert "continue with: medsight" in result.output and "--resume" in result.output


def test_evaluate_on_a_one_class_split_reports_undefined_not_accuracy_one(tmp_path):
    """Accuracy 1.000 beside an undefined kappa says nothing: both are reported undefined, with why."""
    from medsight.validation import evaluate_run

    root = make_phantom("dr-grading", tmp_path / "fundus", cases=40, seed=3)
    build_manifest(root).save(tmp_path / "m.csv")
    invoke("train", "--recipe", "dr-grading", "--data", tmp_path / "m.csv", "--out", tmp_path / "run", "--epochs", 1,
           *FAST)  # fmt: skip
    table = pd.read_csv(tmp_path / "m.csv", dtype={"case_id": str})
    splits = pd.read_csv(tmp_path / "run" / "splits.csv", dtype={"case_id": str}).set_index("case_id")["split"]
    test = table["case_id"].map(splits).eq("test")
    table.loc[test, "target"] = 0
    table.to_csv(tmp_path / "zero.csv", index=False)
    (tmp_path / "zero.meta.json").write_text((tmp_path / "m.meta.json").read_text())
    report = evaluate_run(tmp_path / "run", manifest_path=tmp_path / "zero.csv", bootstrap=20, out=tmp_path / "z.json")
    assert not report.figure("accuracy").defined and not report.figure("qwk").defined
    assert report.figure("accuracy").undefined == "the split holds one class only"
    assert report.figure("accuracy").text() == "undefined (the split holds one class only)"
    assert any("holds only [0]" in w for w in report.warnings)
    written = json.loads((tmp_path / "z.json").read_text())
    assert written["metrics"]["accuracy"]["estimate"] is None  # JSON null, not NaN
