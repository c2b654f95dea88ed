"""Classification tasks: binary, multi-class, multi-label and ordinal (CORN), on the task seam.

A task turns network outputs (logits) into a loss against targets and into probabilities.
Targets use the manifest's conventions: an integer class or grade, or one 0/1 column per
finding where ``nan`` means unknown (that entry is left out of the loss, as CheXpert's
"ignore" policy needs). Images are preprocessed once into a 2D image cache; the figures of a
split (operating points, fusion of mammography views) are in
:mod:`medsight.tasks.classification_report`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn
from torch.utils.data import Dataset

from medsight.core.errors import ConfigError, InputError
from medsight.core.progress import Progress
from medsight.core.volume import Volume
from medsight.data.cache import build_image_cache
from medsight.data.dataset import ImageDataset
from medsight.data.manifest import Manifest
from medsight.data.qc import target_problems
from medsight.metrics.classification import quadratic_weighted_kappa, roc_auc
from medsight.models.cam import cam_box, class_activation_maps
from medsight.models.registry import ModelChoice, build_model, registered_models
from medsight.tasks import classification_report as report
from medsight.tasks.base import Task, TaskData, Training, as_model, register_task
from medsight.tasks.results import Estimate, Prediction
from medsight.transforms.batch2d import BatchAugmenter
from medsight.transforms.image2d import (
    Augment2D,
    Preprocess2D,
    boxes_from_prepared,
    build_augmentation,
    prepare_image,
)

__all__ = ["ClassificationSpec", "ClassificationTask", "corn_class_probabilities", "corn_loss"]

log = logging.getLogger(__name__)

Kind = Literal["binary", "multiclass", "multilabel", "ordinal"]


class ClassificationSpec(BaseModel):
    """A classification recipe's ``task`` section: what is predicted, from which manifest columns."""

    model_config = ConfigDict(extra="forbid")
    kind: Kind
    classes: list[str]
    target: str = "target"  # multilabel tasks read target_<class> columns instead
    referable_grade: int | None = None  # ordinal: report P(grade >= this) as a binary score
    fusion: Literal["max", "mean", "attention"] | None = None  # binary per-view scores fused to breast and exam

    @model_validator(mode="after")
    def _grade_within_classes(self) -> ClassificationSpec:
        if self.referable_grade is not None:
            if self.kind != "ordinal":
                raise ValueError(f"referable_grade applies to ordinal tasks, not {self.kind}")
            if not 1 <= self.referable_grade < len(self.classes):
                raise ValueError(
                    f"referable_grade must be one of the grades 1..{len(self.classes) - 1}, got {self.referable_grade}"
                )
        if self.fusion is not None and self.kind != "binary":
            raise ValueError(f"fusion combines binary per-view scores; this task is {self.kind}")
        return self


def _boxes_cell(value: Any) -> bool:
    """Whether a manifest's boxes cell holds any box."""
    return isinstance(value, str) and value.strip() not in ("", "[]")


