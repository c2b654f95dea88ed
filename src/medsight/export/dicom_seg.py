"""DICOM Segmentation objects (SEG) of predicted label maps, written with highdicom.

A SEG refers to the images it segments: the label map must lie on the grid of a DICOM input
(``medsight predict`` resamples its maps back to each input's grid), and the source files are found
by the SOP Instance UIDs the reader recorded. Each class of the task becomes a segment (binary,
empty frames omitted; or fractional, each structure's probability in 8 bits) with coded concepts
(SNOMED CT where the class name is a known one, else a local code), marked as made by an automatic,
AI algorithm; every object carries the model as contributing equipment with a device UID that
changes with the model's weights (IHE AI Results). A prediction with no structure at all writes no
SEG: the result is reported without one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsight import __version__
from medsight.core.errors import ConfigError, InputError
from medsight.core.labels import class_color
from medsight.core.volume import Volume
from medsight.io.atomic import atomic_file, file_sha256
from medsight.io.formats import files_under

__all__ = [
    "Algorithm",
    "built_from",
    "contributing_equipment",
    "highdicom",
    "on_grid",
    "segment_concepts",
    "source_headers",
    "write_fractional_segmentation",
    "write_segmentation",
]

log = logging.getLogger(__name__)

_INSTALL = "pip install 'medsight[export]'"
# lower-case class names -> (category, type) as pydicom's SNOMED CT names (looked up, never typed in)
_KNOWN = {
    "ncr": ("MorphologicallyAbnormalStructure", "Necrosis"),
    "necrosis": ("MorphologicallyAbnormalStructure", "Necrosis"),
    "ed": ("MorphologicallyAbnormalStructure", "Edema"),
    "edema": ("MorphologicallyAbnormalStructure", "Edema"),
    "oedema": ("MorphologicallyAbnormalStructure", "Edema"),
    "et": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "tumour": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "tumor": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "neoplasm": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "lesion": ("MorphologicallyAbnormalStructure", "Lesion"),
    "nodule": ("MorphologicallyAbnormalStructure", "Nodule"),
    "mass": ("MorphologicallyAbnormalStructure", "Mass"),
    "lv": ("AnatomicalStructure", "LeftVentricle"),
    "rv": ("AnatomicalStructure", "RightVentricle"),
    "myo": ("AnatomicalStructure", "LeftVentricleMyocardium"),
    "myocardium": ("AnatomicalStructure", "LeftVentricleMyocardium"),
}


@dataclass(frozen=True)
class Algorithm:
    """The model that made a result, as every DICOM object it writes names it.

    Attributes:
        name: The model's name (its recipe).
        version: The model's version (a prefix of its weights' SHA-256).
        device_uid: A UID derived from the weights: another model version, another device.
    """

    name: str
    version: str
    device_uid: str

    @classmethod
    def of_weights(cls, name: str, weights: str | os.PathLike[str]) -> Algorithm:
        """The algorithm whose weights are the file ``weights`` (hashed: its version and device UID)."""
        from pydicom.uid import generate_uid

        sha = file_sha256(weights)
        return cls(name=name, version=sha[:12], device_uid=str(generate_uid(entropy_srcs=["medsight", name, sha])))


def highdicom() -> Any:
    """The highdicom module (ConfigError with the install command where it is missing)."""
    try:
        import highdicom
    except ImportError as exc:
        raise ConfigError(f"writing DICOM SEG needs highdicom: {_INSTALL}") from exc
    return highdicom


def segment_concepts(name: str) -> tuple[Any, Any]:
    """The (category, type) coded concepts of a class named ``name``: SNOMED CT for the names of
    medsight's recipes (BraTS NCR/ED/ET, ACDC LV/RV/MYO, nodule...), else category Tissue and a
    local code (scheme ``99MEDSIGHT``) holding the name."""
    from pydicom.sr.codedict import codes

    hd = highdicom()
    known = _KNOWN.get(name.strip().lower())
    if known is not None:
        category, kind = (getattr(codes.SCT, n) for n in known)
        return category, kind
    local = hd.sr.CodedConcept(value=name[:16] or "class", scheme_designator="99MEDSIGHT", meaning=name[:64] or "class")
    return codes.SCT.Tissue, local


def source_headers(image: Volume, source: str | os.PathLike[str]) -> list[Any]:
    """The headers of the DICOM files under ``source`` that ``image`` was read from, in its slice
    order (what a SEG or SR refers to).

    Raises:
        InputError: ``image`` was not read from DICOM, or some of its files are gone.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    source = Path(source)
    sop_uids = image.metadata.sop_uids
    if image.metadata.source_format not in ("dicom", "dicom-series") or not sop_uids:
        raise InputError(f"{source} was not read from DICOM images; DICOM SEG and SR refer to DICOM images (its "
                         "results stay in the CSV and the label map)")  # fmt: skip
    if image.metadata.frame_times_ms:
        raise InputError(f"{source} is a multi-frame cine; DICOM results referring to its frames are not written "
                         "yet (its results stay in the CSV)")  # fmt: skip
    wanted = set(sop_uids)
    found: dict[str, Any] = {}
    for path in [source] if source.is_file() else files_under(source) if source.is_dir() else []:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid in wanted:
            found[uid] = ds
    missing = [uid for uid in sop_uids if uid not in found]
    if missing:
        raise InputError(
            f"{source}: {len(missing)} of the {len(sop_uids)} images the prediction was made on are no longer "
            "there (moved or deleted?); DICOM results must refer to them: predict again"
        )
    return [found[uid] for uid in sop_uids]


