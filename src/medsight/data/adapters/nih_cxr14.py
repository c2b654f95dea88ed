"""NIH ChestX-ray14: ``Data_Entry_2017.csv``, ``images*/``, boxes and the official split lists."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from medsight.core.errors import InputError
from medsight.data.adapters._tables import find_file, index_files, read_table, relative, require_exist
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register

log = logging.getLogger(__name__)

FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
_COLUMNS = {
    "image": ["Image Index"],
    "findings": ["Finding Labels"],
    "patient_id": ["Patient ID"],
}
_OPTIONAL = {
    "follow_up": ["Follow-up #"],
    "age": ["Patient Age"],
    "sex": ["Patient Gender"],
    "view": ["View Position"],
    "pixel_spacing": ["OriginalImagePixelSpacing[x"],
}


def _entry_table(root: Path) -> Path:
    for name in ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv"):
        if (root / name).is_file():
            return root / name
    return root / "Data_Entry_2017.csv"


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()} if path.is_file() else set()


def _boxes(root: Path) -> dict[str, list[dict[str, Any]]]:
    path = root / "BBox_List_2017.csv"
    if not path.is_file():
        return {}
    table = read_table(path, columns={"image": ["Image Index"], "finding": ["Finding Label"], "x": ["Bbox [x"]})
    columns = list(table.columns)
    x_at = columns.index("x")
    y, w, h = columns[x_at + 1 : x_at + 4]  # the header is "Bbox [x,y,w,h]" split over four columns
    boxes: dict[str, list[dict[str, Any]]] = {}
    for _, row in table.iterrows():
        boxes.setdefault(str(row["image"]), []).append(
            {
                "label": str(row["finding"]),
                "x": float(row["x"]),
                "y": float(row[y]),
                "w": float(row[w]),
                "h": float(row[h]),
            }
        )
    return boxes


@register
class NihChestXray14(Adapter):
    name = "nih-cxr14"
    title = "NIH ChestX-ray14"
    task = "cxr-findings"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return _entry_table(root).is_file()

    @classmethod
    def build(cls, root: Path, options: Any) -> Manifest:
        table = read_table(_entry_table(root), columns=_COLUMNS, optional=_OPTIONAL)
        index = index_files(root, (".png",))
        paths = [find_file(index, n) for n in table["image"]]
        require_exist(paths, list(table["image"].astype(str)), "ChestX-ray14 images")
        test = _read_list(root / "test_list.txt")
        boxes = _boxes(root)
        records = []
        for (_, row), path in zip(table.iterrows(), paths, strict=True):
            labels = {s.strip() for s in str(row["findings"]).split("|")}
            unknown = labels - set(FINDINGS) - {"No Finding"}
            if unknown:
                raise InputError(f"{row['image']}: unknown finding(s) {sorted(unknown)}; expected {list(FINDINGS)}")
            record: dict[str, Any] = {
                "case_id": str(row["image"]),
                "patient_id": str(int(row["patient_id"])),
                "image": relative(root, path),  # type: ignore[arg-type]
                "split": "test" if row["image"] in test else "",
            }
            record.update({f"target_{f.lower()}": int(f in labels) for f in FINDINGS})
            for key in ("follow_up", "age", "sex", "view"):
                if key in table.columns and pd.notna(row[key]):
                    record[key] = row[key]
            if str(row["image"]) in boxes:
                record["boxes"] = boxes[str(row["image"])]
            records.append(record)
        if not test:
            log.warning("no test_list.txt: the official patient-disjoint test split is not marked")
        return Manifest.from_records(records, root, findings=list(FINDINGS))
