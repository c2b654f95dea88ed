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
from medsight.validation import evaluate_run, write_report
from tests.validation.test_report import check_page

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


def _segmentation(root: Path) -> tuple[dict, Path]:
    """Small volumes (anisotropic spacing, oblique-free) with a bright box (label 1) holding a core (label 2)."""
    from medsight.core.geometry import Geometry
    from medsight.core.volume import Volume
    from medsight.io import write

    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        shape = (12, 24 + i % 3, 24)
        image = rng.normal(100, 10, size=shape).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        z, y, x = 4 + i % 3, 6 + i % 5, 8
        label[z : z + 5, y : y + 10, x : x + 9] = 1
        label[z + 1 : z + 4, y + 3 : y + 6, x + 3 : x + 6] = 2
        image[label == 1] += 80
        image[label == 2] += 160
        geometry = Geometry(spacing=(2.5, 1.0, 1.0), origin=(10.0, -5.0, 3.0))
        write(Volume(image[None], geometry), root / f"case{i}.nii.gz")
        write(Volume(label[None], geometry), root / f"case{i}_seg.nii.gz")
        split = "train" if i < 6 else "val" if i < 8 else "test"
        rows.append({"case_id": f"c{i}", "patient_id": f"p{i}", "image": f"case{i}.nii.gz",
                     "label": f"case{i}_seg.nii.gz", "split": split})  # fmt: skip
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    recipe = {
        "name": "conformance-segmentation",
        "task": {"kind": "segmentation", "labels": {"lesion": 1, "core": 2}},
        "model": {"name": "dynunet"},
        "preprocess": {"memory_gb": 2, "base_filters": 4, "modality": "MR",
                       "overrides": {"batch_size": 2, "iterations_per_epoch": 2}},
        "train": {"epochs": 1, "precision": "fp32", "channels_last": "off", "lr": 0.01},
        "evaluation": {"bootstrap": 20},
    }  # fmt: skip
    return recipe, manifest


def _detection(root: Path) -> tuple[dict, Path]:
    """Small CT-like scans (int16 HU, a direction that flips x) with bright balls given as nodules in
    world mm, and an excluded finding."""
    from medsight.core.geometry import Geometry
    from medsight.core.volume import Volume
    from medsight.io import write
    from medsight.tasks.detection import draw_balls

    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        shape = (16, 32, 32)
        geometry = Geometry(spacing=(2.0, 1.5, 1.5), origin=(40.0, -20.0, -100.0),
                            direction=((1.0, 0, 0), (0, 1.0, 0), (0, 0, -1.0)))  # fmt: skip
        centre = geometry.index_to_world([4 + i % 6, 8 + i % 9, 10 + i % 7])
        diameter = 7.0 + i % 4
        hu = rng.normal(-800, 30, size=shape)
        hu[draw_balls(geometry, shape, centre[None], np.array([diameter])) > 0] = 40
        write(Volume(hu.astype(np.int16)[None], geometry), root / f"scan{i}.nii.gz")
        boxes = [{"label": "nodule", "center": centre.tolist(), "diameter_mm": diameter}]
        if i % 3 == 0:
            boxes.append({"label": "nodule", "center": (centre + 12).tolist(), "diameter_mm": -1, "excluded": True})
        split = "train" if i < 6 else "val" if i < 8 else "test"
        rows.append({"case_id": f"1.2.{i}", "patient_id": f"p{i}", "image": f"scan{i}.nii.gz",
                     "boxes": json.dumps(boxes), "split": split})  # fmt: skip
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    recipe = {
        "name": "conformance-detection",
        "task": {"kind": "detection", "finding": "nodule"},
        "model": {"name": "dynunet"},
        "preprocess": {"memory_gb": 2, "base_filters": 4, "modality": "CT",
                       "overrides": {"batch_size": 2, "iterations_per_epoch": 2}},
        "train": {"epochs": 1, "precision": "fp32", "channels_last": "off", "lr": 0.01},
        "evaluation": {"bootstrap": 20},
    }  # fmt: skip
    return recipe, manifest


def _film(root: Path, i: int, pixels: np.ndarray) -> dict:
    """Save image ``i`` of a 36-image 2D case; its manifest row (two images per patient, 20/8/8 split)."""
    name = f"img{i:03d}.png"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name)
    split = "train" if i < 20 else "val" if i < 28 else "test"
    return {"case_id": f"c{i}", "patient_id": f"p{i // 2}", "image": name, "split": split}


