"""RSNA Pneumonia Detection: ``stage_2_train_labels.csv`` (boxes per patientId) + DICOM images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from medsight.data.adapters._tables import read_table, relative, require_exist
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register

_LABELS = ("stage_2_train_labels.csv", "stage_1_train_labels.csv")


def _labels(root: Path) -> Path:
    return next((root / n for n in _LABELS if (root / n).is_file()), root / _LABELS[0])


@register
class RsnaPneumonia(Adapter):
    name = "rsna-pneumonia"
    title = "RSNA Pneumonia Detection Challenge"
    task = "cxr-findings"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return _labels(root).is_file()

    @classmethod
    def build(cls, root: Path, options: Any) -> Manifest:
        labels = _labels(root)
        table = read_table(labels, columns={"patientId": [], "x": [], "y": [], "width": [], "height": [], "Target": []})
        images = root / labels.name.replace("_labels.csv", "_images")
        records = []
        for pid, rows in table.groupby("patientId", sort=False):
            boxes = [
                {"label": "pneumonia", "x": float(r.x), "y": float(r.y), "w": float(r.width), "h": float(r.height)}
                for r in rows.itertuples()
                if int(r.Target) == 1 and pd.notna(r.x)
            ]
            record: dict[str, Any] = {
                "case_id": str(pid),
                "patient_id": str(pid),
                "image": relative(root, images / f"{pid}.dcm"),
                "target_pneumonia": int(rows["Target"].max()),
            }
            if boxes:
                record["boxes"] = boxes
            records.append(record)
        require_exist([root / r["image"] for r in records], [r["case_id"] for r in records], "RSNA images")
        return Manifest.from_records(records, root, findings=["pneumonia"])
