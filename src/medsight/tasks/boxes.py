"""A 2D detector's cell maps made into image scores, boxes and a report's findings, in NumPy alone.

The recipe's ``task`` section (:class:`Detection2DSpec`), each finding's cells made detections
(:func:`cell_boxes`), their boxes brought back into each image's own pixels, the image's score per
finding (its most probable cell), and a prediction row's findings. Both the PyTorch task
(:class:`~medsight.tasks.detection2d.Detection2DTask`) and the torch-free runtime
(:mod:`medsight.inference.runtime`) go through :class:`Boxes`; only where the logits come from differs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage
from skimage.segmentation import watershed

from medsight.tasks.results import BoxFinding
from medsight.transforms.prepare2d import CELL, boxes_from_prepared

__all__ = ["Boxes", "Detection2DSpec", "cell_boxes"]


class Detection2DSpec(BaseModel):
    """A 2D detection recipe's ``task`` section.

    Attributes:
        classes: The image-level classes (negative, positive), as for a binary classifier.
        target: The manifest column of the image's label (0/1).
        findings: Several findings at once: one cell map per finding, the image's labels read from
            the ``target_<finding>`` columns (0, 1 or empty), and a box taught as finding k when its
            label is finding k's name or one of its ``aliases`` (case-insensitively). None: one
            finding, the image's ``target`` label, boxes chosen by ``box_labels`` / ``min_birads``.
        aliases: Per finding, other box labels that name it (NIH ChestX-ray14's boxes say
            ``Infiltrate`` for the finding ``Infiltration``).
        fusion: Per-image scores fused to breast and exam level (mammography), as for a classifier.
        box_labels: A box is a finding only if its label contains one of these (case-insensitive);
            None: any label.
        min_birads: A box is a finding only if its BI-RADS category is at least this (VinDr-Mammo's
            boxes carry one); None: the category does not matter.
        patch: Side of the training patches, in pixels of the prepared image (a multiple of 8); at
            least the prepared image size: training takes whole images.
        patches_per_epoch: Training patches drawn per epoch.
        finding_rate, other_rate: Shares of patches centred near a finding box and near another box.
        threshold: Cells at or above this probability form detections.
        max_detections: Detections kept per image, the most probable.
        iou: Overlap at which a detection hits a finding box in evaluation.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["detection2d"]
    classes: list[str] = ["negative", "positive"]
    target: str = "target"
    findings: list[str] | None = None
    aliases: dict[str, list[str]] = {}
    fusion: Literal["max", "mean", "attention"] | None = None
    box_labels: list[str] | None = None
    min_birads: int | None = Field(None, ge=0, le=6)
    patch: int = Field(64, ge=16, le=1024)
    patches_per_epoch: int = Field(1280, ge=1)
    finding_rate: float = Field(0.4, ge=0, le=1)
    other_rate: float = Field(0.2, ge=0, le=1)
    threshold: float = Field(0.1, gt=0, lt=1)
    max_detections: int = Field(10, ge=1)
    iou: float = Field(0.3, gt=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> Detection2DSpec:
        if self.findings is not None:
            self._several_findings()
        elif self.aliases:
            raise ValueError("aliases name the box labels of findings; set task.findings too (or drop aliases)")
        if len(self.classes) != 2:
            raise ValueError(f"a detection task's images are negative or positive: two classes, got {self.classes}")
        if self.patch % CELL:
            raise ValueError(f"patch must be a multiple of {CELL} (the network's cell), got {self.patch}")
        if self.finding_rate + self.other_rate > 1:
            raise ValueError(f"finding_rate + other_rate must not exceed 1, got {self.finding_rate + self.other_rate}")
        return self

    def _several_findings(self) -> None:
        names = [f.strip().lower() for f in self.findings or []]
        if not names or not all(names) or len(set(names)) != len(names):
            raise ValueError(f"findings must be one or more distinct names, got {self.findings}")
        clashes = {
            "box_labels": "box_labels chooses the boxes of a single finding; with findings each box goes to the "
            "finding its label names (add other names with aliases)",
            "fusion": "views are fused for a single finding (e.g. screening mammography), not for findings",
            "classes": "findings replace classes (each finding is present or not)",
            "target": "findings read their labels from the target_<finding> columns, not from target",
        }
        for name, why in clashes.items():  # compared with the defaults, so that a saved spec loads again
            if getattr(self, name) != type(self).model_fields[name].default:
                raise ValueError(f"task.{name} cannot be set with task.findings: {why}")
        unknown = sorted(set(self.aliases) - set(self.findings or []))
        if unknown:
            raise ValueError(f"aliases are given for {unknown}, which are not among the findings {self.findings}")

    @property
    def channels(self) -> tuple[str, ...]:
        """The name of each cell map: the findings, or the one finding of the positive class."""
        return tuple(self.findings) if self.findings is not None else (self.classes[1],)


_PEAK_CELLS = 2  # a peak is the most probable cell within this many cells along each axis


def cell_boxes(probability: np.ndarray, *, threshold: float, max_detections: int, cell: int = CELL) -> np.ndarray:
    """Detections of a ``(h, w)`` cell probability map, as ``x0, y0, x1, y1, score`` in
    prepared-image pixels, the most probable ``max_detections`` first.

    Each peak (the most probable cell within two cells along each axis; a flat top is one peak) at
    or above ``threshold`` starts a detection; the cells at or above ``threshold`` are shared between
    the peaks by watershed, and neighbouring shares whose border (the pass between them) stays at or
    above half the lower peak are one detection (a lesion with two bumps; joined highest passes
    first, a joined share counting its highest peak), while findings that only a faint ridge joins
    (both sides of the chest) stay apart. A detection's score is its highest
    peak; its box spans its cells at or above half that score (a low threshold finds faint lesions
    without blowing up the boxes of clear ones)."""
    probability = np.asarray(probability, float)
    above = probability >= threshold
    if not above.any():
        return np.zeros((0, 5))
    size = 2 * _PEAK_CELLS + 1
    peaks = above & (probability >= ndimage.maximum_filter(probability, size=size, mode="nearest"))
    markers, count = ndimage.label(peaks, structure=np.ones((3, 3), bool))
    basins = watershed(-probability, markers, mask=above, connectivity=2)
    peak = np.r_[0.0, ndimage.maximum(probability, basins, np.arange(1, count + 1))]
    owner = np.arange(count + 1)  # union-find over basins

    def root(k: int) -> int:
        while owner[k] != k:
            owner[k] = owner[owner[k]]
            k = int(owner[k])
        return k

    for a, b, pass_ in sorted(_borders(basins, probability), key=lambda border: -border[2]):
        a, b = root(a), root(b)  # groups joined so far: highest passes first, each group's highest peak
        if a != b and pass_ >= 0.5 * min(peak[a], peak[b]):
            owner[a], peak[b] = b, max(peak[a], peak[b])
    groups = np.array([root(k) for k in range(count + 1)])[basins]
    best = np.zeros(count + 1)
    np.maximum.at(best, groups.ravel(), probability.ravel() * (groups.ravel() > 0))
    core = np.where(probability >= 0.5 * best[groups], groups, 0) * (groups > 0)
    spans = ndimage.find_objects(core, max_label=count)
    rows = [[s[1].start * cell, s[0].start * cell, s[1].stop * cell, s[0].stop * cell, best[k + 1]]
            for k, s in enumerate(spans) if s is not None]  # fmt: skip
    out = np.asarray(rows, float).reshape(-1, 5)
    return out[np.argsort(-out[:, 4], kind="stable")][:max_detections]


def _borders(basins: np.ndarray, probability: np.ndarray) -> list[tuple[int, int, float]]:
    """Each pair of 8-neighbouring basins ``(a, b)`` and its pass: the highest, over neighbouring
    cells one in each, of the lower of their probabilities."""
    passes: dict[tuple[int, int], float] = {}
    h, w = basins.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        left, right = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        a, b = basins[: h - dy, left], basins[dy:, right]
        low = np.minimum(probability[: h - dy, left], probability[dy:, right])
        touching = (a > 0) & (b > 0) & (a != b)
        for i, j, v in zip(a[touching].tolist(), b[touching].tolist(), low[touching].tolist(), strict=True):
            key = (min(i, j), max(i, j))
            passes[key] = max(passes.get(key, 0.0), v)
    return [(i, j, v) for (i, j), v in passes.items()]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))  # no overflow for large |z|


