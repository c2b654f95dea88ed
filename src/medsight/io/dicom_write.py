"""Write a Volume as a DICOM series: CT or MR Image Storage, one file per slice."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from medsight import __version__
from medsight.core.errors import InputError
from medsight.core.volume import Volume
from medsight.io.atomic import atomic_dir, atomic_file

__all__ = ["projection_orientation", "write_dicom_image", "write_dicom_series"]

log = logging.getLogger(__name__)

_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}
_INT16 = np.iinfo(np.int16)
_PROJECTION_CLASS = {
    "MG": DigitalMammographyXRayImageStorageForPresentation,
    "DX": DigitalXRayImageStorageForPresentation,
    "CR": ComputedRadiographyImageStorage,
}


def _ds_number(value: float) -> str:
    """Format a float for a DS element (at most 16 characters)."""
    text = f"{value:.10g}"
    if len(text) > 16:
        text = f"{value:.6e}" if abs(value) >= 1e6 or (value != 0 and abs(value) < 1e-4) else f"{value:.8f}"
        text = text[:16]
    return text


def _to_stored(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Convert values to int16 storage; return (stored, slope, intercept).

    Integer data within int16 (or float data holding only such integers) is stored as is
    (slope 1, intercept 0). Other data is scaled linearly onto the int16 range; the
    rounding error is at most half a step of ``(max - min) / 65535``.
    """
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise InputError("volume holds NaN or infinite values; DICOM cannot store them (replace them first)")
    lo, hi = float(array.min()), float(array.max())
    integral = np.issubdtype(array.dtype, np.integer) or bool(np.all(np.mod(array, 1) == 0))
    if integral and lo >= _INT16.min and hi <= _INT16.max:
        return array.astype(np.int16), 1.0, 0.0
    slope = (hi - lo) / float(_INT16.max - _INT16.min) if hi > lo else 1.0
    intercept = lo - _INT16.min * slope
    stored = np.clip(np.rint((array.astype(np.float64) - intercept) / slope), _INT16.min, _INT16.max)
    log.info("scaling values [%g, %g] to int16 with slope %g, intercept %g", lo, hi, slope, intercept)
    return stored.astype(np.int16), slope, intercept


def _identity(
    *,
    sop_class: str,
    modality: str,
    study_uid: str,
    series_uid: str,
    patient_id: str,
    patient_name: str,
    series_description: str,
    series_number: int,
) -> Dataset:
    """Patient, study, series and equipment attributes every written object shares."""
    now = _dt.datetime.now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.SeriesDate = ds.StudyDate
    ds.StudyTime = now.strftime("%H%M%S")
    ds.SeriesTime = ds.StudyTime
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "medsight"
    ds.SoftwareVersions = __version__
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = ""
    ds.SeriesNumber = series_number
    ds.SamplesPerPixel = 1
    return ds


def _file_meta(ds: Dataset, sop_uid: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SOPInstanceUID = sop_uid


def _base_dataset(
    volume: Volume,
    *,
    modality: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    patient_id: str,
    patient_name: str,
    series_description: str,
    series_number: int,
) -> Dataset:
    ds = _identity(
        sop_class=_SOP_CLASS[modality],
        modality=modality,
        study_uid=study_uid,
        series_uid=series_uid,
        patient_id=patient_id,
        patient_name=patient_name,
        series_description=series_description,
        series_number=series_number,
    )
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if modality == "CT" else "OTHER"]
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    if modality == "CT":
        ds.KVP = ""
    else:
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = ""
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


# what a converted series keeps from its source (patient, study, equipment, acquisition)
_KEPT = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientSize", "PatientWeight", "EthnicGroup", "PatientComments",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "StudyDescription",
    "ReferringPhysicianName", "InstitutionName", "InstitutionAddress", "StationName",
    "Manufacturer", "ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions",
    "SeriesDescription", "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime", "ContentDate",
    "ContentTime", "BodyPartExamined", "ProtocolName", "PatientPosition", "ContrastBolusAgent",
    "KVP", "XRayTubeCurrent", "ExposureTime", "Exposure", "ConvolutionKernel", "FilterType",
    "GeneratorPower", "FocalSpots", "DataCollectionDiameter", "ReconstructionDiameter",
    "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "SequenceName",
    "RepetitionTime", "EchoTime", "InversionTime", "EchoTrainLength", "FlipAngle", "MagneticFieldStrength",
    "ImagingFrequency", "ImagedNucleus", "NumberOfAverages", "PixelBandwidth", "ReceiveCoilName",
    "TransmitCoilName", "InPlanePhaseEncodingDirection",
)  # fmt: skip


