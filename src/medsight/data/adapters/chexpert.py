"""CheXpert v1.0 (small): ``train.csv``/``valid.csv`` with 14 observations valued 1, 0, -1 or blank."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from medsight.core.errors import InputError
from medsight.data.adapters._tables import first_line, read_table, relative, require_exist
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register

OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)  # fmt: skip


class CheXpertOptions(BaseModel):
    """How uncertain (-1) labels are used: ``ignore`` (unknown), ``ones`` or ``zeros``."""

    model_config = ConfigDict(extra="forbid")
    uncertain: Literal["ignore", "ones", "zeros"] = "ignore"


def _csv_dir(root: Path) -> Path:
    for candidate in (root, root / "CheXpert-v1.0-small", root / "CheXpert-v1.0"):
        if "path" in first_line(candidate / "train.csv") and "frontal/lateral" in first_line(candidate / "train.csv"):
            return candidate
    return root


def _column(name: str) -> str:
    return "target_" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@register
class CheXpert(Adapter):
    name = "chexpert"
    title = "CheXpert v1.0"
    task = "cxr-findings"
    Options = CheXpertOptions

    @classmethod
    def detect(cls, root: Path) -> bool:
        return "frontal/lateral" in first_line(_csv_dir(root) / "train.csv")

    @classmethod
    def build(cls, root: Path, options: CheXpertOptions) -> Manifest:
        folder = _csv_dir(root)
        records = []
        for csv, split in (("train.csv", ""), ("valid.csv", "test")):
            if not (folder / csv).is_file():
                if csv == "train.csv":
                    raise InputError(f"{folder / csv}: no such file")
                continue
            table = read_table(
                folder / csv,
                columns={"Path": [], **{o: [] for o in OBSERVATIONS}},
                optional={"Sex": [], "Age": [], "view": ["Frontal/Lateral"], "projection": ["AP/PA"]},
            )
            # paths start with the release folder name ("CheXpert-v1.0-small/train/...")
            paths = [folder.parent / p if not (folder / p).exists() else folder / p for p in table["Path"]]
            require_exist(paths, list(table["Path"]), f"CheXpert {csv}")
            for (_, row), path in zip(table.iterrows(), paths, strict=True):
                match = re.search(r"(patient\d+)/(study\d+)", str(row["Path"]))
                if match is None:
                    raise InputError(f"{csv}: path {row['Path']!r} has no patientNNNNN/studyN part")
                record: dict[str, Any] = {
                    "case_id": str(row["Path"]),
                    "patient_id": match.group(1),
                    "image": relative(root, path),
                    "split": split,
                    "study": match.group(2),
                }
                for obs in OBSERVATIONS:
                    record[_column(obs)] = _policy(row[obs], options.uncertain)
                for key in ("Sex", "Age", "view", "projection"):
                    if key in table.columns and pd.notna(row[key]):
                        record[key.lower()] = row[key]
                records.append(record)
        return Manifest.from_records(
            records,
            root,
            findings=list(OBSERVATIONS),
            notes=[f"uncertain labels: {options.uncertain}; blank (not mentioned) counts as negative"],
        )


def _policy(value: Any, uncertain: str) -> float:
    if pd.isna(value) or value == "":
        return 0.0
    v = float(value)
    if v == -1.0:
        return {"ignore": np.nan, "ones": 1.0, "zeros": 0.0}[uncertain]
    if v not in (0.0, 1.0):
        raise InputError(f"CheXpert labels are 1, 0, -1 or blank; found {value!r}")
    return v