def _detection2d(root: Path) -> tuple[dict, Path]:
    """Noise images (not square: 48x40) where positive images hold a bright square given as a box with
    BI-RADS 5, some negative ones a dimmer square with BI-RADS 2 (another box, a trained negative)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(36):
        pixels = rng.normal(60, 15, size=(48, 40))
        positive, benign = i % 2 == 1, i % 4 == 0
        boxes = []
        if positive or benign:
            x, y = 4 + i % 20, 6 + i % 25
            pixels[y : y + 10, x : x + 12] += 120 if positive else 60
            boxes.append({"label": "['Mass']", "birads": 5 if positive else 2, "x": x, "y": y, "w": 12, "h": 10})
        rows.append(_film(root, i, pixels) | {"target": int(positive), "boxes": json.dumps(boxes) if boxes else ""})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    task = {"kind": "detection2d", "min_birads": 4, "patch": 16, "patches_per_epoch": 16}
    return {"name": "conformance-detection2d", "task": task, **FAST}, manifest


def _detection2d_findings(root: Path) -> tuple[dict, Path]:
    """Noise images holding a bright square (a mass) and/or a bright bar (an effusion), each given as
    a box on some images only; one image's effusion label unknown. Trained on whole images."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(36):
        pixels = rng.normal(60, 15, size=(48, 40))
        mass, effusion = i % 2 == 1, i % 3 == 0
        boxes = []
        if mass:
            x, y = 4 + i % 20, 6 + i % 25
            pixels[y : y + 10, x : x + 12] += 120
            boxes += [{"label": "Mass", "x": x, "y": y, "w": 12, "h": 10}] if i % 4 != 3 else []
        if effusion:
            pixels[36:44, 4:36] += 100
            boxes.append({"label": "Effusion", "x": 4, "y": 36, "w": 32, "h": 8})
        rows.append(_film(root, i, pixels) | {"target_mass": int(mass), "boxes": json.dumps(boxes),
                                              "target_effusion": np.nan if i == 4 else int(effusion)})  # fmt: skip
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    task = {"kind": "detection2d", "findings": ["mass", "effusion"], "patch": 32, "patches_per_epoch": 16}
    return {"name": "conformance-detection2d-findings", "task": task, **FAST}, manifest


def _risk(root: Path) -> tuple[dict, Path]:
    """Patients with an age, a measurement and a category, followed up for an event whose hazard rises
    with age; images that are never read (the features came from them)."""
    rng = np.random.default_rng(0)
    n = 60
    age = rng.uniform(40, 80, n)
    event_time, censor = rng.exponential(1 / (0.1 * np.exp(0.06 * (age - 60)))), rng.uniform(1, 8, n)
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
                          "image": [f"img{i}.png" for i in range(n)], "age": age, "lv_ef": rng.uniform(20, 70, n),
                          "site": rng.choice(["a", "b"], n), "years": np.minimum(event_time, censor),
                          "event": (event_time <= censor).astype(int),
                          "split": np.array(["train"] * 36 + ["val"] * 12 + ["test"] * 12)})  # fmt: skip
    manifest = root / "manifest.csv"
    table.to_csv(manifest, index=False)
    recipe = {
        "name": "conformance-risk",
        "task": {"kind": "risk", "time": "years", "event": "event", "features": ["age", "lv_ef", "site"]},
        "model": {"name": "linear"},
        "train": {"epochs": 1, "batch_size": 64, "precision": "fp32", "channels_last": "off"},
        "evaluation": {"bootstrap": 20},
    }  # fmt: skip
    return recipe, manifest


def _risk_image(root: Path) -> tuple[dict, Path]:
    """The risk case with images read beside the table (fusion): brighter images, earlier events."""
    recipe, manifest = _risk(root)
    table = pd.read_csv(manifest)
    table["image"] = _images(root, (table["years"].max() - table["years"]).to_numpy() / 3, seed=2)
    table.to_csv(manifest, index=False)
    recipe = {**recipe, "name": "conformance-risk-image", "task": {**recipe["task"], "image": "image"},
              "model": {"name": "resnet10"}, "preprocess": {"image": {"size": 32, "channels": 1}}}  # fmt: skip
    return recipe, manifest


