"""Read one DICOM file into a Volume: 2D, classic multi-frame and enhanced multi-frame."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from medsight.core.errors import GeometryError, InputError
from medsight.core.geometry import Geometry
from medsight.core.volume import Volume
from medsight.io.dicom_header import (
    apply_modality_lut_sequence,
    apply_rescale,
    base_metadata,
    bits_range,
    damaged_header,
    decode_frames,
    display_window,
    finish_display,
    first_float,
    floats,
    has_modality_lut,
    load_dataset,
    orientation,
    pixel_layout,
    pixel_spacing,
    require_image,
)
from medsight.io.stack import plan_stack, resample_stack, stack_geometry

__all__ = ["dataset_to_volume", "read_dicom_file"]

log = logging.getLogger(__name__)

_TEMPORAL_POINTERS = {Tag(0x0018, 0x1063), Tag(0x0018, 0x1065)}  # FrameTime, FrameTimeVector
_GRID_OFFSET_POINTER = Tag(0x3004, 0x000C)  # GridFrameOffsetVector (RT Dose)


def _functional_item(ds: Dataset, frame: int, name: str) -> Dataset | None:
    """First item of functional group ``name`` for ``frame`` (per-frame, else shared)."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq is not None and index < len(seq):
            item = seq[index]
            if name in item and len(item[name].value):
                return item[name].value[0]
    return None


@dataclass
class _Frames:
    """What the header says about each frame of one dataset."""

    count: int
    row: np.ndarray
    col: np.ndarray
    in_plane: tuple[float, float] | None
    thickness: float | None
    slopes: np.ndarray
    intercepts: np.ndarray
    window: tuple[float, float] | None
    positions: np.ndarray | None = None  # (F, 3) for spatial stacks
    frame_times: tuple[float, ...] | None = None  # for frames read as channels
    group_same_position: bool = False


def _frame_times(ds: Dataset, count: int) -> tuple[float, ...]:
    vector = ds.get("FrameTimeVector")
    if vector is not None and len(vector) == count:
        return tuple(float(np.sum([float(v) for v in vector[: i + 1]])) for i in range(count))
    step = first_float(ds.get("FrameTime")) or 0.0
    return tuple(step * i for i in range(count))


def _frame_pointers(ds: Dataset) -> set[BaseTag]:
    """Tags named by FrameIncrementPointer (what changes from frame to frame)."""
    value = ds.get("FrameIncrementPointer")
    if value is None:
        return set()
    items = value if isinstance(value, list | pydicom.multival.MultiValue) else [value]
    return {Tag(p) for p in items}


# SOP classes whose frames are time points (captures, cine loops), whatever their modality says
_TIME_FRAMES = {
    uid.SecondaryCaptureImageStorage,
    uid.MultiFrameSingleBitSecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    uid.MultiFrameTrueColorSecondaryCaptureImageStorage,
    uid.UltrasoundImageStorage,
    uid.UltrasoundMultiFrameImageStorage,
}


def _frames_are_time(ds: Dataset) -> bool:
    """Ultrasound and secondary-capture frames are time points by definition (echo cine loops, captures)."""
    return str(ds.get("Modality", "")).upper() == "US" or str(ds.get("SOPClassUID", "")) in _TIME_FRAMES


def _classic_frames(ds: Dataset, label: str, *, slice_spacing: float | None, frames_as_channels: bool) -> _Frames:
    count = pixel_layout(ds, label).frames
    row, col = orientation(ds.get("ImageOrientationPatient"), label)
    slope = first_float(ds.get("RescaleSlope")) or 1.0
    intercept = first_float(ds.get("RescaleIntercept")) or 0.0
    between = first_float(ds.get("SpacingBetweenSlices"))
    thickness = first_float(ds.get("SliceThickness"))
    frames = _Frames(
        count=count,
        row=row,
        col=col,
        in_plane=pixel_spacing(ds),
        thickness=between or thickness,
        slopes=np.full(count, slope),
        intercepts=np.full(count, intercept),
        window=display_window(ds),
    )
    if count == 1:
        return frames
    origin = floats(ds.get("ImagePositionPatient"), 3)
    origin = np.zeros(3) if origin is None else origin
    normal = np.cross(row, col)
    pointers = _frame_pointers(ds)
    offsets = floats(ds.get("GridFrameOffsetVector"), count)
    if frames_as_channels or (pointers & _TEMPORAL_POINTERS and slice_spacing is None):
        frames.frame_times = _frame_times(ds, count)
        return frames
    if _GRID_OFFSET_POINTER in pointers and offsets is not None:
        frames.positions = origin + offsets[:, None] * normal
        return frames
    step = slice_spacing or between
    if (step is None or step <= 0) and _frames_are_time(ds):
        log.info(
            "%s: %d frames without slice spacing read as time points (channels): %s frames are a cine "
            "loop or a sequence of captures, not slices; pass slice_spacing (--slice-spacing MM) if they are slices",
            label,
            count,
            "ultrasound" if str(ds.get("Modality", "")).upper() == "US" else "secondary-capture",
        )
        frames.frame_times = _frame_times(ds, count)
        return frames
    if step is None or step <= 0:
        raise GeometryError(
            f"{label} is a multi-frame image without slice spacing: it has {count} frames but no "
            "SpacingBetweenSlices, frame offsets or per-frame positions, so the distance between "
            "frames is unknown. Pass slice_spacing=MM (--slice-spacing MM) if the frames are "
            "slices, or frames_as_channels=True (--frames-as-channels) if they are time points"
        )
    frames.positions = origin + np.arange(count)[:, None] * step * normal
    frames.thickness = step
    return frames


