"""Every registered task goes through the one seam: fit -> package -> predict -> evaluate.

A task registered without a conformance case here fails ``test_every_task_has_a_case``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from medsight.core.errors import ConfigError, InputError
from medsight.engine.fit import fit
from medsight.engine.recipe import load_recipe
from medsight.inference import Predictor
from medsight.tasks import PACKAGE_FILE, Estimate, Evaluation, ModelPackage, Prediction, registered_tasks, task_for
from medsight.validation import evaluate_run

FAST = {"preprocess": {"size": 32, "channels": 1},
        "model": {"name": "resnet10"},
        "train": {"epochs": 1, "batch_size": 8, "precision": "fp32", "channels_last": "off", "early_stopping": None},
        "evaluation": {"bootstrap": 20}}  # fmt: skip


def _images(root: Path, labels: np.ndarray, seed: int) -> list[str]:
    """Noise images, brighter with a higher label (so the cases differ), one patient each."""
    rng = np.random.default_rng(seed)
    names = []
    for i, label in enumerate(labels):
        level = 60 + 40 * float(np.nanmax(np.atleast_1d(label)) if not np.all(np.isnan(label)) else 0)
        pixels = np.clip(rng.normal(level, 20, size=(40, 40)), 0, 255).astype(np.uint8)
        name = f"img{i:03d}.png"
        Image.fromarray(pixels).save(root / name)
        names.append(name)
    return names


def _classification(kind: str, classes: list[str]) -> Callable[[Path], tuple[dict, Path]]:
    def make(root: Path) -> tuple[dict, Path]:
        n = 36
        rng = np.random.default_rng(0)
        table = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)]})
        if kind == "multilabel":
            labels = rng.integers(0, 2, size=(n, len(classes))).astype(float)
            labels[0, 0] = np.nan  # an unknown finding, left out of the loss and the AUC
            for k, name in enumerate(classes):
                table[f"target_{name}"] = labels[:, k]
        else:
            labels = np.arange(n) % len(classes)
            table["target"] = labels
        table["image"] = _images(root, labels, seed=1)
        table["split"] = np.array(["train"] * 20 + ["val"] * 8 + ["test"] * 8)
        manifest = root / "manifest.csv"
        table.to_csv(manifest, index=False)
        return {"name": f"conformance-{kind}", "task": {"kind": kind, "classes": classes}, **FAST}, manifest

    return make


CASES: dict[str, Callable[[Path], tuple[dict, Path]]] = {
    "binary": _classification("binary", ["negative", "positive"]),
    "multiclass": _classification("multiclass", ["a", "b", "c"]),
    "multilabel": _classification("multilabel", ["effusion", "nodule"]),
    "ordinal": _classification("ordinal", ["0", "1", "2"]),
}


def test_every_task_has_a_case():
    assert set(registered_tasks()) == set(CASES), "add a conformance case for each registered task kind"


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CASES))
def test_fit_predict_evaluate_through_the_seam(tmp_path, kind):
    data = tmp_path / "data"
    data.mkdir()
    spec, manifest = CASES[kind](data)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(spec))
    recipe = load_recipe(tmp_path / "recipe.yaml")
    run = tmp_path / "run"
    result = fit(recipe, manifest, run)
    assert result.epochs_run == 1

    package = ModelPackage.load(run)  # the predictor is built from the package spec alone
    assert package.task == recipe.task and package.model == recipe.model and package.recipe == recipe.name
    assert package.provenance.data_hash and package.provenance.versions["torch"] == torch.__version__
    predictor = Predictor.from_run(run)
    assert type(predictor.task) is registered_tasks()[kind]

    evaluation = evaluate_run(run, split="test", bootstrap=20)
    assert isinstance(evaluation, Evaluation) and evaluation.kind == kind and evaluation.cases == 8
    assert evaluation.figures and all(isinstance(v, Estimate) for v in evaluation.figures.values())
    written = json.loads((run / "metrics_test.json").read_text())
    assert written["cases"] == 8 and written["recipe"] == recipe.name

    # the same test images through files (read, prepared) and through the cache score alike
    saved = pd.read_csv(run / "predictions_test.csv", dtype={"case_id": str})
    files = [data / name for name in saved["image"]]
    predicted = predictor.predict_files(files)
    assert isinstance(predicted, Prediction) and len(predicted) == len(files)
    columns = list(predicted.scores.columns)
    assert columns == list(task_for(recipe.task).scores(torch.zeros(1, task_for(recipe.task).num_outputs)).columns)
    np.testing.assert_allclose(predicted.scores.to_numpy(), saved[columns].to_numpy(), atol=1e-5)
    assert predicted.table()["input"].tolist() == [str(f) for f in files]


@pytest.mark.slow
def test_a_run_without_a_package_spec_is_read_from_its_recipe_and_a_broken_one_is_named(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    spec, manifest = CASES["binary"](data)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(spec))
    fit(load_recipe(tmp_path / "recipe.yaml"), manifest, tmp_path / "run")
    packaged = ModelPackage.load(tmp_path / "run")

    (tmp_path / "run" / PACKAGE_FILE).unlink()  # a run made before packages existed
    older = ModelPackage.load(tmp_path / "run")
    assert (older.task, older.model, older.preprocess) == (packaged.task, packaged.model, packaged.preprocess)
    assert Predictor.from_run(tmp_path / "run").task == task_for(packaged.task)

    broken = packaged.model_dump()
    broken["task"]["kind"] = "binray"
    (tmp_path / "run" / PACKAGE_FILE).write_text(json.dumps(broken))
    with pytest.raises(InputError, match=r"package\.json is not a valid model package spec"):
        Predictor.from_run(tmp_path / "run")

    other = packaged.model_copy(update={"model": packaged.model.model_copy(update={"name": "resnet18"})})
    other.save(tmp_path / "run")  # weights of ResNet-10 for a ResNet-18 spec
    with pytest.raises(InputError, match="does not hold weights of the network 'resnet18'"):
        Predictor.from_run(tmp_path / "run")


def test_unknown_kinds_are_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match="unknown task kind 'regression'; kinds: binary, multiclass"):
        task_for({"kind": "regression", "classes": ["a"]})
    with pytest.raises(ConfigError, match=r"task\.kind"):
        load_recipe("dr-grading", ["task.kind=regression"])


def test_fusion_is_refused_where_there_is_nothing_to_fuse():
    with pytest.raises(ConfigError, match="fusion combines binary per-view scores; this task is ordinal"):
        load_recipe("dr-grading", ["task.fusion=max"])


def test_channels_last_follows_the_tensor_rank():
    from medsight.engine.tuning import channels_last

    conv3d = channels_last(torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.ReLU()))
    assert conv3d[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    conv2d = channels_last(torch.nn.Conv2d(1, 4, 3))
    assert conv2d.weight.is_contiguous(memory_format=torch.channels_last)
    volume = channels_last(torch.zeros(2, 3, 4, 5, 6))
    assert volume.is_contiguous(memory_format=torch.channels_last_3d)
    assert channels_last(torch.zeros(3, 4)).shape == (3, 4)
    # the 2D layout on a 3D network is what PyTorch refuses
    with pytest.raises(RuntimeError, match="rank 4"):
        torch.nn.Conv3d(1, 4, 3).to(memory_format=torch.channels_last)
