from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsight.core import ConfigError, InputError
from medsight.data import Manifest, build_manifest
from medsight.data.splits import assign_splits
from tests.data.replicas import REPLICAS


def _manifest(n_patients=200, seed=0, eyes=2, official_test=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        grade = int(rng.choice(5, p=[0.5, 0.1, 0.2, 0.1, 0.1]))
        for e in range(eyes):
            rows.append(
                {
                    "case_id": f"{p}_{e}",
                    "patient_id": str(p),
                    "image": f"{p}_{e}.png",
                    "target": max(0, grade - e),
                    "site": "A" if p % 3 else "B",
                    "split": "test" if p < official_test else "",
                }
            )
    return Manifest(pd.DataFrame(rows), root=".")


def _groups_per_split(table, by="patient_id"):
    return table.groupby(by)["split"].nunique()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_patient_in_two_splits_and_fractions_hold(seed):
    m = assign_splits(_manifest(seed=seed), stratify="target", seed=seed)
    t = m.table
    assert (_groups_per_split(t) == 1).all()
    patients = t.groupby("split")["patient_id"].nunique()
    assert patients["test"] == 30  # exactly 15 % of 200 patients
    assert patients["val"] == round(0.15 * 170)  # 15 % of the patients left
    assert set(t["split"]) == {"train", "val", "test"}


@pytest.mark.parametrize(("test", "val"), [(0.4, 0.15), (0.7, 0.2), (0.33, 0.1), (0.5, 0.5)])
def test_any_fraction_is_honoured_to_the_patient(test, val):
    """--test 0.4 and --test 0.7 both gave 50 % (the fraction was rounded to 1/k folds)."""
    t = assign_splits(_manifest(n_patients=137), stratify="target", test_fraction=test, val_fraction=val).table
    patients = t.groupby("split")["patient_id"].nunique()
    assert patients["test"] == round(test * 137)
    assert patients["val"] == round(val * (137 - round(test * 137)))
    assert (_groups_per_split(t) == 1).all()


def test_stratification_balances_the_worst_grade():
    m = assign_splits(_manifest(n_patients=700), stratify="target", seed=3)
    worst = m.table.groupby("patient_id").agg(split=("split", "first"), grade=("target", "max"))
    overall = worst["grade"].value_counts(normalize=True)
    for _, part in worst.groupby("split"):
        share = part["grade"].value_counts(normalize=True)
        for grade, expected in overall.items():
            assert share.get(grade, 0.0) == pytest.approx(expected, abs=0.04)


def test_reproducible_for_a_seed():
    a = assign_splits(_manifest(), stratify="target", seed=7).table["split"]
    b = assign_splits(_manifest(), stratify="target", seed=7).table["split"]
    c = assign_splits(_manifest(), stratify="target", seed=8).table["split"]
    assert a.equals(b) and not a.equals(c)


def test_official_test_is_kept_and_not_grown():
    m = assign_splits(_manifest(official_test=30), stratify="target")
    t = m.table
    assert set(t.loc[t["split"] == "test", "patient_id"].astype(int)) == set(range(30))
    assert m.info["split"]["official_test"]
    again = assign_splits(_manifest(official_test=30), respect_official=False, seed=1).table
    assert set(again.loc[again["split"] == "test", "patient_id"].astype(int)) != set(range(30))


def test_official_test_leaking_a_patient_is_refused():
    m = _manifest(official_test=5)
    table = m.table.copy()
    table.loc[table["case_id"] == "0_1", "split"] = ""  # patient 0 now both in test and not
    with pytest.raises(InputError, match="shares 1 patient_id"):
        assign_splits(Manifest(table, "."))


def test_k_folds_are_patient_disjoint_and_balanced():
    m = assign_splits(_manifest(n_patients=250), stratify="target", folds=5, seed=0)
    t = m.table
    rest = t[t["split"] != "test"]
    assert (rest.groupby("patient_id")["fold"].nunique() == 1).all()
    sizes = rest.groupby("fold")["patient_id"].nunique()
    assert sorted(sizes.index) == [0, 1, 2, 3, 4] and sizes.max() - sizes.min() <= 3
    assert (t.loc[t["split"] == "test", "fold"] == -1).all()


def test_official_folds_are_kept(tmp_path):
    root, _ = REPLICAS["luna16"](tmp_path, False)
    m = assign_splits(build_manifest(root))
    assert m.table["fold"].tolist() == [0, 0, 1] and set(m.table["split"]) == {"train"}


def test_eyepacs_eyes_stay_together(tmp_path):
    root, _ = REPLICAS["eyepacs2015"](tmp_path, False)
    m = assign_splits(build_manifest(root), test_fraction=0.3, val_fraction=0.0, seed=0)
    assert (_groups_per_split(m.table) == 1).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"by": "subject"}, ConfigError, "cannot split by 'subject'"),
        ({"stratify": "grade"}, ConfigError, "cannot stratify by 'grade'"),
        ({"folds": 1}, ConfigError, "at least 2"),
        ({"val_fraction": 1.5}, ConfigError, r"val_fraction must be in \[0, 1\)"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        assign_splits(_manifest(n_patients=20), **kwargs)


def test_too_few_patients():
    with pytest.raises(InputError, match="too few"):
        assign_splits(_manifest(n_patients=3), test_fraction=0.15)


def test_rare_strata_are_pooled_not_fatal():
    m = _manifest(n_patients=12, eyes=1)
    table = m.table.copy()
    table["target"] = [0] * 9 + [1, 2, 3]  # three grades with a single patient each
    out = assign_splits(Manifest(table, "."), stratify="target", test_fraction=0.25, val_fraction=0.25)
    assert (out.table.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(out.table["split"]) == {"train", "val", "test"}
