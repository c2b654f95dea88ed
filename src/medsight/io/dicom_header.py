"""DICOM header and pixel helpers shared by the file and series readers.

Pixel decoding is pydicom's, with the pylibjpeg plugins for JPEG baseline/extended/
lossless, JPEG-LS and JPEG 2000 (RLE and deflate are built into pydicom). Modality
rescale (slope/intercept) is always applied; see :func:`apply_rescale` for the dtype rule.
"""

from __future__ import annotations

import logging
import os
import struct
import sys
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medsight.core.errors import GeometryError, InputError, MedsightError
from medsight.core.volume import VolumeMetadata
from medsight.io.limits import check_image_size

__all__ = [
    "DicomHeader",
    "PixelLayout",
    "apply_rescale",
    "base_metadata",
    "bits_range",
    "damaged_header",
    "decode_frames",
    "display_window",
    "finish_display",
    "first_float",
    "floats",
    "header_int",
    "is_dicomdir",
    "load_dataset",
    "orientation",
    "pixel_layout",
    "pixel_spacing",
    "read_frames",
    "read_header",
    "require_image",
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


# what pydicom raises when it decodes a damaged element lazily, long after dcmread returned
_DAMAGED = (
    NotImplementedError,  # an unknown value representation
    EOFError,
    OSError,  # "No tag to read at file position ..." from an element read lazily
    zlib.error,  # deflated transfer syntax with damaged data
    BytesLengthException,
    struct.error,
    UnicodeDecodeError,
    OverflowError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
)


@contextmanager
def damaged_header(label: str) -> Iterator[None]:
    """Turn what pydicom raises on a damaged header element (read lazily, on first use) into an
    :class:`InputError` naming the file; medsight's own errors pass unchanged."""
    try:
        yield
    except MedsightError:
        raise
    except _DAMAGED as exc:
        raise InputError(f"{label} has a damaged DICOM header ({type(exc).__name__}: {exc})") from exc


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
    path = _existing_file(path)
    ds = _dcmread(path, path, stop_before_pixels=stop_before_pixels, defer_size=defer_size, force=force)
    _ensure_transfer_syntax(ds)
    return ds


def _existing_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes); the copy or download failed")
    return path


