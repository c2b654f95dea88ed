"""LIDC-IDRI: CT series as DICOM plus one reader XML per series; nodules clustered across readers.

Each XML (``LidcReadMessage``) holds up to four blinded-then-unblinded reading sessions.
Every reader's nodule (``unblindedReadNodule`` with ``roi`` contours) becomes a centre in
world millimetres (contour centroids on each slice, weighted by area) and an equivalent
diameter (contour areas times slice spacing). Marks from different readers within half
the larger diameter (at least 3 mm) of each other are one nodule; its centre and diameter
are the readers' means and its malignancy their median. Nodules marked by at least
``min_readers`` readers (LUNA16 used 3 of 4) are findings; the rest, and nodules under 3 mm
and non-nodules, are kept as excluded boxes.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medsight.core.errors import InputError
from medsight.data.adapters._tables import relative
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register
from medsight.io.dicom_header import floats, pixel_spacing, read_header

log = logging.getLogger(__name__)


class LidcOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_readers: int = Field(3, ge=1, le=4)


@dataclass
class _Mark:
    reader: int
    centre: np.ndarray  # world x, y, z mm
    diameter: float
    malignancy: int | None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> Iterable[ET.Element]:
    return (child for child in element if _local(child.tag) == name)


def _text(element: ET.Element, name: str) -> str | None:
    for child in element.iter():
        if _local(child.tag) == name and child.text is not None:
            return child.text.strip()
    return None


def _is_lidc_xml(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(600)
    except OSError:
        return False
    return b"LidcReadMessage" in head


def _geometry(series: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    """Origin of the first slice's in-plane grid, row/column directions and pixel spacing."""
    for path in sorted(series.iterdir()):
        if path.suffix.lower() == ".xml" or not path.is_file():
            continue
        try:
            ds = read_header(path).dataset
        except InputError:
            continue
        position = floats(ds.get("ImagePositionPatient"), 3)
        orientation = floats(ds.get("ImageOrientationPatient"), 6)
        spacing = pixel_spacing(ds)
        if position is None or spacing is None:
            continue
        orientation = orientation if orientation is not None else np.array([1.0, 0, 0, 0, 1.0, 0])
        return position, orientation[:3], orientation[3:], spacing
    raise InputError(f"{series}: no CT slice with ImagePositionPatient and PixelSpacing beside the reader XML")


def _polygon_area(xs: np.ndarray, ys: np.ndarray) -> float:
    return 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def _marks(session: ET.Element, reader: int, geometry: tuple) -> tuple[list[_Mark], list[dict[str, Any]]]:
    origin, row_dir, col_dir, (row_mm, col_mm) = geometry
    marks, excluded = [], []
    for nodule in _children(session, "unblindedReadNodule"):
        rois = []
        for roi in _children(nodule, "roi"):
            z = float(_text(roi, "imageZposition") or "nan")
            points = np.array(
                [[float(_text(e, "xCoord") or 0), float(_text(e, "yCoord") or 0)] for e in _children(roi, "edgeMap")]
            )
            if len(points) and (_text(roi, "inclusion") or "TRUE").upper() == "TRUE":
                rois.append((z, points))
        if not rois:
            continue
        malignancy = _text(nodule, "malignancy")
        centres, areas = [], []
        for z, points in rois:
            # pixel (column x, row y) -> world, along the row and column directions of the slice
            world = origin + np.outer(points[:, 0] * col_mm, row_dir) + np.outer(points[:, 1] * row_mm, col_dir)
            world[:, 2] = z
            area = _polygon_area(points[:, 0] * col_mm, points[:, 1] * row_mm) if len(points) >= 3 else 0.0
            centres.append(world.mean(axis=0))
            areas.append(max(area, row_mm * col_mm))
        zs = sorted({z for z, _ in rois})
        thickness = float(np.median(np.diff(zs))) if len(zs) > 1 else 1.0
        weights = np.array(areas)
        centre = (np.array(centres) * weights[:, None]).sum(axis=0) / weights.sum()
        volume = float(weights.sum()) * thickness
        diameter = (6.0 * volume / np.pi) ** (1.0 / 3.0)
        if len(rois) == 1 and len(rois[0][1]) == 1:  # a single point: a nodule under 3 mm
            excluded.append({"label": "small-nodule", "center": _round(centre), "diameter_mm": -1, "excluded": True})
            continue
        marks.append(_Mark(reader, centre, diameter, int(malignancy) if malignancy else None))
    for non in _children(session, "nonNodule"):
        z = float(_text(non, "imageZposition") or "nan")
        x, y = float(_text(non, "xCoord") or 0), float(_text(non, "yCoord") or 0)
        world = origin + x * col_mm * row_dir + y * row_mm * col_dir
        world[2] = z
        excluded.append({"label": "non-nodule", "center": _round(world), "diameter_mm": -1, "excluded": True})
    return marks, excluded


