"""EyePACS / Kaggle Diabetic Retinopathy 2015: ``trainLabels.csv`` (image, level) + ``train/*.jpeg``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsight.core.errors import InputError
from medsight.data.adapters._tables import find_file, index_files, read_table, relative, require_exist
from medsight.data.adapters.aptos2019 import GRADES, check_grades
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register


@register
class EyePacs2015(Adapter):
    name = "eyepacs2015"
    title = "EyePACS / Kaggle Diabetic Retinopathy Detection 2015"
    task = "dr-grading"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "trainLabels.csv").is_file()

    @classmethod
    def build(cls, root: Path, options: Any) -> Manifest:
        table = read_table(root / "trainLabels.csv", columns={"image": [], "level": []})
        check_grades(table["level"], "trainLabels.csv")
        index = index_files(root, (".jpeg", ".jpg", ".png"))
        paths = [find_file(index, n) for n in table["image"]]
        require_exist(paths, list(table["image"].astype(str)), "EyePACS images")
        records = []
        for name, level, path in zip(table["image"], table["level"], paths, strict=True):
            patient, _, side = str(name).partition("_")
            if side not in ("left", "right"):
                raise InputError(f"trainLabels.csv: image name {name!r} is not <patient>_left/right")
            records.append(
                {
                    "case_id": str(name),
                    "patient_id": patient,
                    "image": relative(root, path),  # type: ignore[arg-type]
                    "target": int(level),
                    "laterality": "L" if side == "left" else "R",
                }
            )
        return Manifest.from_records(records, root, label_names=list(GRADES))
