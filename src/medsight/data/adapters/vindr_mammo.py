"""VinDr-Mammo: ``images/<study_id>/<image_id>.dicom`` + breast-level and finding annotations."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from medsight.core.errors import InputError
from medsight.data.adapters._tables import read_table, relative, require_exist
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register

_BREAST = {
    "study_id": [],
    "image_id": [],
    "laterality": [],
    "view_position": ["view"],
    "breast_birads": [],
    "breast_density": [],
    "split": [],
}
_FINDING = {
    "image_id": [],
    "finding_categories": [],
    "finding_birads": [],
    "xmin": [],
    "ymin": [],
    "xmax": [],
    "ymax": [],
}


def birads(value: Any) -> int:
    """``"BI-RADS 4"`` -> 4."""
    match = re.search(r"(\d)", str(value))
    if match is None:
        raise InputError(f"cannot read a BI-RADS category from {value!r}")
    return int(match.group(1))


def _findings(root: Path) -> dict[str, list[dict[str, Any]]]:
    path = root / "finding_annotations.csv"
    if not path.is_file():
        return {}
    table = read_table(path, columns=_FINDING)
    out: dict[str, list[dict[str, Any]]] = {}
    for row in table.itertuples():
        if pd.isna(row.xmin):
            continue
        out.setdefault(str(row.image_id), []).append(
            {
                "label": str(row.finding_categories),
                "birads": None if pd.isna(row.finding_birads) else birads(row.finding_birads),
                "x": float(row.xmin),
                "y": float(row.ymin),
                "w": float(row.xmax) - float(row.xmin),
                "h": float(row.ymax) - float(row.ymin),
            }
        )
    return out


@register
class VinDrMammo(Adapter):
    name = "vindr-mammo"
    title = "VinDr-Mammo"
    task = "mammo-screening"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "breast-level_annotations.csv").is_file()

    @classmethod
    def build(cls, root: Path, options: Any) -> Manifest:
        table = read_table(root / "breast-level_annotations.csv", columns=_BREAST)
        paths = [
            root / "images" / str(s) / f"{i}.dicom" for s, i in zip(table["study_id"], table["image_id"], strict=True)
        ]
        require_exist(paths, list(table["image_id"].astype(str)), "VinDr-Mammo images")
        findings = _findings(root)
        records = []
        for (_, row), path in zip(table.iterrows(), paths, strict=True):
            lat, view = str(row["laterality"]).upper(), str(row["view_position"]).upper()
            if lat not in ("L", "R") or view not in ("CC", "MLO"):
                raise InputError(f"{row['image_id']}: laterality must be L/R and view CC/MLO, got {lat}/{view}")
            category = birads(row["breast_birads"])
            record: dict[str, Any] = {
                "case_id": str(row["image_id"]),
                "patient_id": str(row["study_id"]),
                "image": relative(root, path),
                "split": "test" if str(row["split"]).lower() == "test" else "",
                "target": int(category >= 4),
                "target_birads": category,
                "study_id": str(row["study_id"]),
                "laterality": lat,
                "view": view,
                "density": str(row["breast_density"]).replace("DENSITY", "").strip(),
            }
            if str(row["image_id"]) in findings:
                record["boxes"] = findings[str(row["image_id"])]
            records.append(record)
        return Manifest.from_records(
            records,
            root,
            notes=[
                "VinDr-Mammo has no patient ids: the study (one exam) is the patient unit",
                "target = breast BI-RADS >= 4 (suspicious); target_birads keeps the category",
            ],
        )
