"""Received DICOM instances: checked (Part 10 DICOM with valid UIDs, never executed or trusted
further), grouped into studies, and spooled to disk (written, flushed and renamed into place)
before the sender is told they arrived."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from medsight.core.errors import InputError, UnsupportedFormatError

__all__ = ["Instance", "parse_instance", "spool", "studies", "sync_folder"]

log = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class Instance:
    """One received DICOM instance: its bytes as sent and the header facts the service uses."""

    data: bytes
    name: str  # as the sender named it (for messages only)
    sop_uid: str
    sop_class: str
    series_uid: str
    study_uid: str
    modality: str = ""
    body_part: str = ""
    series_description: str = ""
    accession: str = ""
    study_description: str = ""
    study_time: datetime | None = None
    manufacturer: str = ""
    has_pixels: bool = True
    source: Path | None = None  # the file it was read from, when given as a path (moved into the spool)


def _uid(ds: object, keyword: str, name: str) -> str:
    value = str(getattr(ds, keyword, "") or "").strip()
    if not value or len(value) > 64 or not _UID.match(value):
        raise InputError(f"{name}: {keyword} {value[:70]!r} is not a valid DICOM UID (digits and dots, at most 64)")
    return value


def _study_time(ds: object) -> datetime | None:
    date, time = str(getattr(ds, "StudyDate", "") or ""), str(getattr(ds, "StudyTime", "") or "")
    try:
        return datetime.strptime(date + (time.split(".")[0] + "000000")[:6], "%Y%m%d%H%M%S").replace(
            tzinfo=timezone.utc
        )
    except ValueError:
        return None


def parse_instance(data: bytes | Path, name: str) -> Instance:
    """The facts of one DICOM Part 10 file, given as bytes or as a path (then its bytes are not kept:
    ``Instance.data`` is empty and large values are not read).

    Raises:
        UnsupportedFormatError: not a DICOM Part 10 file.
        InputError: its study, series or instance UID is missing or invalid.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data) if isinstance(data, bytes) else data, defer_size="1 KB")
    except (InvalidDicomError, EOFError, ValueError, TypeError, AttributeError, OSError) as exc:
        raise UnsupportedFormatError(f"{name} is not a DICOM file ({exc}); send DICOM Part 10 files") from exc
    sop_class = str(getattr(ds, "SOPClassUID", "") or getattr(ds.file_meta, "MediaStorageSOPClassUID", "") or "")

    def text(keyword: str) -> str:
        return str(getattr(ds, keyword, "") or "").strip()

    return Instance(
        data=data if isinstance(data, bytes) else b"",
        name=name,
        sop_uid=_uid(ds, "SOPInstanceUID", name),
        sop_class=sop_class,
        series_uid=_uid(ds, "SeriesInstanceUID", name),
        study_uid=_uid(ds, "StudyInstanceUID", name),
        modality=text("Modality").upper(),
        body_part=text("BodyPartExamined").upper(),
        series_description=text("SeriesDescription"),
        accession=text("AccessionNumber")[:64],
        study_description=text("StudyDescription")[:128],
        study_time=_study_time(ds),
        manufacturer=text("Manufacturer"),
        has_pixels="PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds,
        source=None if isinstance(data, bytes) else Path(data),
    )


def studies(instances: Iterable[Instance]) -> dict[str, list[Instance]]:
    """Instances grouped by study, in the order received (a re-sent instance counted once)."""
    grouped: dict[str, dict[str, Instance]] = {}
    for instance in instances:
        grouped.setdefault(instance.study_uid, {})[instance.sop_uid] = instance
    return {study: list(items.values()) for study, items in grouped.items()}


def _write(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _place(path: Path, instance: Instance) -> None:
    """Put an instance's file at ``path``, flushed: its bytes written, or its source file (an upload
    staged under the same storage) flushed and moved there."""
    if instance.source is None:
        _write(path, instance.data)
        return
    with open(instance.source, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(instance.source, path)


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries (files made or renamed in it) to disk."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def spool(folder: Path, instances: Sequence[Instance]) -> None:
    """Write a study's instances to ``folder/<series UID>/<SOP instance UID>.dcm`` as sent (their
    bytes, or their staged files moved), each flushed to disk and renamed into place, and the
    folders synced: after this returns, a crash loses none of them.

    Raises:
        InputError: the disk refused (full, read-only), naming the folder.
    """
    try:
        written = {folder / i.series_uid for i in instances}  # folders that get new entries: synced
        for directory in sorted(written):
            if not directory.is_dir():
                written |= {directory.parent, directory.parent.parent}  # made here: their entries too
                directory.mkdir(parents=True, exist_ok=True)
        for instance in instances:
            _place(folder / instance.series_uid / f"{instance.sop_uid}.dcm", instance)
        for directory in written:
            sync_folder(directory)
    except OSError as exc:
        raise InputError(f"cannot spool the received study to {folder} ({exc.strerror}); free space there or "
                         "move storage in serve.yaml") from exc  # fmt: skip