def _round(values: np.ndarray) -> list[float]:
    return [round(float(v), 3) for v in values]


def cluster_marks(marks: list[_Mark]) -> list[list[_Mark]]:
    """Group marks of different readers that lie within half the larger diameter (>= 3 mm)."""
    parent = list(range(len(marks)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    order = sorted(range(len(marks)), key=lambda i: -marks[i].diameter)
    for a_pos, i in enumerate(order):
        for j in order[a_pos + 1 :]:
            a, b = marks[i], marks[j]
            if a.reader == b.reader:
                continue
            tolerance = max(3.0, 0.5 * max(a.diameter, b.diameter))
            if np.linalg.norm(a.centre - b.centre) <= tolerance:
                ri, rj = find(i), find(j)
                readers_i = {marks[k].reader for k in range(len(marks)) if find(k) == ri}
                readers_j = {marks[k].reader for k in range(len(marks)) if find(k) == rj}
                if ri != rj and not readers_i & readers_j:  # one mark per reader per nodule
                    parent[rj] = ri
    groups: dict[int, list[_Mark]] = {}
    for i, mark in enumerate(marks):
        groups.setdefault(find(i), []).append(mark)
    return list(groups.values())


@register
class LidcIdri(Adapter):
    name = "lidc-idri"
    title = "LIDC-IDRI (CT series with reader XML)"
    task = "lung-nodule-det"
    Options = LidcOptions

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any(_is_lidc_xml(p) for p in root.rglob("*.xml"))

    @classmethod
    def build(cls, root: Path, options: LidcOptions) -> Manifest:
        records = []
        for xml in sorted(p for p in root.rglob("*.xml") if _is_lidc_xml(p)):
            try:
                tree = ET.parse(xml)
            except ET.ParseError as exc:
                raise InputError(f"{xml} is not valid XML: {exc}") from exc
            message = tree.getroot()
            series_uid = _text(message, "SeriesInstanceUid") or _text(message, "SeriesInstanceUID")
            if not series_uid:
                raise InputError(f"{xml} has no SeriesInstanceUid in its ResponseHeader")
            geometry = _geometry(xml.parent)
            marks, excluded = [], []
            for reader, session in enumerate(_children(message, "readingSession")):
                found, skipped = _marks(session, reader, geometry)
                marks += found
                excluded += skipped
            boxes = list(excluded)
            positive = 0
            for group in cluster_marks(marks):
                malignancy = [m.malignancy for m in group if m.malignancy is not None]
                box = {
                    "label": "nodule",
                    "center": _round(np.mean([m.centre for m in group], axis=0)),
                    "diameter_mm": round(float(np.mean([m.diameter for m in group])), 3),
                    "readers": len(group),
                    "malignancy": float(np.median(malignancy)) if malignancy else None,
                }
                if len(group) < options.min_readers or box["diameter_mm"] < 3.0:
                    box["excluded"] = True
                else:
                    positive += 1
                boxes.append(box)
            patient = next((p.name for p in xml.parents if p.name.upper().startswith("LIDC-IDRI-")), xml.parent.name)
            records.append(
                {
                    "case_id": series_uid,
                    "patient_id": patient,
                    "image": relative(root, xml.parent),
                    "target": int(positive > 0),
                    "boxes": boxes,
                }
            )
        if not records:
            raise InputError(f"no LIDC reader XML (LidcReadMessage) under {root}")
        return Manifest.from_records(
            records,
            root,
            notes=[f"nodules >= 3 mm marked by at least {options.min_readers} reader(s) are findings; others excluded"],
        )