def _has_boxes(cases: pd.DataFrame) -> bool:
    return "boxes" in cases.columns and bool(cases["boxes"].map(_boxes_cell).any())


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def corn_loss(logits: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
    """CORN loss (Shi, Cao & Raschka 2021) for ordinal grades ``0..K-1`` from ``K-1`` logits.

    Task ``k`` learns P(grade > k | grade > k-1) on the cases with grade >= k, so the
    predicted cumulative probabilities are monotone by construction. The loss is the sum of
    the binary cross-entropies over all conditional training examples, divided by their number.
    """
    if logits.ndim != 2 or grades.ndim != 1 or logits.shape[0] != grades.shape[0]:
        raise InputError(
            f"CORN needs logits (N, K-1) and grades (N,); got {tuple(logits.shape)}, {tuple(grades.shape)}"
        )
    g = grades.detach().double()
    bad = ~torch.isfinite(g) | (g != torch.round(g)) | (g < 0) | (g > logits.shape[1])
    if bool(bad.any()):
        raise InputError(
            f"CORN grades must be whole numbers 0..{logits.shape[1]} for {logits.shape[1]} logits; "
            f"{int(bad.sum())} are not (e.g. {grades[bad][:3].tolist()})"
        )
    thresholds = torch.arange(logits.shape[1], device=logits.device)
    g = grades.long()[:, None]
    in_task = g >= thresholds[None, :]  # case counts for task k when its grade is at least k
    above = (g > thresholds[None, :]).to(logits.dtype)
    terms = F.binary_cross_entropy_with_logits(logits, above, reduction="none")
    count = in_task.sum()
    if count == 0:
        return logits.sum() * 0.0
    return (terms * in_task).sum() / count


def corn_class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``(N, K-1)`` CORN logits -> ``(N, K)`` grade probabilities (non-negative, summing to one)."""
    cumulative = torch.cumprod(torch.sigmoid(logits), dim=1)  # P(grade > k)
    ones = torch.ones_like(cumulative[:, :1])
    upper = torch.cat([ones, cumulative], dim=1)  # P(grade > k - 1), with P(grade > -1) = 1
    lower = torch.cat([cumulative, torch.zeros_like(ones)], dim=1)
    return (upper - lower).clamp_min(0.0)


@register_task
@dataclass(frozen=True)
class ClassificationTask(Task):
    """What a classification network predicts and how it is trained.

    Attributes:
        kind: ``binary`` (one logit), ``multiclass`` (softmax over ``classes``),
            ``multilabel`` (one sigmoid per finding), ``ordinal`` (CORN over ``classes`` grades).
        classes: Class, grade or finding names.
        weights: Per-class loss weights (multiclass), positive weights (binary, multilabel);
            ``None`` for none.
        target: The manifest column of the class or grade (multilabel: ``target_<finding>``).
        referable_grade: Ordinal tasks: P(grade >= this) is also scored as a binary score.
        fusion: Binary per-view scores fused to breast and exam level by this method.
    """

    kind: Kind
    classes: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    target: str = "target"
    referable_grade: int | None = None
    fusion: Literal["max", "mean", "attention"] | None = None

    spec_type = ClassificationSpec
    preprocess_type = Preprocess2D

    def __post_init__(self) -> None:
        if self.kind not in ("binary", "multiclass", "multilabel", "ordinal"):
            raise ConfigError(f"task kind must be binary, multiclass, multilabel or ordinal, got {self.kind!r}")
        minimum = {"binary": 2, "multiclass": 2, "multilabel": 1, "ordinal": 3}[self.kind]
        if len(self.classes) < minimum:
            raise ConfigError(f"a {self.kind} task needs at least {minimum} classes, got {list(self.classes)}")
        if self.kind == "binary" and len(self.classes) != 2:
            raise ConfigError(f"a binary task has two classes (negative, positive), got {list(self.classes)}")
        expected = {"binary": 1, "multiclass": len(self.classes), "multilabel": len(self.classes), "ordinal": 0}
        if self.weights is not None and len(self.weights) != expected[self.kind]:
            raise ConfigError(
                f"{self.kind} weights need {expected[self.kind]} value(s), got {len(self.weights)}"
                + (" (ordinal tasks take no weights; balance by sampling)" if self.kind == "ordinal" else "")
            )

    @classmethod
    def from_spec(cls, spec: BaseModel) -> ClassificationTask:
        """The task of a recipe's ``task`` section (:class:`ClassificationSpec`)."""
        spec = as_model(spec, ClassificationSpec)
        return cls(spec.kind, tuple(spec.classes), None, spec.target, spec.referable_grade, spec.fusion)

    @property
    def spec(self) -> ClassificationSpec:
        return ClassificationSpec(kind=self.kind, classes=list(self.classes), target=self.target,
                                  referable_grade=self.referable_grade, fusion=self.fusion)  # fmt: skip

    @property
    def stratify_by(self) -> str | None:
        return None if self.kind == "multilabel" else self.target

    @property
    def spatial_dims(self) -> int:
        return 2

    @property
    def num_outputs(self) -> int:
        """Logits the network must produce."""
        return {"binary": 1, "multiclass": len(self.classes), "multilabel": len(self.classes)}.get(
            self.kind, len(self.classes) - 1
        )

    # --- data -------------------------------------------------------------------------------
    def prepare(
        self, manifest: Manifest, preprocess: BaseModel, folder: str | os.PathLike[str], *, progress: Progress | None
    ) -> TaskData:
        """Preprocess the images into a 2D image cache (reused while nothing changed) and read the targets."""
        spec = as_model(preprocess, Preprocess2D)
        cache = build_image_cache(manifest, spec, folder, progress=progress)
        return TaskData(manifest, cache, self.targets(manifest), spec, spec.channels)

    def targets(self, manifest: Manifest) -> np.ndarray:
        """Targets in task form: ``(N,)`` classes/grades/0-1, or ``(N, L)`` findings with ``nan`` unknown.

        Raises:
            ConfigError: the manifest lacks the target column(s).
            InputError: a target QC would report (:func:`~medsight.data.qc.target_problems`), naming cases.
        """
        table = manifest.table
        findings = self.kind == "multilabel"
        columns = [f"target_{c}" for c in self.classes] if findings else [self.target]
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise ConfigError(
                f"the manifest has no {missing} column(s) for the recipe's "
                f"{'findings' if findings else 'target'}; its targets are {manifest.target_columns}"
                + (" (set task.classes to match)" if findings else "")
            )
        for column in columns:
            problems = target_problems(table[column], "finding" if findings else "class", list(self.classes))
            if problems:
                bad = np.logical_or.reduce([mask.to_numpy() for mask in problems.values()])
                pairs = zip(table.loc[bad, "case_id"][:3], table.loc[bad, column][:3], strict=True)
                shown = ", ".join(f"{c}: {v!r}" for c, v in pairs)
                expected = "0, 1 or empty" if findings else f"a whole number 0..{len(self.classes) - 1}"
                what = "findings" if findings else "classes"
                raise InputError(
                    f"{column} must be {expected} for the {what} {list(self.classes)}; {int(bad.sum())} case(s) are "
                    f"not (e.g. {shown}). Fix or remove them (`medsight data qc MANIFEST --recipe RECIPE` "
                    "lists every problem)"
                )
        values = table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
        return values if findings else values[:, 0]

    def check(self, data: TaskData, splits: Mapping[str, np.ndarray]) -> None:
        """Refuse training data a classifier cannot learn from, or a validation split it cannot be scored on."""
        if self.kind == "multilabel":
            for split, index in splits.items():
                y = data.targets[index]
                lacking = [n for k, n in enumerate(self.classes) if len(np.unique(y[~np.isnan(y[:, k]), k])) < 2]
                if len(lacking) == len(self.classes):
                    raise InputError(
                        f"no finding has both positive and negative cases in the {split} split ({len(index)} cases): "
                        "nothing can be learnt or scored. Check the target_<finding> columns and the split"
                    )
                if lacking:
                    log.warning("the %s split lacks positives or negatives for %s; their AUC is undefined",
                                split, lacking)  # fmt: skip
            return
        for split, index in splits.items():
            present = sorted({int(v) for v in data.targets[index]})
            if len(present) < 2:
                names = [self.classes[v] for v in present]
                raise InputError(
                    f"the {split} split holds one class only ({names}, {len(index)} cases): a classifier cannot learn "
                    f"or be scored on it. The task's classes are {list(self.classes)}; check the {self.target!r} "
                    "column, or re-split with `medsight data split --stratify`"
                )
            missing = [self.classes[k] for k in range(len(self.classes)) if k not in present]
            if missing and split == "train":
                log.warning("the train split has no case of %s; the model cannot learn to predict them", missing)

    def dataset(self, data: TaskData, indices: np.ndarray) -> Dataset:
        return ImageDataset(data.inputs, data.targets, indices)

    def training(self, data: TaskData, indices: np.ndarray, *, balance: str, augment: BaseModel, seed: int) -> Training:
        """Training items, class balance (``sampler``: per-item weights; ``weights``: loss weights)
        and augmentation (``batch``: on the device; ``item``: MONAI transforms in the loader)."""
        sample_weights, loss_weights = self._balance(balance, data.targets[indices])
        spec = as_model(augment, Augment2D)
        per_item = spec.mode == "item"
        item_augment = build_augmentation(spec, seed=seed) if per_item else None
        return Training(
            loss=replace(self, weights=loss_weights).loss,
            train_set=ImageDataset(data.inputs, data.targets, indices, item_augment),
            sample_weights=sample_weights,
            augment_batch=None if per_item else BatchAugmenter(spec).with_targets,
        )

    def _balance(self, balance: str, y: np.ndarray) -> tuple[np.ndarray | None, tuple[float, ...] | None]:
        """Per-item sampling weights and/or loss weights from the training targets ``y``."""
        if balance == "none":
            return None, None
        if self.kind == "multilabel":
            if balance == "sampler":
                raise ConfigError(
                    "class-balanced sampling is for single-label tasks; use balance: weights for findings"
                )
            positive = np.nansum(y, axis=0)
            negative = np.sum(~np.isnan(y), axis=0) - positive
            return None, tuple(float(n / max(p, 1.0)) for n, p in zip(negative, positive, strict=True))
        counts = np.bincount(y.astype(int), minlength=len(self.classes)).astype(float)
        if balance == "sampler":  # one weight per training item, in training-set order
            return 1.0 / np.maximum(counts[y.astype(int)], 1.0), None
        if self.kind == "ordinal":
            raise ConfigError("ordinal (CORN) tasks take no loss weights; use balance: sampler")
        if self.kind == "binary":
            return None, (float(counts[0] / max(counts[1], 1.0)),)
        inverse = counts.sum() / np.maximum(counts, 1.0) / len(counts)
        return None, tuple(float(w) for w in inverse)

    def input_array(self, volume: Volume, preprocess: BaseModel, *, slice_index: int | None = None) -> np.ndarray:
        """``(C, S, S)`` float32 in [0, 1], as the image cache stores it (``slice_index``: which
        slice of a 3D volume)."""
        return (
            prepare_image(volume, as_model(preprocess, Preprocess2D), slice_index=slice_index).astype(np.float32)
            / 255.0
        )

    # --- network ----------------------------------------------------------------------------
    def example_input(self, preprocess: BaseModel, in_channels: int) -> torch.Tensor:
        size = as_model(preprocess, Preprocess2D).size
        return torch.zeros(1, in_channels, size, size)

    def network(self, model: ModelChoice, in_channels: int, preprocess: BaseModel | None = None) -> nn.Module:
        """The recipe's 2D network, untrained, with one output per logit."""
        spec = registered_models().get(model.name)
        if spec is not None and spec.dense:
            raise ConfigError(f"{model.name} outputs a map per image (segmentation); a classifier needs a network "
                              "with one output vector, e.g. resnet18")  # fmt: skip
        return build_model(model.name, spatial_dims=2, in_channels=in_channels, num_outputs=self.num_outputs,
                           pooling=model.pooling, dropout=model.dropout)  # fmt: skip

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch; unknown (``nan``) multi-label targets are left out."""
        if logits.shape[0] != targets.shape[0]:
            raise InputError(f"{logits.shape[0]} predictions for {targets.shape[0]} targets")
        weights = None if self.weights is None else torch.tensor(self.weights, dtype=logits.dtype, device=logits.device)
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(
                logits.reshape(-1), targets.reshape(-1).to(logits.dtype), pos_weight=weights
            )
        if self.kind == "multiclass":
            return F.cross_entropy(logits, targets.long().reshape(-1), weight=weights)
        if self.kind == "ordinal":
            return corn_loss(logits, targets.reshape(-1))
        known = ~torch.isnan(targets)
        terms = F.binary_cross_entropy_with_logits(
            logits, torch.nan_to_num(targets).to(logits.dtype), pos_weight=weights, reduction="none"
        )
        return (terms * known).sum() / known.sum().clamp_min(1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Binary: ``(N,)`` P(positive); multi-class and ordinal: ``(N, K)``; multi-label: ``(N, L)``."""
        if self.kind == "binary":
            return torch.sigmoid(logits.reshape(-1))
        if self.kind == "multiclass":
            return torch.softmax(logits, dim=1)
        if self.kind == "ordinal":
            return corn_class_probabilities(logits)
        return torch.sigmoid(logits)

    def predict(self, probabilities: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
        """Hard labels: thresholded (binary, multi-label) or the most likely class/grade."""
        if self.kind in ("binary", "multilabel"):
            return (probabilities >= threshold).long()
        return probabilities.argmax(dim=1)

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Headline metrics of a set of logits (what early stopping and the progress bar use).

        binary: ``auc``; multiclass: ``accuracy``, ``macro_auc``; multilabel: ``macro_auc``
        over findings with both classes present (unknown labels left out) plus one ``auc_<name>``
        each; ordinal: ``qwk`` and, with ``referable_grade``, ``referable_auc``.
        """
        p = self.probabilities(logits.float()).detach().cpu().numpy()
        y = targets.detach().cpu().numpy()
        if self.kind == "binary":
            return {"auc": roc_auc(y.reshape(-1), p.reshape(-1))}
        if self.kind == "multiclass":
            aucs = [roc_auc((y == k).astype(int), p[:, k]) for k in range(p.shape[1])]
            return {"accuracy": float((p.argmax(1) == y).mean()), "macro_auc": _nanmean(aucs)}
        if self.kind == "ordinal":
            out = {"qwk": quadratic_weighted_kappa(y.astype(int), p.argmax(1), n_classes=p.shape[1])}
            if self.referable_grade is not None:
                g = self.referable_grade
                out["referable_auc"] = roc_auc((y >= g).astype(int), p[:, g:].sum(1))
            return out
        out = {}
        for k, name in enumerate(self.classes):
            known = ~np.isnan(y[:, k])
            out[f"auc_{name}"] = roc_auc(y[known, k].astype(int), p[known, k]) if known.any() else float("nan")
        out["macro_auc"] = _nanmean(list(out.values()))
        return out

    def metric_names(self) -> tuple[str, ...]:
        """The names :meth:`score` returns (what early stopping may watch, besides ``loss``)."""
        if self.kind == "binary":
            return ("auc",)
        if self.kind == "multiclass":
            return ("accuracy", "macro_auc")
        if self.kind == "ordinal":
            return ("qwk", "referable_auc") if self.referable_grade is not None else ("qwk",)
        return (*(f"auc_{name}" for name in self.classes), "macro_auc")

    # --- predictions ------------------------------------------------------------------------
    def predict_split(
        self, model: nn.Module, data: TaskData, indices: np.ndarray, *, batch_size: int = 64
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Cases and scores; for findings (multi-label) of images that carry boxes, also where the
        network saw each finding: ``cam_boxes``, a JSON object giving per finding the box around its
        class activation map's peak region and the peak (source pixels), which evaluation scores
        against the boxes."""
        cases = data.manifest.table.iloc[indices].reset_index(drop=True)
        if self.kind != "multilabel" or not _has_boxes(cases):
            return super().predict_split(model, data, indices, batch_size=batch_size)
        dataset, cache = self.dataset(data, indices), data.inputs
        model = model.eval()
        logits, boxes = [], []
        for start in range(0, len(dataset), batch_size):
            items = [dataset[k] for k in range(start, min(start + batch_size, len(dataset)))]
            outputs, maps = class_activation_maps(model, torch.stack([image for image, _ in items]))
            logits.append(outputs)
            for row, cam in zip(range(start, start + len(items)), maps.numpy(), strict=True):
                if not _boxes_cell(cases["boxes"].iloc[row]):
                    boxes.append("")
                    continue
                size, shape = cache.images.shape[-1], cache.shapes[int(indices[row])]
                found = {}
                for k, name in enumerate(self.classes):
                    x0, y0, x1, y1, x, y = cam_box(cam[k], size)
                    box, peak = boxes_from_prepared(np.array([[x0, y0, x1, y1], [x, y, x, y]]), shape, size)
                    found[name] = {"box": np.round(box, 1).tolist(), "peak": np.round(peak[:2], 1).tolist()}
                boxes.append(json.dumps(found))
        scores = self.scores(torch.cat(logits))
        scores["cam_boxes"] = boxes
        return cases, scores

    def scores(self, outputs: torch.Tensor) -> pd.DataFrame:
        """``prob`` (binary) or one ``prob_<class>`` column per class, grade or finding."""
        p = self.probabilities(outputs.float()).detach().cpu().numpy()
        if self.kind == "binary":
            return pd.DataFrame({"prob": p.reshape(-1)})
        return pd.DataFrame({f"prob_{name}": p[:, k] for k, name in enumerate(self.classes)})

    def evaluate(
        self, val: Prediction, test: Prediction, *, split: str, operating_points: Sequence[str], bootstrap: int
    ) -> tuple[dict[str, Estimate], dict[str, Any], list[str]]:
        """Figures of ``test`` with CIs; operating points (and a fusion temperature) chosen on ``val``."""
        return report.evaluate(self, val.table(), test.table(), split=split, points=operating_points, n=bootstrap)

    def save_fitted(self, details: Mapping[str, Any], run_dir: Path) -> None:
        """Keep the fusion method and the temperature fitted on the validation split."""
        report.save_fusion(dict(details), run_dir)

    def fitted(self, run_dir: Path) -> dict[str, Any]:
        """The fusion temperature ``medsight evaluate`` fitted on the validation split, when there is one."""
        return report.fitted_fusion(run_dir)

    def grouped(self, table: pd.DataFrame, fitted: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
        """Mammography: per-view scores fused to ``breasts`` and ``exams`` as the recipe says."""
        return report.fuse(self, table, dict(fitted))

    def paired_scores(self, table: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return report.paired_scores(self, table)

    def calibration_groups(self, table: pd.DataFrame) -> list[tuple[str, list[str], bool, np.ndarray]]:
        """binary: ``prob``; multi-label: each ``prob_<finding>``; multi-class: the softmax over the
        classes; none for ordinal grades (CORN's probabilities are no softmax to scale)."""
        if self.kind == "binary":
            return [("score", ["prob"], False, pd.to_numeric(table[self.target], errors="coerce").to_numpy(float))]
        if self.kind == "multilabel":
            return [(name, [f"prob_{name}"], False,
                     pd.to_numeric(table[f"target_{name}"], errors="coerce").to_numpy(float))
                    for name in self.classes]  # fmt: skip
        if self.kind == "multiclass":
            columns = [f"prob_{name}" for name in self.classes]
            return [("classes", columns, True, pd.to_numeric(table[self.target], errors="coerce").to_numpy(float))]
        return []

    # --- explanations -----------------------------------------------------------------------
    def explain_targets(self) -> tuple[str, ...]:
        """binary: the positive class; multi-class and multi-label: every class or finding;
        ordinal: ``<grade>+`` (this grade or worse) for every grade above the first."""
        if self.kind == "binary":
            return (self.classes[-1],)
        if self.kind == "ordinal":
            return tuple(f"{name}+" for name in self.classes[1:])
        return tuple(self.classes)

    def explain_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """The network's logits; for ordinal grades the log-odds of each grade or worse (from the
        CORN logits: log P(grade >= k) is the sum of the first k conditional log-sigmoids)."""
        logits = outputs.float()
        if self.kind == "binary":
            return logits.reshape(-1, 1)
        if self.kind != "ordinal":
            return logits
        log_at_least = torch.cumsum(F.logsigmoid(logits), dim=1)  # log P(grade >= k), k = 1..K-1
        return log_at_least - torch.log(-torch.expm1(log_at_least.clamp_max(-1e-7)))

    def explain_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=1) if self.kind == "multiclass" else torch.sigmoid(logits.float())

    def explain_default(self, probabilities: np.ndarray) -> int:
        """The most probable class or finding; for ordinal grades the referable grade when the recipe
        names one, else the worst grade at least as likely as not."""
        if self.kind != "ordinal":
            return int(np.argmax(probabilities))
        if self.referable_grade is not None:
            return self.referable_grade - 1
        likely = np.flatnonzero(probabilities >= 0.5)
        return int(likely[-1]) if len(likely) else 0

    @staticmethod
    def at_least(probabilities: torch.Tensor, grade: int) -> torch.Tensor:
        """For ordinal tasks: P(grade >= ``grade``), e.g. referable DR = P(ICDR grade >= 2).

        ``grade`` is one of ``1..K-1`` for ``K`` grades (P(grade >= 0) is always 1).
        """
        if probabilities.ndim != 2 or not 1 <= grade < probabilities.shape[1]:
            raise InputError(
                f"at_least needs (N, K) grade probabilities and a grade in 1..K-1; got grade {grade} "
                f"for shape {tuple(probabilities.shape)}"
            )
        return probabilities[:, grade:].sum(dim=1)
