"""M&Ms (multi-centre, multi-vendor cardiac MRI): ``<code>/<code>_sa.nii.gz`` + information CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from medsight.core.errors import InputError
from medsight.data.adapters._tables import first_line, read_table, relative
from medsight.data.adapters.acdc import CARDIAC_SCHEMA
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register

# M&Ms codes: 1 LV, 2 MYO, 3 RV -> medsight (ACDC) codes: 3 LV, 2 MYO, 1 RV
LABEL_REMAP = {1: 3, 2: 2, 3: 1}
_COLUMNS = {"code": ["External code"], "vendor": [], "centre": ["center"], "ed": [], "es": []}
_OPTIONAL = {"pathology": [], "sex": [], "age": [], "height": [], "weight": []}


def _info_csv(root: Path) -> Path | None:
    return next((p for p in sorted(root.rglob("*.csv")) if "external code" in first_line(p)), None)


@register
class MnMs(Adapter):
    name = "mnms"
    title = "M&Ms (Multi-Centre, Multi-Vendor & Multi-Disease Cardiac Segmentation)"
    task = "cardiac-function"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return _info_csv(root) is not None and any(root.rglob("*_sa.nii.gz"))

    @classmethod
    def build(cls, root: Path, options: Any) -> Manifest:
        csv = _info_csv(root)
        if csv is None:
            raise InputError(f"no M&Ms information CSV (with an 'External code' column) under {root}")
        table = read_table(csv, columns=_COLUMNS, optional=_OPTIONAL)
        images = {p.name[: -len("_sa.nii.gz")]: p for p in root.rglob("*_sa.nii.gz")}
        records = []
        for _, row in table.iterrows():
            code = str(row["code"]).strip()
            image = images.get(code)
            if image is None:
                continue  # the CSV lists every release's cases; only those present are used
            record: dict[str, Any] = {
                "case_id": code,
                "patient_id": code,
                "image_cine": relative(root, image),
                "ed_frame": int(row["ed"]),
                "es_frame": int(row["es"]),
                "vendor": str(row["vendor"]),
                "site": str(row["centre"]),
                "split": "test" if "test" in image.parent.parent.name.lower() else "",
            }
            gt = image.with_name(f"{code}_sa_gt.nii.gz")
            if gt.is_file():
                record["label_cine"] = relative(root, gt)
            for key in _OPTIONAL:
                if key in table.columns and pd.notna(row[key]):
                    record[key] = row[key]
            records.append(record)
        if not records:
            raise InputError(f"none of the {len(table)} cases in {csv.name} has a <code>_sa.nii.gz under {root}")
        return Manifest.from_records(
            records,
            root,
            label_schema=CARDIAC_SCHEMA.to_dict(),
            label_remap={str(k): v for k, v in LABEL_REMAP.items()},
            notes=["ED/ES are 0-based frame indices into the 4D cine, as in the M&Ms CSV"],
        )
