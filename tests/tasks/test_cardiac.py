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


@pytest.mark.parametrize(
    ("change", "message"),
    [({"cardiac": {"lv": "LVC"}}, "reads the labels \\['LVC'\\]"),
     ({"regions": {"lv": [3]}}, "as labels, not regions")],
)  # fmt: skip
def test_cardiac_specs_must_name_their_labels(change, message):
    base = {"kind": "segmentation", "labels": {"RV": 1, "MYO": 2, "LV": 3}, "cardiac": {}}
    with pytest.raises(ValueError, match=message):
        SegmentationSpec(**{**base, **change})
