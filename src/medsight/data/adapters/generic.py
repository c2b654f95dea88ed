"""Your own data: a CSV (``path,label[,patient_id,...]``) or a folder of class sub-folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict

from medsight.core.errors import InputError
from medsight.data.adapters._tables import read_table, relative, require_exist
from medsight.data.manifest import RESERVED_COLUMNS, Manifest
from medsight.data.registry import Adapter, register

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


class CsvOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csv: str = "labels.csv"


@register
class GenericCsv(Adapter):
    """``path,label`` plus optional ``patient_id`` and attribute columns; paths relative to the CSV."""

    name = "csv"
    title = "Generic CSV (path, label, optional patient_id and attributes)"
    task = "classification"
    Options = CsvOptions

    @classmethod
    def detect(cls, root: Path) -> bool:
        return False  # too generic to guess: ask for --format csv

    @classmethod
    def build(cls, root: Path, options: CsvOptions) -> Manifest:
        csv = root / options.csv
        table = read_table(
            csv,
            columns={"path": ["image", "file", "filename"], "label": ["target", "class", "diagnosis"]},
            optional={"patient_id": ["patient", "patientid", "subject"]},
        )
        paths = [root / str(p) for p in table["path"]]
        require_exist(paths, list(table["path"].astype(str)), csv.name)
        labels = table["label"]
        names: list[str] = []
        if not pd.api.types.is_numeric_dtype(labels):
            names = sorted(labels.astype(str).unique())
            labels = labels.astype(str).map({n: i for i, n in enumerate(names)})
        records = []
        for i, (_, row) in enumerate(table.iterrows()):
            record: dict[str, Any] = {
                "case_id": str(row["path"]),
                "patient_id": str(row["patient_id"]) if "patient_id" in table.columns else str(row["path"]),
                "image": relative(root, paths[i]),
                "target": labels.iloc[i],
            }
            for column in table.columns:
                if column not in ("path", "label", "patient_id") and column not in RESERVED_COLUMNS:
                    record[column] = row[column]
            records.append(record)
        notes = [] if "patient_id" in table.columns else ["no patient_id column: each image is its own patient"]
        return Manifest.from_records(records, root, label_names=names, notes=notes)


@register
class GenericFolder(Adapter):
    """``ROOT/<class name>/<images>``: the folder name is the label."""

    name = "folder"
    title = "Folder of class sub-folders"
    task = "classification"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return False  # too generic to guess: ask for --format folder

    @classmethod
    def build(cls, root: Path, options: Any) -> Manifest:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(classes) < 2:
            raise InputError(f"{root} needs at least two class sub-folders; found {classes}")
        records = []
        for code, name in enumerate(classes):
            for path in sorted((root / name).rglob("*")):
                if path.is_file() and any(path.name.lower().endswith(s) for s in IMAGE_SUFFIXES):
                    rel = relative(root, path)
                    records.append(
                        {"case_id": rel, "patient_id": rel, "image": rel, "target": code, "class_name": name}
                    )
        if not records:
            raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {root}")
        return Manifest.from_records(
            records, root, label_names=classes, notes=["no patient ids: each image is its own patient"]
        )
