"""DICOM Comprehensive 3D SR (TID 1500 measurement report) of a prediction, written with highdicom.

One report per DICOM input: the model as the observing device (its device UID, name and
manufacturer), and

- per segment of the input's DICOM SEG (when the model made one): a volumetric ROI group that
  refers to the segment, typed by its coded concept, with its volume in cm3 counted from the SEG
  (a fractional SEG: its voxels of probability 0.5 or more);
- per finding a 3D detection model located: a volumetric ROI group whose region is the finding's
  ball as an ellipsoid (SCOORD3D in the images' frame of reference), with its diameter (mm) and
  the model's probability;
- per box a 2D detection model drew (mammography, chest X-rays): a planar ROI group (TID 1410)
  whose region is the box as a closed polyline (SCOORD) in the image's pixels, referring to that
  image, with the model's probability;
- one group for the whole image with every figure of the prediction (probabilities, volumes per
  structure, candidates...), each a measurement coded by its column name (local scheme
  ``99MEDSIGHT``) with its unit (cm3 for ``*_ml``, no units otherwise).

A negative study (nothing segmented) gets its report without a SEG: the figures say what was
measured. Reports are COMPLETE and UNVERIFIED (an algorithm's result, no one signed it).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsight.core.errors import InputError
from medsight.core.volume import Volume
from medsight.export.dicom_seg import (
    Algorithm,
    built_from,
    contributing_equipment,
    highdicom,
    segment_concepts,
    source_headers,
)
from medsight.io.atomic import atomic_file
from medsight.tasks.results import BoxFinding, Finding

__all__ = ["write_measurement_report"]

log = logging.getLogger(__name__)


def _code(name: str) -> Any:
    return highdicom().sr.CodedConcept(value=name[:16], scheme_designator="99MEDSIGHT", meaning=name[:64])


def _unit(name: str) -> Any:
    from pydicom.sr.codedict import codes

    return codes.UCUM.CubicCentimeter if name.endswith("_ml") or "_ml_" in name else codes.UCUM.NoUnits


def _segment_volumes(seg: Any, sop_uids: tuple[str, ...], voxel_ml: float) -> dict[int, float]:
    """Each segment's volume (cm3) counted from the SEG's own pixels on the source images' grid (of a
    fractional SEG: the voxels of probability 0.5 or more, what a binary SEG would hold)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom's notes on the source's person names
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=list(sop_uids), combine_segments=False)
    inside = pixels >= 0.5 if str(seg.SegmentationType) == "FRACTIONAL" else pixels.astype(bool)
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    return {n: float(inside[..., k].sum()) * voxel_ml for k, n in enumerate(numbers)}


def _box_groups(findings: Sequence[BoxFinding], sources: Sequence[Any], identification: Any) -> list[Any]:
    """A TID 1410 group per box: the box as a closed polyline in the pixels of the one source image,
    and its probability."""
    if not findings:
        return []
    if len(sources) != 1 or int(sources[0].get("NumberOfFrames", 1) or 1) != 1:
        raise InputError(f"the boxes are in the pixels of one image; this input has {len(sources)} instance(s) or "
                         "several frames: predict its images one by one")  # fmt: skip
    hd = highdicom()
    from pydicom.sr.codedict import codes

    image = hd.sr.SourceImageForRegion(referenced_sop_class_uid=str(sources[0].SOPClassUID),
                                       referenced_sop_instance_uid=str(sources[0].SOPInstanceUID))  # fmt: skip
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    groups = []
    for number, finding in enumerate(findings, start=1):
        x0, y0, x1, y1 = (float(v) for v in finding.box_px)
        x0, x1 = sorted((min(max(x0, 0.0), columns), min(max(x1, 0.0), columns)))
        y0, y1 = sorted((min(max(y0, 0.0), rows), min(max(y1, 0.0), rows)))
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], np.float32)
        region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=corners,
                                   source_image=image)  # fmt: skip
        measured = [hd.sr.Measurement(name=_code("probability"), value=round(float(finding.probability), 4),
                                      unit=codes.UCUM.NoUnits, algorithm_id=identification)]  # fmt: skip
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{finding.name} {number}"[:64]),
            referenced_region=region, finding_type=segment_concepts(finding.name)[1],
            algorithm_id=identification, measurements=measured))  # fmt: skip
    return groups


