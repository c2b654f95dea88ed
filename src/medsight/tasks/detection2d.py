"""2D lesion detection on the task seam (mammography, chest X-rays): a score per image from boxes.

Where a data set marks its findings with boxes (VinDr-Mammo, CBIS-DDSM, NIH ChestX-ray14, RSNA
Pneumonia), the boxes say far more than the image's label: where the finding is, and that the
rest of the image is normal. This task learns from them densely:

- Each image is preprocessed as for classification (the same 2D image cache) and its boxes are
  mapped onto the prepared image. A box is a *finding* when its image is positive and the box
  passes the recipe's filter (``box_labels``, ``min_birads``); every other box (e.g. a benign
  mass in a screening data set) is an *other* box, and a trained negative like the rest of the image.
- Training draws patches (``patch`` pixels square) instead of whole images: a share centred near
  a finding (anywhere in the patch's central half), a share near other boxes (hard negatives),
  the rest anywhere in the image. Small lesions then fill a useful part of what the network sees,
  and each epoch costs what ``patches_per_epoch`` patches cost, whatever the images' size.
- The network (:class:`~medsight.models.cellmap.ResNetCells`) gives a logit per 8x8-pixel cell;
  the loss is a focal loss over cells (a cell is positive when a finding covers any of it) plus
  the cross-entropy of the image's label against its most probable cell. Positive images
  without a finding box are scored on that image term only.
- The image's score is its most probable cell, so everything built on binary classification
  (operating points on the validation split, views fused to breasts and exams, DeLong's test)
  applies unchanged. Each prediction also carries its *detections*: connected cells at or above
  ``threshold`` as boxes in the source image's pixels, with their highest probability, which
  evaluation scores against the finding boxes (average precision and a FROC per image).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage
from torch import nn
from torch.utils.data import Dataset

from medsight.core.errors import InputError
from medsight.core.progress import Progress
from medsight.core.volume import Volume
from medsight.data.cache import ImageCache, build_image_cache
from medsight.data.manifest import Manifest, parse_boxes
from medsight.data.patches import extract_patch
from medsight.metrics import bootstrap_ci
from medsight.metrics.classification import roc_auc
from medsight.metrics.detection import average_precision_of, box_matches, froc_summary, match_boxes
from medsight.models.cellmap import CELL, ResNetCells
from medsight.models.predict import run_model
from medsight.models.registry import ModelChoice
from medsight.tasks import classification_report as report
from medsight.tasks.base import Task, TaskData, Training, as_model, register_task
from medsight.tasks.classification import ClassificationTask
from medsight.tasks.results import Estimate, Prediction
from medsight.transforms.batch2d import BatchAugmenter
from medsight.transforms.image2d import Augment2D, Preprocess2D, boxes_from_prepared, boxes_to_prepared

__all__ = ["BoxPatches", "BoxedImages", "Detection2DSpec", "Detection2DTask", "cell_boxes", "draw_boxes"]

log = logging.getLogger(__name__)

BACKGROUND, FINDING, OTHER, UNKNOWN = 0, 1, 2, 255  # codes of the per-pixel target maps
_PRIOR = 0.01  # a cell's probability in an untrained network
_GAMMA = 2.0  # focal loss
_FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0)  # false positives per image at which sensitivity is reported


class Detection2DSpec(BaseModel):
    """A 2D detection recipe's ``task`` section.

    Attributes:
        classes: The image-level classes (negative, positive), as for a binary classifier.
        target: The manifest column of the image's label (0/1).
        fusion: Per-image scores fused to breast and exam level (mammography), as for a classifier.
        box_labels: A box is a finding only if its label contains one of these (case-insensitive);
            None: any label.
        min_birads: A box is a finding only if its BI-RADS category is at least this (VinDr-Mammo's
            boxes carry one); None: the category does not matter.
        patch: Side of the training patches, in pixels of the prepared image (a multiple of 8).
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
        if len(self.classes) != 2:
            raise ValueError(f"a detection task's images are negative or positive: two classes, got {self.classes}")
        if self.patch % CELL:
            raise ValueError(f"patch must be a multiple of {CELL} (the network's cell), got {self.patch}")
        if self.finding_rate + self.other_rate > 1:
            raise ValueError(f"finding_rate + other_rate must not exceed 1, got {self.finding_rate + self.other_rate}")
        return self


