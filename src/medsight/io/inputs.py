"""What a user names as inputs to predict on, found and read as training read its images: folders
expanded to their image files (a DICOM series folder one volume for 3D models), DICOM facts
(patient, study, laterality, view) of each, MONOCHROME1 shown as a viewer would. Torch-free."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from medsight.core.errors import InputError, UnsupportedFormatError
from medsight.core.volume import Volume
from medsight.io.api import read
from medsight.io.atomic import full_suffix
from medsight.io.formats import detect_format, files_under

__all__ = ["expand_inputs", "image_facts", "read_image_input"]

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".ima", ".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"}


def _metaimage_data(path: Path) -> bool:
    """Whether ``path`` is the data file of a MetaImage header beside it (LUNA16's ``<uid>.raw``
    next to ``<uid>.mhd``): read with its header, not an input of its own."""
    return path.suffix.lower() in (".raw", ".zraw") and path.with_suffix(".mhd").is_file()


def expand_inputs(inputs: Sequence[str | os.PathLike[str]], *, volumes: bool = False) -> list[Path]:
    """Files as given; folders replaced by every image file under them (hidden files, DICOMDIR and
    files in no image format left out with one warning), sorted: a 2D classifier gives one
    prediction per image file, e.g. each view of an exam. With ``volumes`` (a 3D model) the DICOM
    files of one folder are one input, the folder (a series: its slices make one volume).

    Raises:
        InputError: an input does not exist, or no image was found.
    """
    paths: list[Path] = []
    skipped: list[Path] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise InputError(f"{item} does not exist")
        if not item.is_dir():
            paths.append(item)  # named by the user: read (and refused) as it is
            continue
        for path in files_under(item):
            if path.name.upper() == "DICOMDIR" or _metaimage_data(path):
                continue
            try:
                kind = detect_format(path)
            except UnsupportedFormatError:
                if full_suffix(path) in _IMAGE_SUFFIXES:
                    raise  # named like an image but is none: corrupt, which the user must hear about
                skipped.append(path)  # notes, tables, reports beside the images
                continue
            if volumes and kind == "dicom":
                if path.parent not in paths:
                    paths.append(path.parent)  # the series in this folder, read as one volume
                continue
            paths.append(path)
    if skipped:
        names = ", ".join(p.name for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        log.warning("skipped %d file(s) that are not images (%s)", len(skipped), names)
    if not paths:
        raise InputError(f"no image files in {', '.join(map(str, inputs))}")
    return paths


def image_facts(volume: Volume) -> dict[str, str]:
    """Patient, study, laterality and view of an image as its DICOM header gives them (what view
    fusion groups by); ``{}`` for files that carry none."""
    meta = volume.metadata
    facts = {
        "patient_id": meta.patient_id,
        "study_id": meta.study_uid,
        "laterality": meta.laterality,
        "view": meta.view,
    }
    return {k: v for k, v in facts.items() if v}


def read_image_input(path: str | os.PathLike[str]) -> Volume:
    """An input image as training saw it (MONOCHROME1 shown as a viewer would)."""
    return read(path, invert_monochrome1=True) if detect_format(path) in ("dicom", "dicom-series") else read(path)
