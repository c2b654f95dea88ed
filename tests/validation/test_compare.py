"""Comparing two runs: by patient (Obuchowski's clustered DeLong, a paired patient bootstrap)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsight.core.errors import InputError
from medsight.metrics import bootstrap_ci, delong_test, roc_auc
from medsight.models.registry import ModelChoice
from medsight.tasks import ModelPackage, task_for
from medsight.validation import compare_runs


def _run(folder, table: pd.DataFrame, task: dict) -> None:
    folder.mkdir()
    ModelPackage(recipe="r", task=task_for(task).spec, model=ModelChoice(name="resnet10"), in_channels=1,
                 preprocess={"size": 32, "channels": 1}).save(folder)  # fmt: skip
    table.to_csv(folder / "predictions_test.csv", index=False)


def _views(seed: int) -> pd.DataFrame:
    """Four views per woman, a woman's views correlated through her own level."""
    rng = np.random.default_rng(seed)
    rows = []
    for woman in range(40):
        level, cancer = rng.normal(0, 1), int(woman % 3 == 0)
        for view in range(4):
            sick = cancer * int(view < 2)
            rows.append({"case_id": f"w{woman}-{view}", "patient_id": f"w{woman}", "target": sick,
                         "prob": 1 / (1 + np.exp(-(level + 1.4 * sick + rng.normal(0, 0.6))))})  # fmt: skip
    return pd.DataFrame(rows)


def test_runs_are_compared_by_patient(tmp_path):
    task = {"kind": "binary", "classes": ["negative", "positive"]}
    a, b = _views(0), _views(0)
    b["prob"] = (b["prob"] + np.random.default_rng(9).normal(0, 0.2, len(b))).clip(0, 1)
    _run(tmp_path / "a", a, task)
    _run(tmp_path / "b", b.sample(frac=1.0, random_state=1), task)  # row order does not matter
    result = compare_runs(tmp_path / "a", tmp_path / "b", bootstrap=300)
    assert (result["cases"], result["patients"]) == (160, 40)
    test = result["tests"]["auc"]
    expected = delong_test(a["target"], a["prob"], b["prob"], clusters=a["patient_id"])
    assert test["method"] == "Obuchowski" and test["clusters"] == 40
    assert test["se"] == pytest.approx(expected["se"]) and test["p_value"] == pytest.approx(expected["p_value"])
    assert test["se"] > delong_test(a["target"], a["prob"], b["prob"])["se"]

    def difference(y, first, second):
        return roc_auc(y, first) - roc_auc(y, second)

    by_patient = bootstrap_ci(difference, a["target"].to_numpy(), a["prob"].to_numpy(), b["prob"].to_numpy(),
                              groups=a["patient_id"].to_numpy(), n_resamples=300)  # fmt: skip
    assert test["difference_ci"] == by_patient


def test_findings_leave_out_unknown_labels_and_one_case_per_patient_is_delong(tmp_path):
    task = {"kind": "multilabel", "classes": ["effusion", "nodule"]}
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=(50, 2)).astype(float)
    y[:5, 1] = np.nan
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(50)], "patient_id": [f"p{i}" for i in range(50)],
                          "target_effusion": y[:, 0], "target_nodule": y[:, 1],
                          "prob_effusion": rng.random(50), "prob_nodule": rng.random(50)})  # fmt: skip
    other = table.assign(prob_nodule=rng.random(50))
    _run(tmp_path / "a", table, task)
    _run(tmp_path / "b", other, task)
    tests = compare_runs(tmp_path / "a", tmp_path / "b", bootstrap=50)["tests"]
    assert tests["auc_nodule"]["method"] == "DeLong" and tests["auc_nodule"]["clusters"] == 45
    known = slice(5, None)
    expected = delong_test(y[known, 1], table["prob_nodule"][known], other["prob_nodule"][known])
    assert tests["auc_nodule"]["p_value"] == pytest.approx(expected["p_value"])
    assert tests["auc_effusion"]["difference"] == 0.0 and tests["auc_effusion"]["p_value"] == 1.0
    (tmp_path / "a" / "predictions_test.csv").unlink()
    with pytest.raises(InputError, match="medsight evaluate"):
        compare_runs(tmp_path / "a", tmp_path / "b")
