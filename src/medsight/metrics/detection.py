"""Detection metrics as plain functions: LUNA16's FROC and CPM for nodules in CT, and for 2D boxes
COCO's average precision and a per-image FROC.

FROC follows the LUNA16 evaluation script (``noduleCADEvaluationLUNA16.py``):

- a candidate *hits* a nodule when its centre lies strictly within the nodule's radius (world mm);
  a candidate inside several nodules hits each of them, and a nodule hit by several candidates
  counts once, with the highest probability among them (the others are *duplicates*, neither hits
  nor false positives);
- candidates on an excluded finding (``annotations_excluded.csv``; a negative diameter there
  means 10 mm) that hit no nodule are *ignored*, neither hits nor false positives;
- at most 100 candidates per scan count: with more, only those above the 101st highest
  probability;
- sensitivity at each threshold is the share of all nodules detected at or above it, and the false
  positives per scan are counted over every scan evaluated, those without nodules or candidates too;
- the sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan is read off the curve
  by linear interpolation (the script reads its 10 001-point grid nearest each rate, which differs
  by less than one grid step), and the CPM is their mean;
- its CI resamples scans with replacement.

Where the script gives NaN because nothing was detected, sensitivity here is 0 (it is); the FROC is
undefined only when there is no nodule at all.

Reduced findings are :class:`FrocEntries`: one row per false-positive mark (kind 0), per detected
finding (kind 1, its best probability), per missed finding (kind 2) and one marker per scan
(kind 3), so that the figures can be bootstrapped by resampling rows grouped by scan.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from medsight.core.errors import InputError
from medsight.metrics.bootstrap import bootstrap_cis

__all__ = [
    "EXCLUDED_DIAMETER_MM",
    "LUNA16_MAX_MARKS",
    "LUNA16_RATES",
    "FrocEntries",
    "average_precision_boxes",
    "average_precision_of",
    "box_iou",
    "box_matches",
    "cpm",
    "excluded_diameters",
    "froc_curve",
    "froc_summary",
    "label_candidates",
    "match_boxes",
    "match_nodules",
    "mean_average_precision",
    "nodule_sizes",
    "sensitivity_at",
    "size_summary",
    "top_box_hits",
    "within_spheres",
]

log = logging.getLogger(__name__)

LUNA16_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""False positives per scan at which LUNA16 reads sensitivity; the CPM is their mean."""
LUNA16_MAX_MARKS = 100
"""Candidates per scan LUNA16 counts (the most probable)."""
EXCLUDED_DIAMETER_MM = 10.0
"""Diameter LUNA16 gives an excluded finding whose diameter is negative (unknown)."""

FALSE_POSITIVE, DETECTED, MISSED, SCAN = 0, 1, 2, 3


def excluded_diameters(diameters: np.ndarray) -> np.ndarray:
    """Diameters (mm) of excluded findings as LUNA16's evaluation takes them: a negative one
    (unknown) becomes :data:`EXCLUDED_DIAMETER_MM`. Training, the second stage and evaluation all
    read excluded findings through this, so they ignore the same regions."""
    diameters = np.asarray(diameters, float)
    return np.where(diameters < 0, EXCLUDED_DIAMETER_MM, diameters)


