"""APTOS 2019 Blindness Detection (Kaggle): ``train.csv`` (id_code, diagnosis) + ``train_images/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsight.core.errors import InputError
from medsight.data.adapters._tables import first_line, read_table, relative, require_exist
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register

GRADES = ("no DR", "mild", "moderate", "severe", "proliferative")


def check_grades(values: Any, where: str) -> None:
    """ICDR grades are integers 0-4."""
    bad = sorted({str(v) for v in values if str(v) not in {"0", "1", "2", "3", "4"}})
    if bad:
        raise InputError(f"{where}: DR grades must be 0-4 (ICDR); found {bad[:5]}")


@register
class Aptos2019(Adapter):
    name = "aptos2019"
    title = "APTOS 2019 Blindness Detection (Kaggle)"
    task = "dr-grading"

    @classmethod
    def detect(cls, root: Path) -> bool:
        csv = root / "train.csv"
        return (root / "train_images").is_dir() and "id_code" in first_line(csv)

    @classmethod
    def build(cls, root: Path, options: Any) -> Manifest:
        table = read_table(root / "train.csv", columns={"id_code": [], "diagnosis": []})
        check_grades(table["diagnosis"], "train.csv")
        paths = [root / "train_images" / f"{i}.png" for i in table["id_code"]]
        require_exist(paths, list(table["id_code"].astype(str)), "APTOS train_images")
        records = [
            {"case_id": str(i), "patient_id": str(i), "image": relative(root, p), "target": int(g)}
            for i, g, p in zip(table["id_code"], table["diagnosis"], paths, strict=True)
        ]
        return Manifest.from_records(
            records,
            root,
            label_names=list(GRADES),
            notes=[
                "APTOS has no patient ids: each image is treated as its own patient, so both eyes "
                "of one person may fall in different splits"
            ],
        )
