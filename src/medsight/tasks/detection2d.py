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
- Several findings at once (``findings``, e.g. chest X-ray findings): one cell map per finding,
  each box taught on the map of the finding its label names, the image's ``target_<finding>``
  labels scored as a multi-label classifier's are (an unknown label leaves that map out), and the
  detections named by finding. A positive label without a box of its finding is learnt from the
  image term alone, which needs the whole image: with ``patch`` at least the image size, training
  takes whole images; with smaller patches such a map is left out of the patch.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from pydantic import BaseModel
from torch import nn
from torch.utils.data import Dataset

from medsight.core.errors import ConfigError, InputError
from medsight.core.progress import Progress
from medsight.core.volume import Volume
from medsight.data.cache import ImageCache, build_image_cache
from medsight.data.manifest import Manifest, parse_boxes
from medsight.data.patches import extract_patch
from medsight.metrics import bootstrap_ci
from medsight.metrics.classification import roc_auc
from medsight.metrics.detection import (
    average_precision_of,
    box_matches,
    froc_summary,
    match_boxes,
    mean_average_precision,
    top_box_hits,
)
from medsight.models.cellmap import ResNetCells
from medsight.models.predict import run_model
from medsight.models.registry import ModelChoice
from medsight.tasks import classification_report as report
from medsight.tasks.base import Task, TaskData, Training, as_model, register_task
from medsight.tasks.boxes import Boxes, Detection2DSpec, cell_boxes
from medsight.tasks.classification import ClassificationTask
from medsight.tasks.results import BoxFinding, Estimate, Prediction
from medsight.transforms.batch2d import BatchAugmenter
from medsight.transforms.image2d import Augment2D, Preprocess2D, boxes_to_prepared
from medsight.transforms.prepare2d import CELL

__all__ = ["BoxPatches", "BoxedImages", "Detection2DSpec", "Detection2DTask", "cell_boxes", "draw_boxes"]

log = logging.getLogger(__name__)

# codes of the per-pixel target maps: a finding's map is UNKNOWN where its image is positive but no
# box says where, UNLABELLED where the image's label of that finding is unknown (nothing to learn)
BACKGROUND, FINDING, OTHER, UNLABELLED, UNKNOWN = 0, 1, 2, 254, 255
_PRIOR = 0.01  # a cell's probability in an untrained network
_GAMMA = 2.0  # focal loss
_FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0)  # false positives per image at which sensitivity is reported