def _finding_groups(findings: Sequence[Finding], sources: Sequence[Any], identification: Any) -> list[Any]:
    """A TID 1411 group per finding: the ball of its diameter about its centre as an ellipsoid (its
    three axes along x, y and z), its diameter (mm) and probability."""
    if not findings:
        return []
    hd = highdicom()
    from pydicom.sr.codedict import codes

    frame = str(sources[0].get("FrameOfReferenceUID", ""))
    if not frame:
        raise InputError("the source images have no Frame of Reference UID; the findings cannot be placed in them")
    series = hd.sr.SourceSeriesForSegmentation(str(sources[0].SeriesInstanceUID))
    groups = []
    for number, finding in enumerate(findings, start=1):
        centre, radius = np.asarray(finding.centre_mm, float), max(float(finding.diameter_mm), 0.1) / 2
        axes = np.concatenate([[centre - radius * axis, centre + radius * axis] for axis in np.eye(3)])
        surface = hd.sr.VolumeSurface(graphic_type=hd.sr.GraphicTypeValues3D.ELLIPSOID, graphic_data=axes,
                                      frame_of_reference_uid=frame, source_series=series)  # fmt: skip
        measured = [
            hd.sr.Measurement(name=codes.SCT.Diameter, value=round(float(finding.diameter_mm), 3),
                              unit=codes.UCUM.Millimeter, algorithm_id=identification),
            hd.sr.Measurement(name=_code("probability"), value=round(float(finding.probability), 4),
                              unit=codes.UCUM.NoUnits, algorithm_id=identification),
        ]  # fmt: skip
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{finding.name} {number}"[:64]),
            referenced_volume_surface=surface, finding_type=segment_concepts(finding.name)[1],
            algorithm_id=identification, measurements=measured))  # fmt: skip
    return groups


def write_measurement_report(
    image: Volume,
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    algorithm: Algorithm,
    figures: Mapping[str, float],
    segmentation: str | os.PathLike[str] | None = None,
    findings: Sequence[Finding | BoxFinding] = (),
    series_number: int = 901,
    headers: Sequence[Any] | None = None,
) -> Path:
    """Write the TID 1500 report of one DICOM input (``image``, read from ``source``) to ``out``:
    ``figures`` (name -> value; non-finite values are left out) for the whole image, a group per
    segment of ``segmentation`` (the input's DICOM SEG, if one was written), and a group per
    located finding: a 3D detection's ball as an ellipsoid (SCOORD3D) in the images' frame of
    reference, with its diameter and probability; a 2D detection's box as a closed polyline
    (SCOORD) in the image's pixels, with its probability. Returns ``out``.

    ``headers``: the source files' headers (:func:`source_headers`) when the caller has them.

    Raises:
        InputError: ``image`` was not read from DICOM, its source images are gone, or
            ``segmentation`` is not a SEG of them.
        ConfigError: highdicom is not installed.
    """
    hd = highdicom()
    import pydicom
    from pydicom.sr.codedict import codes

    source, out = Path(source), Path(out)
    sources = list(headers or source_headers(image, source))
    identification = hd.sr.AlgorithmIdentification(name=algorithm.name[:64], version=algorithm.version)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_uid, name=algorithm.name[:64], manufacturer_name="medsight",
            model_name=algorithm.name[:64]),
    )  # fmt: skip
    groups: list[Any] = []
    evidence = list(sources)
    if segmentation is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = hd.seg.segread(segmentation)
        referenced = {str(r.ReferencedSOPInstanceUID) for item in seg.ReferencedSeriesSequence
                      for r in item.ReferencedInstanceSequence}  # fmt: skip
        if not referenced <= set(image.metadata.sop_uids):
            raise InputError(f"{segmentation} is not a DICOM SEG of the images under {source}")
        spacing = image.geometry.spacing
        volumes = _segment_volumes(seg, image.metadata.sop_uids, float(np.prod(spacing)) / 1000.0)
        for item in seg.SegmentSequence:
            number = int(item.SegmentNumber)
            referenced_segment = hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(str(sources[0].SeriesInstanceUID)))  # fmt: skip
            volume = hd.sr.Measurement(name=codes.SCT.Volume, value=round(volumes[number], 4),
                                       unit=codes.UCUM.CubicCentimeter, algorithm_id=identification)  # fmt: skip
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=str(item.SegmentLabel)),
                referenced_segment=referenced_segment,
                finding_type=hd.sr.CodedConcept.from_dataset(item.SegmentedPropertyTypeCodeSequence[0]),
                algorithm_id=identification, measurements=[volume]))  # fmt: skip
        evidence.append(pydicom.dcmread(segmentation, stop_before_pixels=True))
    groups += _finding_groups([f for f in findings if isinstance(f, Finding)], sources, identification)
    groups += _box_groups([f for f in findings if isinstance(f, BoxFinding)], sources, identification)
    measured = [
        hd.sr.Measurement(name=_code(name), value=float(value), unit=_unit(name), algorithm_id=identification)
        for name, value in figures.items()
        if isinstance(value, int | float | np.number) and math.isfinite(float(value))
    ]
    if measured or not groups:
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="whole image"),
            algorithm_id=identification, measurements=measured or None))  # fmt: skip
    modality = str(sources[0].get("Modality", ""))
    procedure = codes.LN.CTUnspecifiedBodyRegion if modality == "CT" else codes.SCT.ImagingProcedure
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=device),
                                     procedure_reported=procedure, imaging_measurements=groups)  # fmt: skip
    with built_from(source, "SR"):
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence, content=report, series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medsight", is_complete=True,
            series_description=f"{algorithm.name} results"[:64],
            contributing_equipment=[contributing_equipment(algorithm)],
        )  # fmt: skip
    with atomic_file(out) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    log.info("%s: measurement report (%d group(s)) written to %s", source, len(groups), out)
    return out