def _keep_source(ds: Dataset, source: Dataset, slope: float, intercept: float) -> None:
    """Copy the source's identity and acquisition attributes; record the derivation."""
    for keyword in _KEPT:
        if keyword in source:
            ds[keyword] = source[keyword]
    if "SpecificCharacterSet" in source:
        ds.SpecificCharacterSet = source.SpecificCharacterSet
    ds.ImageType = ["DERIVED", "SECONDARY", *list(source.get("ImageType", ["", ""]))[2:3]]
    rescale = "" if (slope, intercept) == (1.0, 0.0) else f"; values rescaled to int16 (slope {slope:g})"
    ds.DerivationDescription = (
        f"converted by medsight {__version__} from series {source.get('SeriesInstanceUID', 'unknown')}{rescale}"
    )[:1024]
    ds.SeriesDescription = str(source.get("SeriesDescription", "") or "medsight")[:64]


def write_dicom_series(
    volume: Volume,
    folder: str | os.PathLike[str],
    *,
    modality: str | None = None,
    patient_id: str | None = None,
    patient_name: str = "Anonymous^",  # family name only: a one-component name is ambiguous in DICOM
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_description: str = "medsight",
    series_number: int = 1,
    overwrite: bool = False,
    source: Dataset | None = None,
) -> list[Path]:
    """Write a single-channel volume as a DICOM series, one file per slice.

    Geometry is exact: ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
    SliceThickness and SpacingBetweenSlices come from ``volume.geometry``; slices are
    written in increasing position along the slice normal (the order DICOM readers sort
    into). Values are stored as int16 with RescaleSlope/Intercept (see ``_to_stored``).
    The folder appears complete or not at all.

    Args:
        volume: Single-channel volume; its metadata supplies UIDs and window when present.
        folder: Output folder (created; must be empty or absent unless ``overwrite``).
        modality: ``"CT"`` or ``"MR"``; default: the volume's modality if one of them, else CT.
        patient_id: Defaults to the volume's, else ``"ANON"``.
        patient_name: DICOM PatientName.
        study_uid: Defaults to the volume's study UID, else a new one.
        series_uid: Defaults to a new UID (a written series is a new series).
        series_description: DICOM SeriesDescription.
        series_number: DICOM SeriesNumber.
        overwrite: Replace a non-empty ``folder``.
        source: Header of the DICOM series this volume was read from (a conversion): its
            patient, study, equipment and acquisition attributes are kept (new series and
            instance UIDs; ``DerivationDescription`` says what was done).

    Returns:
        Paths of the written files in slice order.
    """
    meta = volume.metadata
    modality = (modality or (meta.modality if meta.modality in _SOP_CLASS else "CT")).upper()
    if modality not in _SOP_CLASS:
        raise InputError(f"modality must be one of {sorted(_SOP_CLASS)} for a DICOM series, got {modality!r}")
    if volume.channels != 1:
        raise InputError(
            f"a DICOM CT/MR series holds one channel; this volume has {volume.channels}. "
            "Write one channel at a time (volume.with_array(volume.array[i:i+1]))"
        )
    geo = volume.geometry
    d = geo.direction_matrix
    row_dir, col_dir = d[:, 2], d[:, 1]
    normal = np.cross(row_dir, col_dir)
    array = volume.array[0]
    origin = np.asarray(geo.origin)
    if float(np.dot(normal, d[:, 0])) < 0:  # store slices in increasing position along the normal
        origin = origin + d[:, 0] * geo.spacing[0] * (array.shape[0] - 1)
        array = array[::-1]
    stored, slope, intercept = _to_stored(array)

    frame_uid = geo.frame_of_reference_uid or generate_uid()
    base = _base_dataset(
        volume,
        modality=modality,
        study_uid=study_uid or meta.study_uid or generate_uid(),
        series_uid=series_uid or generate_uid(),
        frame_uid=frame_uid,
        patient_id=patient_id or meta.patient_id or "ANON",
        patient_name=patient_name,
        series_description=series_description,
        series_number=series_number,
    )
    if source is not None:
        _keep_source(base, source, slope, intercept)
    base.Rows, base.Columns = int(stored.shape[1]), int(stored.shape[2])
    base.PixelSpacing = [_ds_number(geo.spacing[1]), _ds_number(geo.spacing[2])]
    base.SliceThickness = _ds_number(geo.spacing[0])
    base.SpacingBetweenSlices = _ds_number(geo.spacing[0])
    base.ImageOrientationPatient = [_ds_number(v) for v in (*row_dir, *col_dir)]
    base.RescaleIntercept = _ds_number(intercept)
    base.RescaleSlope = _ds_number(slope)
    if modality == "CT":
        base.RescaleType = "HU"
    if meta.window is not None:
        base.WindowCenter = _ds_number(meta.window[0])
        base.WindowWidth = _ds_number(meta.window[1])

    step = d[:, 0] * geo.spacing[0] * (1 if float(np.dot(normal, d[:, 0])) >= 0 else -1)
    written: list[Path] = []
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        for k in range(stored.shape[0]):
            ds = Dataset()
            ds.update(base)
            _file_meta(ds, generate_uid())
            ds.InstanceNumber = k + 1
            position = origin + step * k
            ds.ImagePositionPatient = [_ds_number(v) for v in position]
            ds.SliceLocation = _ds_number(float(np.dot(position, normal)))
            ds.PixelData = np.ascontiguousarray(stored[k]).astype("<i2", copy=False).tobytes()
            name = f"slice_{k + 1:04d}.dcm"
            pydicom.dcmwrite(tmp / name, ds, enforce_file_format=True)
            written.append(Path(folder) / name)
    log.info("wrote %d %s slices to %s", len(written), modality, folder)
    return written