@dataclass(frozen=True)
class BoxedImages:
    """A 2D image cache and, per cached image, its boxes in prepared pixels and its labels.

    Attributes:
        cache: The preprocessed images.
        boxes: Per image, ``(n, 5)`` float rows ``x0, y0, x1, y1, finding``: the index of the
            finding (cell map) the box shows, or -1 for any other box (a trained negative).
        labels: ``(N, K)`` float: per image and finding 1 (present), 0 (absent) or NaN (unknown).
        unknown: ``(N, K)`` bool: the image has the finding but none of its boxes says where.
    """

    cache: ImageCache
    boxes: tuple[np.ndarray, ...]
    labels: np.ndarray
    unknown: np.ndarray

    @property
    def channels(self) -> int:
        """Cell maps (findings) per image."""
        return int(self.labels.shape[1])

    def image(self, index: int) -> np.ndarray:
        """``(C, S, S)`` float32 in [0, 1]."""
        return np.asarray(self.cache.images[index], dtype=np.float32) / 255.0

    def map(self, index: int) -> np.ndarray:
        """``(K, S, S)`` uint8 target maps of image ``index``, one per finding: its boxes
        ``FINDING``, the image's other boxes ``OTHER``; all ``UNKNOWN`` (present, no box) or
        ``UNLABELLED`` (label unknown)."""
        size = self.cache.images.shape[-1]
        boxes = self.boxes[index]
        out = np.empty((self.channels, size, size), np.uint8)
        for k in range(self.channels):
            if np.isnan(self.labels[index, k]):
                out[k] = UNLABELLED
            elif self.unknown[index, k]:
                out[k] = UNKNOWN
            else:
                out[k] = draw_boxes(np.column_stack([boxes[:, :4], np.where(boxes[:, 4] == k, FINDING, OTHER)]), size)
        return out


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
    """Random training patches ``(image (C, P, P) float32, maps (K, P, P) uint8)``.

    Each draw is, with probability ``finding_rate``, a patch around a random pixel of a random
    finding box (of a random image that has one), with ``other_rate`` one around another box,
    else one anywhere in a random image; patch centres move by up to a quarter patch so lesions
    are not always central. A patch smaller than the image cannot tell whether it holds a finding
    that no box locates, so such a map (``UNKNOWN``) becomes ``UNLABELLED`` in the patch, and
    images with nothing known to learn are left out. A patch at least the image's size is the
    whole image, drawn at the same rates. Randomness comes from NumPy's global generator, which
    the training loop seeds.
    """

    def __init__(
        self, images: BoxedImages, items: Sequence[int], *, patch: int, samples: int, finding_rate: float,
        other_rate: float,
    ) -> None:  # fmt: skip
        size = int(images.cache.images.shape[-1])
        self.whole = int(patch) >= size
        known = ~np.isnan(images.labels) & (self.whole | ~images.unknown)
        usable = [int(i) for i in items if known[int(i)].any()]
        if not usable:
            raise InputError(
                "no training image has a known target map: every positive image lacks finding boxes "
                "(train on whole images, task.patch >= preprocess.size, to learn from their labels)"
            )
        self.images, self.items, self.patch, self.samples = images, usable, min(int(patch), size), int(samples)
        self.rates = (float(finding_rate), float(other_rate))
        self.with_code = {FINDING: [i for i in usable if np.any(images.boxes[i][:, 4] >= 0)],
                          OTHER: [i for i in usable if np.any(images.boxes[i][:, 4] < 0)]}  # fmt: skip

    def __len__(self) -> int:
        return self.samples

    def _draw(self) -> tuple[int, np.ndarray]:
        roll = np.random.random_sample()
        size = self.images.cache.images.shape[-1]
        for code, low, high in ((FINDING, 0.0, self.rates[0]), (OTHER, self.rates[0], sum(self.rates))):
            if low <= roll < high and self.with_code[code]:
                item = self.with_code[code][np.random.randint(len(self.with_code[code]))]
                if self.whole:
                    return item, np.array([size // 2, size // 2])
                boxes = self.images.boxes[item]
                chosen = boxes[boxes[:, 4] >= 0] if code == FINDING else boxes[boxes[:, 4] < 0]
                x0, y0, x1, y1, _ = chosen[np.random.randint(len(chosen))]
                centre = np.array([np.random.uniform(y0, max(y1, y0 + 1)), np.random.uniform(x0, max(x1, x0 + 1))])
                reach = self.patch / 4
                centre = centre + np.random.uniform(-reach, reach, 2)
                return item, np.clip(np.rint(centre), 0, size - 1).astype(int)
        item = self.items[np.random.randint(len(self.items))]
        return item, np.array([size // 2, size // 2]) if self.whole else np.random.randint(0, size, 2)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        item, centre = self._draw()
        image, maps = extract_patch(self.images.image(item), self.images.map(item), centre, (self.patch, self.patch))
        if not self.whole:
            maps[maps == UNKNOWN] = UNLABELLED
        return torch.from_numpy(image), torch.from_numpy(maps)


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
    def boxes(self) -> Boxes:
        """Cell maps -> scores, boxes and findings (NumPy; shared with the torch-free runtime)."""
        return Boxes(self.settings)

    @property
    def classifier(self) -> ClassificationTask:
        """The classification task the image scores are reported as: binary, or multi-label over the findings."""
        s = self.settings
        if s.findings is not None:
            return ClassificationTask("multilabel", tuple(s.findings))
        return ClassificationTask("binary", tuple(s.classes), target=s.target, fusion=s.fusion)

    @property
    def stratify_by(self) -> str | None:
        return self.classifier.stratify_by

    @property
    def spatial_dims(self) -> int:
        return 2

    # --- data -------------------------------------------------------------------------------
    def finding_of(self, label: str, birads: int | None) -> int:
        """The finding (cell map) a box with this label and BI-RADS category shows, or -1 for none."""
        s = self.settings
        if s.min_birads is not None and (birads is None or birads < s.min_birads):
            return -1
        if s.findings is None:
            wanted = s.box_labels is None or any(want.lower() in label.lower() for want in s.box_labels)
            return 0 if wanted else -1
        said = label.strip().lower()
        for k, name in enumerate(s.findings):
            if said in {n.strip().lower() for n in (name, *s.aliases.get(name, []))}:
                return k
        return -1

    def coded_boxes(self, cell: Any, case: str, positive: Sequence[bool] | np.ndarray) -> np.ndarray:
        """A manifest's 2D ``boxes`` cell as ``(n, 5)`` rows ``x0, y0, x1, y1, finding`` in source
        pixels: the finding a box shows (:meth:`finding_of`) when the image has it (``positive``, one
        flag per finding), else -1 (another box).

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
            finding = self.finding_of(str(box.get("label", "")), None if birads is None else int(birads))
            rows.append((x, y, x + w, y + h, finding if finding >= 0 and positive[finding] else -1))
        return np.array(rows, float).reshape(-1, 5)

    def labels(self, table: pd.DataFrame) -> np.ndarray:
        """``(N, K)`` float image labels of a manifest's (or a prediction's) rows: 1, 0 or NaN (unknown)."""
        s = self.settings
        columns = [s.target] if s.findings is None else [f"target_{name}" for name in s.findings]
        return table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)

    def prepare(
        self, manifest: Manifest, preprocess: BaseModel, folder: str | os.PathLike[str], *, progress: Progress | None
    ) -> TaskData:
        """The 2D image cache, the image labels and each image's boxes mapped onto its prepared image."""
        spec = as_model(preprocess, Preprocess2D)
        if "boxes" not in manifest.table.columns:
            raise InputError("the manifest has no boxes column: 2D detection learns from boxes (the vindr-mammo, "
                             "nih-cxr14 and rsna-pneumonia adapters write them). For images labelled without boxes "
                             "train an image classifier, e.g. --recipe mammo-screening-classifier")  # fmt: skip
        try:
            targets = self.classifier.targets(manifest)  # checks the label columns
        except ConfigError as exc:  # the classifier's advice names its own key
            raise ConfigError(str(exc).replace("task.classes", "task.findings")) from None
        labels = targets.reshape(len(manifest), -1).astype(float)
        cache = build_image_cache(manifest, spec, folder, progress=progress)
        boxes, unknown = [], np.zeros(labels.shape, bool)
        for i, (case, cell) in enumerate(zip(manifest.table["case_id"], manifest.table["boxes"], strict=True)):
            coded = self.coded_boxes(cell, str(case), labels[i] == 1)
            corners = boxes_to_prepared(coded[:, :4], cache.shapes[i], spec.size)
            boxes.append(np.column_stack([corners, coded[:, 4]]))
            unknown[i] = (labels[i] == 1) & ~np.isin(np.arange(labels.shape[1]), coded[:, 4])
        whole = self.settings.patch >= spec.size
        for k, name in enumerate(self.settings.channels):
            if unknown[:, k].any():
                log.info("%s: %d positive image(s) have no box of it; they are learnt from their label only%s",
                         name, unknown[:, k].sum(), "" if whole else " where training sees whole images "
                         "(task.patch >= preprocess.size), so not in this run")  # fmt: skip
        return TaskData(manifest, BoxedImages(cache, tuple(boxes), labels, unknown), targets, spec, spec.channels)

    def check(self, data: TaskData, splits: Mapping[str, np.ndarray]) -> None:
        """As a classifier of the image labels, and the training split needs finding boxes to learn from."""
        self.classifier.check(data, splits)
        images: BoxedImages = data.inputs
        train = splits.get("train", np.zeros(0, int))
        boxed = {int(k) for i in train for k in images.boxes[i][:, 4] if k >= 0}
        if not boxed:
            raise InputError(
                f"no training image has a finding box ({len(train)} train images): 2D detection learns where "
                f"findings are. Check the manifest's boxes column and the recipe's findings / aliases / box_labels / "
                f"min_birads, or train an image classifier on data without boxes "
                "(e.g. --recipe mammo-screening-classifier)"
            )
        unboxed = [name for k, name in enumerate(self.settings.channels) if k not in boxed]
        if unboxed:
            log.warning("no training box shows %s: learnt from image labels only, so where %s is not taught",
                        ", ".join(unboxed), "it is" if len(unboxed) == 1 else "they are")  # fmt: skip

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
    def example_input(self, preprocess: BaseModel, in_channels: int) -> torch.Tensor:
        return self.classifier.example_input(preprocess, in_channels)

    def network(self, model: ModelChoice, in_channels: int, preprocess: BaseModel | None = None) -> nn.Module:
        """The recipe's ResNet as a cell scorer (:class:`~medsight.models.cellmap.ResNetCells`), a map per finding."""
        if model.dropout:
            raise ConfigError("model.dropout applies to classifiers; the 2D detector has none (for uncertainty use "
                              "--uncertainty tta or an ensemble)")  # fmt: skip
        return ResNetCells(model.name, in_channels, prior=_PRIOR, outputs=len(self.settings.channels))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Focal loss over the known cells (over the positive cells' count) + the image term of
        each labelled finding."""
        if targets.ndim == 3:
            targets = targets[:, None]
        if outputs.ndim != 4 or targets.ndim != 4 or outputs.shape[:2] != targets.shape[:2]:
            raise InputError(f"cell logits (B, K, h, w) and target maps (B, K, H, W) expected; got "
                             f"{tuple(outputs.shape)}, {tuple(targets.shape)}")  # fmt: skip
        logits = outputs.float()
        finding, known, label, labelled = _cell_targets(targets, logits.shape[-2:])
        p = torch.sigmoid(logits)
        terms = F.binary_cross_entropy_with_logits(logits, finding, reduction="none")
        weight = torch.where(finding > 0, 1 - p, p).detach() ** _GAMMA * known
        cells = (terms * weight).sum() / finding.sum().clamp_min(1.0)
        image = F.binary_cross_entropy_with_logits(logits.flatten(2).amax(2), label, reduction="none")
        return cells + (image * labelled).sum() / labelled.sum().clamp_min(1.0)

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """``auc`` (one finding) or ``macro_auc`` (several) of the images' most probable cells
        against their labels."""
        if targets.ndim == 3:
            targets = targets[:, None]
        _, _, label, labelled = _cell_targets(targets, outputs.shape[-2:])
        label, labelled, scores = label.cpu().numpy(), labelled.cpu().numpy() > 0, self._image_scores(outputs)
        aucs = [roc_auc(label[known, k], scores[known, k]) if known.any() else float("nan")
                for k, known in enumerate(labelled.T)]  # fmt: skip
        if self.settings.findings is None:
            return {"auc": aucs[0]}
        finite = [a for a in aucs if not math.isnan(a)]
        return {"macro_auc": float(np.mean(finite)) if finite else float("nan")}

    def metric_names(self) -> tuple[str, ...]:
        return ("auc",) if self.settings.findings is None else ("macro_auc",)

    @staticmethod
    def _image_scores(outputs: torch.Tensor) -> np.ndarray:
        """``(B, K)``: each finding's most probable cell."""
        return torch.sigmoid(outputs.float().flatten(2).amax(2)).detach().cpu().numpy()

    # --- predictions ------------------------------------------------------------------------
    def scores(self, outputs: torch.Tensor) -> pd.DataFrame:
        """``prob`` (one finding) or ``prob_<finding>``: each finding's most probable cell."""
        return self.boxes.scores(outputs.float().detach().cpu().numpy())

    def _with_detections(self, outputs: torch.Tensor, shapes: Sequence[tuple[int, int]], size: int) -> pd.DataFrame:
        """Scores and ``detections`` in each image's own pixels (:meth:`Boxes.table`)."""
        return self.boxes.table(outputs.float().detach().cpu().numpy(), shapes, size)

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

    def findings(self, row: Mapping[str, Any]) -> list[BoxFinding]:
        """The row's detections, most probable first (:meth:`Boxes.findings`)."""
        return self.boxes.findings(row)

    def evaluate(
        self, val: Prediction, test: Prediction, *, split: str, operating_points: Sequence[str], bootstrap: int
    ) -> tuple[dict[str, Estimate], dict[str, Any], list[str]]:
        """The image (and fused breast and exam) figures of a classifier (binary, or multi-label for
        several findings), and how well the detections find the finding boxes: average precision at
        ``iou`` (its mean over findings), sensitivity at 0.125-2 false positives per image, and the
        share of boxes that the image's most probable detection of their finding overlaps at ``iou``
        (what a classifier's class activation map box is scored by), all with CIs over patients."""
        figures, details, warnings = report.evaluate(self.classifier, val.table(), test.table(), split=split,
                                                     points=operating_points, n=bootstrap)  # fmt: skip
        local, detail = self._localisation(test.table(), bootstrap)
        details["localisation"] = detail
        return {**figures, **local}, details, warnings

    def _boxes_and_marks(self, table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The finding boxes of positive images and the detections of a prediction table, each row
        with its ``image`` (case), ``finding`` index and corners (detections: and ``score``)."""
        names = list(self.settings.channels)
        positive = self.labels(table) == 1
        truths, marks = [], []
        for i, (case, boxes, cell) in enumerate(zip(table["case_id"].astype(str), table["boxes"], table["detections"],
                                                    strict=True)):  # fmt: skip
            coded = self.coded_boxes(boxes, case, positive[i])
            truths += [(case, int(k), *corners) for *corners, k in coded[coded[:, 4] >= 0].tolist()]
            for mark in json.loads(cell) if isinstance(cell, str) and cell else []:
                name = mark.get("finding", names[0] if self.settings.findings is None else None)
                if name not in names:
                    raise InputError(f"case {case}: a detection of {name!r}, which is not among the findings {names}; "
                                     "were these predictions made by another recipe?")  # fmt: skip
                marks.append((case, names.index(name), mark["x0"], mark["y0"], mark["x1"], mark["y1"], mark["score"]))
        columns = ["image", "finding", "x0", "y0", "x1", "y1"]
        return pd.DataFrame(truths, columns=columns), pd.DataFrame(marks, columns=[*columns, "score"])

    def _localisation(self, table: pd.DataFrame, n: int) -> tuple[dict[str, Estimate], dict[str, Any]]:
        if "detections" not in table.columns or "boxes" not in table.columns:
            return {}, {"undefined": "the predictions carry no detections or the cases no boxes"}
        truth, found = self._boxes_and_marks(table)
        if truth.empty:
            return {}, {"undefined": "no finding box in this split"}
        s, iou = self.settings, self.settings.iou
        images = table["case_id"].astype(str).tolist()
        patient_of = dict(zip(images, table["patient_id"].astype(str), strict=True))
        per: dict[str, dict[str, Any]] = {}
        matched, top = [], []
        for k, name in enumerate(s.channels):
            theirs = truth[truth["finding"] == k].drop(columns="finding")
            mine = found[found["finding"] == k].drop(columns="finding")
            if theirs.empty:
                per[name] = {"findings": 0, "detections": len(mine), "undefined": "no box of it in this split"}
                continue
            entries = match_boxes(mine, theirs, iou=iou, images=images)
            entries = replace(entries, scan=np.array([patient_of[i] for i in entries.scan], dtype=object))
            rows = box_matches(mine, theirs, iou=iou, max_detections=s.max_detections).assign(finding=k)
            hits = top_box_hits(mine, theirs, iou=iou)
            arrays = (rows["score"].to_numpy(), rows["hit"].to_numpy(), rows["truths"].to_numpy())
            groups = rows["image"].map(patient_of).to_numpy()
            per[name] = {
                "average_precision": bootstrap_ci(average_precision_of, *arrays, groups=groups, n_resamples=n),
                "froc": froc_summary(entries, rates=_FROC_RATES, bootstrap=n),
                "top_box_hit": bootstrap_ci(np.mean, hits["hit"].to_numpy(float),
                                            groups=hits["image"].map(patient_of).to_numpy(), n_resamples=n),
                "findings": len(theirs), "detections": len(mine),
            }  # fmt: skip
            matched.append(rows)
            top.append(hits)
        if s.findings is None:
            only = per[s.channels[0]]
            figures = {f"lesion AP@{iou:g}": Estimate.of(only["average_precision"]),
                       "lesion sensitivity @ 1 FP/image": Estimate.of(only["froc"]["sensitivity"]["1"])}  # fmt: skip
            return figures, {"iou": iou, **only}
        rows, hits = pd.concat(matched, ignore_index=True), pd.concat(top, ignore_index=True)
        mean_ap = bootstrap_ci(mean_average_precision, rows["score"].to_numpy(), rows["hit"].to_numpy(),
                               rows["truths"].to_numpy(), rows["finding"].to_numpy(),
                               groups=rows["image"].map(patient_of).to_numpy(), n_resamples=n)  # fmt: skip
        top_hit = bootstrap_ci(np.mean, hits["hit"].to_numpy(float), groups=hits["image"].map(patient_of).to_numpy(),
                               n_resamples=n)  # fmt: skip
        figures = {f"lesion mAP@{iou:g}": Estimate.of(mean_ap), f"top box hit @ IoU {iou:g}": Estimate.of(top_hit)}
        figures |= {f"lesion AP@{iou:g} {name}": Estimate.of(block["average_precision"])
                    for name, block in per.items() if "average_precision" in block}  # fmt: skip
        return figures, {"iou": iou, "mean_average_precision": mean_ap, "top_box_hit": top_hit,
                         "findings": len(truth), "detections": len(found), "per_finding": per}  # fmt: skip

    def save_fitted(self, details: Mapping[str, Any], run_dir: Path) -> None:
        report.save_fusion(dict(details), run_dir)

    def fitted(self, run_dir: Path) -> dict[str, Any]:
        return report.fitted_fusion(run_dir)

    def grouped(self, table: pd.DataFrame, fitted: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
        return report.fuse(self.classifier, table, dict(fitted))

    def paired_scores(self, table: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return report.paired_scores(self.classifier, table)

    def calibration_groups(self, table: pd.DataFrame) -> list[tuple[str, list[str], bool, np.ndarray]]:
        """The image scores, as the classifier they are reported as (labels of each finding)."""
        labels = self.labels(table)
        names = ["score"] if self.settings.findings is None else list(self.settings.findings)
        columns = ["prob"] if self.settings.findings is None else [f"prob_{n}" for n in names]
        return [(name, [column], False, labels[:, k]) for k, (name, column) in enumerate(zip(names, columns,
                                                                                             strict=True))]  # fmt: skip

    # --- explanations -----------------------------------------------------------------------
    def explain_targets(self) -> tuple[str, ...]:
        """Each finding scored per cell."""
        return tuple(self.settings.channels)

    def explain_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """Each finding's most probable cell (the image score the task reports), as a logit."""
        return outputs.float().flatten(2).amax(2)

    def explain_boxes(self, cell: Any, case: str, target: int) -> np.ndarray:
        """The boxes showing finding ``target`` as training drew them (labels, aliases, BI-RADS)."""
        coded = self.coded_boxes(cell, case, np.ones(len(self.settings.channels), bool))
        return coded[coded[:, 4] == target, :4]


def _cell_targets(
    maps: torch.Tensor, cells: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per cell and finding, whether a finding covers any of it and whether it is known; per image
    and finding, its label (a finding anywhere, or unknown findings of a positive image) and whether
    it is labelled at all. ``maps``: ``(B, K, H, W)`` codes."""
    maps = maps.to(torch.uint8)
    finding = (maps == FINDING).float()
    unknown = (maps == UNKNOWN).float()
    unlabelled = (maps == UNLABELLED).float()
    h, w = maps.shape[-2:]
    pad = (0, cells[1] * CELL - w, 0, cells[0] * CELL - h)
    if pad[1] < 0 or pad[3] < 0:
        raise InputError(f"{tuple(cells)} cells cannot cover maps of {h}x{w} pixels")
    finding_cells = F.max_pool2d(F.pad(finding, pad), CELL)
    hidden_cells = F.max_pool2d(F.pad(torch.maximum(unknown, unlabelled), pad), CELL)
    label = torch.maximum(finding.flatten(2).amax(2), unknown.flatten(2).amax(2))
    return finding_cells, 1.0 - hidden_cells, label, 1.0 - unlabelled.flatten(2).amax(2)