@dataclass(frozen=True)
class FrocEntries:
    """Candidates matched to findings, reduced to what a FROC reads (see the module's description).

    Attributes:
        scan: Per row, its scan (or image) id.
        kind: Per row: 0 false-positive mark, 1 detected finding, 2 missed finding, 3 scan marker.
        probability: Per row: the mark's probability, the detected finding's best one, or NaN.
        ignored: Marks on excluded findings (neither hits nor false positives).
        duplicates: Extra marks on findings already hit by a more probable one.
        dropped: Marks beyond the per-scan limit.
        diameter: Per row, the finding's annotated diameter (mm; kinds 1 and 2, else NaN), or None.
        predicted_mm: Per row, the diameter of the most probable mark on the detected finding (kind
            1, else NaN); None when the marks carry no diameter.
    """

    scan: np.ndarray
    kind: np.ndarray
    probability: np.ndarray
    ignored: int = 0
    duplicates: int = 0
    dropped: int = 0
    diameter: np.ndarray | None = None
    predicted_mm: np.ndarray | None = None

    @property
    def scans(self) -> int:
        return int(np.sum(self.kind == SCAN))

    @property
    def findings(self) -> int:
        return int(np.sum((self.kind == DETECTED) | (self.kind == MISSED)))

    @property
    def detected(self) -> int:
        return int(np.sum(self.kind == DETECTED))

    @property
    def false_positives(self) -> int:
        return int(np.sum(self.kind == FALSE_POSITIVE))

    def sizes(self) -> pd.DataFrame:
        """How big the marks say each detected finding is: per detected finding, its scan
        (``seriesuid``), its annotated diameter, the diameter of its most probable mark
        (``predicted_mm``) and that mark's probability. No row when the marks carry no diameter."""
        columns = ["seriesuid", "diameter_mm", "predicted_mm", "probability"]
        if self.diameter is None or self.predicted_mm is None:
            return pd.DataFrame(columns=columns)
        at = self.kind == DETECTED
        return pd.DataFrame({"seriesuid": self.scan[at], "diameter_mm": self.diameter[at],
                             "predicted_mm": self.predicted_mm[at], "probability": self.probability[at]})  # fmt: skip


