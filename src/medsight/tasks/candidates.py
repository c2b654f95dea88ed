"""A 3D detector's heat map made into candidates and a report's findings, in NumPy alone.

The recipe's ``task`` section (:class:`DetectionSpec`), the network's two-class softmax resampled
onto the scan's own grid, its peaks made candidates (centre in world mm, diameter, probability;
:func:`find_candidates`), the overlay of the probable ones drawn as balls (:func:`draw_balls`), and
a prediction row's findings. Both the PyTorch task (:class:`~medsight.tasks.detection.DetectionTask`)
and the torch-free runtime (:mod:`medsight.inference.runtime`) detect through :class:`Candidates`;
only where the logits come from differs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage
from skimage.segmentation import watershed

from medsight.core.errors import InputError
from medsight.core.geometry import Geometry
from medsight.core.volume import Volume, VolumeMetadata
from medsight.data.volume_cache import preprocess_for_plan
from medsight.metrics.detection import LUNA16_RATES
from medsight.planning import CandidateRescoring, Plan
from medsight.tasks.rescoring import rescore
from medsight.tasks.results import Finding
from medsight.transforms.volume3d import restore

__all__ = ["Candidates", "DetectionSpec", "draw_balls", "find_candidates"]

_PEAKS_PER_CANDIDATE = 4  # peaks kept per candidate asked for (the rest are too weak to matter)
_PEAK_DISTANCE_MM = 3.0  # a candidate is the highest voxel within this distance along each axis

Window = Callable[[np.ndarray], np.ndarray]
"""Logits ``(2, z, y, x)`` of the network over a whole preprocessed volume ``(C, z, y, x)``."""


class DetectionSpec(BaseModel):
    """A detection recipe's ``task`` section.

    Attributes:
        finding: What is detected (the name in outputs and the label drawn in overlays).
        threshold: Probability at or above which voxels form a candidate region.
        max_candidates: Candidates kept per scan, the most probable (LUNA16 counts 100).
        overlay_probability: Candidates at or above it are drawn in the overlay ``predict`` writes.
        rates: False positives per scan at which sensitivity is reported (CPM: their mean).
        overlap: Sliding-window overlap at prediction.
        mirror: Test-time augmentation by mirroring along every axis (8 passes).
        margin: Background voxels within this many voxels of a finding are left out of the loss
            (:func:`margin_mask`).
        rescore: Once training ends, fit a second stage on the validation scans' candidates that
            scores each again from the image around it (:mod:`medsight.tasks.rescoring`); the
            plan keeps it and every prediction applies it.
        rescore_training_scans: Training scans (drawn at random, seeded) whose candidates join the
            validation scans' in that fit: more findings to learn from, at ~3 s per scan on 2
            cores (0 for the validation scans alone).
        proposals: Candidates per scan (the network's most probable peaks) that the second stage
            scores and is fitted on, of which it keeps the ``max_candidates`` it finds most probable
            (default: ``max_candidates``, the stage reorders the network's). Without a stage the
            network's ``max_candidates`` are kept.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["detection"]
    finding: str = "nodule"
    threshold: float = Field(0.1, gt=0, lt=1)
    max_candidates: int = Field(100, ge=1)
    overlay_probability: float = Field(0.5, ge=0, le=1)
    rates: tuple[float, ...] = LUNA16_RATES
    overlap: float = Field(0.5, ge=0, lt=1)
    mirror: bool = False
    margin: int = Field(0, ge=0, le=3)
    rescore: bool = True
    rescore_training_scans: int = Field(40, ge=0)
    proposals: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _proposals_cover_the_kept(self) -> DetectionSpec:
        if self.proposals is not None and self.proposals < self.max_candidates:
            raise ValueError(f"proposals ({self.proposals}) must be at least max_candidates ({self.max_candidates}): "
                             "the second stage keeps max_candidates of the proposals")  # fmt: skip
        return self


def draw_balls(
    geometry: Geometry, shape: Sequence[int], centres: np.ndarray, diameters: np.ndarray, *, value: int = 1
) -> np.ndarray:
    """A ``uint8`` map of ``shape`` (z, y, x) holding ``value`` inside each ball (centre in world
    ``(x, y, z)`` mm, diameter in mm) on ``geometry``'s grid; a ball smaller than a voxel still
    marks the voxel nearest its centre (when it is on the grid)."""
    out = np.zeros(tuple(shape), np.uint8)
    spacing = np.asarray(geometry.spacing, float)
    for centre, diameter in zip(np.asarray(centres, float).reshape(-1, 3), np.asarray(diameters, float), strict=True):
        index = geometry.world_to_index(centre)
        reach = np.ceil(diameter / 2 / spacing).astype(int) + 1
        low = np.maximum(np.floor(index).astype(int) - reach, 0)
        high = np.minimum(np.ceil(index).astype(int) + reach + 1, shape)
        if np.any(high <= low):
            continue  # the ball is off the grid
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(low, high, strict=True)], indexing="ij"), -1)
        inside = np.linalg.norm(geometry.index_to_world(grid) - centre, axis=-1) < diameter / 2
        nearest = np.rint(index).astype(int) - low
        if np.all(nearest >= 0) and np.all(nearest < inside.shape):
            inside[tuple(nearest)] = True
        out[tuple(slice(a, b) for a, b in zip(low, high, strict=True))][inside] = value
    return out


