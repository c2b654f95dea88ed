"""MedMNIST ``.npz`` files: ``{train,val,test}_{images,labels}`` arrays with official splits."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from medsight.core.errors import InputError
from medsight.data.adapters._tables import relative
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register

_SPLITS = {"train": "train", "val": "val", "test": "test"}


def _npz_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(root.glob("*.npz"))


def _keys(path: Path) -> set[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return {n.removesuffix(".npy") for n in zf.namelist()}
    except (zipfile.BadZipFile, OSError):
        return set()


@register
class MedMnist(Adapter):
    name = "medmnist"
    title = "MedMNIST v2 (.npz)"
    task = "classification"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any({"train_images", "train_labels"} <= _keys(p) for p in _npz_files(root))

    @classmethod
    def build(cls, root: Path, options: Any) -> Manifest:
        files = [p for p in _npz_files(root) if {"train_images", "train_labels"} <= _keys(p)]
        if not files:
            raise InputError(f"no MedMNIST .npz (with train_images and train_labels) at {root}")
        if len(files) > 1:
            raise InputError(f"{root} holds {len(files)} MedMNIST files; point at one of: {[p.name for p in files]}")
        path = files[0]
        base = path.parent
        records = []
        with np.load(path) as data:
            for prefix, split in _SPLITS.items():
                if f"{prefix}_images" not in data:
                    continue
                images, labels = data[f"{prefix}_images"], data[f"{prefix}_labels"]
                if len(images) != len(labels):
                    raise InputError(
                        f"{path.name}: {prefix}_images has {len(images)} rows, {prefix}_labels {len(labels)}"
                    )
                labels = labels.reshape(len(labels), -1)
                for i in range(len(images)):
                    record: dict[str, Any] = {
                        "case_id": f"{path.stem}:{prefix}:{i}",
                        "patient_id": f"{path.stem}:{prefix}:{i}",
                        "image": relative(base, path),
                        "array_key": f"{prefix}_images",
                        "array_index": i,
                        "split": split,
                    }
                    if labels.shape[1] == 1:
                        record["target"] = int(labels[i, 0])
                    else:
                        record.update({f"target_{j}": int(v) for j, v in enumerate(labels[i])})
                    records.append(record)
        return Manifest.from_records(
            records, base, notes=["MedMNIST has no patient ids: each image is its own patient; official splits kept"]
        )
