"""LUNA16: ``subset0..9/<seriesuid>.mhd`` + ``annotations.csv`` (world mm); subsets are the folds."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medsight.core.errors import InputError
from medsight.data.adapters._tables import read_table, relative
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register

_ANNOTATION = {"seriesuid": [], "coordX": [], "coordY": [], "coordZ": [], "diameter_mm": []}


def _nodules(path: Path, **flags: Any) -> dict[str, list[dict[str, Any]]]:
    if not path.is_file():
        return {}
    table = read_table(path, columns=_ANNOTATION)
    out: dict[str, list[dict[str, Any]]] = {}
    for row in table.itertuples():
        out.setdefault(str(row.seriesuid), []).append(
            {
                "label": "nodule",
                "center": [float(row.coordX), float(row.coordY), float(row.coordZ)],
                "diameter_mm": float(row.diameter_mm),
                **flags,
            }
        )
    return out


@register
class Luna16(Adapter):
    name = "luna16"
    title = "LUNA16 (LUng Nodule Analysis 2016)"
    task = "lung-nodule-det"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "annotations.csv").is_file() and any(root.glob("subset*"))

    @classmethod
    def build(cls, root: Path, options: Any) -> Manifest:
        nodules = _nodules(root / "annotations.csv")
        if not (root / "annotations.csv").is_file():
            raise InputError(f"{root / 'annotations.csv'}: no such file")
        excluded = _nodules(root / "annotations_excluded.csv", excluded=True)
        records = []
        for subset in sorted(root.glob("subset*")):
            match = re.fullmatch(r"subset(\d+)", subset.name)
            if not match or not subset.is_dir():
                continue
            for mhd in sorted(subset.glob("*.mhd")):
                uid = mhd.stem
                raw = mhd.with_suffix(".raw")
                if not raw.is_file() and not mhd.with_suffix(".zraw").is_file():
                    raise InputError(f"{mhd.name} has no .raw data file beside it")
                boxes = nodules.get(uid, []) + excluded.get(uid, [])
                records.append(
                    {
                        "case_id": uid,
                        "patient_id": uid,
                        "image": relative(root, mhd),
                        "fold": int(match.group(1)),
                        "target": int(bool(nodules.get(uid))),
                        "boxes": boxes,
                    }
                )
        if not records:
            raise InputError(f"no subset*/<seriesuid>.mhd scans under {root}")
        known = {r["case_id"] for r in records}
        orphans = sorted(set(nodules) - known)
        return Manifest.from_records(
            records,
            root,
            notes=[f"{len(orphans)} annotated series are not among the scans present"] if orphans else [],
        )
