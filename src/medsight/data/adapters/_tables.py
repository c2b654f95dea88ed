"""Small helpers the adapters share: tolerant CSV columns, file look-up, clear errors."""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from medsight.core.errors import InputError

__all__ = ["find_file", "first_line", "index_files", "read_table", "relative", "require_exist"]

log = logging.getLogger(__name__)


def first_line(path: Path) -> str:
    """First line of a text file (lower case), or '' when it is missing or unreadable."""
    try:
        with open(path, errors="ignore") as fh:
            return fh.readline().lower()
    except OSError:
        return ""


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _delimiter(path: Path) -> str:
    """Comma, tab, semicolon or bar, whichever the first lines use; a comma for one column.

    (Letting pandas sniff any character split a one-column ``image`` table on its letters.)
    """
    with open(path, newline="", errors="replace") as fh:
        sample = fh.read(64 * 1024)
    try:
        return csv.Sniffer().sniff(sample, delimiters=",\t;|").delimiter
    except csv.Error:
        return ","


def read_table(
    path: Path,
    *,
    columns: Mapping[str, Sequence[str]],
    optional: Mapping[str, Sequence[str]] | None = None,
    sep: str | None = None,
) -> pd.DataFrame:
    """Read a CSV (or Excel) table and rename its columns to canonical names.

    Column names match by any alias, ignoring case, spaces and punctuation, so releases
    that write ``Image name`` or ``image_name`` both work. Extra columns are kept.

    Args:
        path: The table.
        columns: Canonical name -> accepted aliases; all required.
        optional: Same, for columns that may be absent.
        sep: Separator (default: comma, tab, semicolon or bar, as the file's first lines use).

    Raises:
        InputError: missing file, unreadable table, or a required column missing.
    """
    if not path.is_file():
        raise InputError(f"{path}: no such file (is this the data set's top folder?)")
    try:
        if path.suffix.lower() in (".xls", ".xlsx"):
            table = pd.read_excel(path)
        else:
            table = pd.read_csv(path, sep=sep or _delimiter(path), skipinitialspace=True)
    except Exception as exc:  # pandas raises many types for malformed files
        raise InputError(f"{path} is not a readable table: {exc}") from exc
    table = table.rename(columns=lambda c: str(c).strip())
    by_key = {_key(c): c for c in table.columns}
    rename: dict[str, str] = {}
    missing = []
    for canonical, aliases in {**columns, **(optional or {})}.items():
        found = next((by_key[_key(a)] for a in (canonical, *aliases) if _key(a) in by_key), None)
        if found is None:
            if canonical in columns:
                missing.append(
                    f"{canonical!r} (or {', '.join(repr(a) for a in aliases)})" if aliases else repr(canonical)
                )
            continue
        rename[found] = canonical
    if missing:
        raise InputError(f"{path.name} lacks required column(s) {', '.join(missing)}; it has {list(table.columns)}")
    return table.rename(columns=rename)


def index_files(root: Path, suffixes: Iterable[str]) -> dict[str, Path]:
    """Map file names and stems (lower case) under ``root`` to paths, for releases that nest images."""
    wanted = {s.lower() for s in suffixes}
    index: dict[str, Path] = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(dirpath) / name
            suffix = "".join(path.suffixes[-2:]).lower() if name.lower().endswith(".gz") else path.suffix.lower()
            if suffix in wanted:
                index.setdefault(name.lower(), path)
                index.setdefault(name[: len(name) - len(suffix)].lower(), path)
    return index


def find_file(index: Mapping[str, Path], name: str) -> Path | None:
    """Look a file up by name or stem in an :func:`index_files` index."""
    return index.get(str(name).strip().lower())


def require_exist(paths: Sequence[Path | None], names: Sequence[str], what: str) -> None:
    """Raise one InputError naming how many and which files are missing."""
    missing = [n for p, n in zip(paths, names, strict=True) if p is None or not p.exists()]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(f"{what}: {len(missing)} of {len(names)} image file(s) not found: {shown}")


def relative(root: Path, path: Path) -> str:
    """Path relative to the data set root, as stored in a manifest."""
    return os.path.relpath(path, root)