def find_candidates(
    probability: np.ndarray,
    geometry: Geometry,
    *,
    threshold: float = 0.1,
    max_candidates: int = 100,
    peak_distance_mm: float = _PEAK_DISTANCE_MM,
) -> pd.DataFrame:
    """Candidates of a probability map ``(Z, Y, X)`` on ``geometry``'s grid (see the module's
    description): ``coordX, coordY, coordZ`` (world mm), ``diameter_mm``, ``probability``, the most
    probable first.

    Each peak (the highest voxel within ``peak_distance_mm`` along each axis, at least its
    neighbours; a plateau of such voxels is one peak) at or above ``threshold`` is a candidate of that
    probability. The voxels at or above ``threshold`` are shared between the peaks by watershed; the
    voxels of a peak's share at or above half its probability give its centre (probability-weighted)
    and its diameter (of the ball of their volume). Touching findings thus stay apart, and a low
    threshold does not merge a scan's faint responses into one region.
    """
    columns = ["coordX", "coordY", "coordZ", "diameter_mm", "probability"]
    probability = np.asarray(probability, np.float32)
    above = probability >= threshold
    if not above.any():
        return pd.DataFrame(columns=columns, dtype=float)
    box = ndimage.find_objects(above.astype(np.uint8))[0]  # work where anything is above the threshold
    offset = np.array([b.start for b in box], float)
    probability, above = probability[box], above[box]
    spacing = np.asarray(geometry.spacing, float)
    size = tuple(int(2 * max(1, np.ceil(peak_distance_mm / s)) + 1) for s in spacing)
    peaks = above & (probability >= ndimage.maximum_filter(probability, size=size, mode="nearest"))
    markers, count, peak = _labelled_peaks(peaks, probability)
    if count > _PEAKS_PER_CANDIDATE * max_candidates:  # the weaker ones could never be among those kept
        keep = np.zeros(count + 1, bool)
        keep[1 + np.argsort(-peak[1:], kind="stable")[: _PEAKS_PER_CANDIDATE * max_candidates]] = True
        markers, count, peak = _labelled_peaks(keep[markers], probability)
    # a peak's core is at or above half of it: the basins need cover no less than half the weakest peak
    basins = watershed(-probability, markers, mask=above & (probability >= peak[1:].min() / 2), connectivity=3)
    # each basin's voxels at or above half its peak: its core (sums over those voxels only)
    where = np.nonzero(basins)
    owner, values = basins[where], probability[where]
    inside = values >= peak[owner] / 2
    owner, weight = owner[inside], values[inside].astype(float)
    mass = np.bincount(owner, weight, count + 1)[1:]
    centroid = np.stack([np.bincount(owner, weight * w[inside], count + 1)[1:] for w in where], -1) / mass[:, None]
    centroid += offset
    voxels = np.bincount(owner, minlength=count + 1)[1:].astype(float)
    peak = peak[1:]
    voxel_mm3 = float(np.prod(spacing))
    diameter = 2 * (3 * np.maximum(voxels, 1) * voxel_mm3 / (4 * np.pi)) ** (1 / 3)
    world = geometry.index_to_world(centroid)
    order = np.argsort(-peak, kind="stable")
    kept: list[int] = []
    for i in order:  # non-maximum suppression in world space
        if all(np.linalg.norm(world[i] - world[k]) >= max(diameter[i], diameter[k]) / 2 for k in kept):
            kept.append(int(i))
        if len(kept) == max_candidates:
            break
    rows = np.column_stack([world[kept], diameter[kept], peak[kept]]) if kept else np.zeros((0, 5))
    return pd.DataFrame(rows, columns=columns)