@dataclass(frozen=True)
class BoxedImages:
    """A 2D image cache and, per cached image, its boxes in prepared pixels.

    Attributes:
        cache: The preprocessed images.
        boxes: Per image, ``(n, 5)`` float rows ``x0, y0, x1, y1, code`` (``FINDING`` or ``OTHER``).
        unknown: Per image, True when it is positive but no finding box says where (its map is
            ``UNKNOWN`` everywhere: only its label is learnt).
    """

    cache: ImageCache
    boxes: tuple[np.ndarray, ...]
    unknown: np.ndarray

    def image(self, index: int) -> np.ndarray:
        """``(C, S, S)`` float32 in [0, 1]."""
        return np.asarray(self.cache.images[index], dtype=np.float32) / 255.0

    def map(self, index: int) -> np.ndarray:
        """``(S, S)`` uint8 target map of image ``index``."""
        size = self.cache.images.shape[-1]
        if self.unknown[index]:
            return np.full((size, size), UNKNOWN, np.uint8)
        return draw_boxes(self.boxes[index], size)


def draw_boxes(boxes: np.ndarray, size: int) -> np.ndarray:
    """A ``(size, size)`` uint8 map of ``(n, 5)`` boxes ``x0, y0, x1, y1, code`` (prepared pixels):
    every pixel a box touches gets its code, findings over other boxes; a box thinner than a pixel
    still marks the pixel it lies in."""
    out = np.zeros((size, size), np.uint8)
    for code in (OTHER, FINDING):
        for x0, y0, x1, y1, c in np.asarray(boxes, float).reshape(-1, 5):
            if c != code:
                continue
            left, top = max(math.floor(x0), 0), max(math.floor(y0), 0)
            right = min(max(math.ceil(x1), left + 1), size)
            bottom = min(max(math.ceil(y1), top + 1), size)
            if right > left and bottom > top:
                out[top:bottom, left:right] = code
    return out


def cell_boxes(probability: np.ndarray, *, threshold: float, max_detections: int, cell: int = CELL) -> np.ndarray:
    """Detections of a ``(h, w)`` cell probability map, as ``x0, y0, x1, y1, score`` in
    prepared-image pixels, the most probable ``max_detections`` first: each group of 8-connected
    cells at or above ``threshold`` is one detection, scored by its most probable cell, whose box
    spans the group's cells at or above half that score (a low threshold finds faint lesions
    without blowing up the boxes of clear ones)."""
    regions, count = ndimage.label(probability >= threshold, structure=np.ones((3, 3), bool))
    if count == 0:
        return np.zeros((0, 5))
    peaks = np.atleast_1d(ndimage.maximum(probability, regions, np.arange(1, count + 1)))
    core = np.where(probability >= 0.5 * peaks[np.maximum(regions - 1, 0)], regions, 0) * (regions > 0)
    spans = ndimage.find_objects(core, max_label=count)
    rows = [[s[1].start * cell, s[0].start * cell, s[1].stop * cell, s[0].stop * cell, p]
            for s, p in zip(spans, peaks, strict=True) if s is not None]  # fmt: skip
    out = np.asarray(rows, float).reshape(-1, 5)
    return out[np.argsort(-out[:, 4], kind="stable")][:max_detections]


class _MapDataset(Dataset):
    """Whole images and their target maps (validation, evaluation)."""

    def __init__(self, images: BoxedImages, indices: np.ndarray) -> None:
        self.images, self.indices = images, np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(self.indices[item])
        return torch.from_numpy(self.images.image(index)), torch.from_numpy(self.images.map(index))


