"""Cardiac function from ED and ES label maps: checked against the phantom's own truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsight.data import build_manifest
from medsight.data.cases import pairings, read_case
from medsight.data.phantoms import make_phantom
from medsight.engine.recipe import load_recipe
from medsight.tasks import SegmentationSpec, task_for
from medsight.tasks.segmentation import cardiac_function


def _reference_rows(manifest, task):
    """Per image, the reference volumes of each structure, as evaluation records them."""
    cases, scores = [], []
    for pairing in pairings(manifest):
        for _, row in manifest.table.iterrows():
            case = read_case(manifest, row, pairing)
            labels = np.asarray(case.label.array[0])
            voxel_ml = float(np.prod(case.image.geometry.spacing)) / 1000
            volumes = {n: float(m.sum()) * voxel_ml for n, m in task.structure_masks(labels).items()}
            cases.append({"case_id": row["case_id"], "patient_id": row["patient_id"], "label_column": pairing.label})
            scores.append({**{f"volume_ml_{n}": v for n, v in volumes.items()},
                           **{f"reference_volume_ml_{n}": v for n, v in volumes.items()}})  # fmt: skip
    return pd.DataFrame(cases), pd.DataFrame(scores)


def test_function_from_the_phantom_masks_matches_the_phantom_truth(tmp_path):
    root = make_phantom("cardiac-function", tmp_path / "heart", cases=4, seed=3)
    manifest = build_manifest(root)
    task = task_for(load_recipe("cardiac-function").task)
    warnings, rows = cardiac_function(*_reference_rows(manifest, task), task.spec.cardiac)
    truth = pd.read_csv(root / "phantom_truth.csv").set_index("patient")
    assert not warnings and len(rows) == 4
    for _, row in rows.iterrows():
        expected = truth.loc[row["case_id"]]
        assert row["reference_lv_edv_ml"] == pytest.approx(expected["edv_ml"], abs=0.01)
        assert row["reference_lv_esv_ml"] == pytest.approx(expected["esv_ml"], abs=0.01)
        assert row["reference_lv_mass_g"] == pytest.approx(expected["lv_mass_g"], abs=0.01)
        assert row["reference_lv_ef"] == pytest.approx(100 * expected["ef_masks"], abs=0.01)
        assert row["lv_sv_ml"] == pytest.approx(row["lv_edv_ml"] - row["lv_esv_ml"])


def test_a_case_without_its_end_systole_is_skipped_with_a_warning():
    task = task_for(load_recipe("cardiac-function").task)
    cases = pd.DataFrame([{"case_id": "a", "patient_id": "a", "label_column": "label_ed"}])
    volumes = {f"{p}volume_ml_{n}": 10.0 for p in ("", "reference_") for n in ("RV", "MYO", "LV")}
    warnings, rows = cardiac_function(cases, pd.DataFrame([volumes]), task.spec.cardiac)
    assert rows.empty and warnings == ["case a: no label_es image; its function is not measured"]


def test_a_missed_end_systolic_cavity_is_named_and_still_counted():
    task = task_for(load_recipe("cardiac-function").task)
    cases = pd.DataFrame([{"case_id": "a", "patient_id": "a", "label_column": c} for c in ("label_ed", "label_es")])
    ed = {"volume_ml_RV": 150.0, "volume_ml_MYO": 120.0, "volume_ml_LV": 54.0}
    es = {"volume_ml_RV": 60.0, "volume_ml_MYO": 120.0, "volume_ml_LV": 0.0}  # the LV cavity missed at ES
    reference = {"reference_volume_ml_RV": 150.0, "reference_volume_ml_MYO": 120.0}
    scores = pd.DataFrame([{**ed, **reference, "reference_volume_ml_LV": 54.0},
                           {**es, **reference, "reference_volume_ml_LV": 15.6}])  # fmt: skip
    warnings, rows = cardiac_function(cases, scores, task.spec.cardiac)
    assert warnings == ["case a: no LV predicted in its label_es image; its function figures count that cavity "
                        "as empty (look at the prediction)"]  # fmt: skip
    assert rows.loc[0, "lv_ef"] == pytest.approx(100.0)  # reported as measured, not dropped
    assert rows.loc[0, "reference_lv_ef"] == pytest.approx(100 * (54 - 15.6) / 54)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"cardiac": {"lv": "LVC"}}, "reads the labels \\['LVC'\\]"),
     ({"regions": {"lv": [3]}}, "as labels, not regions")],
)  # fmt: skip
def test_cardiac_specs_must_name_their_labels(change, message):
    base = {"kind": "segmentation", "labels": {"RV": 1, "MYO": 2, "LV": 3}, "cardiac": {}}
    with pytest.raises(ValueError, match=message):
        SegmentationSpec(**{**base, **change})


def test_end_diastole_and_end_systole_come_from_the_lv_volume_curve():
    from medsight.tasks.segmentation import CardiacSpec, cine_function

    lv = [120.0, 140.0, 150.0, 100.0, 60.0, 55.0, 80.0]
    rv = [130.0, 150.0, 160.0, 110.0, 80.0, 70.0, 90.0]
    myo = [100.0, 102.0, 104.0, 110.0, 118.0, 120.0, 108.0]
    row = cine_function({"LV": lv, "RV": rv, "MYO": myo}, CardiacSpec())
    assert (row["ed_frame"], row["es_frame"], row["frames"]) == (2, 5, 7)
    assert row["lv_edv_ml"] == 150 and row["lv_esv_ml"] == 55 and row["lv_sv_ml"] == 95
    assert row["lv_ef"] == pytest.approx(100 * 95 / 150) and row["rv_ef"] == pytest.approx(100 * 90 / 160)
    assert row["lv_mass_g"] == pytest.approx(104 * 1.05)
    with pytest.raises(Exception, match="at least two frames"):
        cine_function({"LV": [1.0], "RV": [1.0], "MYO": [1.0]}, CardiacSpec())


@pytest.mark.slow
def test_a_cine_is_segmented_frame_by_frame_and_measured(tmp_path):
    from medsight.engine.fit import fit
    from medsight.inference import Predictor
    from medsight.io import read

    root = make_phantom("cardiac-function", tmp_path / "heart", cases=6, seed=1)
    build_manifest(root).save(tmp_path / "m.csv")
    quick = ["train.epochs=1", "train.precision=fp32", "preprocess.memory_gb=2", "preprocess.base_filters=4",
             "preprocess.overrides={iterations_per_epoch: 2}"]  # fmt: skip
    recipe = load_recipe("cardiac-function", quick)
    fit(recipe, tmp_path / "m.csv", tmp_path / "run")
    cine = next(root.rglob("*_4d.nii.gz"))
    result = Predictor.from_run(tmp_path / "run").predict_files([cine], masks=tmp_path / "masks")
    row = result.scores.iloc[0]
    source = read(cine)
    assert row["frames"] == source.channels and 0 <= row["ed_frame"] < source.channels
    assert {"lv_ef", "lv_edv_ml", "rv_ef", "lv_mass_g"} <= set(result.scores.columns)
    labels = read(result.cases["output"][0])
    assert labels.array.shape == source.array.shape and labels.geometry.isclose(source.geometry)
    # a manifest's cases predicted as a whole: one function row per case, beside the reference's
    predictor = Predictor.from_run(tmp_path / "run")
    data = predictor.prepare(build_manifest(root))
    table = predictor.predict_split(data, "all").table()
    assert len(table) == 12  # ED and ES of each of the six cases
    function = predictor.grouped(table)["function"]
    assert sorted(function["case_id"]) == sorted(data.manifest.table["case_id"])
    assert {"lv_ef", "lv_mass_g", "reference_lv_ef", "rv_edv_ml"} <= set(function.columns)
    truth = pd.read_csv(root / "phantom_truth.csv").set_index("patient")
    np.testing.assert_allclose(function.set_index("case_id")["reference_lv_ef"],
                               100 * truth.loc[function["case_id"], "ef_masks"], atol=0.01)  # fmt: skip