_ORIENTATION = re.compile(r"[APRLHF]{1,3}")
_VIEW_CODES = {  # mammography views (DICOM CID 4014, SNOMED CT)
    "CC": ("399162004", "SCT", "cranio-caudal"),
    "MLO": ("399368009", "SCT", "medio-lateral oblique"),
    "ML": ("399260004", "SCT", "medio-lateral"),
    "LM": ("399352003", "SCT", "latero-medial"),
}


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


_CC_VIEWS = {"CC", "XCC", "XCCL", "XCCM", "FB"}
_OBLIQUE_VIEWS = {"MLO", "LMO", "SIO"}


def projection_orientation(modality: str, laterality: str | None, view: str | None) -> list[str]:
    """PatientOrientation of a projection image laid out as radiographs conventionally are: a chest
    film as it is hung, PA (and any film whose view is not said) ``L F`` (rows to the patient's left,
    columns to the feet), AP ``R F``, lateral ``P F`` (anterior at the left); a mammogram with the
    chest wall at the left of a left breast's image and at the right of a right breast's (the nipple
    pointing into the image): CC ``A R`` / ``P L``, MLO ``A FR`` / ``P FL``, ML and LM ``A F`` /
    ``P F``. Empty for a mammogram whose side or view is not said (the writer does not guess)."""
    view = (view or "").upper()
    if modality.upper() == "MG":
        if laterality not in ("L", "R") or not view:
            return []
        row = "A" if laterality == "L" else "P"
        across = "R" if laterality == "L" else "L"
        if view in _CC_VIEWS:
            return [row, across]
        if view in _OBLIQUE_VIEWS:
            return [row, "F" + across]
        return [row, "F"] if view in ("ML", "LM") else []
    if view == "AP":
        return ["R", "F"]
    return ["P", "F"] if view in ("LL", "RL", "LATERAL", "LAT") else ["L", "F"]


