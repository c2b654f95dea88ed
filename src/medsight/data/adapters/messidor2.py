"""Messidor-2 with the Kaggle-adjudicated grades: ``messidor_data.csv`` + images anywhere below."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from medsight.data.adapters._tables import find_file, index_files, read_table, relative, require_exist
from medsight.data.adapters.aptos2019 import GRADES, check_grades
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register

log = logging.getLogger(__name__)

_COLUMNS = {
    "image_id": ["image", "image_name"],
    "grade": ["adjudicated_dr_grade", "dr_grade", "diagnosis"],
}
_OPTIONAL = {"dme": ["adjudicated_dme"], "gradable": ["adjudicated_gradable"]}


def _table_path(root: Path) -> Path:
    for name in ("messidor_data.csv", "messidor-2.csv", "messidor_2.csv"):
        if (root / name).is_file():
            return root / name
    return root / "messidor_data.csv"


@register
class Messidor2(Adapter):
    name = "messidor2"
    title = "Messidor-2 (adjudicated grades)"
    task = "dr-grading"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return _table_path(root).is_file()

    @classmethod
    def build(cls, root: Path, options: Any) -> Manifest:
        table = read_table(_table_path(root), columns=_COLUMNS, optional=_OPTIONAL)
        if "gradable" in table.columns:
            ungradable = table["gradable"].fillna(1).astype(int) == 0
            if ungradable.any():
                log.info("leaving out %d ungradable image(s)", int(ungradable.sum()))
            table = table[~ungradable]
        table = table[table["grade"].notna()]
        check_grades(table["grade"].astype(int), _table_path(root).name)
        index = index_files(root, (".png", ".jpg", ".jpeg", ".tif", ".tiff"))
        paths = [find_file(index, n) for n in table["image_id"]]
        require_exist(paths, list(table["image_id"].astype(str)), "Messidor-2 images")
        records = []
        for (_, row), path in zip(table.iterrows(), paths, strict=True):
            record = {
                "case_id": str(row["image_id"]),
                "patient_id": str(row["image_id"]),
                "image": relative(root, path),  # type: ignore[arg-type]
                "target": int(row["grade"]),
            }
            if "dme" in table.columns and pd.notna(row["dme"]):
                record["target_dme"] = int(row["dme"])
            records.append(record)
        return Manifest.from_records(
            records,
            root,
            label_names=list(GRADES),
            notes=["the adjudicated CSV has no patient ids: each image is treated as its own patient"],
        )
