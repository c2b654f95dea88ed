"""Tell a file's format from its content (not its name), and an output format from its name."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

from medsight.core.errors import InputError, UnsupportedFormatError
from medsight.io.atomic import full_suffix

__all__ = ["READ_FORMATS", "WRITE_FORMATS", "detect_format", "files_under", "output_format"]


def files_under(folder: str | os.PathLike[str]) -> list[Path]:
    """Every file under ``folder``, recursively, in a stable order; hidden files and folders left out."""
    paths: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        paths.extend(Path(root) / f for f in sorted(files) if not f.startswith("."))
    return paths


READ_FORMATS = ("dicom", "dicom-series", "nifti", "nrrd", "mha", "png", "jpeg")
WRITE_FORMATS = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".nrrd": "nrrd",
    ".mha": "mha",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
}
_METAIMAGE_KEYS = (b"ObjectType", b"NDims", b"DimSize", b"ElementType", b"HeaderSize")


def _head(path: Path, n: int = 1024) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(n)
    if data[:2] == b"\x1f\x8b":  # gzip: look inside (NIfTI .nii.gz)
        try:
            with gzip.open(path, "rb") as gz:
                return gz.read(n)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path} is a corrupt gzip file: {exc}") from exc
    return data


def _is_nifti_header(head: bytes) -> bool:
    if len(head) < 348:
        return False
    for endian in "<>":
        (size,) = struct.unpack(f"{endian}i", head[:4])
        if size == 348 and head[344:347] in (b"n+1", b"ni1"):
            return True
        if size == 540 and head[4:7] in (b"n+2", b"ni2"):
            return True
    return False


def _looks_like_raw_dicom(head: bytes) -> bool:
    """DICOM without the 128-byte preamble: starts with a group 0002 or 0008 element."""
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    return group in (0x0002, 0x0008) and element < 0x0100


def detect_format(path: str | os.PathLike[str]) -> str:
    """Return the format of ``path`` from its content: one of :data:`READ_FORMATS`.

    A folder is ``"dicom-series"``. DICOM files without a preamble are ``"dicom"``.

    Raises:
        InputError: the path is missing or empty.
        UnsupportedFormatError: the content is not a format medsight reads.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return "dicom-series"
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes); the copy or download failed")
    head = _head(path)
    if head[128:132] == b"DICM":
        return "dicom"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] == b"NRRD":
        return "nrrd"
    if _is_nifti_header(head):
        return "nifti"
    if any(head.lstrip().startswith(key) for key in _METAIMAGE_KEYS):
        return "mha"
    if _looks_like_raw_dicom(head):
        return "dicom"
    suffix = full_suffix(path)
    if suffix in (".dcm", ".dicom", ".ima"):
        raise InputError(
            f"{path} is not a DICOM file: it has no 'DICM' marker at byte 128 and no DICOM header "
            "(a text or other file named .dcm?)"
        )
    raise UnsupportedFormatError(
        f"{path}: unknown format (extension {suffix or 'none'!r}); medsight reads DICOM files and "
        "folders, NIfTI (.nii/.nii.gz), NRRD, MetaImage (.mha/.mhd), PNG and JPEG"
    )


def output_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """Choose the writer for ``path``: explicit ``fmt``, else from the extension.

    A path with no extension (or an existing folder) means a DICOM series folder.
    """
    if fmt is not None:
        allowed = sorted({*WRITE_FORMATS.values(), "dicom-series"})
        if fmt not in allowed:
            raise UnsupportedFormatError(f"unknown output format {fmt!r}; choose one of {allowed}")
        return fmt
    p = Path(path)
    suffix = full_suffix(p)
    if suffix in WRITE_FORMATS:
        return WRITE_FORMATS[suffix]
    if p.is_dir() or suffix == "" or str(path).endswith(os.sep):
        return "dicom-series"
    hint = ""
    if suffix in (".mhd", ".nhdr"):
        hint = " (detached headers are read, not written: use .mha or .nrrd)"
    elif suffix in (".dcm", ".dicom"):
        hint = " (DICOM is written as a series folder: give a folder path without extension)"
    raise UnsupportedFormatError(
        f"cannot write {path}: extension {suffix!r} is not a supported output{hint}; use "
        ".nii.gz, .nii, .nrrd, .mha, .png, .jpg or a folder name for a DICOM series"
    )