def write_dicom_image(
    volume: Volume,
    path: str | os.PathLike[str],
    *,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    laterality: str | None = None,
    view: str | None = None,
    patient_id: str | None = None,
    patient_name: str = "Anonymous^",  # family name only: a one-component name is ambiguous in DICOM
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_description: str = "medsight",
    orientation: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a one-slice, one-channel projection image (MG, DX or CR "for presentation").

    Values must be non-negative integers, higher meaning brighter on display. With
    ``photometric="MONOCHROME1"`` they are stored inverted (``2**bits_stored - 1 - value``),
    as many radiography and mammography systems do; readers that honour MONOCHROME1 show
    the same picture.

    Args:
        volume: ``(1, 1, rows, cols)`` integer values.
        path: Output file (written atomically).
        modality: ``"MG"`` (Digital Mammography), ``"DX"`` or ``"CR"``.
        photometric: ``"MONOCHROME2"`` or ``"MONOCHROME1"``.
        bits_stored: 8-16; default: the fewest of 8, 10, 12, 14, 16 that hold the values.
        laterality: ImageLaterality ``"L"``/``"R"`` (mammography).
        view: ViewPosition, e.g. ``"CC"``, ``"MLO"``, ``"PA"``.
        patient_id: Defaults to the volume's, else ``"ANON"``.
        patient_name: DICOM PatientName.
        study_uid: Defaults to the volume's study UID, else a new one.
        series_uid: Defaults to a new UID.
        series_description: DICOM SeriesDescription.
        orientation: PatientOrientation, where the rows and the columns point (e.g. ``("L", "F")``).
            Default: the radiographic conventions for ``view`` (and for mammograms ``laterality``),
            :func:`projection_orientation`; give it where the pixels are laid out otherwise.
        overwrite: Replace an existing file.
    """
    modality = modality.upper()
    if modality not in _PROJECTION_CLASS:
        raise InputError(
            f"modality must be one of {sorted(_PROJECTION_CLASS)} for a projection image, got {modality!r}"
        )
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if volume.channels != 1 or volume.spatial_shape[0] != 1:
        raise InputError(f"a projection image has one channel and one slice; got shape {volume.array.shape}")
    values = volume.array[0, 0]
    integral = values.dtype.kind in "iub" or bool(np.all(np.mod(values, 1) == 0))
    lo, hi = float(values.min()), float(values.max())
    if not integral or lo < 0 or hi > 65535:
        raise InputError(
            f"projection images store integers 0..65535; values are {lo:g}..{hi:g} ({values.dtype}). "
            "Scale them first (e.g. to 12 bits)"
        )
    if bits_stored is None:
        bits_stored = next(b for b in (8, 10, 12, 14, 16) if hi < 2**b)
    if not 8 <= bits_stored <= 16 or hi >= 2**bits_stored:
        raise InputError(f"bits_stored {bits_stored} cannot hold values up to {hi:g}")
    stored = values.astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (2**bits_stored - 1 - stored.astype(np.int32)).astype(np.uint16)

    meta = volume.metadata
    ds = _identity(
        sop_class=_PROJECTION_CLASS[modality],
        modality=modality,
        study_uid=study_uid or meta.study_uid or generate_uid(),
        series_uid=series_uid or generate_uid(),
        patient_id=patient_id or meta.patient_id or "ANON",
        patient_name=patient_name,
        series_description=series_description,
        series_number=1,
    )
    _file_meta(ds, generate_uid())
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.InstanceNumber = 1
    given = list(orientation) if orientation is not None else projection_orientation(modality, laterality, view)
    if given and (len(given) != 2 or not all(_ORIENTATION.fullmatch(str(v)) for v in given)):
        raise InputError(f"orientation is two directions of the letters A, P, R, L, H, F (e.g. L F); got {given}")
    ds.PatientOrientation = [str(v) for v in given] if given else ""
    ds.ImageLaterality = laterality or "U"  # U: unpaired (a chest film has no side)
    ds.ViewPosition = view or ""
    ds.BodyPartExamined = "BREAST" if modality == "MG" else ""
    if modality != "CR":  # the digital X-ray family: what was imaged (Type 2: empty where not known)
        ds.AnatomicRegionSequence = [_code("76752008", "SCT", "Breast")] if modality == "MG" else []
        ds.DetectorType = ""
        ds.PositionerType = "MAMMOGRAPHIC" if modality == "MG" else ""
        ds.AcquisitionContextSequence = []
    if modality == "MG":
        ds.OrganExposed = "BREAST"
        if (view or "").upper() in _VIEW_CODES:
            view_code = _code(*_VIEW_CODES[(view or "").upper()])
            view_code.ViewModifierCodeSequence = []  # no spot compression, magnification...
            ds.ViewCodeSequence = [view_code]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    # "for presentation": brighter where less of the beam came through (denser tissue), as displayed
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1 if photometric == "MONOCHROME2" else 1
    ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
    spacing = [_ds_number(volume.geometry.spacing[1]), _ds_number(volume.geometry.spacing[2])]
    ds.ImagerPixelSpacing = spacing
    ds.PixelSpacing = spacing
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    if meta.window is not None:
        ds.WindowCenter = _ds_number(meta.window[0])
        ds.WindowWidth = _ds_number(meta.window[1])
    else:  # a presentation image carries its window: the one medsight would choose (0.5-99.5th percentiles)
        low, high = (float(v) for v in np.percentile(stored.astype(np.float64), [0.5, 99.5]))
        ds.WindowCenter = _ds_number((low + high) / 2)
        ds.WindowWidth = _ds_number(max(high - low, 1.0))
    ds.PixelData = np.ascontiguousarray(stored).astype("<u2", copy=False).tobytes()
    with atomic_file(path, overwrite=overwrite) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    log.info("wrote %s image %s", modality, path)
    return Path(path)