CASES: dict[str, Callable[[Path], tuple[dict, Path]]] = {
    "binary": _classification("binary", ["negative", "positive"]),
    "multiclass": _classification("multiclass", ["a", "b", "c"]),
    "multilabel": _classification("multilabel", ["effusion", "nodule"]),
    "ordinal": _classification("ordinal", ["0", "1", "2"]),
    "segmentation": _segmentation,
    "detection": _detection,
    "detection2d": _detection2d,
    "detection2d findings": _detection2d_findings,  # the same task kind, several findings at once
    "risk": _risk,
    "risk image": _risk_image,  # the same task kind, reading an image beside the features
}


def test_every_task_has_a_case():
    assert set(registered_tasks()) == {k.split()[0] for k in CASES}, "add a conformance case for each task kind"


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_fit_predict_evaluate_through_the_seam(tmp_path, case):
    kind = case.split()[0]
    data = tmp_path / "data"
    data.mkdir()
    spec, manifest = CASES[case](data)
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

    caches = data / ".medsight-cache" / recipe.name
    built = {p.relative_to(caches) for p in caches.glob("*/*")}
    evaluation = evaluate_run(run, split="test", bootstrap=20)
    # evaluation prepares the cases in the folder training did, without building them again
    assert {p.relative_to(caches) for p in caches.glob("*/*")} == built
    tested = int((pd.read_csv(manifest)["split"] == "test").sum())
    assert isinstance(evaluation, Evaluation) and evaluation.kind == kind and evaluation.cases == tested
    assert evaluation.figures and all(isinstance(v, Estimate) for v in evaluation.figures.values())
    if kind == "detection":  # where and how big: the FROC, and the detected nodules' diameters
        assert {"cpm", "diameter error % (median)", "diameter bias % (median)"} <= set(evaluation.figures)
        assert evaluation.details["froc"]["sizes"]["nodules"] == evaluation.details["froc"]["detected"]
    written = json.loads((run / "metrics_test.json").read_text())
    assert written["cases"] == tested and written["recipe"] == recipe.name

    saved = pd.read_csv(run / "predictions_test.csv", dtype={"case_id": str})
    assert len(saved) == len(evaluation_cases(run))
    tabular = predictor.task.spatial_dims == 0  # a model of features predicts from tables of cases
    files = [manifest] if tabular else [data / name for name in saved["image"]]
    predicted = predictor.predict_files(files, masks=tmp_path / "masks")
    assert isinstance(predicted, Prediction) and len(predicted.scores.columns)
    if not tabular:
        assert len(predicted) == len(files) and predicted.table()["input"].tolist() == [str(f) for f in files]
    CHECKS.get(case, _classification_check)(predictor, predicted, saved, files)
    check_page(write_report(run))  # the validation report of every task
    plots = json.loads((run / "report.json").read_text())["plots"]
    assert ("Confusion matrix" in plots) == (case in ("multiclass", "ordinal"))  # classes and grades
    assert ("Survival by predicted risk" in plots) == ("Calibration at each horizon" in plots) == (kind == "risk")
    gallery = json.loads((run / "report.json").read_text())["gallery"]
    if kind in ("binary", "multilabel", "detection2d"):  # the worst errors beside the model's maps of them
        from medsight.explain import GalleryMaps
        from medsight.validation.report import build_report

        shown = build_report(run, explainer=GalleryMaps)["gallery"]
        assert shown and all("Grad-CAM" in g["caption"] for g in shown)
        assert all("Grad-CAM" not in g["caption"] for g in build_report(run)["gallery"])
    if kind == "segmentation":  # the worst images segmented again from the evaluated manifest
        assert gallery == ["Worst segmentations"] and {"Dice per case", "HD95 per case"} <= set(plots)
        moved = manifest.rename(manifest.with_suffix(".moved"))
        assert json.loads((run / write_report(run).with_suffix(".json").name).read_text())["gallery"] == []
        moved.rename(manifest)
    if tabular:
        with pytest.raises(ConfigError, match="cannot be explained yet"):
            predictor.task.explain_targets()
    else:
        _explain_check(predictor, files[:2], tmp_path / "explain")
    if kind in ("segmentation", "detection"):
        _explain_against_masks(predictor, manifest)


