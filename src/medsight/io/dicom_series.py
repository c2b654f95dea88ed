"""Read a folder of DICOM files: find the series, order the slices, check and stack them."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsight.core.errors import InputError, SeriesError
from medsight.core.progress import Progress
from medsight.core.volume import Volume
from medsight.io.dicom import dataset_to_volume
from medsight.io.dicom_header import (
    DicomHeader,
    apply_modality_lut_sequence,
    apply_rescale,
    base_metadata,
    bits_range,
    damaged_header,
    display_window,
    finish_display,
    first_float,
    floats,
    has_modality_lut,
    is_dicomdir,
    load_dataset,
    orientation,
    pixel_layout,
    pixel_spacing,
    raw_pixel_dtype,
    read_frames,
    read_header,
    read_raw_into,
)
from medsight.io.formats import files_under
from medsight.io.stack import plan_stack, resample_stack, stack_geometry

__all__ = ["DicomFolder", "Progress", "SeriesInfo", "list_dicom_series", "read_dicom_series"]

log = logging.getLogger(__name__)

LARGEST = "largest"


@dataclass(frozen=True)
class SeriesInfo:
    """One image series found in a folder."""

    uid: str
    files: tuple[Path, ...]
    modality: str | None
    description: str | None
    rows: int | None
    columns: int | None

    @property
    def size(self) -> int:
        """Number of files (usually slices)."""
        return len(self.files)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary."""
        return {
            "uid": self.uid,
            "files": self.size,
            "modality": self.modality,
            "description": self.description,
            "rows": self.rows,
            "columns": self.columns,
        }


@dataclass(frozen=True)
class _Slice:
    """The header values a series needs from one file, read once (pydicom access is slow)."""

    header: DicomHeader
    size: tuple[int, int]
    frames: int
    orientation: np.ndarray | None
    position: np.ndarray | None
    spacing: tuple[float, float] | None
    slope: float
    intercept: float
    raw_dtype: np.dtype | None  # pixels readable straight from disk, in this dtype

    @classmethod
    def of(cls, header: DicomHeader) -> _Slice:
        ds = header.dataset
        iop = floats(ds.get("ImageOrientationPatient"), 6)
        layout = pixel_layout(ds, str(header.path))
        return cls(
            header=header,
            size=(layout.rows, layout.cols),
            frames=layout.frames,
            orientation=iop,
            position=floats(ds.get("ImagePositionPatient"), 3),
            spacing=pixel_spacing(ds),
            slope=first_float(ds.get("RescaleSlope")) or 1.0,
            intercept=first_float(ds.get("RescaleIntercept")) or 0.0,
            raw_dtype=raw_pixel_dtype(header),
        )


def _scan(folder: Path, progress: Progress | None = None) -> dict[str, list[_Slice]]:
    """Group the image datasets under ``folder`` by SeriesInstanceUID."""
    if not folder.exists():
        raise InputError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    groups: dict[str, list[_Slice]] = defaultdict(list)
    paths = files_under(folder)
    if not paths:
        raise InputError(f"folder {folder} is empty: no files to read")
    skipped = 0
    for done, path in enumerate(paths, start=1):
        if progress is not None:
            progress("reading headers", done, len(paths))
        try:
            header = read_header(path)
        except InputError as exc:
            if path.name.upper() == "DICOMDIR" or path.suffix.lower() not in ("", ".dcm", ".dicom", ".ima"):
                log.warning("skipping %s: not a DICOM file", path)
            else:
                log.warning("skipping %s: %s", path, exc)
            skipped += 1
            continue
        ds = header.dataset
        try:
            with damaged_header(str(path)):
                if is_dicomdir(ds):
                    log.warning("skipping DICOMDIR %s (the images are read directly)", path)
                    continue
                if "Rows" not in ds:
                    log.info("skipping %s: not an image (%s)", path, ds.get("SOPClassUID", "no SOP class"))
                    continue
                member = _Slice.of(header)
                uid = str(ds.get("SeriesInstanceUID", "") or "(no SeriesInstanceUID)")
                ds.get("Modality"), ds.get("SeriesDescription")  # decoded now: listings use them later
        except InputError as exc:  # a corrupt or absurd header: one bad file does not stop the folder
            log.warning("skipping %s", exc)
            skipped += 1
            continue
        groups[uid].append(member)
    if not groups:
        raise InputError(f"folder {folder} holds no DICOM images ({len(paths)} file(s) looked at, {skipped} not DICOM)")
    return groups


