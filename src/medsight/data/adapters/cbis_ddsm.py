"""CBIS-DDSM: mass and calcification case CSVs plus DICOM folders as TCIA delivers them.

The CSVs' ``image file path`` column does not match the downloaded folders in every
release (other UID folders, ``1-1.dcm`` instead of ``000000.dcm``), so each full mammogram
is found by its folder name, ``{Mass|Calc}-{Training|Test}_{patient}_{LEFT|RIGHT}_{CC|MLO}``,
and the single DICOM file under it. One case per full mammogram; its abnormalities (rows)
are combined: ``target`` is 1 when any is malignant. The official train/test split is kept.

Each abnormality's ROI mask (in its folder ``..._{CC|MLO}_{abnormality id}``, beside the cropped
image: the mask is the file the size of the full mammogram) becomes a box around its non-zero
pixels, in the full image's pixels: ``label`` is the abnormality type and pathology (``mass
malignant``, ``calcification benign``), ``birads`` the assessment. Reading the masks takes a while
on the whole data set; ``boxes=false`` skips it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from medsight.core.errors import InputError, MedsightError
from medsight.data.adapters._tables import read_table, relative
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register
from medsight.io.dicom_header import DicomHeader, read_frames, read_header

log = logging.getLogger(__name__)

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


class CbisOptions(BaseModel):
    """``boxes``: read each abnormality's ROI mask into a box (default); false skips the masks."""

    model_config = ConfigDict(extra="forbid")
    boxes: bool = True


_FULL = re.compile(r"(MASS|CALC)-(TRAINING|TEST)_P_\d+_(LEFT|RIGHT)_(CC|MLO)")
_ABNORMALITY = re.compile(_FULL.pattern + r"_\d+")  # its abnormality folders: ..._{view}_{id}


def _folders(root: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Folder name (upper case) -> the DICOM file of each full mammogram (not crops or masks), and
    abnormality folder name (upper case, ``..._{view}_{id}``) -> its DICOM files (crop and mask)."""
    full: dict[str, Path] = {}
    abnormal: dict[str, list[Path]] = {}
    for folder in root.rglob("*"):
        if not folder.is_dir():
            continue
        name = folder.name.upper()
        if _FULL.fullmatch(name):
            files = sorted(p for p in folder.rglob("*.dcm"))
            if len(files) == 1:
                full[name] = files[0]
            elif len(files) > 1:
                raise InputError(f"{folder} holds {len(files)} DICOM files; a full mammogram folder holds one")
        elif _ABNORMALITY.fullmatch(name):
            abnormal[name] = sorted(p for p in folder.rglob("*.dcm"))
    return full, abnormal


def _size(header: DicomHeader) -> tuple[int, int] | None:
    ds = header.dataset
    return (int(ds.Rows), int(ds.Columns)) if "Rows" in ds and "Columns" in ds else None


def _mask_box(files: list[Path], size: tuple[int, int] | None) -> dict[str, float] | None:
    """The box ``x, y, w, h`` (pixels of the full image) around the non-zero pixels of the ROI mask
    among ``files``: the file as large as the full mammogram (the cropped image is smaller). None
    when there is no such file or its mask is empty."""
    for path in files:
        try:
            header = read_header(path)  # the header first: the pixels of the mask only
            if size is None or _size(header) != size:
                continue
            mask = read_frames(header)[0, :, :, 0]
        except MedsightError as exc:
            log.warning("%s: cannot read it as an ROI mask (%s)", path, exc)
            continue
        rows, cols = np.nonzero(mask)
        if not len(rows):
            return None
        return {"x": float(cols.min()), "y": float(rows.min()), "w": float(cols.max() - cols.min() + 1),
                "h": float(rows.max() - rows.min() + 1)}  # fmt: skip
    return None


def _boxes(group: pd.DataFrame, folder: str, image: Path, abnormal: dict[str, list[Path]]) -> list[dict[str, Any]]:
    """The boxes of one full mammogram's abnormalities (those whose mask was found and not empty)."""
    size = _size(read_header(image))
    boxes = []
    for row in group.itertuples():
        number = pd.to_numeric(row.abnormality_id, errors="coerce")  # 1, "1" and 1.0 name folder ..._1
        ident = str(int(number)) if pd.notna(number) else str(row.abnormality_id).strip()
        box = _mask_box(abnormal.get(f"{folder}_{ident}".upper(), []), size)
        if box is not None:
            label = f"{row.abnormality_type} {row.pathology}".lower().replace("_", " ")
            boxes.append({"label": label, "birads": int(row.assessment), **box})
    return boxes


@register
class CbisDdsm(Adapter):
    name = "cbis-ddsm"
    title = "CBIS-DDSM (Curated Breast Imaging Subset of DDSM)"
    task = "mammo-screening"
    Options = CbisOptions

    @classmethod
    def detect(cls, root: Path) -> bool:
        return bool(_tables(root))

    @classmethod
    def build(cls, root: Path, options: CbisOptions) -> Manifest:
        tables = _tables(root)
        if not tables:
            raise InputError(f"no *_case_description_*_set.csv under {root}")
        images, abnormal = _folders(root)
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
        records: list[dict[str, Any]] = []
        boxed = found = 0
        mammograms = table["folder"].nunique()
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
            if options.boxes:
                record["boxes"] = _boxes(group, folder, images[folder], abnormal)
                boxed += len(group)
                found += len(record["boxes"])
                if len(records) % 200 == 199:
                    log.info("ROI masks: %d of %d mammograms read", len(records) + 1, mammograms)
            records.append(record)
        notes = [
            "full mammograms found by folder name (CSV paths do not always match the TCIA folders)",
            "an image listed in both the mass and the calcification CSVs appears as two cases",
        ]
        if options.boxes:
            notes.append(f"boxes from ROI masks: {found} of {boxed} abnormalities (the rest have no mask the size "
                         "of their full mammogram, or an empty one)")  # fmt: skip
            if found < boxed:
                log.warning("CBIS-DDSM: %d of %d abnormalities have no usable ROI mask; they have no box",
                            boxed - found, boxed)  # fmt: skip
        return Manifest.from_records(records, root, notes=notes)