def _labelled_peaks(peaks: np.ndarray, probability: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Peak voxels grouped into 26-connected markers (a flat top is one), their count and each
    marker's probability (index 0 unused). Connected peak voxels lie in each other's window, so a
    marker's voxels share one value."""
    markers, count = ndimage.label(peaks, structure=np.ones((3, 3, 3), bool))
    at = np.nonzero(markers)
    peak = np.zeros(count + 1)
    peak[markers[at]] = probability[at]
    return markers, count, peak


class Candidates:
    """What a detection network's outputs mean (one spec), and how they become candidates, an
    overlay and a report's findings."""

    def __init__(self, spec: DetectionSpec) -> None:
        self.spec = spec

    def label_classes(self) -> tuple[tuple[int, str], ...]:
        """The overlay's one class: the finding's balls."""
        return ((1, self.spec.finding),)

    def probability(self, logits: np.ndarray, case: Any) -> np.ndarray:
        """The finding's probability on the source grid from logits ``(2, z, y, x)`` on the
        preprocessed grid (``case``: its crop box and shapes)."""
        z = np.asarray(logits, np.float32)
        finding = 0.5 * (1.0 + np.tanh(0.5 * (z[1] - z[0])))  # the two-class softmax, without overflow
        # the finding's channel alone (resampling is linear, so the background's adds nothing)
        return restore(finding[None].astype(np.float32), case, background=np.zeros(1, np.float32))[0]

    def candidates(self, probability: np.ndarray, geometry: Geometry, *, count: int | None = None) -> pd.DataFrame:
        """The map's ``count`` (default ``max_candidates``) most probable candidates
        (:func:`find_candidates` with the spec's threshold)."""
        return find_candidates(probability, geometry, threshold=self.spec.threshold,
                               max_candidates=count or self.spec.max_candidates)  # fmt: skip

    def proposed(
        self, probability: np.ndarray, geometry: Geometry, rescoring: CandidateRescoring | None
    ) -> pd.DataFrame:
        """The candidates a second stage scores (``proposals`` of them), or without one the
        ``max_candidates`` that are kept."""
        return self.candidates(probability, geometry, count=self.spec.proposals if rescoring is not None else None)

    def kept(
        self, proposed: pd.DataFrame, image: np.ndarray, geometry: Geometry, rescoring: CandidateRescoring | None
    ) -> pd.DataFrame:
        """The ``max_candidates`` most probable of the proposals once the second stage (if any)
        has scored them from ``image`` ``(Z, Y, X)`` on ``geometry``'s grid."""
        if rescoring is None:
            return proposed.iloc[: self.spec.max_candidates]
        return rescore(proposed, image, geometry, rescoring).iloc[: self.spec.max_candidates].reset_index(drop=True)

    @staticmethod
    def row(candidates: pd.DataFrame) -> dict[str, Any]:
        """A prediction row: how many candidates, the highest probability, and the list as JSON."""
        top = float(candidates["probability"].max()) if len(candidates) else 0.0
        records = candidates.round(4).to_dict(orient="records")
        return {"candidates": len(candidates), "max_probability": top, "candidate_list": json.dumps(records)}

    def detect(self, volume: Volume, plan: Plan, window: Window) -> tuple[dict[str, Any], Volume]:
        """One scan's candidates (its prediction row) and its overlay on its own grid: the candidates
        at or above ``overlay_probability`` drawn as balls of their diameter. ``window`` gives the
        network's logits over a preprocessed volume (sliding windows).

        Raises:
            InputError: a single slice, or other channels than the model reads.
        """
        if volume.is_2d:
            raise InputError("the model detects in 3D scans; this input is a single slice")
        if volume.channels != plan.in_channels:
            raise InputError(f"the model reads {plan.in_channels} channel(s) per scan; this input has "
                             f"{volume.channels}")  # fmt: skip
        case = preprocess_for_plan(np.asarray(volume.array), volume.geometry.spacing, plan)
        proposed = self.proposed(self.probability(window(case.image), case), volume.geometry, plan.rescoring)
        found = self.kept(proposed, np.asarray(volume.array[0]), volume.geometry, plan.rescoring)
        shown = found[found["probability"] >= self.spec.overlay_probability]
        drawn = draw_balls(volume.geometry, volume.spatial_shape, shown[["coordX", "coordY", "coordZ"]].to_numpy(),
                           shown["diameter_mm"].to_numpy())  # fmt: skip
        metadata = VolumeMetadata(source_format=None, modality="SEG", patient_id=volume.metadata.patient_id,
                                  study_uid=volume.metadata.study_uid)  # fmt: skip
        return self.row(found), Volume(drawn[None], volume.geometry, metadata)

    def findings(self, row: Mapping[str, Any]) -> list[Finding]:
        """The row's candidates at or above ``overlay_probability`` (those the overlay draws), most
        probable first."""
        raw = row.get("candidate_list")
        if not isinstance(raw, str) or not raw.strip():
            return []
        found = [Finding(self.spec.finding, (float(c["coordX"]), float(c["coordY"]), float(c["coordZ"])),
                         float(c["diameter_mm"]), float(c["probability"]))
                 for c in json.loads(raw) if float(c["probability"]) >= self.spec.overlay_probability]  # fmt: skip
        return sorted(found, key=lambda f: -f.probability)