class Boxes:
    """What a 2D detector's cell maps mean (one spec), and how they become scores, boxes and findings."""

    def __init__(self, spec: Detection2DSpec) -> None:
        self.spec = spec

    def scores(self, logits: np.ndarray) -> pd.DataFrame:
        """``prob`` (one finding) or ``prob_<finding>``: each finding's most probable cell, from cell
        logits ``(B, K, h, w)``."""
        z = np.asarray(logits, np.float32)
        p = _sigmoid(z.reshape(*z.shape[:2], -1).max(axis=2)).astype(np.float32)
        if self.spec.findings is None:
            return pd.DataFrame({"prob": p[:, 0]})
        return pd.DataFrame({f"prob_{name}": p[:, k] for k, name in enumerate(self.spec.findings)})

    def table(self, logits: np.ndarray, shapes: Sequence[tuple[int, int]], size: int) -> pd.DataFrame:
        """Scores and ``detections``: per image a JSON list of boxes in its own pixels (``shapes``:
        each image's height and width; ``size``: the prepared image's side) with their score (and, for
        several findings, the ``finding`` each shows; ``max_detections`` per finding)."""
        s = self.spec
        z = np.asarray(logits, np.float32)
        table = self.scores(z)
        found = []
        for maps, shape in zip(_sigmoid(z), shapes, strict=True):
            rows = []
            for k, p in enumerate(maps):
                marks = cell_boxes(p, threshold=s.threshold, max_detections=s.max_detections)
                corners = boxes_from_prepared(marks[:, :4], shape, size)
                named = {} if s.findings is None else {"finding": s.findings[k]}
                rows += [dict(zip(("x0", "y0", "x1", "y1"), np.round(box, 1).tolist(), strict=True))
                         | {"score": round(q, 4)} | named
                         for box, q in zip(corners, marks[:, 4].tolist(), strict=True)]  # fmt: skip
            found.append(json.dumps(rows))
        table["detections"] = found
        return table

    def findings(self, row: Mapping[str, Any]) -> list[BoxFinding]:
        """The row's detections (boxes in its image's pixels), most probable first, each named by its
        finding (one finding: the positive class)."""
        raw = row.get("detections")
        if not isinstance(raw, str) or not raw.strip():
            return []
        name = self.spec.classes[-1]
        found = [BoxFinding(str(d.get("finding") or name), (float(d["x0"]), float(d["y0"]), float(d["x1"]),
                                                             float(d["y1"])), float(d["score"]))
                 for d in json.loads(raw)]  # fmt: skip
        return sorted(found, key=lambda f: -f.probability)