def _enhanced_frames(ds: Dataset, label: str) -> _Frames:
    count = pixel_layout(ds, label).frames
    orient_items = [_functional_item(ds, f, "PlaneOrientationSequence") for f in range(count)]
    vectors = [floats(i.get("ImageOrientationPatient"), 6) for i in orient_items if i is not None]
    iops = {tuple(np.round(v, 4)) for v in vectors if v is not None}
    if len(iops) > 1:
        raise GeometryError(
            f"{label}: frames have {len(iops)} different orientations (a localiser or several "
            "stacks in one file?); medsight reads one stack per file"
        )
    row, col = orientation(orient_items[0].get("ImageOrientationPatient") if orient_items[0] else None, label)
    measures = _functional_item(ds, 0, "PixelMeasuresSequence")
    slopes, intercepts, positions = [], [], []
    for f in range(count):
        transform = _functional_item(ds, f, "PixelValueTransformationSequence") or ds
        slopes.append(first_float(transform.get("RescaleSlope")) or 1.0)
        intercepts.append(first_float(transform.get("RescaleIntercept")) or 0.0)
        plane = _functional_item(ds, f, "PlanePositionSequence")
        positions.append(floats(plane.get("ImagePositionPatient"), 3) if plane is not None else None)
    if any(p is None for p in positions):
        raise GeometryError(f"{label}: some frames lack ImagePositionPatient in their functional groups")
    thickness = None
    if measures is not None:
        thickness = first_float(measures.get("SpacingBetweenSlices")) or first_float(measures.get("SliceThickness"))
    return _Frames(
        count=count,
        row=row,
        col=col,
        in_plane=pixel_spacing(measures, ds),
        thickness=thickness,
        slopes=np.array(slopes),
        intercepts=np.array(intercepts),
        window=display_window(_functional_item(ds, 0, "FrameVOILUTSequence"), ds),
        positions=np.array(positions),
        group_same_position=True,
    )


def _has_frame_positions(ds: Dataset) -> bool:
    return _functional_item(ds, 0, "PlanePositionSequence") is not None


def _assemble(
    values: np.ndarray, frames: _Frames, label: str, *, allow_gaps: bool, ds: Dataset
) -> tuple[np.ndarray, Geometry]:
    """``(F, Y, X, S)`` rescaled frames -> ``(C, Z, Y, X)`` array and its Geometry."""
    in_plane = frames.in_plane or (1.0, 1.0)
    frame_uid = str(ds.get("FrameOfReferenceUID")) if ds.get("FrameOfReferenceUID") else None
    origin = floats(ds.get("ImagePositionPatient"), 3)
    if frames.positions is None:  # one slice; extra frames (time points) become channels
        array = np.ascontiguousarray(np.moveaxis(values, -1, 1).reshape(-1, 1, *values.shape[1:3]))
        z = frames.thickness or 1.0
        first = origin if origin is not None else np.zeros(3)
        return array, stack_geometry(first, frames.row, frames.col, (z, *in_plane), frame_uid)

    normal = np.cross(frames.row, frames.col)
    proj = np.round(frames.positions @ normal, 3)
    per_position = 1
    if frames.group_same_position:
        _, counts = np.unique(proj, return_counts=True)
        if np.any(counts != counts[0]):
            raise GeometryError(
                f"{label}: frames are not a regular stack: positions hold between {counts.min()} "
                f"and {counts.max()} frames each"
            )
        per_position = int(counts[0])
    order = np.lexsort((np.arange(frames.count), proj))
    firsts = order[::per_position]
    plan = plan_stack(
        frames.positions[firsts],
        normal,
        labels=[f"frame {i + 1}" for i in firsts],
        what=label,
        allow_gaps=allow_gaps,
    )
    grouped = values[order].reshape(len(firsts), per_position, *values.shape[1:])  # (Z, k, Y, X, S)
    z = plan.spacing or frames.thickness or 1.0
    if plan.has_gaps:
        grouped = resample_stack(grouped, plan.positions, z)
    nz, k, ny, nx, s = grouped.shape
    array = np.ascontiguousarray(np.transpose(grouped, (1, 4, 0, 2, 3)).reshape(k * s, nz, ny, nx))
    first = frames.positions[firsts[0]]
    return array, stack_geometry(first, frames.row, frames.col, (z, *in_plane), frame_uid)


