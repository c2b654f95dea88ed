"""DICOM header and pixel helpers shared by the file and series readers.

Pixel decoding is pydicom's, with the pylibjpeg plugins for JPEG baseline/extended/
lossless, JPEG-LS and JPEG 2000 (RLE and deflate are built into pydicom). Modality
rescale (slope/intercept) is always applied; see :func:`apply_rescale` for the dtype rule.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from pydicom.uid import UID

from medsight.core.errors import GeometryError, InputError
from medsight.core.volume import VolumeMetadata

__all__ = [
    "apply_rescale",
    "base_metadata",
    "bits_range",
    "decode_frames",
    "finish_display",
    "first_float",
    "floats",
    "is_dicomdir",
    "load_dataset",
    "orientation",
    "pixel_spacing",
    "require_image",
    "display_window",
]

log = logging.getLogger(__name__)

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_TEMPORAL_POINTERS = {Tag(0x0018, 0x1063), Tag(0x0018, 0x1065)}  # FrameTime, FrameTimeVector
_GRID_OFFSET_POINTER = Tag(0x3004, 0x000C)  # GridFrameOffsetVector (RT Dose)
_NATIVE_LE = {
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian (inflated on read)
}
_DECODER_HINT = (
    "install the decoders with `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` "
    "(medsight depends on them; was it installed with --no-deps?)"
)


# ---------------------------------------------------------------------------------------
# loading


def load_dataset(
    path: str | os.PathLike[str],
    *,
    stop_before_pixels: bool = False,
    defer_size: int | None = None,
    force: bool = False,
) -> Dataset:
    """Read a DICOM file with pydicom, turning pydicom's failures into :class:`InputError`.

    Args:
        path: File to read.
        stop_before_pixels: Read the header only.
        defer_size: Leave elements larger than this many bytes on disk until used.
        force: Read files without the 128-byte preamble and 'DICM' marker.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes); the copy or download failed")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, defer_size=defer_size, force=force)
    except InvalidDicomError as exc:
        raise InputError(
            f"{path} is not a DICOM file: it has no 'DICM' marker at byte 128 and no DICOM header "
            "(a text or other file named .dcm?)"
        ) from exc
    except (EOFError, OSError, ValueError, KeyError, struct.error, TypeError) as exc:
        raise InputError(f"{path} is a corrupt or truncated DICOM file: {exc}") from exc
    for w in caught:
        log.debug("%s: %s", path.name, w.message)
    return ds


def is_dicomdir(ds: Dataset) -> bool:
    """True for a DICOMDIR (media directory) rather than an image."""
    sop = ds.file_meta.get("MediaStorageSOPClassUID", None) if hasattr(ds, "file_meta") else None
    return str(sop) == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds


def require_image(ds: Dataset, label: str) -> None:
    if is_dicomdir(ds):
        raise InputError(f"{label} is a DICOMDIR (an index of files); pass the folder that holds the images")
    if "PixelData" in ds:
        return
    sop = ds.get("SOPClassUID")
    if sop is None and hasattr(ds, "file_meta"):
        sop = ds.file_meta.get("MediaStorageSOPClassUID")
    name = UID(str(sop)).name if sop is not None else ""
    if len(ds) == 0 or "Rows" in ds or "Image" in name or "Segmentation" in name:
        raise InputError(
            f"{label} ends before its pixel data: the file is truncated or corrupt (incomplete copy or download?)"
        )
    kind = name or "unknown SOP class"
    raise InputError(f"{label} holds no image ({kind}); medsight reads image objects only")


# ---------------------------------------------------------------------------------------
# pixels


def _decoders_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("pylibjpeg", "libjpeg", "openjpeg"))


