"""ACDC cardiac cine MRI: ``patientNNN/`` with ``Info.cfg``, 4D cine, and ED/ES frames with masks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medsight.core.errors import InputError
from medsight.core.labels import LabelClass, LabelSchema
from medsight.data.adapters._tables import relative
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register

# medsight's cardiac schema follows ACDC's codes; M&Ms masks are remapped onto it.
CARDIAC_SCHEMA = LabelSchema(
    classes=(LabelClass(1, "RV", (0, 0, 255)), LabelClass(2, "MYO", (0, 255, 0)), LabelClass(3, "LV", (255, 0, 0))),
)
GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")


def read_info_cfg(path: Path) -> dict[str, str]:
    """``Key: value`` lines of an ACDC ``Info.cfg``."""
    if not path.is_file():
        raise InputError(f"{path}: no such file (every ACDC patient folder has an Info.cfg)")
    info = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if key not in info:
            raise InputError(f"{path} has no {key} frame; keys found: {sorted(info)}")
    return info


@register
class Acdc(Adapter):
    name = "acdc"
    title = "ACDC (Automated Cardiac Diagnosis Challenge)"
    task = "cardiac-function"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any((p / "Info.cfg").is_file() for p in [*root.glob("patient*"), *root.glob("*/patient*")])

    @classmethod
    def build(cls, root: Path, options: Any) -> Manifest:
        folders = sorted({p.parent for p in root.rglob("Info.cfg") if re.fullmatch(r"patient\d+", p.parent.name)})
        if not folders:
            raise InputError(f"no patientNNN/Info.cfg folders under {root}")
        records = []
        for folder in folders:
            info = read_info_cfg(folder / "Info.cfg")
            pid = folder.name
            cine = folder / f"{pid}_4d.nii.gz"
            record: dict[str, Any] = {
                "case_id": pid,
                "patient_id": pid,
                "split": "test" if folder.parent.name.lower() == "testing" else "",
                # a copy may hold only the ED and ES frames
                **({"image_cine": relative(root, cine)} if cine.is_file() else {}),
                "ed_frame": int(info["ED"]),
                "es_frame": int(info["ES"]),
            }
            for phase, key in (("ed", "ED"), ("es", "ES")):
                frame = folder / f"{pid}_frame{int(info[key]):02d}.nii.gz"
                if not frame.is_file():
                    raise InputError(f"{pid}: {frame.name} ({key} frame {info[key]}) is missing")
                record[f"image_{phase}"] = relative(root, frame)
                gt = frame.with_name(frame.name.replace(".nii.gz", "_gt.nii.gz"))
                if gt.is_file():
                    record[f"label_{phase}"] = relative(root, gt)
            if "Group" in info:
                if info["Group"] not in GROUPS:
                    raise InputError(f"{pid}: unknown group {info['Group']!r}; expected one of {GROUPS}")
                record["group"] = info["Group"]
            for key in ("Height", "Weight", "NbFrame"):
                if key in info:
                    record[key.lower()] = float(info[key])
            records.append(record)
        return Manifest.from_records(records, root, label_schema=CARDIAC_SCHEMA.to_dict())
