"""Medical Segmentation Decathlon: ``dataset.json`` with ``training: [{image, label}]``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medsight.core.errors import InputError
from medsight.core.labels import LabelClass, LabelSchema
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register


@register
class MedicalDecathlon(Adapter):
    name = "msd"
    title = "Medical Segmentation Decathlon (dataset.json)"
    task = "segmentation"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "dataset.json").is_file() and (root / "imagesTr").is_dir()

    @classmethod
    def build(cls, root: Path, options: Any) -> Manifest:
        path = root / "dataset.json"
        try:
            spec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path} is not valid JSON: {exc}") from exc
        for key in ("training", "labels"):
            if key not in spec:
                raise InputError(f"{path} has no {key!r} entry; keys found: {sorted(spec)}")
        labels = {int(k): str(v) for k, v in spec["labels"].items()}
        schema = LabelSchema(classes=tuple(LabelClass(k, v) for k, v in sorted(labels.items()) if k != 0))
        records = []
        for item in spec["training"]:
            if not isinstance(item, dict) or "image" not in item or "label" not in item:
                raise InputError(f"{path}: every training entry needs 'image' and 'label', got {item!r}")
            image = (root / item["image"]).resolve()
            label = (root / item["label"]).resolve()
            for p in (image, label):
                if not p.is_file():
                    raise InputError(f"{path}: {p.relative_to(root.resolve())} is listed but missing")
            case = Path(item["image"]).name.split(".")[0]
            records.append(
                {
                    "case_id": case,
                    "patient_id": case,
                    "image": str(image.relative_to(root.resolve())),
                    "label": str(label.relative_to(root.resolve())),
                }
            )
        modality = spec.get("modality", {})
        channels = [str(modality[k]) for k in sorted(modality, key=int)] if modality else []
        return Manifest.from_records(
            records, root, label_schema=schema.to_dict(), channels=channels, task_name=spec.get("name", "")
        )
