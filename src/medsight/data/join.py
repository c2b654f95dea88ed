"""Join columns of another table to a manifest: clinical covariates and outcomes (per patient), or
another model's per-case outputs (e.g. a cardiac model's EF and LV mass), as features of a risk model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from medsight.core.errors import ConfigError, InputError
from medsight.data.manifest import RESERVED_COLUMNS, Manifest

__all__ = ["JoinResult", "join_table", "read_table"]

log = logging.getLogger(__name__)

Key = Literal["auto", "case_id", "patient_id"]


@dataclass(frozen=True)
class JoinResult:
    """The manifest with the joined columns, and how well the two tables matched.

    Attributes:
        manifest: The manifest with the new columns (empty cells where a case found no row).
        on: The key column used.
        columns: The columns joined.
        matched: Manifest cases that found a row.
        unmatched_cases: Manifest cases that found none (their new cells are empty).
        unused_rows: Rows of the table that no case matched.
    """

    manifest: Manifest
    on: str
    columns: tuple[str, ...]
    matched: int
    unmatched_cases: tuple[str, ...]
    unused_rows: int


def read_table(path: Path, *, needs: str = "a table of cases (.csv or .parquet)") -> pd.DataFrame:
    """A table of cases (.csv or .parquet), its ``case_id`` and ``patient_id`` read as text (``001`` stays
    ``001``, as in the manifest).

    Raises:
        InputError: a missing, unreadable or empty file, or one that is not a table (``needs`` says what is).
    """
    path = Path(path)
    if path.is_dir() or path.suffix.lower() not in (".csv", ".parquet"):
        raise InputError(f"{path}: {needs}, not from images or folders")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    keys = {"case_id": str, "patient_id": str}
    try:
        table = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path, dtype=keys)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not a readable table: {exc}") from exc
    if table.empty:
        raise InputError(f"{path} holds no cases")
    return table.astype({k: str for k in keys if k in table.columns})


def _keys(values: pd.Series) -> pd.Series:
    return values.astype(str).str.strip()


def join_table(
    manifest: Manifest,
    table: pd.DataFrame,
    *,
    on: Key = "auto",
    columns: Sequence[str] | None = None,
    replace: bool = False,
) -> JoinResult:
    """Add ``columns`` of ``table`` (default: all but its keys) to the manifest's cases, matched on
    ``case_id`` or ``patient_id`` (``auto``: ``case_id`` where the table has it, else ``patient_id``);
    a patient's row goes to each of their cases.

    Raises:
        ConfigError: the key or a named column is missing, or a column exists in the manifest already
            (without ``replace``), or would overwrite what the manifest is made of (ids, splits, images).
        InputError: a key repeats in the table, or no case matches any row.
    """
    if on == "auto":
        on = "case_id" if "case_id" in table.columns else "patient_id"
    if on not in ("case_id", "patient_id"):
        raise ConfigError(f"join on case_id or patient_id, got {on!r}")
    if on not in table.columns:
        raise ConfigError(f"the table has no {on!r} column to join on; its columns: {list(table.columns)}")
    keys = _keys(table[on])
    repeated = keys[keys.duplicated()].unique().tolist()
    if repeated:
        raise InputError(f"the table has several rows for {on} {repeated[:3]}: each {on.removesuffix('_id')} needs "
                         "one row to join (aggregate them first)")  # fmt: skip
    chosen = list(columns) if columns else [c for c in table.columns if c not in ("case_id", "patient_id")]
    missing = [c for c in chosen if c not in table.columns]
    if missing:
        raise ConfigError(f"the table has no column(s) {missing}; its columns: {list(table.columns)}")
    structural = [c for c in chosen if c in RESERVED_COLUMNS or c in manifest.path_columns]
    if structural:
        raise ConfigError(f"column(s) {structural} define the manifest's cases (ids, splits, files) and are not "
                          "joined; leave them out with --columns")  # fmt: skip
    clash = [c for c in chosen if c in manifest.table.columns]
    if clash and not replace:
        raise ConfigError(f"the manifest already has column(s) {clash}: give --replace to overwrite them, or choose "
                          "others with --columns")  # fmt: skip
    if not chosen:
        raise ConfigError("the table has no column to join besides its keys")
    source = table[chosen].set_axis(keys.to_numpy(), axis=0)
    case_keys = _keys(manifest.table[on])
    found = case_keys.isin(source.index).to_numpy()
    if not found.any():
        raise InputError(f"no case matches a row of the table on {on} (the manifest has e.g. "
                         f"{case_keys.head(2).tolist()}, the table {keys.head(2).tolist()})")  # fmt: skip
    joined = manifest.table.drop(columns=clash).copy()
    picked = source.reindex(case_keys.to_numpy())
    for column in chosen:
        joined[column] = picked[column].to_numpy()
    unmatched = tuple(manifest.table.loc[~found, "case_id"].astype(str))
    unused = int((~keys.isin(set(case_keys))).sum())
    if unmatched:
        log.warning("%d case(s) found no row in the table (e.g. %s); their new cells are empty", len(unmatched),
                    list(unmatched[:3]))  # fmt: skip
    return JoinResult(manifest.with_table(joined), on, tuple(chosen), int(found.sum()), unmatched, unused)
