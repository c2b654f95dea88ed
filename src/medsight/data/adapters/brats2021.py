"""BraTS 2021: ``BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz``, labels 1/2/4."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medsight.core.errors import InputError
from medsight.core.labels import LabelClass, LabelSchema
from medsight.data.adapters._tables import relative
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register

CHANNELS = ("t1", "t1ce", "t2", "flair")


def brats_schema(enhancing: int) -> LabelSchema:
    """NCR 1, ED 2, ET ``enhancing`` (4 in 2021, 3 in 2023); regions WT, TC, ET."""
    return LabelSchema(
        classes=(
            LabelClass(1, "NCR", (255, 0, 0)),
            LabelClass(2, "ED", (0, 255, 0)),
            LabelClass(enhancing, "ET", (0, 0, 255)),
        ),
        regions={"WT": (1, 2, enhancing), "TC": (1, enhancing), "ET": (enhancing,)},
    )


def brats_cases(
    root: Path, pattern: str, files: dict[str, str], *, patient: Any, label_suffix: str = "seg"
) -> list[dict[str, Any]]:
    """One record per case folder matching ``pattern``; ``files`` maps channel -> file suffix."""
    folders = sorted(p for p in root.rglob("*") if p.is_dir() and re.fullmatch(pattern, p.name))
    if not folders:
        raise InputError(f"no case folders named like {pattern!r} under {root}")
    records = []
    for folder in folders:
        case = folder.name
        record: dict[str, Any] = {"case_id": case, "patient_id": patient(case)}
        missing = []
        for channel, suffix in files.items():
            path = folder / f"{case}-{suffix}.nii.gz" if "-" in case else folder / f"{case}_{suffix}.nii.gz"
            if not path.is_file():
                missing.append(path.name)
            record[f"image_{channel}"] = relative(root, path)
        seg = folder / (f"{case}-{label_suffix}.nii.gz" if "-" in case else f"{case}_{label_suffix}.nii.gz")
        if missing:
            raise InputError(f"{case}: missing {', '.join(missing)} (every case needs all four contrasts)")
        if seg.is_file():
            record["label"] = relative(root, seg)
        records.append(record)
    return records


@register
class Brats2021(Adapter):
    name = "brats2021"
    title = "BraTS 2021 (RSNA-ASNR-MICCAI)"
    task = "brain-tumor-seg"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any(re.fullmatch(r"BraTS2021_\d+", p.name) for p in root.glob("*")) or any(
            re.fullmatch(r"BraTS2021_\d+", p.name) for p in root.glob("*/*")
        )

    @classmethod
    def build(cls, root: Path, options: Any) -> Manifest:
        records = brats_cases(root, r"BraTS2021_\d+", {c: c for c in CHANNELS}, patient=lambda case: case)
        return Manifest.from_records(records, root, label_schema=brats_schema(4).to_dict(), channels=list(CHANNELS))