def froc_curve(kind: np.ndarray, probability: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FROC of reduced entries: false positives per scan, sensitivity and the threshold of each
    point, from the point above every probability (0, 0) down to the lowest probability. Every
    finding counts in the sensitivity's denominator; scans are the kind-3 markers. NaN arrays when
    there is no finding or no scan."""
    kind = np.asarray(kind)
    probability = np.asarray(probability, dtype=float)
    scans = int(np.sum(kind == SCAN))
    findings = int(np.sum((kind == DETECTED) | (kind == MISSED)))
    if findings == 0 or scans == 0:
        nan = np.array([np.nan])
        return nan, nan, nan
    scored = (kind == FALSE_POSITIVE) | (kind == DETECTED)
    p = probability[scored]
    hit = kind[scored] == DETECTED
    order = np.argsort(-p, kind="stable")
    p, hit = p[order], hit[order]
    last = np.r_[p[1:] != p[:-1], True] if len(p) else np.zeros(0, bool)  # the last mark at each threshold
    true_positives = np.cumsum(hit)[last]
    false_positives = np.cumsum(~hit)[last]
    fps = np.r_[0.0, false_positives / scans]
    sensitivity = np.r_[0.0, true_positives / findings]
    thresholds = np.r_[np.inf, p[last]]
    return fps, sensitivity, thresholds


def sensitivity_at(fps: np.ndarray, sensitivity: np.ndarray, rates: Sequence[float]) -> np.ndarray:
    """The FROC's sensitivity at each rate of false positives per scan (linear interpolation; the
    last sensitivity beyond the curve's end; at a rate where the curve rises vertically, its top)."""
    return np.interp(np.asarray(rates, dtype=float), fps, sensitivity)


def cpm(kind: np.ndarray, probability: np.ndarray, rates: Sequence[float] = LUNA16_RATES) -> float:
    """Competition performance metric: the mean sensitivity at ``rates`` false positives per scan
    (NaN when there is no finding)."""
    return _froc_figures(kind, probability, rates)[0]


def _froc_figures(kind: np.ndarray, probability: np.ndarray, rates: Sequence[float]) -> list[float]:
    """The CPM and the sensitivity at each rate, read off one FROC curve (NaN without findings)."""
    fps, sensitivity, _ = froc_curve(kind, probability)
    if np.isnan(fps[0]):
        return [float("nan")] * (len(rates) + 1)
    at = sensitivity_at(fps, sensitivity, rates)
    return [float(np.mean(at)), *(float(v) for v in at)]


def froc_summary(
    entries: FrocEntries, *, rates: Sequence[float] = LUNA16_RATES, bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """CPM and the sensitivity at each rate, each with a 95 % CI resampling scans, the curve, and
    the counts (JSON-ready apart from NaN)."""
    groups = entries.scan.astype(str)
    arrays = (entries.kind, entries.probability)
    fps, sensitivity, thresholds = froc_curve(*arrays)
    names = ["cpm", *(f"{rate:g}" for rate in rates)]
    cpm_ci, *at_rates = bootstrap_cis(partial(_froc_figures, rates=rates), *arrays, names=names, groups=groups,
                                      n_resamples=bootstrap, seed=seed)  # fmt: skip
    out: dict[str, Any] = {
        "cpm": cpm_ci,
        "sensitivity": dict(zip(names[1:], at_rates, strict=True)),
        "curve": {"fps": fps.tolist(), "sensitivity": sensitivity.tolist(), "threshold": thresholds.tolist()},
        "scans": entries.scans,
        "findings": entries.findings,
        "detected": entries.detected,
        "false_positives": entries.false_positives,
        "ignored": entries.ignored,
        "duplicates": entries.duplicates,
        "dropped": entries.dropped,
    }
    if entries.findings == 0:
        out["undefined"] = "no finding to detect among the scans evaluated"
    return out


def _table(frame: pd.DataFrame, columns: Sequence[str], name: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{name} lacks the column(s) {missing}; it has {list(frame.columns)}")
    out = frame[list(columns)].copy()
    for column in columns[1:]:
        values = pd.to_numeric(out[column], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(float))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(f"{name}: {column} of row {row + 1} is {frame[column].iloc[row]!r}, not a finite number "
                             f"({int(bad.sum())} such row(s)); fix or drop them")  # fmt: skip
        out[column] = values.astype(float)
    out[columns[0]] = out[columns[0]].astype(str)
    return out


@dataclass(frozen=True)
class _ScanMatch:
    """One scan's (or image's) counted marks read against its findings: the marks' probabilities,
    their hits ``(marks, findings)`` and whether each lies on an excluded finding; for nodules also
    the findings' annotated diameters and the marks' own (``sizes``, None where they carry none)."""

    probability: np.ndarray
    hits: np.ndarray
    excluded: np.ndarray
    diameters: np.ndarray | None = None
    sizes: np.ndarray | None = None


def _reduce(scans: Sequence[str], per_scan: dict[str, _ScanMatch], dropped: int, *, spheres: bool = False,
            sized: bool = False) -> FrocEntries:  # fmt: skip
    """Entries from each scan's matched marks (``spheres``: findings with diameters; ``sized``: marks
    with diameters too)."""
    scan_ids: list[str] = []
    kinds: list[int] = []
    probs: list[float] = []
    truth: list[float] = []
    predicted: list[float] = []
    ignored = duplicates = 0
    for scan in scans:
        scan_ids.append(scan)
        kinds.append(SCAN)
        probs.append(np.nan)
        truth.append(np.nan)
        predicted.append(np.nan)
        if scan not in per_scan:
            continue
        match = per_scan[scan]
        diameters = match.diameters if match.diameters is not None else np.full(match.hits.shape[1], np.nan)
        for column, diameter in zip(match.hits.T, diameters, strict=True):
            truth.append(float(diameter))
            if column.any():
                best = np.flatnonzero(column)[np.argmax(match.probability[column])]
                kinds.append(DETECTED)
                probs.append(float(match.probability[best]))
                predicted.append(float(match.sizes[best]) if match.sizes is not None else np.nan)
                duplicates += int(column.sum()) - 1
            else:
                kinds.append(MISSED)
                probs.append(np.nan)
                predicted.append(np.nan)
            scan_ids.append(scan)
        free = ~match.hits.any(axis=1)
        ignored += int(np.sum(free & match.excluded))
        false = match.probability[free & ~match.excluded]
        kinds.extend([FALSE_POSITIVE] * len(false))
        probs.extend(false.tolist())
        truth.extend([np.nan] * len(false))
        predicted.extend([np.nan] * len(false))
        scan_ids.extend([scan] * len(false))
    return FrocEntries(np.asarray(scan_ids, dtype=object), np.asarray(kinds, np.int8), np.asarray(probs, float),
                       ignored=ignored, duplicates=duplicates, dropped=dropped,
                       diameter=np.asarray(truth, float) if spheres else None,
                       predicted_mm=np.asarray(predicted, float) if spheres and sized else None)  # fmt: skip


def _most_probable(probability: np.ndarray, limit: int) -> np.ndarray:
    """LUNA16's cap: with more than ``limit`` marks, those above the ``limit+1``-th highest probability."""
    if limit <= 0 or len(probability) <= limit:
        return np.ones(len(probability), bool)
    cut = np.sort(probability)[::-1][limit]
    return probability > cut


def match_nodules(
    candidates: pd.DataFrame,
    annotations: pd.DataFrame,
    excluded: pd.DataFrame | None = None,
    *,
    scans: Sequence[str] | None = None,
    max_marks: int = LUNA16_MAX_MARKS,
) -> FrocEntries:
    """LUNA16 matching of candidates (``seriesuid, coordX, coordY, coordZ, probability``, world mm;
    with a ``diameter_mm`` column the entries also say how big each detected nodule was called, see
    :meth:`FrocEntries.sizes`) to nodules (``seriesuid, coordX, coordY, coordZ, diameter_mm``) and
    excluded findings (same columns; a negative diameter reads as 10 mm).

    Args:
        scans: The scans evaluated (those without nodules or candidates count in the false positives
            per scan). Default: every scan that has a candidate or a nodule, which leaves out scans
            with neither; pass the list when such scans exist.
        max_marks: Candidates counted per scan (0: all).

    Raises:
        InputError: a missing column or a value that is not a finite number (the row is named).
    """
    coords = ["coordX", "coordY", "coordZ"]
    sized = "diameter_mm" in candidates.columns
    marks = _table(candidates, ["seriesuid", *coords, "probability", *(["diameter_mm"] if sized else [])],
                   "candidates")  # fmt: skip
    nodules = _table(annotations, ["seriesuid", *coords, "diameter_mm"], "annotations")
    others = (_table(excluded, ["seriesuid", *coords, "diameter_mm"], "excluded annotations")
              if excluded is not None else nodules.iloc[:0])  # fmt: skip
    if scans is None:
        scans = sorted(set(marks["seriesuid"]) | set(nodules["seriesuid"]))
    scans = [str(s) for s in scans]
    unknown = sorted((set(marks["seriesuid"]) | set(nodules["seriesuid"])) - set(scans))
    if unknown:
        log.warning("%d scan(s) with candidates or nodules are not among the scans evaluated and are left out "
                    "(e.g. %s)", len(unknown), unknown[0])  # fmt: skip
    by_scan = {k: g for k, g in marks.groupby("seriesuid", sort=False)}
    nodules_of = {k: g for k, g in nodules.groupby("seriesuid", sort=False)}
    others_of = {k: g for k, g in others.groupby("seriesuid", sort=False)}
    per_scan: dict[str, _ScanMatch] = {}
    dropped = 0
    for scan in scans:
        group = by_scan.get(scan, marks.iloc[:0])
        probability = group["probability"].to_numpy(float)
        keep = _most_probable(probability, max_marks)
        dropped += int(np.sum(~keep))
        points = group[coords].to_numpy(float)[keep]
        found = nodules_of.get(scan, nodules.iloc[:0])
        other = others_of.get(scan, others.iloc[:0])
        diameters = found["diameter_mm"].to_numpy(float)
        hits, on_excluded = label_candidates(
            points, found[coords].to_numpy(float), diameters,
            other[coords].to_numpy(float), other["diameter_mm"].to_numpy(float),
        )  # fmt: skip
        sizes = group["diameter_mm"].to_numpy(float)[keep] if sized else None
        per_scan[scan] = _ScanMatch(probability[keep], hits, on_excluded, diameters, sizes)
    return _reduce(scans, per_scan, dropped, spheres=True, sized=sized)


def nodule_sizes(
    candidates: pd.DataFrame,
    annotations: pd.DataFrame,
    *,
    scans: Sequence[str] | None = None,
    max_marks: int = LUNA16_MAX_MARKS,
) -> pd.DataFrame:
    """How big the detector says each detected nodule is: per nodule hit by a counted candidate (as
    :func:`match_nodules` counts them), its scan, its annotated diameter, the diameter of the most
    probable candidate that hits it (``predicted_mm``) and that candidate's probability. Candidates
    need a ``diameter_mm`` column (LUNA16 candidate files have none: then no row). Where the FROC is
    wanted too, :func:`match_nodules` and :meth:`FrocEntries.sizes` give both from one matching."""
    return match_nodules(candidates, annotations, scans=scans, max_marks=max_marks).sizes()


def size_summary(
    sizes: pd.DataFrame, *, groups: Sequence[object] | None = None, bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Agreement of predicted and annotated diameters (:func:`nodule_sizes`), each figure with a 95 %
    CI resampling ``groups`` (default: the scans): ``error_pct``, the median of |predicted -
    annotated| / annotated in percent, and ``bias_pct``, the median of the signed ratio (below 0:
    the detector calls nodules smaller). NaN with ``undefined`` when no nodule was detected."""
    truth = sizes["diameter_mm"].to_numpy(float)
    relative = 100.0 * (sizes["predicted_mm"].to_numpy(float) - truth) / truth
    out: dict[str, Any] = {"nodules": len(sizes)}
    if len(sizes) == 0:
        reason = "no nodule was detected, so no size to compare"
        undefined = {"estimate": float("nan"), "low": float("nan"), "high": float("nan"), "undefined": reason}
        return {**out, "error_pct": undefined, "bias_pct": undefined, "undefined": reason}
    ids = np.asarray(sizes["seriesuid"] if groups is None else groups, dtype=object)
    error, bias = bootstrap_cis(_size_figures, relative, names=["error_pct", "bias_pct"], groups=ids,
                                n_resamples=bootstrap, seed=seed)  # fmt: skip
    return {**out, "error_pct": error, "bias_pct": bias}


def _size_figures(relative: np.ndarray) -> list[float]:
    return [float(np.median(np.abs(relative))), float(np.median(relative))]


def label_candidates(
    points: np.ndarray,
    nodule_centres: np.ndarray,
    nodule_diameters: np.ndarray,
    excluded_centres: np.ndarray,
    excluded_diameters_mm: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """LUNA16's reading of one scan's candidates (world mm, ``(n, 3)``): which nodules each hits,
    ``(candidates, nodules)``, and whether each lies on an excluded finding (whose sizes are read by
    :func:`excluded_diameters`). Scoring and every fit on candidates label them through this."""
    hits = within_spheres(points, nodule_centres, nodule_diameters)
    sizes = excluded_diameters(np.asarray(excluded_diameters_mm, float))
    on_excluded = within_spheres(points, excluded_centres, sizes).any(axis=1)
    return hits, on_excluded


def within_spheres(points: np.ndarray, centres: np.ndarray, diameters: np.ndarray) -> np.ndarray:
    """``(points, centres)``: whether each point lies strictly within each sphere."""
    if len(points) == 0 or len(centres) == 0:
        return np.zeros((len(points), len(centres)), bool)
    squared = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return squared < (diameters[None, :] / 2.0) ** 2


_BOX = ["x0", "y0", "x1", "y1"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes ``(n, 4)`` and ``(m, 4)`` given as ``x0, y0, x1, y1``
    (continuous coordinates: a box from 0 to 10 is 10 wide); ``(n, m)``."""
    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _boxes(frame: pd.DataFrame, name: str, extra: Sequence[str] = ()) -> pd.DataFrame:
    out = _table(frame, ["image", *_BOX, *extra], name)
    flipped = (out["x1"] < out["x0"]) | (out["y1"] < out["y0"])
    if flipped.any():
        row = int(np.flatnonzero(flipped.to_numpy())[0])
        raise InputError(f"{name}: box of row {row + 1} has x1 < x0 or y1 < y0 (boxes are x0, y0, x1, y1)")
    return out


def match_boxes(
    detections: pd.DataFrame, truths: pd.DataFrame, *, iou: float = 0.5, images: Sequence[str] | None = None
) -> FrocEntries:
    """Per-image matching of detections (``image, x0, y0, x1, y1, score``) to true boxes (``image,
    x0, y0, x1, y1``) for a FROC: a detection hits a box it overlaps with IoU >= ``iou``, with the
    same rules as LUNA16 (a box hit by several detections counts once, at the highest score).

    Args:
        images: The images evaluated (images without boxes or detections count in the false
            positives per image). Default: every image with a detection or a box.
    """
    if not 0 < iou <= 1:
        raise InputError(f"iou must be in (0, 1], got {iou}")
    marks = _boxes(detections, "detections", ["score"])
    boxes = _boxes(truths, "true boxes")
    if images is None:
        images = sorted(set(marks["image"]) | set(boxes["image"]))
    images = [str(i) for i in images]
    marks_of = {k: g for k, g in marks.groupby("image", sort=False)}
    boxes_of = {k: g for k, g in boxes.groupby("image", sort=False)}
    per_image: dict[str, _ScanMatch] = {}
    for image in images:
        mine = marks_of.get(image, marks.iloc[:0])
        theirs = boxes_of.get(image, boxes.iloc[:0])
        hits = box_iou(mine[_BOX].to_numpy(float), theirs[_BOX].to_numpy(float)) >= iou
        per_image[image] = _ScanMatch(mine["score"].to_numpy(float), hits, np.zeros(len(mine), bool))
    return _reduce(images, per_image, 0)


def box_matches(
    detections: pd.DataFrame, truths: pd.DataFrame, *, iou: float = 0.5, max_detections: int = 100
) -> pd.DataFrame:
    """COCO's matching of one class's detections (``image, x0, y0, x1, y1, score``) to true boxes
    (``image, x0, y0, x1, y1``): per image the ``max_detections`` highest scores, each matched
    greedily (by descending score) to the unmatched true box of highest IoU at or above ``iou``.

    Returns:
        One row per detection kept (``image``, ``score``, ``hit``, ``truths`` 0) and one per image
        with true boxes (``image``, ``score`` NaN, ``hit`` False, ``truths`` = its box count):
        what :func:`average_precision_of` reads, and what a bootstrap can resample by image.
    """
    if not 0 < iou <= 1:
        raise InputError(f"iou must be in (0, 1], got {iou}")
    marks = _boxes(detections, "detections", ["score"])
    boxes = _boxes(truths, "true boxes")
    boxes_of = {k: g[_BOX].to_numpy(float) for k, g in boxes.groupby("image", sort=False)}
    marks_of = {k: g for k, g in marks.groupby("image", sort=False)}
    rows: list[tuple[str, float, bool, int]] = []
    for image in sorted(set(marks_of) | set(boxes_of)):
        theirs = boxes_of.get(image, np.zeros((0, 4)))
        if len(theirs):
            rows.append((image, float("nan"), False, len(theirs)))
        mine = marks_of.get(image)
        if mine is None:
            continue
        order = np.argsort(-mine["score"].to_numpy(float), kind="mergesort")[:max_detections]
        score = mine["score"].to_numpy(float)[order]
        overlap = box_iou(mine[_BOX].to_numpy(float)[order], theirs)
        taken = np.zeros(len(theirs), bool)
        for d in range(len(score)):
            best, chosen = min(iou, 1 - 1e-10), -1
            for g in range(len(theirs)):
                if not taken[g] and overlap[d, g] >= best:
                    best, chosen = overlap[d, g], g
            if chosen >= 0:
                taken[chosen] = True
            rows.append((image, float(score[d]), chosen >= 0, 0))
    return pd.DataFrame(rows, columns=["image", "score", "hit", "truths"]).astype(
        {"image": str, "score": float, "hit": bool, "truths": int}
    )


def average_precision_of(score: np.ndarray, hit: np.ndarray, truths: np.ndarray) -> float:
    """COCO's average precision of matched rows (:func:`box_matches`'s ``score, hit, truths``):
    precision made non-increasing and read at 101 recall levels 0, 0.01, ... 1 (0 where recall
    never reaches a level), then averaged. NaN when there is no true box."""
    total = int(np.sum(truths))
    if total == 0:
        return float("nan")
    score = np.asarray(score, float)
    marks = np.isfinite(score)
    order = np.argsort(-score[marks], kind="mergesort")
    hit = np.asarray(hit, bool)[marks][order]
    tp, fp = np.cumsum(hit), np.cumsum(~hit)
    recall = tp / total
    precision = tp / (tp + fp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    levels = np.linspace(0.0, 1.0, 101)
    at = np.searchsorted(recall, levels, side="left")
    read = np.where(at < len(precision), precision[np.minimum(at, max(len(precision) - 1, 0))] if len(precision)
                    else 0.0, 0.0)  # fmt: skip
    return float(np.mean(read))


def average_precision_boxes(
    detections: pd.DataFrame, truths: pd.DataFrame, *, iou: float = 0.5, max_detections: int = 100
) -> float:
    """Average precision of one class's detections (``image, x0, y0, x1, y1, score``) against true
    boxes (``image, x0, y0, x1, y1``) as COCO computes it (:func:`box_matches`, then
    :func:`average_precision_of`). NaN when there is no true box."""
    rows = box_matches(detections, truths, iou=iou, max_detections=max_detections)
    return average_precision_of(rows["score"].to_numpy(), rows["hit"].to_numpy(), rows["truths"].to_numpy())


def top_box_hits(detections: pd.DataFrame, truths: pd.DataFrame, *, iou: float) -> pd.DataFrame:
    """Per true box (``image, x0, y0, x1, y1``), whether its image's most probable detection
    (``image, x0, y0, x1, y1, score``; one finding's) overlaps it with IoU >= ``iou``: the
    localisation a single box per image and finding gives (a class activation map's box is
    scored the same way). Columns ``image``, ``hit``; a box whose image has no detection is missed."""
    best = detections.sort_values("score", ascending=False, kind="mergesort").drop_duplicates("image")
    corners = ["x0", "y0", "x1", "y1"]
    top = {str(r["image"]): np.array([r[c] for c in corners], float) for _, r in best.iterrows()}
    rows = []
    for _, box in truths.iterrows():
        mark = top.get(str(box["image"]))
        overlap = 0.0 if mark is None else box_iou(mark[None], box[corners].to_numpy(float)[None])[0, 0]
        rows.append((str(box["image"]), bool(overlap >= iou)))
    return pd.DataFrame(rows, columns=["image", "hit"]).astype({"image": str, "hit": bool})


def mean_average_precision(score: np.ndarray, hit: np.ndarray, truths: np.ndarray, finding: np.ndarray) -> float:
    """The mean over findings of :func:`average_precision_of` of matched rows (:func:`box_matches`'
    rows of each finding, ``finding`` saying whose); findings without a true box among the rows are
    left out (NaN when none has one). Rows of all findings together, so a bootstrap resamples them
    by image or patient at once."""
    finding = np.asarray(finding)
    values = [average_precision_of(score[finding == k], hit[finding == k], truths[finding == k])
              for k in np.unique(finding)]  # fmt: skip
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