class BoxPatches(Dataset):
    """Random training patches ``(image (C, P, P) float32, map (P, P) uint8)``.

    Each draw is, with probability ``finding_rate``, a patch around a random pixel of a random
    finding box (of a random image that has one), with ``other_rate`` one around another box,
    else one anywhere in a random image; patch centres move by up to a quarter patch so lesions
    are not always central. Images whose findings are unknown (positive, no finding box) are left
    out. Randomness comes from NumPy's global generator, which the training loop seeds.
    """

    def __init__(
        self, images: BoxedImages, items: Sequence[int], *, patch: int, samples: int, finding_rate: float,
        other_rate: float,
    ) -> None:  # fmt: skip
        usable = [int(i) for i in items if not images.unknown[int(i)]]
        if not usable:
            raise InputError("no training image has a known target map: every positive image lacks finding boxes")
        self.images, self.items, self.patch, self.samples = images, usable, int(patch), int(samples)
        self.rates = (float(finding_rate), float(other_rate))
        self.with_code = {code: [i for i in usable if np.any(images.boxes[i][:, 4] == code)]
                          for code in (FINDING, OTHER)}  # fmt: skip

    def __len__(self) -> int:
        return self.samples

    def _draw(self) -> tuple[int, np.ndarray]:
        roll = np.random.random_sample()
        size = self.images.cache.images.shape[-1]
        for code, low, high in ((FINDING, 0.0, self.rates[0]), (OTHER, self.rates[0], sum(self.rates))):
            if low <= roll < high and self.with_code[code]:
                item = self.with_code[code][np.random.randint(len(self.with_code[code]))]
                boxes = self.images.boxes[item]
                x0, y0, x1, y1, _ = boxes[boxes[:, 4] == code][np.random.randint(int((boxes[:, 4] == code).sum()))]
                centre = np.array([np.random.uniform(y0, max(y1, y0 + 1)), np.random.uniform(x0, max(x1, x0 + 1))])
                reach = self.patch / 4
                centre = centre + np.random.uniform(-reach, reach, 2)
                return item, np.clip(np.rint(centre), 0, size - 1).astype(int)
        item = self.items[np.random.randint(len(self.items))]
        return item, np.random.randint(0, size, 2)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        item, centre = self._draw()
        image, label = extract_patch(self.images.image(item), self.images.map(item), centre, (self.patch, self.patch))
        return torch.from_numpy(image), torch.from_numpy(label)