def _explain_check(predictor, files, out: Path) -> None:
    """Every task is explained through the seam: a map per method on each input's grid (3D: on one
    window, and written as NIfTI on the input's own grid), overlays that decode, the checks in
    explanations.json."""
    from medsight.explain import explain_files, write_explanations
    from medsight.io import read

    result = explain_files(predictor, files, methods=["gradcam", "occlusion"])
    written = json.loads(write_explanations(result, out).read_text())
    assert [i["input"] for i in written["images"]] == [str(f) for f in files]
    for item, record in zip(result.images, written["images"], strict=True):
        assert item.target in predictor.task.explain_targets() and 0 <= item.probability <= 1
        for method in ("gradcam", "occlusion"):
            assert item.maps[method].shape == item.image.shape[1:] and np.all(np.isfinite(item.maps[method]))
            width, height = Image.open(out / record["overlays"][method]).size
            scale = height // item.image.shape[-2]  # small inputs are drawn larger, by a whole factor
            assert scale >= 1 and (width, height) == (2 * scale * item.image.shape[-1], scale * item.image.shape[-2])
            if predictor.task.spatial_dims == 3:
                source, found = read(item.name), read(out / record["maps"][method])
                assert found.spatial_shape == source.spatial_shape and found.geometry.isclose(source.geometry)
                assert np.all(np.isfinite(found.array)) and found.array.dtype == np.float32
    assert set(written["methods"]) == {"gradcam", "occlusion"}
    assert {"faithfulness", "randomisation", "deletion_auc"} <= set(written["methods"]["gradcam"])


def _explain_against_masks(predictor, manifest: Path) -> None:
    """A 3D run's test cases explained from the manifest, each map scored against the case's reference on
    the input's grid (a label map; a detection's nodules, every voxel within a radius of a centre that is
    not excluded): the share of its mass in the structure and its peak, checked here by hand."""
    from medsight.explain import explain_split
    from medsight.io import read

    result = explain_split(predictor, manifest, cases=2, methods=["gradcam"], faithfulness=False, sanity=False)
    table = pd.read_csv(manifest, dtype={"case_id": str}).set_index("case_id")
    assert len(result.images) == 2
    for item in result.images:
        if "label" in table.columns:
            labels = read(manifest.parent / table.loc[item.name, "label"]).array[0]
            truth = predictor.task.structure_masks(labels)[item.target]
        else:
            scan = read(manifest.parent / table.loc[item.name, "image"])
            grid = np.stack(np.meshgrid(*[np.arange(n) for n in scan.spatial_shape], indexing="ij"), -1)
            world = scan.geometry.index_to_world(grid)
            truth = np.zeros(scan.spatial_shape, bool)
            for box in json.loads(table.loc[item.name, "boxes"]):
                if not box.get("excluded"):
                    truth |= np.linalg.norm(world - np.asarray(box["center"]), axis=-1) < box["diameter_mm"] / 2
        found = item.placement.on_source(item.maps["gradcam"])
        region = item.placement.on_source(np.ones(item.image.shape[1:], np.float32)) > 0.5
        positive = np.where(region, np.clip(found, 0, None), 0)
        check = item.checks["gradcam"]
        if positive.sum() > 0:
            assert check["energy_in_box"] == pytest.approx(positive[truth].sum() / positive.sum())
        assert check["box_share"] == pytest.approx(truth[region].mean())
    assert result.summary["gradcam"]["boxed_images"] == 2 and "pointing_game" in result.summary["gradcam"]


def evaluation_cases(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "predictions_test.csv")


def _classification_check(predictor, predicted, saved, files) -> None:
    """The same test images through files (read, prepared) and through the cache score alike."""
    columns = list(predicted.scores.columns)
    assert columns == list(predictor.task.scores(torch.zeros(1, predictor.task.num_outputs)).columns)
    np.testing.assert_allclose(predicted.scores.to_numpy(), saved[columns].to_numpy(), atol=1e-5)
    assert "output" not in predicted.cases


def _segmentation_check(predictor, predicted, saved, files) -> None:
    """Label maps on each input's exact grid, holding only the task's codes; per-image figures in evaluation."""
    from medsight.io import read

    for source, output in zip(files, predicted.cases["output"], strict=True):
        image, labels = read(source), read(output)
        assert labels.spatial_shape == image.spatial_shape and labels.geometry.isclose(image.geometry)
        assert set(np.unique(labels.array)) <= {0, 1, 2}
    assert {"dice_lesion", "hd95_core", "nsd_lesion", "volume_error_ml_core"} <= set(saved.columns)
    assert {"volume_ml_lesion", "volume_ml_core"} == set(predicted.scores.columns)


