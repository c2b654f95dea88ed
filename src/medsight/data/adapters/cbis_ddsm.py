"""CBIS-DDSM: mass and calcification case CSVs plus DICOM folders as TCIA delivers them.

The CSVs' ``image file path`` column does not match the downloaded folders in every
release (other UID folders, ``1-1.dcm`` instead of ``000000.dcm``), so each full mammogram
is found by its folder name, ``{Mass|Calc}-{Training|Test}_{patient}_{LEFT|RIGHT}_{CC|MLO}``,
and the single DICOM file under it. One case per full mammogram; its abnormalities (rows)
are combined: ``target`` is 1 when any is malignant. The official train/test split is kept.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from medsight.core.errors import InputError
from medsight.data.adapters._tables import read_table, relative
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register

_CSV = re.compile(r"(mass|calc)_case_description_(train|test)_set\.csv", re.IGNORECASE)
_COLUMNS = {
    "patient_id": [],
    "density": ["breast density", "breast_density"],
    "side": ["left or right breast"],
    "view": ["image view"],
    "abnormality_id": ["abnormality id"],
    "abnormality_type": ["abnormality type"],
    "assessment": [],
    "pathology": [],
    "subtlety": [],
    "image_path": ["image file path"],
}
PATHOLOGIES = ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK")


def _tables(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.csv") if _CSV.fullmatch(p.name))


def _full_image_folders(root: Path) -> dict[str, Path]:
    """Folder name (upper case) -> the DICOM file of each full mammogram (not crops or masks)."""
    found: dict[str, Path] = {}
    pattern = re.compile(r"(MASS|CALC)-(TRAINING|TEST)_P_\d+_(LEFT|RIGHT)_(CC|MLO)")
    for folder in root.rglob("*"):
        if folder.is_dir() and pattern.fullmatch(folder.name.upper()):
            files = sorted(p for p in folder.rglob("*.dcm"))
            if len(files) == 1:
                found[folder.name.upper()] = files[0]
            elif len(files) > 1:
                raise InputError(f"{folder} holds {len(files)} DICOM files; a full mammogram folder holds one")
    return found


@register
class CbisDdsm(Adapter):
    name = "cbis-ddsm"
    title = "CBIS-DDSM (Curated Breast Imaging Subset of DDSM)"
    task = "mammo-screening"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return bool(_tables(root))

    @classmethod
    def build(cls, root: Path, options: Any) -> Manifest:
        tables = _tables(root)
        if not tables:
            raise InputError(f"no *_case_description_*_set.csv under {root}")
        images = _full_image_folders(root)
        rows = []
        for csv in tables:
            kind, split = _CSV.fullmatch(csv.name).groups()  # type: ignore[union-attr]
            table = read_table(csv, columns=_COLUMNS)
            bad = sorted(set(table["pathology"].astype(str).str.upper()) - set(PATHOLOGIES))
            if bad:
                raise InputError(f"{csv.name}: unknown pathology values {bad}; expected {list(PATHOLOGIES)}")
            table["kind"] = kind.capitalize()
            table["split"] = "test" if split.lower() == "test" else ""
            table["folder"] = [
                f"{kind.capitalize()}-{'Training' if split.lower() == 'train' else 'Test'}_{p}_{s}_{v}".upper()
                for p, s, v in zip(table["patient_id"], table["side"], table["view"], strict=True)
            ]
            rows.append(table)
        table = pd.concat(rows, ignore_index=True)
        missing = sorted(set(table["folder"]) - set(images))
        if missing:
            shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise InputError(
                f"{len(missing)} full mammogram folder(s) listed in the CSVs are not under {root}: {shown}"
            )
        records = []
        for folder, group in table.groupby("folder", sort=True):
            first = group.iloc[0]
            malignant = bool((group["pathology"].str.upper() == "MALIGNANT").any())
            record: dict[str, Any] = {
                "case_id": folder,
                "patient_id": str(first["patient_id"]),
                "image": relative(root, images[folder]),
                "split": first["split"],
                "target": int(malignant),
                "laterality": "L" if str(first["side"]).upper() == "LEFT" else "R",
                "view": str(first["view"]).upper(),
                "density": str(first["density"]),
                "abnormalities": len(group),
                "abnormality_types": "|".join(sorted(set(group["abnormality_type"].astype(str)))),
                "assessment": int(group["assessment"].max()),
            }
            records.append(record)
        return Manifest.from_records(
            records,
            root,
            notes=[
                "full mammograms found by folder name (CSV paths do not always match the TCIA folders)",
                "an image listed in both the mass and the calcification CSVs appears as two cases",
            ],
        )