@register_task
@dataclass(frozen=True)
class Detection2DTask(Task):
    """Lesion detection in 2D images, scored per image as a binary classifier is (see the module)."""

    settings: Detection2DSpec

    spec_type = Detection2DSpec
    preprocess_type = Preprocess2D

    @property
    def spec(self) -> Detection2DSpec:
        return self.settings

    @property
    def classifier(self) -> ClassificationTask:
        """The binary classification task the image scores are reported as."""
        s = self.settings
        return ClassificationTask("binary", tuple(s.classes), target=s.target, fusion=s.fusion)

    @property
    def stratify_by(self) -> str | None:
        return self.settings.target

    @property
    def spatial_dims(self) -> int:
        return 2

    # --- data -------------------------------------------------------------------------------
    def is_finding(self, label: str, birads: int | None) -> bool:
        """Whether a box of a positive image counts as a finding under the recipe's filter."""
        s = self.settings
        if s.box_labels is not None and not any(want.lower() in label.lower() for want in s.box_labels):
            return False
        return s.min_birads is None or (birads is not None and birads >= s.min_birads)

    def coded_boxes(self, cell: Any, case: str, positive: bool) -> np.ndarray:
        """A manifest's 2D ``boxes`` cell as ``(n, 5)`` rows ``x0, y0, x1, y1, code`` in source pixels:
        ``FINDING`` for the boxes of a ``positive`` image that pass the recipe's filter, else ``OTHER``.

        Raises:
            InputError: the cell is not a list of ``x, y, w, h`` boxes (naming ``case``).
        """
        rows = []
        for n, box in enumerate(parse_boxes(cell, case)):
            try:
                x, y, w, h = (float(box[k]) for k in ("x", "y", "w", "h"))
            except (KeyError, TypeError, ValueError):
                raise InputError(
                    f"case {case}: box {n + 1} is {box!r}; a 2D box needs x, y, w, h in pixels (as the adapters "
                    "write them); 3D findings (center, diameter_mm) belong to the 3D detection task"
                ) from None
            if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
                raise InputError(f"case {case}: box {n + 1} has x={x}, y={y}, w={w}, h={h}; w and h must be >= 0")
            birads = box.get("birads")
            finding = positive and self.is_finding(str(box.get("label", "")), None if birads is None else int(birads))
            rows.append((x, y, x + w, y + h, FINDING if finding else OTHER))
        return np.array(rows, float).reshape(-1, 5)

    def prepare(
        self, manifest: Manifest, preprocess: BaseModel, folder: str | os.PathLike[str], *, progress: Progress | None
    ) -> TaskData:
        """The 2D image cache, the image labels and each image's boxes mapped onto its prepared image."""
        spec = as_model(preprocess, Preprocess2D)
        if "boxes" not in manifest.table.columns:
            raise InputError("the manifest has no boxes column: 2D detection learns from boxes (the vindr-mammo, "
                             "nih-cxr14 and rsna-pneumonia adapters write them). For images labelled without boxes "
                             "train an image classifier, e.g. --recipe mammo-screening-classifier")  # fmt: skip
        labels = self.classifier.targets(manifest)
        cache = build_image_cache(manifest, spec, folder, progress=progress)
        boxes, unknown = [], np.zeros(len(manifest), bool)
        for i, (case, cell) in enumerate(zip(manifest.table["case_id"], manifest.table["boxes"], strict=True)):
            coded = self.coded_boxes(cell, str(case), labels[i] == 1)
            corners = boxes_to_prepared(coded[:, :4], cache.shapes[i], spec.size)
            boxes.append(np.column_stack([corners, coded[:, 4]]))
            unknown[i] = labels[i] == 1 and not np.any(coded[:, 4] == FINDING)
        if unknown.any():
            log.info("%d positive image(s) have no finding box; they are learnt from their label only", unknown.sum())
        return TaskData(manifest, BoxedImages(cache, tuple(boxes), unknown), labels, spec, spec.channels)

    def check(self, data: TaskData, splits: Mapping[str, np.ndarray]) -> None:
        """As a binary classifier, and the training split needs finding boxes to learn from."""
        self.classifier.check(data, splits)
        images: BoxedImages = data.inputs
        train = splits.get("train", np.zeros(0, int))
        if not any(np.any(images.boxes[i][:, 4] == FINDING) for i in train):
            raise InputError(
                f"no training image has a finding box ({len(train)} train images): 2D detection learns where "
                f"findings are. Check the manifest's boxes column and the recipe's box_labels / min_birads "
                f"({self.settings.box_labels}, {self.settings.min_birads}), or train an image classifier on data "
                "without boxes (e.g. --recipe mammo-screening-classifier)"
            )

    def dataset(self, data: TaskData, indices: np.ndarray) -> Dataset:
        return _MapDataset(data.inputs, indices)

    def training(self, data: TaskData, indices: np.ndarray, *, balance: str, augment: BaseModel, seed: int) -> Training:
        """Patches drawn at the recipe's rates (they balance findings and normal tissue, whatever
        ``balance`` says), augmented on the device with their target maps."""
        s = self.settings
        if balance != "none":
            log.info("balance: %s is not used by 2D detection: the patch rates (finding_rate %.2f, other_rate %.2f) "
                     "balance findings and normal tissue", balance, s.finding_rate, s.other_rate)  # fmt: skip
        patches = BoxPatches(data.inputs, indices, patch=s.patch, samples=s.patches_per_epoch,
                             finding_rate=s.finding_rate, other_rate=s.other_rate)  # fmt: skip
        return Training(loss=self.loss, train_set=patches,
                        augment_batch=BatchAugmenter(as_model(augment, Augment2D)).with_maps)  # fmt: skip

    def input_array(self, volume: Volume, preprocess: BaseModel, *, slice_index: int | None = None) -> np.ndarray:
        return self.classifier.input_array(volume, preprocess, slice_index=slice_index)

    # --- network ----------------------------------------------------------------------------
    def network(self, model: ModelChoice, in_channels: int, preprocess: BaseModel | None = None) -> nn.Module:
        """The recipe's ResNet as a cell scorer (:class:`~medsight.models.cellmap.ResNetCells`)."""
        return ResNetCells(model.name, in_channels, prior=_PRIOR)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Focal loss over the known cells (over the positive cells' count) + the image term."""
        if outputs.ndim != 4 or targets.ndim != 3 or outputs.shape[0] != targets.shape[0]:
            raise InputError(f"cell logits (B, 1, h, w) and target maps (B, H, W) expected; got "
                             f"{tuple(outputs.shape)}, {tuple(targets.shape)}")  # fmt: skip
        logits = outputs[:, 0].float()
        finding, known, label = _cell_targets(targets, logits.shape[-2:])
        p = torch.sigmoid(logits)
        terms = F.binary_cross_entropy_with_logits(logits, finding, reduction="none")
        weight = torch.where(finding > 0, 1 - p, p).detach() ** _GAMMA * known
        cells = (terms * weight).sum() / finding.sum().clamp_min(1.0)
        image = F.binary_cross_entropy_with_logits(logits.flatten(1).amax(1), label)
        return cells + image

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """``auc`` of the images' most probable cells against their labels."""
        _, _, label = _cell_targets(targets, outputs.shape[-2:])
        return {"auc": roc_auc(label.cpu().numpy(), self._image_scores(outputs))}

    def metric_names(self) -> tuple[str, ...]:
        return ("auc",)

    @staticmethod
    def _image_scores(outputs: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(outputs.float().flatten(1).amax(1)).detach().cpu().numpy()

    # --- predictions ------------------------------------------------------------------------
    def scores(self, outputs: torch.Tensor) -> pd.DataFrame:
        """``prob``: the most probable cell of each image."""
        return pd.DataFrame({"prob": self._image_scores(outputs)})

    def _with_detections(self, outputs: torch.Tensor, shapes: Sequence[tuple[int, int]], size: int) -> pd.DataFrame:
        table = self.scores(outputs)
        probability = torch.sigmoid(outputs.float()[:, 0]).cpu().numpy()
        found = []
        for p, shape in zip(probability, shapes, strict=True):
            marks = cell_boxes(p, threshold=self.settings.threshold, max_detections=self.settings.max_detections)
            corners = boxes_from_prepared(marks[:, :4], shape, size)
            rows = [dict(zip(("x0", "y0", "x1", "y1"), np.round(box, 1).tolist(), strict=True)) | {"score": round(q, 4)}
                    for box, q in zip(corners, marks[:, 4].tolist(), strict=True)]  # fmt: skip
            found.append(json.dumps(rows))
        table["detections"] = found
        return table

    def predict_split(
        self, model: nn.Module, data: TaskData, indices: np.ndarray, *, batch_size: int = 64
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Scores and detections (source pixels) of prepared images."""
        images: BoxedImages = data.inputs
        outputs = run_model(model, self.dataset(data, indices), batch_size=batch_size)
        shapes = [images.cache.shapes[int(i)] for i in indices]
        cases = data.manifest.table.iloc[indices].reset_index(drop=True)
        return cases, self._with_detections(outputs, shapes, images.cache.images.shape[-1])

    def predict_volumes(
        self, model: nn.Module, volumes: Sequence[Volume], preprocess: BaseModel, *, slice_index: int | None = None
    ) -> tuple[pd.DataFrame, list[Volume] | None]:
        """Scores and detections (each file's pixels) of images read from files."""
        spec = as_model(preprocess, Preprocess2D)
        arrays = [self.input_array(v, spec, slice_index=slice_index) for v in volumes]
        with torch.no_grad():
            outputs = model(torch.from_numpy(np.stack(arrays)))
        shapes = [tuple(int(s) for s in v.spatial_shape[-2:]) for v in volumes]
        return self._with_detections(outputs, shapes, spec.size), None  # type: ignore[arg-type]

    def evaluate(
        self, val: Prediction, test: Prediction, *, split: str, operating_points: Sequence[str], bootstrap: int
    ) -> tuple[dict[str, Estimate], dict[str, Any], list[str]]:
        """The image (and fused breast and exam) figures of a binary classifier, and how well the
        detections find the finding boxes: average precision at ``iou`` and sensitivity at
        0.125-2 false positives per image, both with CIs over patients."""
        figures, details, warnings = report.evaluate(self.classifier, val.table(), test.table(), split=split,
                                                     points=operating_points, n=bootstrap)  # fmt: skip
        local, detail = self._localisation(test.table(), bootstrap)
        details["localisation"] = detail
        return {**figures, **local}, details, warnings

    def _localisation(self, table: pd.DataFrame, n: int) -> tuple[dict[str, Estimate], dict[str, Any]]:
        if "detections" not in table.columns or "boxes" not in table.columns:
            return {}, {"undefined": "the predictions carry no detections or the cases no boxes"}
        truths, marks = [], []
        for _, row in table.iterrows():
            case = str(row["case_id"])
            coded = self.coded_boxes(row["boxes"], case, row.get(self.settings.target) == 1)
            truths += [(case, *corners) for corners in coded[coded[:, 4] == FINDING, :4].tolist()]
            cell = row["detections"]
            for mark in json.loads(cell) if isinstance(cell, str) and cell else []:
                marks.append((case, mark["x0"], mark["y0"], mark["x1"], mark["y1"], mark["score"]))
        columns = ["image", "x0", "y0", "x1", "y1"]
        truth = pd.DataFrame(truths, columns=columns)
        found = pd.DataFrame(marks, columns=[*columns, "score"])
        iou = self.settings.iou
        if truth.empty:
            return {}, {"undefined": "no finding box in this split"}
        images = table["case_id"].astype(str).tolist()
        patient_of = dict(zip(images, table["patient_id"].astype(str), strict=True))
        entries = match_boxes(found, truth, iou=iou, images=images)
        entries = replace(entries, scan=np.array([patient_of[s] for s in entries.scan], dtype=object))
        froc = froc_summary(entries, rates=_FROC_RATES, bootstrap=n)
        rows = box_matches(found, truth, iou=iou, max_detections=self.settings.max_detections)
        ap = bootstrap_ci(average_precision_of, rows["score"].to_numpy(), rows["hit"].to_numpy(),
                          rows["truths"].to_numpy(), groups=rows["image"].map(patient_of).to_numpy(),
                          n_resamples=n)  # fmt: skip
        figures = {f"lesion AP@{iou:g}": Estimate.of(ap),
                   "lesion sensitivity @ 1 FP/image": Estimate.of(froc["sensitivity"]["1"])}  # fmt: skip
        return figures, {"iou": iou, "average_precision": ap, "froc": froc, "findings": len(truth),
                         "detections": len(found)}  # fmt: skip

    def save_fitted(self, details: Mapping[str, Any], run_dir: Path) -> None:
        report.save_fusion(dict(details), run_dir)

    def fitted(self, run_dir: Path) -> dict[str, Any]:
        return report.fitted_fusion(run_dir)

    def grouped(self, table: pd.DataFrame, fitted: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
        return report.fuse(self.classifier, table, dict(fitted))

    def paired_scores(self, table: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return report.paired_scores(self.classifier, table)


def _cell_targets(maps: torch.Tensor, cells: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per cell, whether a finding covers any of it and whether it is known; per image, its label
    (a finding anywhere, or unknown findings of a positive image)."""
    maps = maps.to(torch.uint8)
    finding = (maps == FINDING).float()[:, None]
    unknown = (maps == UNKNOWN).float()[:, None]
    h, w = maps.shape[-2:]
    pad = (0, cells[1] * CELL - w, 0, cells[0] * CELL - h)
    if pad[1] < 0 or pad[3] < 0:
        raise InputError(f"{tuple(cells)} cells cannot cover maps of {h}x{w} pixels")
    finding_cells = F.max_pool2d(F.pad(finding, pad), CELL)[:, 0]
    unknown_cells = F.max_pool2d(F.pad(unknown, pad), CELL)[:, 0]
    label = torch.maximum(finding.flatten(1).amax(1), unknown.flatten(1).amax(1))
    return finding_cells, 1.0 - unknown_cells, label