def _detection_check(predictor, predicted, saved, files) -> None:
    """Candidates per scan as LUNA16 rows; an overlay on each input's exact grid."""
    from medsight.io import read

    for source, output in zip(files, predicted.cases["output"], strict=True):
        image, overlay = read(source), read(output)
        assert overlay.spatial_shape == image.spatial_shape and overlay.geometry.isclose(image.geometry)
        assert set(np.unique(overlay.array)) <= {0, 1}
    assert {"candidates", "max_probability", "candidate_list"} <= set(saved.columns)
    candidates = predictor.grouped(predicted.table())["candidates"]
    assert list(candidates.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm"]
    assert set(candidates["seriesuid"]) <= {Path(f).name.removesuffix(".nii.gz") for f in files}
    assert len(candidates) == int(predicted.scores["candidates"].sum())


def _detection2d_check(predictor, predicted, saved, files) -> None:
    """An image score and detections (boxes in each file's pixels, scored) per image, alike through
    files and through the cache."""
    np.testing.assert_allclose(predicted.scores["prob"].to_numpy(), saved["prob"].to_numpy(), atol=1e-5)
    for cell, source in zip(predicted.scores["detections"], files, strict=True):
        height, width = np.asarray(Image.open(source)).shape
        for mark in json.loads(cell):
            assert 0 <= mark["x0"] < mark["x1"] <= width and 0 <= mark["y0"] < mark["y1"] <= height
            assert 0 < mark["score"] <= 1
    assert predicted.scores["detections"].tolist() == saved["detections"].tolist()


def _detection2d_findings_check(predictor, predicted, saved, files) -> None:
    """A score per finding and detections named by finding, alike through files and through the cache;
    the evaluation scored the boxes of each finding."""
    columns = ["prob_mass", "prob_effusion"]
    assert list(predicted.scores.columns) == [*columns, "detections"]
    np.testing.assert_allclose(predicted.scores[columns].to_numpy(), saved[columns].to_numpy(), atol=1e-5)
    for cell, source in zip(predicted.scores["detections"], files, strict=True):
        height, width = np.asarray(Image.open(source)).shape
        for mark in json.loads(cell):
            assert mark["finding"] in ("mass", "effusion") and 0 < mark["score"] <= 1
            assert 0 <= mark["x0"] < mark["x1"] <= width and 0 <= mark["y0"] < mark["y1"] <= height
    assert predicted.scores["detections"].tolist() == saved["detections"].tolist()
    local = json.loads((predictor.run_dir / "metrics_test.json").read_text())["localisation"]
    assert set(local["per_finding"]) == {"mass", "effusion"} and local["findings"] == 4  # test boxes


def _risk_check(predictor, predicted, saved, files) -> None:
    """Every case of the table predicted, the test cases alike through the table and through the cache."""
    assert list(predicted.scores.columns) == ["risk", *[c for c in saved.columns if c.startswith("prob_event_")]]
    table = predicted.table().set_index("case_id").loc[saved["case_id"]]
    columns = list(predicted.scores.columns)
    np.testing.assert_allclose(table[columns].to_numpy(float), saved[columns].to_numpy(float), rtol=1e-5, atol=1e-7)


CHECKS = {"segmentation": _segmentation_check, "risk": _risk_check, "risk image": _risk_check,
          "detection": _detection_check, "detection2d": _detection2d_check,
          "detection2d findings": _detection2d_findings_check}  # fmt: skip


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
    known = "binary, detection, detection2d, multiclass"
    with pytest.raises(ConfigError, match=f"unknown task kind 'regression'; kinds: {known}"):
        task_for({"kind": "regression", "classes": ["a"]})
    with pytest.raises(ConfigError, match="'regression' found using 'kind' does not match any of the expected tags"):
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


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["binary", "segmentation"])
def test_the_same_seed_trains_the_same_weights(tmp_path, kind):
    """Initial weights, sampling and augmentation all follow train.seed: two runs give equal weights
    (before the network was seeded, each run started from other random weights)."""
    from medsight.models import load_checkpoint

    data = tmp_path / "data"
    data.mkdir()
    spec, manifest = CASES[kind](data)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(spec))
    recipe = load_recipe(tmp_path / "recipe.yaml")
    torch.manual_seed(123)  # whatever the global state before, the run is the same
    fit(recipe, manifest, tmp_path / "a")
    torch.rand(10)
    fit(recipe, manifest, tmp_path / "b")
    a, b = (load_checkpoint(tmp_path / run / "last.pt")["model"] for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = load_recipe(tmp_path / "recipe.yaml", ["train.seed=1"])
    fit(other, manifest, tmp_path / "c")
    c = load_checkpoint(tmp_path / "c" / "last.pt")["model"]
    assert not all(torch.equal(a[k], c[k]) for k in a)
