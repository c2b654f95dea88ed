"""Joining a table to a manifest: by case or patient, what matched, and each mistake named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsight.core.errors import ConfigError, InputError
from medsight.data.join import join_table
from medsight.data.manifest import Manifest


def _manifest() -> Manifest:
    table = pd.DataFrame({"case_id": ["a1", "a2", "b1", "c1"], "patient_id": ["A", "A", "B", "C"],
                          "image": ["a1.png", "a2.png", "b1.png", "c1.png"], "split": ["train", "train", "val", "test"],
                          "age": [50, 50, 60, 70]})  # fmt: skip
    return Manifest(table, ".")


def test_a_patient_table_reaches_every_case_of_its_patient_and_reports_what_did_not_match():
    clinical = pd.DataFrame({"patient_id": ["A", "B", "Z"], "years": [1.5, 3.0, 9.0], "event": [1, 0, 1]})
    result = join_table(_manifest(), clinical)
    assert result.on == "patient_id" and result.columns == ("years", "event")
    assert result.matched == 3 and result.unmatched_cases == ("c1",) and result.unused_rows == 1
    table = result.manifest.table
    assert table["years"].tolist()[:3] == [1.5, 1.5, 3.0] and np.isnan(table["years"].iloc[3])
    assert table["age"].tolist() == [50, 50, 60, 70]  # what was there stays


def test_a_case_table_joins_on_case_id_and_only_the_columns_asked_for():
    outputs = pd.DataFrame({"case_id": ["c1", "a1"], "patient_id": ["C", "A"], "lv_ef": [40.0, 61.0],
                            "lv_mass_g": [120.0, 95.0]})  # fmt: skip
    result = join_table(_manifest(), outputs, columns=["lv_ef"])
    assert result.on == "case_id" and list(result.manifest.table.columns)[-1] == "lv_ef"
    assert result.manifest.table.set_index("case_id").loc[["a1", "c1"], "lv_ef"].tolist() == [61.0, 40.0]
    assert "lv_mass_g" not in result.manifest.table


@pytest.mark.parametrize(
    ("table", "options", "error", "match"),
    [
        (pd.DataFrame({"patient": ["A"], "x": [1]}), {}, ConfigError, "the table has no 'patient_id' column"),
        (pd.DataFrame({"patient_id": ["A", "A"], "x": [1, 2]}), {}, InputError,
         r"several rows for patient_id \['A'\]"),
        (pd.DataFrame({"patient_id": ["A"], "age": [1]}), {}, ConfigError,
         r"already has column\(s\) \['age'\]: give --replace"),
        (pd.DataFrame({"patient_id": ["A"], "split": ["test"]}), {}, ConfigError, "define the manifest's cases"),
        (pd.DataFrame({"patient_id": ["A"], "x": [1]}), {"columns": ["y"]}, ConfigError, r"no column\(s\) \['y'\]"),
        (pd.DataFrame({"patient_id": ["P1"], "x": [1]}), {}, InputError, "no case matches a row of the table"),
    ],
)  # fmt: skip
def test_join_mistakes_are_named(table, options, error, match):
    with pytest.raises(error, match=match):
        join_table(_manifest(), table, **options)


def test_replace_overwrites_a_column():
    result = join_table(_manifest(), pd.DataFrame({"patient_id": ["A", "B", "C"], "age": [51, 61, 71]}), replace=True)
    assert result.manifest.table["age"].tolist() == [51, 51, 61, 71]