def _info(uid: str, members: list[_Slice]) -> SeriesInfo:
    first = members[0].header.dataset
    return SeriesInfo(
        uid=uid,
        files=tuple(m.header.path for m in members),
        modality=str(first.get("Modality")) if first.get("Modality") else None,
        description=str(first.get("SeriesDescription")) if first.get("SeriesDescription") else None,
        rows=int(first.Rows) if "Rows" in first else None,
        columns=int(first.Columns) if "Columns" in first else None,
    )


class DicomFolder:
    """The image series under a folder (searched recursively), each header read once: list the
    series, then read one, without parsing the folder twice.

    Raises:
        InputError: missing/empty folder, or no DICOM images in it.
    """

    def __init__(self, folder: str | os.PathLike[str], *, progress: Progress | None = None) -> None:
        self.folder = Path(folder)
        self._groups = _scan(self.folder, progress)

    def series(self) -> list[SeriesInfo]:
        """The series found, largest first."""
        infos = [_info(uid, members) for uid, members in self._groups.items()]
        return sorted(infos, key=lambda s: (-s.size, s.uid))

    def read(
        self,
        *,
        series_uid: str | None = None,
        allow_gaps: bool = False,
        invert_monochrome1: bool = False,
        progress: Progress | None = None,
    ) -> Volume:
        """One series as a Volume; the arguments are those of :func:`read_dicom_series`."""
        with damaged_header(f"a file of the series in {self.folder}"):
            return _read_series(self._groups, self.folder, series_uid, allow_gaps, invert_monochrome1, progress)


def list_dicom_series(folder: str | os.PathLike[str], *, progress: Progress | None = None) -> list[SeriesInfo]:
    """Image series under ``folder`` (recursively), largest first. Reads headers only."""
    return DicomFolder(folder, progress=progress).series()


def _choose(groups: dict[str, list[_Slice]], series_uid: str | None, folder: Path) -> str:
    listing = "; ".join(
        f"{uid} ({len(m)} files, {m[0].header.dataset.get('Modality', '?')}, "
        f"{m[0].header.dataset.get('SeriesDescription', '') or 'no description'})"
        for uid, m in sorted(groups.items(), key=lambda kv: -len(kv[1]))
    )
    if series_uid is None:
        if len(groups) == 1:
            return next(iter(groups))
        raise SeriesError(
            f"folder {folder} holds {len(groups)} series: {listing}. Choose one with "
            "series_uid=UID (--series UID), or series_uid='largest' (--series largest)"
        )
    if series_uid == LARGEST:
        return max(groups, key=lambda uid: (len(groups[uid]), uid))
    if series_uid not in groups:
        raise SeriesError(f"series {series_uid} is not in folder {folder}; series found: {listing}")
    return series_uid


def _check_same(members: list[_Slice], what: str, key: str, values: Sequence[object]) -> None:
    distinct: dict[object, list[str]] = defaultdict(list)
    for member, value in zip(members, values, strict=True):
        distinct[value].append(member.header.path.name)
    if len(distinct) > 1:
        parts = [f"{v} in {len(names)} file(s) (e.g. {names[0]})" for v, names in distinct.items()]
        raise SeriesError(
            f"{what} mixes {key}: " + "; ".join(parts) + ". A series must be one stack: split it, "
            "or remove the odd files (localisers, reformats)"
        )


def read_dicom_series(
    folder: str | os.PathLike[str],
    *,
    series_uid: str | None = None,
    allow_gaps: bool = False,
    invert_monochrome1: bool = False,
    progress: Progress | None = None,
) -> Volume:
    """Read one DICOM series from a folder (searched recursively) into a Volume.

    Slices are sorted by position along the slice normal (not by file name or
    InstanceNumber) and checked: same size, orientation and pixel spacing; no duplicate
    positions; regular spacing. Non-DICOM files and DICOMDIR are skipped with a warning.

    Args:
        folder: Folder holding the files.
        series_uid: Which series to read when the folder holds several; ``"largest"``
            picks the one with most files. ``None`` requires exactly one series.
        allow_gaps: Interpolate missing slices instead of raising :class:`SeriesError`.
        invert_monochrome1: Invert MONOCHROME1 images so that high values are bright.
        progress: Called as ``progress(stage, done, total)`` while headers and pixels are read.

    Raises:
        SeriesError: several series and none chosen, gaps, duplicates, mixed geometry.
        InputError: missing/empty folder, no DICOM images, corrupt pixel data.
    """
    return DicomFolder(folder, progress=progress).read(
        series_uid=series_uid, allow_gaps=allow_gaps, invert_monochrome1=invert_monochrome1, progress=progress
    )