def on_grid(labels: np.ndarray, image: Volume, source: Path) -> np.ndarray:
    """``labels`` as an array, refused unless it has ``image``'s spatial shape (its grid)."""
    labels = np.asarray(labels)
    if labels.shape != tuple(image.spatial_shape):
        raise InputError(f"the label map {list(labels.shape)} is not on the grid of {source} "
                         f"{list(image.spatial_shape)}")  # fmt: skip
    return labels


@contextmanager
def built_from(source: Path, what: str) -> Iterator[None]:
    """Turn highdicom's refusal of a source's headers (a missing patient or study attribute, an
    inconsistent series) into an InputError naming the source; our own bugs still surface."""
    try:
        yield
    except (AttributeError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"cannot write a DICOM {what} for {source}: its headers do not allow it "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})"
        ) from exc


def contributing_equipment(algorithm: Algorithm) -> Any:
    """The model as contributing (processing) equipment, with its device UID (IHE AI Results)."""
    from pydicom.sr.codedict import codes

    equipment = highdicom().ContributingEquipment(
        manufacturer="medsight", purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=algorithm.name[:64], software_versions=(__version__, algorithm.version),
        contribution_description="results of a deep learning model")  # fmt: skip
    equipment.DeviceUID = algorithm.device_uid
    return equipment


def _dicom_source(image: Volume, source: Path, slices: int) -> None:
    """Refuse what a SEG cannot refer to: an image not read from DICOM, or multi-frame sources."""
    sop_uids = image.metadata.sop_uids
    if image.metadata.source_format not in ("dicom", "dicom-series") or not sop_uids:
        raise InputError(f"{source} was not read from DICOM images; a DICOM SEG refers to DICOM images (the label "
                         "map stays as written)")  # fmt: skip
    if len(sop_uids) != slices:
        raise InputError(f"{source}: {len(sop_uids)} images for {slices} slices; a SEG of multi-frame "
                         "sources is not written yet")  # fmt: skip


def write_segmentation(
    image: Volume,
    labels: np.ndarray,
    source: str | os.PathLike[str],
    classes: Sequence[tuple[int, str]],
    out: str | os.PathLike[str],
    *,
    algorithm: Algorithm,
    series_number: int = 900,
    headers: Sequence[Any] | None = None,
) -> Path | None:
    """Write ``labels`` (class codes on ``image``'s grid, ``(Z, Y, X)``) as a binary DICOM SEG of the
    DICOM images under ``source`` that ``image`` was read from; ``classes``: ``(code, name)`` of each
    segment. Returns the file written, or None when no class has a voxel (nothing is written).

    ``headers``: the source files' headers (:func:`source_headers`) when the caller has them.

    Raises:
        InputError: ``image`` was not read from DICOM, the label map is not on its grid, holds codes
            that are not ``classes``', or the source images are gone.
        ConfigError: highdicom is not installed.
    """
    source = Path(source)
    labels = on_grid(labels, image, source)
    _dicom_source(image, source, labels.shape[0])
    codes_known = {int(code) for code, _ in classes}
    unknown = sorted(set(np.unique(labels).tolist()) - codes_known - {0})
    if unknown:
        raise InputError(f"the label map holds codes {unknown[:5]} that are no class's ({sorted(codes_known)})")
    present = [(k, code, name) for k, (code, name) in enumerate(classes) if (labels == code).any()]
    if not present:
        log.info("%s: no structure predicted; no DICOM SEG written", source)
        return None
    numbered = np.zeros(labels.shape, np.uint8)  # segments are numbered 1..K in the order of the classes present
    for number, (_, code, _) in enumerate(present, start=1):
        numbered[labels == code] = number
    segments = [(name, class_color(k)) for k, _, name in present]  # the overlay's colours too
    return _write(image, source, Path(out), numbered, segments, "BINARY", algorithm, series_number, headers)