def decode_frames(ds: Dataset, label: str) -> np.ndarray:
    """Pixels as ``(frames, rows, cols, samples)`` in stored values (no rescale)."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16))
    ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    fast = (
        ts in _NATIVE_LE
        and samples == 1
        and bits in (8, 16, 32)
        and int(ds.get("BitsStored", bits)) == bits
        and str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() in ("MONOCHROME1", "MONOCHROME2")
    )
    if fast:
        kind = "i" if int(ds.get("PixelRepresentation", 0)) == 1 else "u"
        raw = ds.PixelData
        need = rows * cols * frames * bits // 8
        if len(raw) < need:
            raise InputError(
                f"{label} is truncated: pixel data holds {len(raw)} bytes, {need} expected "
                f"for {frames} frame(s) of {rows}x{cols} at {bits} bits"
            )
        arr = np.frombuffer(raw, dtype=f"<{kind}{bits // 8}", count=rows * cols * frames)
        return arr.reshape(frames, rows, cols, 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:
        syntax = UID(ts).name or ts or "unknown"
        hint = _DECODER_HINT if not _decoders_installed() else (
            "the decoders are installed, so the compressed data is probably corrupt or made by an "
            "unusual encoder; re-export it uncompressed"
        )
        raise InputError(f"{label}: cannot decode pixel data in transfer syntax {syntax} ({exc}); {hint}") from exc
    except (ValueError, AttributeError, EOFError, KeyError) as exc:
        raise InputError(f"{label} has corrupt or truncated pixel data: {exc}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        samples = 3
    arr = np.asarray(arr)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr.reshape(frames, rows, cols, samples)


def bits_range(ds: Dataset) -> tuple[int, int]:
    stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (stored - 1)), 2 ** (stored - 1) - 1
    return 0, 2**stored - 1


def apply_rescale(
    stored: np.ndarray,
    slopes: np.ndarray,
    intercepts: np.ndarray,
    stored_range: tuple[int, int],
) -> np.ndarray:
    """Apply per-frame modality rescale ``value = stored * slope + intercept``.

    Dtype rule (decided from the header, never from the data): identity rescale keeps the
    stored dtype; slope 1 with an integer intercept gives the smallest signed integer type
    that holds every representable value (int16 for usual CT); anything else gives float32.

    Args:
        stored: ``(frames, ...)`` stored values.
        slopes: One slope per frame.
        intercepts: One intercept per frame.
        stored_range: Smallest and largest representable stored value (from BitsStored).
    """
    slopes = np.asarray(slopes, dtype=float)
    intercepts = np.asarray(intercepts, dtype=float)
    if np.all(slopes == 1.0) and np.all(intercepts == 0.0):
        return stored
    uniform = np.all(slopes == slopes[0]) and np.all(intercepts == intercepts[0])
    if uniform and slopes[0] == 1.0 and float(intercepts[0]).is_integer() and stored.dtype.kind in "iu":
        b = int(intercepts[0])
        lo, hi = stored_range[0] + b, stored_range[1] + b
        for dtype in (np.int16, np.int32, np.int64):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                out = stored.astype(dtype)
                out += dtype(b)
                return out
    shape = (-1,) + (1,) * (stored.ndim - 1)
    out = stored.astype(np.float32)
    out *= slopes.astype(np.float32).reshape(shape)
    out += intercepts.astype(np.float32).reshape(shape)
    return out


# ---------------------------------------------------------------------------------------
# geometry helpers


def floats(value: Any, n: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def first_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        if not value:
            return None
        value = value[0]
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def pixel_spacing(*items: Dataset | None) -> tuple[float, float] | None:
    for item in items:
        if item is None:
            continue
        for key in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
            v = floats(item.get(key), 2)
            if v is not None and np.all(v > 0):
                return float(v[0]), float(v[1])
    return None


def orientation(iop: Any, label: str) -> tuple[np.ndarray, np.ndarray]:
    v = floats(iop, 6)
    if v is None:
        return np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    row, col = v[:3], v[3:]
    if np.linalg.norm(row) < 1e-6 or np.linalg.norm(col) < 1e-6:
        raise GeometryError(f"{label}: ImageOrientationPatient {v.tolist()} has a zero vector")
    row = row / np.linalg.norm(row)
    col = col - np.dot(col, row) * row
    col = col / np.linalg.norm(col)
    return row, col


def display_window(*items: Dataset | None) -> tuple[float, float] | None:
    for item in items:
        if item is None:
            continue
        c, w = first_float(item.get("WindowCenter")), first_float(item.get("WindowWidth"))
        if c is not None and w is not None and w > 0:
            return c, w
    return None


def base_metadata(ds: Dataset, source_format: str) -> VolumeMetadata:
    """Identity and display fields shared by every DICOM reader."""

    def text(key: str) -> str | None:
        v = ds.get(key)
        return str(v) if v not in (None, "") else None

    return VolumeMetadata(
        source_format=source_format,
        modality=text("Modality"),
        patient_id=text("PatientID"),
        study_uid=text("StudyInstanceUID"),
        series_uid=text("SeriesInstanceUID"),
        series_description=text("SeriesDescription"),
        manufacturer=text("Manufacturer"),
        photometric_interpretation=text("PhotometricInterpretation"),
    )


def finish_display(
    array: np.ndarray,
    ds: Dataset,
    meta: VolumeMetadata,
    *,
    window: tuple[float, float] | None,
    rescale: tuple[float, float] | None,
    invert_monochrome1: bool,
) -> tuple[np.ndarray, VolumeMetadata]:
    """Record window and rescale; invert MONOCHROME1 when asked (window follows)."""
    inverted = False
    if invert_monochrome1 and meta.photometric_interpretation == "MONOCHROME1":
        slope, intercept = rescale or (1.0, 0.0)
        lo, hi = bits_range(ds)
        k = (lo * slope + intercept) + (hi * slope + intercept)
        # k - v maps the representable range onto itself, so the dtype still holds it
        if array.dtype.kind == "f":
            array = (k - array).astype(array.dtype)
        else:
            array = (int(round(k)) - array.astype(np.int64)).astype(array.dtype)
        if window is not None:
            window = (k - window[0], window[1])
        inverted = True
    return array, meta.replace(window=window, rescale=rescale, monochrome1_inverted=inverted)


