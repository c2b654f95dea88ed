"""`Manifest`: one row per case, whatever data set it came from.

Column conventions (the only contract between adapters and everything downstream):

* ``case_id`` — unique per row; ``patient_id`` — who the case belongs to (splits are by
  patient); ``split`` — ``train``/``val``/``test`` or empty; ``fold`` — optional integer.
* ``image`` or ``image_<name>`` — image paths (e.g. ``image_t1``, ``image_flair``, or
  ``image_ed``/``image_es`` for two cardiac phases); ``label`` or ``label_<name>`` — the
  matching segmentation masks. Paths are relative to :attr:`Manifest.root`. Images held in
  an array file (MedMNIST ``.npz``) add ``array_key`` and ``array_index``.
* ``target`` or ``target_<name>`` — class, grade, or one column per finding (multi-label;
  empty = unknown); ``boxes`` — JSON list of boxes/nodules (see ``docs/datasets.md``).
* Every other column is a subgroup attribute (``sex``, ``age``, ``site``, ``view``,
  ``laterality``, ...).

Data-set-wide facts (data set name, task, label schema, notes for QC) live in
:attr:`Manifest.info` and are saved beside the table as ``<name>.meta.json``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsight.core.errors import ConfigError, InputError
from medsight.io.atomic import atomic_file

__all__ = ["RESERVED_COLUMNS", "SPLITS", "Manifest", "parse_boxes"]

log = logging.getLogger(__name__)

RESERVED_COLUMNS = ("case_id", "patient_id", "split", "fold", "boxes", "array_key", "array_index")
SPLITS = ("train", "val", "test", "")


def _is_image_column(name: str) -> bool:
    return name == "image" or name.startswith("image_")


def _is_label_column(name: str) -> bool:
    return name == "label" or name.startswith("label_")


def _is_target_column(name: str) -> bool:
    return name == "target" or name.startswith("target_")


def parse_boxes(cell: Any, case: str) -> list[Any]:
    """A manifest's ``boxes`` cell (JSON text; empty or missing for none) as a list.

    Raises:
        InputError: the cell is not JSON, or not a list (naming ``case``).
    """
    if not isinstance(cell, str) or not cell.strip():
        return []
    try:
        boxes = json.loads(cell)
    except ValueError:
        raise InputError(f"case {case}: its boxes cell is not JSON ({cell[:60]!r}); make the manifest again "
                         "with `medsight data manifest`") from None  # fmt: skip
    if not isinstance(boxes, list):
        raise InputError(f"case {case}: its boxes cell holds {type(boxes).__name__}, not a list of findings")
    return boxes


@dataclass
class Manifest:
    """A table of cases plus the folder its relative paths start from.

    Attributes:
        table: One row per case (see the module docstring for columns).
        root: Folder that relative image/label paths are relative to.
        info: Data-set-wide facts: ``dataset``, ``task``, ``label_schema``, ``notes``.
    """

    table: pd.DataFrame
    root: Path
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        table = self.table.copy()
        for column in ("case_id", "patient_id"):
            if column not in table.columns:
                raise InputError(f"manifest has no {column!r} column; columns found: {list(table.columns)}")
            table[column] = table[column].astype(str)
        if "split" not in table.columns:
            table["split"] = ""
        table["split"] = table["split"].fillna("").astype(str)
        bad = sorted(set(table["split"]) - set(SPLITS))
        if bad:
            raise InputError(f"manifest split values must be train, val, test or empty; found {bad}")
        dupes = table["case_id"][table["case_id"].duplicated()].tolist()
        if dupes:
            raise InputError(f"manifest case_id values must be unique; repeated: {dupes[:5]}")
        if not self.image_columns_of(table):
            raise InputError("manifest has no image column ('image' or 'image_<channel>')")
        self.table = table.reset_index(drop=True)

    # -- columns -------------------------------------------------------------------------
    @staticmethod
    def image_columns_of(table: pd.DataFrame) -> list[str]:
        return [c for c in table.columns if _is_image_column(c)]

    @property
    def image_columns(self) -> list[str]:
        """``image`` or ``image_<channel>`` columns, in table order."""
        return self.image_columns_of(self.table)

    @property
    def target_columns(self) -> list[str]:
        """``target`` or ``target_<name>`` columns."""
        return [c for c in self.table.columns if _is_target_column(c)]

    @property
    def label_columns(self) -> list[str]:
        """``label`` or ``label_<name>`` mask columns."""
        return [c for c in self.table.columns if _is_label_column(c)]

    @property
    def path_columns(self) -> list[str]:
        """Columns that hold file paths (images and masks)."""
        return self.image_columns + self.label_columns

    @property
    def attribute_columns(self) -> list[str]:
        """Subgroup attributes: everything that is not reserved, an image or a target."""
        taken = set(RESERVED_COLUMNS) | set(self.path_columns) | set(self.target_columns)
        return [c for c in self.table.columns if c not in taken]

    def __len__(self) -> int:
        return len(self.table)

    def resolve(self, value: str | os.PathLike[str]) -> Path:
        """Absolute path of a path stored in the table."""
        path = Path(value)
        return path if path.is_absolute() else Path(os.path.normpath(self.root / path))

    def paths(self, row: int | Mapping[str, Any]) -> dict[str, Path]:
        """All file paths of one case (by row number or row mapping), resolved."""
        record = self.table.iloc[row] if isinstance(row, int) else row
        out = {}
        for column in self.path_columns:
            value = record[column]
            if isinstance(value, str) and value:
                out[column] = self.resolve(value)
        return out

    def boxes(self, row: int) -> list[dict[str, Any]]:
        """The boxes (or nodules) of one case; an empty list when it has none.

        Raises:
            InputError: the cell is not a JSON list (:func:`parse_boxes`).
        """
        if "boxes" not in self.table.columns:
            return []
        return parse_boxes(self.table["boxes"].iloc[row], str(self.table["case_id"].iloc[row]))

    def with_table(self, table: pd.DataFrame) -> Manifest:
        """Same root and info, new table (validated)."""
        return Manifest(table, self.root, dict(self.info))

    # -- building ------------------------------------------------------------------------
    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], root: str | os.PathLike[str], **info: Any) -> Manifest:
        """Build from dictionaries (one per case), e.g. in an adapter."""
        rows = list(records)
        if not rows:
            raise InputError(f"no cases found under {root}")
        table = pd.DataFrame(rows)
        for column in table.columns:
            if column == "boxes":  # JSON text; cases without boxes get an empty cell
                table[column] = [json.dumps(b) if isinstance(b, list | dict) else "" for b in table[column]]
        return cls(table, Path(root), dict(info))

    # -- files ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
        """Write the table as ``.csv`` or ``.parquet`` (paths made relative to its folder) and its info.

        Returns:
            The table's path. The info goes to ``<path without suffix>.meta.json``.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".parquet"):
            raise ConfigError(f"manifest files are .csv or .parquet, got {path.name!r}")
        table = self.table.copy()
        base = path.resolve().parent
        for column in self.path_columns:
            table[column] = [
                os.path.relpath(self.resolve(v).resolve(), base) if isinstance(v, str) and v else v
                for v in table[column]
            ]
        with atomic_file(path, overwrite=overwrite) as tmp:
            if suffix == ".csv":
                table.to_csv(tmp, index=False)
            else:
                _require_parquet()
                table.to_parquet(tmp, index=False)
        with atomic_file(_meta_path(path), overwrite=True) as tmp:
            tmp.write_text(json.dumps(self.info, indent=2, default=_json_default))
        log.info("wrote manifest with %d cases to %s", len(table), path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read a manifest written by :meth:`save` (or any CSV/Parquet following the conventions)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such manifest file")
        suffix = path.suffix.lower()
        try:
            if suffix == ".parquet":
                _require_parquet()
                table = pd.read_parquet(path)
            else:
                table = pd.read_csv(path, dtype={"case_id": str, "patient_id": str, "split": str}, keep_default_na=True)
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            raise InputError(f"{path} is not a readable manifest: {exc}") from exc
        info: dict[str, Any] = {}
        meta = _meta_path(path)
        if meta.is_file():
            try:
                info = json.loads(meta.read_text())
            except ValueError as exc:
                raise InputError(f"{meta} (the manifest's data set facts) is not valid JSON: {exc}") from exc
        try:
            return cls(table, path.resolve().parent, info)
        except InputError as exc:
            hint = "; make one with `medsight data manifest` from the data set folder" if "case_id" in str(exc) else ""
            raise InputError(f"{path}: {exc}{hint}") from None


def _meta_path(path: Path) -> Path:
    return path.with_name(path.stem + ".meta.json")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in manifest info")


def _require_parquet() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigError("Parquet needs pyarrow: pip install pyarrow (or save the manifest as .csv)") from None
