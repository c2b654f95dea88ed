"""Each 2D recipe trains end to end on a few phantom cases (tiny images, one or two epochs)."""

from __future__ import annotations

import json

import pytest

from medsight.data import build_manifest
from medsight.data.phantoms import make_phantom
from medsight.engine.classify import train_classifier
from medsight.engine.recipe import load_recipe

FAST = ["preprocess.size=48", "train.batch_size=8", "train.epochs=2", "train.precision=fp32", "model.name=resnet18"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recipe", "cases", "metric"),
    [("dr-grading", 40, "val_qwk"), ("cxr-findings", 40, "val_macro_auc"), ("mammo-screening", 10, "val_auc")],
)
def test_recipe_trains_on_its_phantom(tmp_path, recipe, cases, metric):
    root = make_phantom(recipe, tmp_path / "data", cases=cases, seed=0)
    build_manifest(root).save(tmp_path / "manifest.csv")
    result = train_classifier(load_recipe(recipe, FAST), tmp_path / "manifest.csv", tmp_path / "run")
    assert result.epochs_run == 2
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and metric in lines[-1] and lines[-1]["val_loss"] > 0
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "splits.csv").is_file()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"]["name"] == recipe
