"""Each 2D recipe trains end to end on a few phantom cases (tiny images, one or two epochs)."""

from __future__ import annotations

import json

import pytest

from medsight.data import build_manifest
from medsight.data.phantoms import make_phantom
from medsight.engine.classify import train_classifier
from medsight.engine.recipe import load_recipe

FAST = ["preprocess.size=48", "train.batch_size=8", "train.epochs=2", "train.precision=fp32", "model.name=resnet18"]


def _last(run):
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recipe", "cases", "metric"),
    [("dr-grading", 60, "val_qwk"), ("cxr-findings", 60, "val_macro_auc"), ("mammo-screening", 24, "val_auc")],
)
def test_recipe_learns_on_its_phantom(tmp_path, recipe, cases, metric):
    """The trained model beats the same network untrained on the held-out (validation) cases."""
    root = make_phantom(recipe, tmp_path / "data", cases=cases, seed=0)
    build_manifest(root).save(tmp_path / "manifest.csv")
    settings = [*FAST, "preprocess.size=64", "train.early_stopping=null"]
    untrained = [*settings, "train.epochs=1", "train.lr=1e-12", "train.warmup_epochs=0"]  # weights stay as drawn
    train_classifier(load_recipe(recipe, untrained), tmp_path / "manifest.csv", tmp_path / "untrained")
    trained = load_recipe(recipe, [*settings, "train.epochs=8"])
    result = train_classifier(trained, tmp_path / "manifest.csv", tmp_path / "run")
    assert result.epochs_run == 8
    before, after = _last(tmp_path / "untrained"), _last(tmp_path / "run")
    assert metric in after
    assert after["val_loss"] < before["val_loss"] - 0.05, (before, after)
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "splits.csv").is_file()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"]["name"] == recipe