def dataset_to_volume(
    ds: Dataset,
    *,
    label: str = "DICOM dataset",
    invert_monochrome1: bool = False,
    slice_spacing: float | None = None,
    frames_as_channels: bool = False,
    allow_gaps: bool = False,
) -> Volume:
    """Convert one pydicom dataset (single- or multi-frame) to a :class:`Volume`.

    Frames at distinct positions become slices (Z); frames at one position (cine time
    points, echoes) become channels, with their times in ``metadata.frame_times_ms``.
    Colour images become 3 channels (RGB; YBR and palette colour are converted).

    Args:
        ds: Dataset with pixel data.
        label: Name used in error messages (usually the file path).
        invert_monochrome1: Invert MONOCHROME1 images so that high values are bright.
        slice_spacing: Distance between frames (mm) when the header lacks it.
        frames_as_channels: Treat the frames of a classic multi-frame as time points.
        allow_gaps: Interpolate missing frames of an irregular enhanced stack.
    """
    require_image(ds, label)
    enhanced = _has_frame_positions(ds)
    if enhanced and not frames_as_channels:
        frames = _enhanced_frames(ds, label)
    else:
        frames = _classic_frames(ds, label, slice_spacing=slice_spacing, frames_as_channels=frames_as_channels)
    pixels = decode_frames(ds, label)
    if pixels.shape[0] != frames.count:
        raise InputError(f"{label}: header says {frames.count} frames, pixel data holds {pixels.shape[0]}")
    grey = pixels.shape[-1] == 1
    lut = grey and has_modality_lut(ds)
    if lut:  # a Modality LUT Sequence replaces the rescale (the two are mutually exclusive)
        values = apply_modality_lut_sequence(pixels, ds, label)
    elif grey:
        values = apply_rescale(pixels, frames.slopes, frames.intercepts, bits_range(ds))
    else:
        values = pixels
    array, geometry = _assemble(values, frames, label, allow_gaps=allow_gaps, ds=ds)

    meta = base_metadata(ds, "dicom")
    if frames.in_plane is None:
        log.warning("%s has no pixel spacing; assuming 1 mm", label)
    uniform = len({(a, b) for a, b in zip(frames.slopes, frames.intercepts, strict=True)}) == 1
    rescale = None
    if grey and not lut and uniform and (frames.slopes[0], frames.intercepts[0]) != (1.0, 0.0):
        rescale = (float(frames.slopes[0]), float(frames.intercepts[0]))
    sop = ds.get("SOPInstanceUID")
    meta = meta.replace(
        sop_uids=(str(sop),) if sop else (),
        spacing_assumed=frames.in_plane is None,
        frame_times_ms=frames.frame_times if frames.frame_times and frames.count > 1 else None,
        channel_names=("R", "G", "B") if (not grey and array.shape[0] == 3) else None,
    )
    array, meta = finish_display(
        array, ds, meta, window=frames.window, rescale=rescale, invert_monochrome1=invert_monochrome1
    )
    return Volume(array, geometry, meta)


def read_dicom_file(
    path: str | os.PathLike[str],
    *,
    invert_monochrome1: bool = False,
    slice_spacing: float | None = None,
    frames_as_channels: bool = False,
    allow_gaps: bool = False,
    force: bool = False,
) -> Volume:
    """Read a single DICOM file (2D, classic or enhanced multi-frame) into a Volume.

    See :func:`dataset_to_volume` for the options.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> read_dicom_file(get_testdata_file("CT_small.dcm")).spatial_shape
        (1, 128, 128)
    """
    ds = load_dataset(path, force=force)
    with damaged_header(str(path)):
        return dataset_to_volume(
            ds,
            label=str(path),
            invert_monochrome1=invert_monochrome1,
            slice_spacing=slice_spacing,
            frames_as_channels=frames_as_channels,
            allow_gaps=allow_gaps,
        )