def _read_series(
    groups: dict[str, list[_Slice]],
    folder: Path,
    series_uid: str | None,
    allow_gaps: bool,
    invert_monochrome1: bool,
    progress: Progress | None,
) -> Volume:
    uid = _choose(groups, series_uid, folder)
    members = groups[uid]
    what = f"series {uid}"
    if len(members) == 1:
        path = members[0].header.path
        return dataset_to_volume(
            load_dataset(path), label=str(path), invert_monochrome1=invert_monochrome1, allow_gaps=allow_gaps
        )
    row, col, positions = _check_stack(members, what)
    plan = plan_stack(
        positions, np.cross(row, col), labels=[m.header.path.name for m in members], what=what, allow_gaps=allow_gaps
    )
    ordered = [members[i] for i in plan.order]
    stored = _load_pixels(ordered, progress)
    first = ordered[0].header.dataset
    slopes = np.array([m.slope for m in ordered])
    intercepts = np.array([m.intercept for m in ordered])
    grey = stored.shape[-1] == 1
    lut = grey and has_modality_lut(first)
    if lut:  # each slice through its own Modality LUT Sequence
        values = np.stack(
            [
                apply_modality_lut_sequence(stored[i], m.header.dataset, str(m.header.path))
                for i, m in enumerate(ordered)
            ]
        )
    elif grey:
        values = apply_rescale(stored, slopes, intercepts, bits_range(first))
    else:
        values = stored
    z = float(plan.spacing or 1.0)
    if plan.has_gaps:
        values = resample_stack(values, plan.positions, z)
    array = np.ascontiguousarray(np.moveaxis(values, -1, 0))  # (S, Z, Y, X)

    in_plane = members[0].spacing
    if in_plane is None:
        log.warning("%s has no pixel spacing; assuming 1 mm", what)
    frame_uid = str(first.get("FrameOfReferenceUID")) if first.get("FrameOfReferenceUID") else None
    geometry = stack_geometry(positions[plan.order[0]], row, col, (z, *(in_plane or (1.0, 1.0))), frame_uid)
    uniform = len(set(zip(slopes.tolist(), intercepts.tolist(), strict=True))) == 1
    rescale = None
    if grey and not lut and uniform and (slopes[0], intercepts[0]) != (1.0, 0.0):
        rescale = (float(slopes[0]), float(intercepts[0]))
    sop_uids = tuple(str(m.header.dataset.get("SOPInstanceUID", "")) for m in ordered)
    meta = base_metadata(first, "dicom-series").replace(
        sop_uids=() if plan.has_gaps else sop_uids,
        spacing_assumed=in_plane is None,
        channel_names=("R", "G", "B") if array.shape[0] == 3 else None,
    )
    array, meta = finish_display(
        array, first, meta, window=display_window(first), rescale=rescale, invert_monochrome1=invert_monochrome1
    )
    return Volume(array, geometry, meta)


def _check_stack(members: list[_Slice], what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check the files form one stack; return row and column directions and slice positions."""
    multi = [m.header.path.name for m in members if m.frames > 1]
    if multi:
        raise SeriesError(
            f"{what} holds {len(members)} files, {len(multi)} of them multi-frame (e.g. {multi[0]}); "
            "read each multi-frame file on its own"
        )
    _check_same(members, what, "image sizes", [m.size for m in members])
    iops = [None if m.orientation is None else tuple(np.round(m.orientation, 4)) for m in members]
    _check_same(members, what, "orientations", iops)
    spacings = [None if m.spacing is None else tuple(np.round(m.spacing, 4)) for m in members]
    _check_same(members, what, "pixel spacings", spacings)
    missing = [m.header.path.name for m in members if m.position is None]
    if missing:
        raise SeriesError(f"{what}: {missing[0]} has no ImagePositionPatient, so slices cannot be ordered")
    row, col = orientation(members[0].orientation, what)
    return row, col, np.array([m.position for m in members])


def _load_pixels(ordered: list[_Slice], progress: Progress | None = None) -> np.ndarray:
    """Stored pixels of single-frame files, stacked: ``(Z, Y, X, S)``. Raw slices of the first one's
    dtype are read from disk straight into the stack."""
    first = read_frames(ordered[0].header)
    stored = np.empty((len(ordered), *first.shape[1:]), dtype=first.dtype)
    stored[0] = first[0]
    for k, member in enumerate(ordered[1:], start=1):
        if progress is not None:
            progress("reading pixels", k + 1, len(ordered))
        if member.raw_dtype == stored.dtype and member.size == stored.shape[1:3] and stored.shape[3] == 1:
            read_raw_into(member.header, stored[k])
            continue
        pixels = read_frames(member.header)
        if pixels.dtype != stored.dtype:
            stored = stored.astype(np.result_type(stored.dtype, pixels.dtype))
        stored[k] = pixels[0]
    return stored
