"""IDRiD disease grading: ``Image name, Retinopathy grade, Risk of macular edema`` CSVs + JPEGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsight.core.errors import InputError
from medsight.data.adapters._tables import find_file, first_line, index_files, read_table, relative, require_exist
from medsight.data.adapters.aptos2019 import GRADES, check_grades
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register

_COLUMNS = {"image": ["Image name"], "grade": ["Retinopathy grade"], "dme": ["Risk of macular edema"]}


def _label_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.csv") if "retinopathy grade" in first_line(p))


@register
class Idrid(Adapter):
    name = "idrid"
    title = "IDRiD (Indian Diabetic Retinopathy Image Dataset), disease grading"
    task = "dr-grading"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any("idrid" in p.name.lower() for p in root.rglob("*.csv")) and bool(_label_files(root))

    @classmethod
    def build(cls, root: Path, options: Any) -> Manifest:
        files = _label_files(root)
        if not files:
            raise InputError(f"no IDRiD grading CSV (with a 'Retinopathy grade' column) under {root}")
        index = index_files(root, (".jpg", ".jpeg", ".png", ".tif"))
        records = []
        for csv in files:
            table = read_table(csv, columns=_COLUMNS)
            table = table[table["image"].notna()]
            check_grades(table["grade"].astype(int), csv.name)
            split = "test" if "test" in csv.name.lower() else ""
            paths = [find_file(index, n) for n in table["image"]]
            require_exist(paths, list(table["image"].astype(str)), f"IDRiD images for {csv.name}")
            for (_, row), path in zip(table.iterrows(), paths, strict=True):
                records.append(
                    {
                        "case_id": str(row["image"]),
                        "patient_id": str(row["image"]),
                        "image": relative(root, path),  # type: ignore[arg-type]
                        "target": int(row["grade"]),
                        "target_dme": int(row["dme"]),
                        "split": split,
                    }
                )
        return Manifest.from_records(
            records,
            root,
            label_names=list(GRADES),
            notes=["IDRiD has no patient ids: each image is treated as its own patient; official test set kept"],
        )
