"""Secondary-capture overlays, for viewers that do not show DICOM SEG: a predicted label map's, and
a classifier's heat map (where on the image the explained finding's evidence lies).

One RGB image per DICOM input with findings: the slice where the label map has most voxels (the
image itself for a 2D input), in the file's display window (else its 0.5-99.5th percentiles),
each class tinted in its colour with its outline drawn solid. It refers to the slice it was made
from and carries the model as contributing equipment, as the SEG and SR do. Written with highdicom.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medsight.core.errors import InputError
from medsight.core.heatmap import heat_rgba
from medsight.core.labels import class_color
from medsight.core.volume import Volume
from medsight.export.dicom_seg import (
    Algorithm,
    built_from,
    contributing_equipment,
    highdicom,
    on_grid,
    source_headers,
)
from medsight.io.atomic import atomic_file
from medsight.io.image2d import apply_window

__all__ = ["heat_rgb", "overlay_rgb", "write_heat_overlay", "write_overlay"]

log = logging.getLogger(__name__)

_TINT = 0.4  # the class colour's share inside a structure (its outline is drawn solid)


def overlay_rgb(plane: np.ndarray, labels: np.ndarray, classes: Sequence[tuple[int, str]],
                window: tuple[float, float] | None = None) -> np.ndarray:  # fmt: skip
    """``plane`` (a 2D image) in ``window`` (centre, width; default its 0.5-99.5th percentiles) as
    uint8 RGB, each class of ``labels`` tinted in its colour with its outline solid."""
    rgb = _grey_rgb(plane, window)
    for index, (code, _) in enumerate(classes):
        mask = labels == code
        if not mask.any():
            continue
        colour = np.asarray(class_color(index), np.float32)
        rgb[mask] = (1 - _TINT) * rgb[mask] + _TINT * colour
        rgb[mask & ~ndimage.binary_erosion(mask)] = colour
    return np.rint(rgb).astype(np.uint8)


def _grey_rgb(plane: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """``plane`` in ``window`` (default its 0.5-99.5th percentiles) as float RGB in 0-255."""
    data = np.asarray(plane, np.float32)
    if window is None:
        finite = data[np.isfinite(data)]
        low, high = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
        window = ((low + high) / 2, max(float(high - low), 1e-6))
    grey = apply_window(np.nan_to_num(data), window)
    return np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)


def _orientation(reference: Any) -> tuple[str, str]:
    """Where the rows and columns of a source image point, as patient-orientation letters: its own
    PatientOrientation, else the dominant direction of ImageOrientationPatient's row and column."""
    given = [str(v) for v in (reference.get("PatientOrientation") or [])]
    if len(given) == 2 and all(given):
        return given[0][:1], given[1][:1]
    cosines = reference.get("ImageOrientationPatient")
    if not cosines or len(cosines) != 6:
        raise InputError("the source image says neither its PatientOrientation nor its ImageOrientationPatient; "
                         "a secondary capture needs one of them")  # fmt: skip
    letters = (("R", "L"), ("A", "P"), ("F", "H"))  # LPS: +x left, +y posterior, +z head
    out = []
    for vector in (np.asarray(cosines[:3], float), np.asarray(cosines[3:], float)):
        axis = int(np.argmax(np.abs(vector)))
        out.append(letters[axis][int(vector[axis] > 0)])
    return out[0], out[1]


def write_overlay(
    image: Volume,
    labels: np.ndarray,
    source: str | os.PathLike[str],
    classes: Sequence[tuple[int, str]],
    out: str | os.PathLike[str],
    *,
    algorithm: Algorithm,
    series_number: int = 902,
    headers: Sequence[Any] | None = None,
) -> Path | None:
    """Write the overlay of ``labels`` (class codes on ``image``'s grid, ``(Z, Y, X)``) on the slice
    where they have most voxels as a DICOM secondary capture; None (nothing written) when they are
    empty.

    ``headers``: the source files' headers (:func:`source_headers`) when the caller has them.

    Raises:
        InputError: ``image`` is not from DICOM, the map is not on its grid, or its files are gone.
        ConfigError: highdicom is not installed.
    """
    source, out = Path(source), Path(out)
    labels = on_grid(labels, image, source)
    areas = (labels > 0).reshape(labels.shape[0], -1).sum(axis=1)
    if not areas.any():
        return None
    z = int(np.argmax(areas))
    reference = (headers or source_headers(image, source))[z]
    rgb = overlay_rgb(np.asarray(image.array[0, z]), labels[z], classes, image.metadata.window)
    _write_capture(reference, rgb, source, out, algorithm, series_number, f"{algorithm.name} overlay")
    log.info("%s: overlay of slice %d written to %s", source, z, out)
    return out


def heat_rgb(plane: np.ndarray, heat: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """``plane`` (a 2D image) in ``window`` (as :func:`overlay_rgb`) as uint8 RGB with ``heat`` (a map
    on its grid) over it: the positive part coloured ``inferno``, as opaque as it is strong."""
    grey = _grey_rgb(plane, window)
    if np.shape(heat) != np.shape(plane):
        raise InputError(f"the heat map {list(np.shape(heat))} is not on the image's grid {list(np.shape(plane))}")
    rgba = heat_rgba(np.asarray(heat)).astype(np.float32) / 255.0
    alpha = rgba[..., 3:]
    return np.rint((1 - alpha) * grey + alpha * rgba[..., :3] * 255).astype(np.uint8)


def write_heat_overlay(
    image: Volume,
    heat: np.ndarray,
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    algorithm: Algorithm,
    title: str,
    series_number: int = 903,
    headers: Sequence[Any] | None = None,
) -> Path:
    """Write ``heat`` (``(H, W)`` on the grid of ``image``, a single DICOM image: e.g. a classifier's
    Grad-CAM map brought back from the network's input) over the image as a DICOM secondary capture,
    described as ``title`` (what the map explains). Returns ``out``.

    Raises:
        InputError: ``image`` is not one DICOM image, the map is not on its grid, or its file is gone.
        ConfigError: highdicom is not installed.
    """
    source, out = Path(source), Path(out)
    if image.spatial_shape[0] != 1:
        raise InputError(f"{source}: a heat-map overlay is drawn on a single image; this one has "
                         f"{image.spatial_shape[0]} slices")  # fmt: skip
    (reference,) = (headers or source_headers(image, source))[:1]
    rgb = heat_rgb(np.asarray(image.array[0, 0]), heat, image.metadata.window)
    _write_capture(reference, rgb, source, out, algorithm, series_number, f"{algorithm.name} heat map: {title}")
    log.info("%s: heat-map overlay (%s) written to %s", source, title, out)
    return out


def _write_capture(reference: Any, rgb: np.ndarray, source: Path, out: Path, algorithm: Algorithm,
                   series_number: int, description: str) -> None:  # fmt: skip
    """An RGB secondary capture of ``reference``'s patient, study and frame, written atomically."""
    hd = highdicom()
    spacing = reference.get("PixelSpacing")
    with built_from(source, "secondary capture"):
        orientation = _orientation(reference)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=reference, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medsight",
            pixel_spacing=tuple(float(v) for v in spacing) if spacing else None, patient_orientation=orientation,
            series_description=description[:64], contributing_equipment=[contributing_equipment(algorithm)],
        )  # fmt: skip
    if "Laterality" not in sc:  # Type 2C in the general series: the source's, else present and empty (unknown)
        side = str(reference.get("Laterality", "") or reference.get("ImageLaterality", "") or "")
        sc.Laterality = side if side in ("R", "L") else ""
    with atomic_file(out) as tmp:
        sc.save_as(tmp, enforce_file_format=True)