def write_fractional_segmentation(
    image: Volume,
    probabilities: np.ndarray,
    source: str | os.PathLike[str],
    names: Sequence[str],
    out: str | os.PathLike[str],
    *,
    algorithm: Algorithm,
    series_number: int = 900,
    headers: Sequence[Any] | None = None,
) -> Path | None:
    """Write probability maps (``(S, Z, Y, X)`` on ``image``'s grid, one per structure ``names``:
    uint8 with 255 = 1, or floats in [0, 1]) as a fractional DICOM SEG (PROBABILITY, 8 bits) of the
    DICOM images under ``source``. A structure is a segment where some voxel reaches 0.5 (where a
    binary SEG would have it); returns None when none does (nothing is written).

    Raises:
        InputError: as :func:`write_segmentation`; the maps are not one per name, or outside [0, 1].
        ConfigError: highdicom is not installed.
    """
    source = Path(source)
    maps = np.asarray(probabilities)
    if maps.ndim != 4 or maps.shape[0] != len(names):
        raise InputError(f"{len(names)} probability map(s) expected ({', '.join(names)}), got an array of shape "
                         f"{list(maps.shape)}")  # fmt: skip
    for plane in maps:
        on_grid(plane, image, source)
    _dicom_source(image, source, maps.shape[1])
    scaled = maps.astype(np.float32) / 255.0 if maps.dtype == np.uint8 else maps.astype(np.float32)
    if not np.isfinite(scaled).all() or scaled.min() < 0 or scaled.max() > 1:
        raise InputError(f"the probability maps of {source} hold values outside [0, 1]")
    present = [k for k in range(len(names)) if (scaled[k] >= 0.5).any()]
    if not present:
        log.info("%s: no structure reaches probability 0.5; no DICOM SEG written", source)
        return None
    pixels = np.stack([scaled[k] for k in present], axis=-1)  # (Z, Y, X, segments)
    segments = [(names[k], class_color(k)) for k in present]
    return _write(image, source, Path(out), pixels, segments, "FRACTIONAL", algorithm, series_number, headers)


def _write(image: Volume, source: Path, out: Path, pixels: np.ndarray, segments: Sequence[tuple[str, Any]],
           kind: str, algorithm: Algorithm, series_number: int, headers: Sequence[Any] | None) -> Path:  # fmt: skip
    """The SEG of ``pixels`` (numbered segments, or one fractional plane per segment), its segments
    ``(name, display colour)`` described, written atomically to ``out``."""
    hd = highdicom()
    from pydicom.sr.codedict import codes

    identification = hd.AlgorithmIdentificationSequence(name=algorithm.name[:64], version=algorithm.version,
                                                        family=codes.cid7162.ArtificialIntelligence)  # fmt: skip
    descriptions = []
    for number, (name, colour) in enumerate(segments, start=1):
        category, concept = segment_concepts(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=category,
            segmented_property_type=concept, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
            display_color=hd.color.CIELabColor.from_rgb(*colour)))  # fmt: skip
    sources = list(headers or source_headers(image, source))
    fractional = {"fractional_type": hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
                  "max_fractional_value": 255} if kind == "FRACTIONAL" else {}  # fmt: skip
    with built_from(source, "SEG"):
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues[kind],
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="medsight", manufacturer_model_name=algorithm.name[:64], software_versions=__version__,
            device_serial_number=algorithm.version, series_description=f"{algorithm.name} segmentation"[:64],
            content_label="MEDSIGHT", content_description=f"{algorithm.name} {algorithm.version}"[:64],
            omit_empty_frames=True, contributing_equipment=[contributing_equipment(algorithm)], **fractional,
        )  # fmt: skip
    with atomic_file(out) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    log.info("%s: %s DICOM SEG of %d segment(s) written to %s", source, kind.lower(), len(segments), out)
    return out