def _dcmread(path: Path, source: Path | BinaryIO, **options: Any) -> Dataset:
    """``pydicom.dcmread`` with its failures as :class:`InputError` and its warnings logged at debug."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(source, **options)
    except InvalidDicomError as exc:
        raise InputError(
            f"{path} is not a DICOM file: it has no 'DICM' marker at byte 128 and no DICOM header "
            "(a text or other file named .dcm?)"
        ) from exc
    except _DAMAGED as exc:
        raise InputError(f"{path} is a corrupt or truncated DICOM file ({type(exc).__name__}: {exc})") from exc
    for w in caught:
        log.debug("%s: %s", path.name, w.message)
    return ds


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Files without a meta header (no preamble) still need a transfer syntax to decode pixels."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if not little:
        uid = ExplicitVRBigEndian
    else:
        uid = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid


_RAW_SYNTAXES = {"1.2.840.10008.1.2": True, "1.2.840.10008.1.2.1": False}  # uid -> implicit VR
_PIXEL_TAG = b"\xe0\x7f\x10\x00"


@dataclass(frozen=True)
class DicomHeader:
    """A DICOM file's header (no pixels) and, for raw little-endian files, where its pixels are.

    Reading headers first lets a folder be scanned cheaply, and lets raw pixel data be read
    straight from disk, skipping whatever a scanner put after it.
    """

    path: Path
    dataset: Dataset
    pixel_offset: int | None = None
    pixel_length: int | None = None


def read_header(path: str | os.PathLike[str]) -> DicomHeader:
    """Read everything before the pixel data; locate the pixel data of raw little-endian files."""
    path = _existing_file(path)
    with open(path, "rb") as fp:
        ds = _dcmread(path, fp, stop_before_pixels=True)  # leaves fp at the pixel data element
        ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
        if ts not in _RAW_SYNTAXES:
            return DicomHeader(path, ds)
        start = fp.tell()
        head = fp.read(12)
    if head[:4] != _PIXEL_TAG or len(head) < 12:
        return DicomHeader(path, ds)
    implicit = _RAW_SYNTAXES[ts]
    (length,) = struct.unpack("<I", head[4:8] if implicit else head[8:12])
    if length == 0xFFFFFFFF:  # encapsulated: leave it to pydicom
        return DicomHeader(path, ds)
    return DicomHeader(path, ds, pixel_offset=start + (8 if implicit else 12), pixel_length=length)


def header_int(ds: Dataset, keyword: str, default: int | None, label: str) -> int:
    """An integer attribute of the header, or ``default``; a malformed value is an InputError."""
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise InputError(f"{label} has no {keyword}: the header is incomplete or corrupt")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"{label} has an invalid {keyword} ({value!r}): the header is corrupt") from None


@dataclass(frozen=True)
class PixelLayout:
    """What the header declares about the pixel data, checked to be sane."""

    rows: int
    cols: int
    frames: int
    samples: int
    bits_allocated: int

    @property
    def itemsize(self) -> int:
        return max(self.bits_allocated // 8, 1)


def pixel_layout(ds: Dataset, label: str) -> PixelLayout:
    """Rows, columns, frames, samples and bits from the header: valid, and within the image budget."""
    layout = PixelLayout(
        rows=header_int(ds, "Rows", None, label),
        cols=header_int(ds, "Columns", None, label),
        frames=header_int(ds, "NumberOfFrames", 1, label) or 1,
        samples=header_int(ds, "SamplesPerPixel", 1, label),
        bits_allocated=header_int(ds, "BitsAllocated", 16, label),
    )
    if min(layout.rows, layout.cols) < 1 or layout.frames < 1:
        raise InputError(
            f"{label} declares {layout.frames} frame(s) of {layout.rows}x{layout.cols} pixels: the header is corrupt"
        )
    if layout.samples not in (1, 3, 4) or layout.bits_allocated not in (1, 8, 16, 32, 64):
        raise InputError(
            f"{label} declares {layout.samples} samples per pixel of {layout.bits_allocated} bits, which is not "
            "valid DICOM (1 or 3 samples; 1, 8, 16, 32 or 64 bits): the header is corrupt"
        )
    check_image_size((layout.frames, layout.rows, layout.cols, layout.samples), layout.itemsize, label)
    return layout


def _raw_pixel_dtype(ds: Dataset) -> np.dtype | None:
    """dtype for reading stored pixels straight from a raw file, or None when decoding is needed."""
    bits = int(ds.get("BitsAllocated", 0))
    ok = (
        int(ds.get("SamplesPerPixel", 1)) == 1
        and bits in (8, 16, 32)
        and int(ds.get("BitsStored", bits)) == bits
        and str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() in ("MONOCHROME1", "MONOCHROME2")
    )
    if not ok:
        return None
    kind = "i" if int(ds.get("PixelRepresentation", 0)) == 1 else "u"
    return np.dtype(f"<{kind}{bits // 8}")


def raw_pixel_dtype(header: DicomHeader) -> np.dtype | None:
    """The native-order dtype of a file whose stored pixels can be read straight from disk (raw
    little-endian, one sample of whole bytes); None when pydicom must decode them."""
    ds = header.dataset
    if header.pixel_offset is None or "Rows" not in ds:
        return None
    dtype = _raw_pixel_dtype(ds)
    return None if dtype is None else dtype.newbyteorder("=")


def read_raw_into(header: DicomHeader, out: np.ndarray) -> None:
    """Fill ``out`` (C-contiguous ``(..., rows, cols, 1)`` of the file's :func:`raw_pixel_dtype`)
    with a raw file's stored pixels, read straight from disk into it.

    Raises:
        InputError: the file holds fewer pixel bytes than ``out`` needs (a truncated copy).
    """
    if not out.flags.c_contiguous:
        raise ValueError("read_raw_into needs a C-contiguous array to read into")
    need, offset = out.nbytes, int(header.pixel_offset or 0)
    declared = int(header.pixel_length or 0)
    got = 0
    if declared >= need:
        view = memoryview(out).cast("B")
        with open(header.path, "rb", buffering=0) as fp:
            fp.seek(offset)
            while got < need and (count := fp.readinto(view[got:])):
                got += count
    if got < need:
        available = got if declared >= need else min(declared, header.path.stat().st_size - offset)
        rows, cols = out.shape[-3:-1]
        raise InputError(
            f"{header.path} is truncated: pixel data holds {max(available, 0)} bytes, {need} expected for "
            f"{out.size // max(rows * cols, 1)} frame(s) of {rows}x{cols}"
        )
    if sys.byteorder == "big":  # DICOM raw data is little-endian
        out.byteswap(inplace=True)


def read_frames(header: DicomHeader) -> np.ndarray:
    """Stored pixels of a file as ``(frames, rows, cols, samples)``; raw files are read directly."""
    ds = header.dataset
    dtype = raw_pixel_dtype(header)
    if dtype is None:
        if "Rows" in ds:  # refuse an absurd declared size before reading the whole file
            pixel_layout(ds, str(header.path))
        full = load_dataset(header.path)
        require_image(full, str(header.path))
        return decode_frames(full, str(header.path))
    layout = pixel_layout(ds, str(header.path))
    frames = np.empty((layout.frames, layout.rows, layout.cols, 1), dtype=dtype)
    read_raw_into(header, frames)
    return frames


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


_RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def decode_frames(ds: Dataset, label: str) -> np.ndarray:
    """Pixels as ``(frames, rows, cols, samples)`` in stored values (no rescale)."""
    layout = pixel_layout(ds, label)  # sane, and within the budget, before anything is decoded
    rows, cols, samples, frames = layout.rows, layout.cols, layout.samples, layout.frames
    ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    dtype = _raw_pixel_dtype(ds) if ts in _NATIVE_LE else None
    if dtype is not None:  # raw little-endian: no decoding needed
        raw = ds.PixelData
        need = rows * cols * frames * dtype.itemsize
        if len(raw) < need:
            raise InputError(
                f"{label} is truncated: pixel data holds {len(raw)} bytes, {need} expected "
                f"for {frames} frame(s) of {rows}x{cols}"
            )
        arr = np.frombuffer(raw, dtype=dtype, count=rows * cols * frames)
        return arr.astype(dtype.newbyteorder("="), copy=False).reshape(frames, rows, cols, 1)
    if ts == _RLE_LOSSLESS:  # RLE packs at most 128 equal bytes into 2: the data present bounds the size
        present = len(ds.PixelData or b"")
        declared = rows * cols * frames * samples * layout.itemsize
        if declared > 64 * present + 64 * frames:
            raise InputError(
                f"{label} declares {frames} frame(s) of {rows}x{cols} pixels ({declared} bytes) but its RLE data "
                f"holds {present} bytes, less than RLE can encode that in: the file is truncated or corrupt"
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:
        syntax = UID(ts).name or ts or "unknown"
        hint = (
            _DECODER_HINT
            if not _decoders_installed()
            else (
                "the decoders are installed, so the compressed data is probably corrupt or made by an "
                "unusual encoder; re-export it uncompressed"
            )
        )
        raise InputError(f"{label}: cannot decode pixel data in transfer syntax {syntax} ({exc}); {hint}") from exc
    except (StopIteration, *_DAMAGED) as exc:  # e.g. fewer fragments than frames
        raise InputError(f"{label} has corrupt or truncated pixel data ({type(exc).__name__}: {exc})") from exc
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        samples = 3
    arr = np.asarray(arr)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr.reshape(frames, rows, cols, samples)


def has_modality_lut(ds: Dataset) -> bool:
    """Whether stored values become modality values through a Modality LUT Sequence (not a rescale)."""
    seq = ds.get("ModalityLUTSequence")
    return seq is not None and len(seq) > 0


def apply_modality_lut_sequence(stored: np.ndarray, ds: Dataset, label: str) -> np.ndarray:
    """Stored values through the dataset's Modality LUT Sequence (pydicom's ``apply_modality_lut``).

    Values below the LUT's first mapped value take its first entry, values above its last
    entry take the last (PS3.3 C.11.1). The result's dtype follows the LUT's bits (8 or 16).
    """
    from pydicom.pixels import apply_modality_lut

    try:
        return np.asarray(apply_modality_lut(stored, ds))
    except (AttributeError, IndexError, KeyError, ValueError, TypeError) as exc:
        raise InputError(
            f"{label} has a Modality LUT Sequence that cannot be applied ({exc}); its LUTDescriptor or "
            "LUTData is malformed"
        ) from exc


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
            if v is not None and np.all(v > 0) and np.all(np.isfinite(v)):
                return float(v[0]), float(v[1])
            if v is not None:
                log.warning("%s %s is not a positive spacing; ignoring it", key, v.tolist())
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


def _side(laterality: str | None) -> str | None:
    """A laterality, None for ``U`` (an unpaired body part has no side)."""
    return None if laterality is None or laterality.strip().upper() == "U" else laterality


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
        laterality=_side(text("ImageLaterality")) or _side(text("Laterality")),
        view=text("ViewPosition"),
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
            array = (round(k) - array.astype(np.int64)).astype(array.dtype)
        if window is not None:
            window = (k - window[0], window[1])
        inverted = True
    return array, meta.replace(window=window, rescale=rescale, monochrome1_inverted=inverted)
