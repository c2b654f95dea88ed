"""Evaluation and prediction with repeated predictions: spreads beside the scores, referral curves
in the metrics and the report, for TTA, MC dropout and ensembles."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from medsight.cli.main import app
from medsight.core.errors import ConfigError
from medsight.inference import Uncertainty
from medsight.validation import evaluate_run, write_report
from tests.validation.test_report import check_page


def _fit(root: Path, case: str, **changes) -> tuple[Path, Path]:
    from medsight.engine.fit import fit
    from medsight.engine.recipe import load_recipe
    from tests.tasks.test_conformance import CASES

    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    spec, manifest = CASES[case](data)
    for section, values in changes.items():
        spec[section] = {**spec.get(section, {}), **values}
    (root / "recipe.yaml").write_text(yaml.safe_dump(spec))
    fit(load_recipe(root / "recipe.yaml"), manifest, root / "run")
    return root / "run", manifest


@pytest.mark.slow
def test_tta_adds_spreads_and_referral_curves_to_the_evaluation_and_the_report(tmp_path):
    run, _ = _fit(tmp_path, "multilabel")
    evaluation = evaluate_run(run, bootstrap=20, uncertainty=Uncertainty("tta", samples=3))
    predictions = pd.read_csv(run / "predictions_test.csv")
    assert {"sd_prob_effusion", "sd_prob_nodule"} <= set(predictions.columns)
    assert (predictions["sd_prob_effusion"] >= 0).all() and predictions["sd_prob_effusion"].max() > 0
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert metrics["referral"]["method"] == "tta" and metrics["referral"]["samples"] == 3
    assert set(metrics["referral"]["probabilities"]) == {"effusion", "nodule"}
    assert "effusion AUC, 20% most uncertain referred" in evaluation.figures
    check_page(write_report(run))
    summary = json.loads((run / "report.json").read_text())
    assert "Referral curves" in summary["plots"]
    item = next(c for c in summary["checklist"] if c["item"].startswith("Uncertainty"))
    assert item["status"] == "reported" and "tta" in item["where"]


@pytest.mark.slow
def test_an_ensemble_and_mc_dropout_through_the_cli(tmp_path):
    first, manifest = _fit(tmp_path / "a", "binary", model={"dropout": 0.3})
    second, _ = _fit(tmp_path / "b", "binary", model={"dropout": 0.3}, train={"seed": 7})
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(first), "--ensemble", str(second), "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    assert "most uncertain referred" in result.output
    images = sorted(str(p) for p in manifest.parent.glob("img03*.png"))
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(first), *images, "--uncertainty", "mc-dropout", "--samples", "4",
                                 "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table.columns[-2:]) == ["prob", "sd_prob"] and len(table) == len(images)
    assert (table["sd_prob"] > 0).all()


@pytest.mark.slow
def test_ensemble_members_must_predict_the_same_task(tmp_path):
    binary, _ = _fit(tmp_path / "a", "binary")
    other, _ = _fit(tmp_path / "b", "multilabel")
    with pytest.raises(ConfigError, match="not a member of this ensemble"):
        evaluate_run(binary, bootstrap=20, uncertainty=Uncertainty("ensemble", members=(other,)))
    result = CliRunner().invoke(app, ["evaluate", str(binary), "--uncertainty", "mc-dropout"])
    assert result.exit_code == 1 and "model.dropout" in result.output


@pytest.mark.slow
def test_a_derived_score_gets_its_own_spread(tmp_path):
    """Referable DR is P(grade >= g), a sum of grade probabilities: its spread over the predictions is
    computed from each prediction's sum, not from the grades' spreads."""
    run, _ = _fit(tmp_path, "ordinal", task={"referable_grade": 1})
    evaluate_run(run, bootstrap=20, uncertainty=Uncertainty("tta", samples=3))
    table = pd.read_csv(run / "predictions_test.csv")
    assert {"sd_prob_0", "sd_prob_1", "sd_prob_2", "spread_referable"} <= set(table.columns)
    assert (table["spread_referable"] >= 0).all() and table["spread_referable"].max() > 0
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert set(metrics["referral"]["probabilities"]) == {"referable"}
    plain, _ = _fit(tmp_path / "plain", "ordinal")  # no referable grade: no binary score to refer by
    evaluate_run(plain, bootstrap=20, uncertainty=Uncertainty("tta", samples=2))
    warnings = json.loads((plain / "metrics_test.json").read_text())["warnings"]
    assert any("referral curves" in w for w in warnings)


@pytest.mark.slow
def test_temperature_scaling_is_fitted_on_val_kept_for_predict_and_removed_without_it(tmp_path):
    from medsight.inference import Predictor
    from medsight.inference.calibration import TEMPERATURE_FILE, apply_temperatures
    from medsight.metrics.calibration import apply_temperature

    run, manifest = _fit(tmp_path, "multilabel")
    evaluate_run(run, bootstrap=20)
    raw = pd.read_csv(run / "predictions_test.csv")
    evaluate_run(run, bootstrap=20, temperature=True)
    kept = json.loads((run / TEMPERATURE_FILE).read_text())["temperatures"]
    assert set(kept) == {"effusion", "nodule"} and all(v["temperature"] > 0 for v in kept.values())
    scaled = pd.read_csv(run / "predictions_test.csv")
    expected = apply_temperature(raw["prob_effusion"].to_numpy(), kept["effusion"]["temperature"])
    assert scaled["prob_effusion"].to_numpy() == pytest.approx(expected, abs=1e-6)
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert metrics["temperature_scaling"]["nodule"]["temperature"] == kept["nodule"]["temperature"]
    images = [manifest.parent / name for name in raw["image"]]
    predicted = Predictor.from_run(run).predict_files(images).table()
    assert predicted["prob_effusion"].to_numpy() == pytest.approx(scaled["prob_effusion"].to_numpy(), abs=1e-5)
    assert apply_temperatures(raw[["prob_nodule"]], {}).equals(raw[["prob_nodule"]])
    evaluate_run(run, bootstrap=20)  # evaluated without scaling: prediction must match it again
    assert not (run / TEMPERATURE_FILE).exists()
    with pytest.raises(ConfigError, match="validation split"):
        evaluate_run(run, split="val", bootstrap=20, temperature=True)
    ordinal, _ = _fit(tmp_path / "ordinal", "ordinal")
    with pytest.raises(ConfigError, match="nothing to temperature-scale"):
        evaluate_run(ordinal, bootstrap=20, temperature=True)
