"""Train a 2D classification recipe on a manifest: the glue between data, task, model and loop."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medsight.core.errors import ConfigError, InputError
from medsight.core.progress import Progress
from medsight.data.cache import ImageCache, build_image_cache, default_cache_dir
from medsight.data.dataset import ImageDataset
from medsight.data.manifest import Manifest
from medsight.data.qc import target_problems
from medsight.data.splits import assign_splits
from medsight.engine.config import choose_device
from medsight.engine.distributed import barrier, gather, rank, world_size
from medsight.engine.loop import TrainResult, train
from medsight.engine.recipe import Recipe
from medsight.models import backbone_parameters, build_model, load_pretrained, registered_models
from medsight.models.predict import run_model
from medsight.tasks import ClassificationTask
from medsight.transforms.batch2d import BatchAugmenter
from medsight.transforms.image2d import build_augmentation

__all__ = ["PreparedData", "network_of", "prepare_data", "targets_of", "task_of", "train_classifier"]

log = logging.getLogger(__name__)


def task_of(recipe: Recipe) -> ClassificationTask:
    """The classification task a recipe describes."""
    return ClassificationTask(recipe.task.kind, tuple(recipe.task.classes))


def network_of(recipe: Recipe, task: ClassificationTask) -> torch.nn.Module:
    """The recipe's 2D network, untrained, with one output per ``task`` output."""
    return build_model(recipe.model.name, spatial_dims=2, in_channels=recipe.preprocess.channels,
                       num_outputs=task.num_outputs, pooling=recipe.model.pooling)  # fmt: skip


def targets_of(manifest: Manifest, recipe: Recipe) -> np.ndarray:
    """Targets in task form: ``(N,)`` classes/grades/0-1, or ``(N, L)`` findings with ``nan`` unknown.

    Raises:
        InputError: a target QC would report (:func:`~medsight.data.qc.target_problems`), naming cases.
    """
    table = manifest.table
    findings = recipe.task.kind == "multilabel"
    columns = [f"target_{c}" for c in recipe.task.classes] if findings else [recipe.task.target]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ConfigError(
            f"the manifest has no {missing} column(s) for the recipe's "
            f"{'findings' if findings else 'target'}; its targets are {manifest.target_columns}"
            + (" (set task.classes to match)" if findings else "")
        )
    for column in columns:
        problems = target_problems(table[column], "finding" if findings else "class", recipe.task.classes)
        if problems:
            bad = np.logical_or.reduce([mask.to_numpy() for mask in problems.values()])
            shown = ", ".join(
                f"{c}: {v!r}" for c, v in zip(table.loc[bad, "case_id"][:3], table.loc[bad, column][:3], strict=True)
            )
            expected = "0, 1 or empty" if findings else f"a whole number 0..{len(recipe.task.classes) - 1}"
            what = "findings" if findings else "classes"
            raise InputError(
                f"{column} must be {expected} for the {what} {recipe.task.classes}; {int(bad.sum())} case(s) are "
                f"not (e.g. {shown}). Fix or remove them (`medsight data qc MANIFEST --recipe {recipe.name}` "
                "lists every problem)"
            )
    values = table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
    return values if findings else values[:, 0]


@dataclass(frozen=True)
class PreparedData:
    """A manifest with splits, its preprocessed images and task targets."""

    manifest: Manifest
    cache: ImageCache
    targets: np.ndarray

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.manifest.table["split"].to_numpy() == split)


def prepare_data(
    recipe: Recipe,
    manifest_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> PreparedData:
    """Load the manifest, split it by patient if it has no split yet, and preprocess its images."""
    manifest = Manifest.load(manifest_path)
    if (manifest.table["split"] == "").all():
        stratify = recipe.task.target if recipe.task.kind != "multilabel" else None
        log.info("the manifest has no split: splitting by patient (stratified by %s, seed %d)", stratify, seed)
        manifest = assign_splits(manifest, stratify=stratify, seed=seed)
    elif (manifest.table["split"] == "").any():
        unsplit = manifest.table["split"] == ""
        table = manifest.table.copy()
        table.loc[unsplit, "split"] = "train"
        log.info("%d case(s) without a split are used for training (official test kept)", int(unsplit.sum()))
        manifest = assign_splits(Manifest(table, manifest.root, manifest.info), respect_official=True, seed=seed)
    folder = Path(cache_dir) if cache_dir else default_cache_dir(manifest, recipe.name)
    cache = build_image_cache(manifest, recipe.preprocess, folder, progress=progress)
    return PreparedData(manifest, cache, targets_of(manifest, recipe))


def _balance(recipe: Recipe, targets: np.ndarray, train_idx: np.ndarray) -> tuple[np.ndarray | None, tuple | None]:
    """Per-item sampling weights and/or loss weights from the training targets."""
    if recipe.balance == "none":
        return None, None
    y = targets[train_idx]
    if recipe.task.kind == "multilabel":
        if recipe.balance == "sampler":
            raise ConfigError("class-balanced sampling is for single-label tasks; use balance: weights for findings")
        positive = np.nansum(y, axis=0)
        negative = np.sum(~np.isnan(y), axis=0) - positive
        return None, tuple(float(n / max(p, 1.0)) for n, p in zip(negative, positive, strict=True))
    counts = np.bincount(y.astype(int), minlength=len(recipe.task.classes)).astype(float)
    if recipe.balance == "sampler":  # one weight per training item, in training-set order
        return 1.0 / np.maximum(counts[y.astype(int)], 1.0), None
    if recipe.task.kind == "ordinal":
        raise ConfigError("ordinal (CORN) tasks take no loss weights; use balance: sampler")
    if recipe.task.kind == "binary":
        return None, (float(counts[0] / max(counts[1], 1.0)),)
    inverse = counts.sum() / np.maximum(counts, 1.0) / len(counts)
    return None, tuple(float(w) for w in inverse)


def _check_classes(recipe: Recipe, targets: np.ndarray, splits: dict[str, np.ndarray]) -> None:
    """Refuse training data a classifier cannot learn from, or a validation split it cannot be scored on."""
    classes = recipe.task.classes
    if recipe.task.kind == "multilabel":
        for split, index in splits.items():
            y = targets[index]
            lacking = [name for k, name in enumerate(classes) if len(np.unique(y[~np.isnan(y[:, k]), k])) < 2]
            if len(lacking) == len(classes):
                raise InputError(
                    f"no finding has both positive and negative cases in the {split} split ({len(index)} cases): "
                    "nothing can be learnt or scored. Check the target_<finding> columns and the split"
                )
            if lacking:
                log.warning("the %s split lacks positives or negatives for %s; their AUC is undefined", split, lacking)
        return
    for split, index in splits.items():
        present = sorted({int(v) for v in targets[index]})
        if len(present) < 2:
            names = [classes[v] for v in present]
            raise InputError(
                f"the {split} split holds one class only ({names}, {len(index)} cases): a classifier cannot learn or "
                f"be scored on it. The task's classes are {classes}; check the {recipe.task.target!r} column, "
                "or re-split with `medsight data split --stratify`"
            )
        missing = [classes[k] for k in range(len(classes)) if k not in present]
        if missing and split == "train":
            log.warning("the train split has no case of %s; the model cannot learn to predict them", missing)


def train_classifier(
    recipe: Recipe,
    manifest_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train ``recipe`` on the manifest's train split, validate on its val split, write ``out``."""
    if recipe.model.name not in registered_models():
        raise ConfigError(f"unknown model {recipe.model.name!r}; models: {', '.join(registered_models())}")
    if recipe.model.freeze_epochs and not recipe.model.pretrained:
        raise ConfigError(
            "model.freeze_epochs keeps a pretrained backbone fixed while the head warms up; without "
            "model.pretrained the backbone is random. Set model.pretrained or model.freeze_epochs=0"
        )
    if rank() != 0:
        barrier()  # rank 0 preprocesses the images; the others then open its cache
    data = prepare_data(recipe, manifest_path, cache_dir=cache_dir, seed=recipe.train.seed, progress=progress)
    if rank() == 0:
        barrier()
    train_idx, val_idx = data.indices("train"), data.indices("val")
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise InputError(f"need train and val cases; the split has {len(train_idx)} train and {len(val_idx)} val")
    _check_classes(recipe, data.targets, {"train": train_idx, "val": val_idx})
    sample_weights, loss_weights = _balance(recipe, data.targets, train_idx)
    task = ClassificationTask(recipe.task.kind, tuple(recipe.task.classes), loss_weights)
    model = network_of(recipe, task)
    spec = registered_models()[recipe.model.name]
    if recipe.model.pretrained:
        load_pretrained(model, recipe.model.pretrained, spec)
    per_item = recipe.augment.mode == "item"
    augment = build_augmentation(recipe.augment, seed=recipe.train.seed) if per_item else None
    train_set = ImageDataset(data.cache, data.targets, train_idx, augment)
    val_shard = val_idx[rank() :: world_size()]  # each process scores its share; metrics use them all
    val_set = ImageDataset(data.cache, data.targets, val_shard)
    device = choose_device(recipe.train.device)
    # gather() concatenates the shards in rank order: the targets in that order are known here
    gathered = np.concatenate([val_idx[r :: world_size()] for r in range(world_size())])
    val_targets = torch.from_numpy(data.targets[gathered])

    def validate(scored: torch.nn.Module) -> dict[str, float]:
        # the loop calls this in its numeric mode (autocast and channels-last weights)
        shard_logits = run_model(scored, val_set, batch_size=recipe.train.batch_size, device=device)
        logits = gather(shard_logits)
        metrics = task.score(task.probabilities(logits), val_targets, referable_grade=recipe.task.referable_grade)
        return {"loss": float(task.loss(logits, val_targets)), **metrics}

    out = Path(out)
    result = train(
        model,
        task.loss,
        train_set,
        config=recipe.train,
        run_dir=out,
        validate=validate,
        sample_weights=sample_weights,
        augment_batch=None if per_item else BatchAugmenter(recipe.augment),
        frozen=backbone_parameters(model, spec),
        freeze_epochs=recipe.model.freeze_epochs,
        resume=resume,
        progress=progress,
        extra_config={"recipe": recipe.model_dump(), "manifest": str(Path(manifest_path).resolve())},
        metric_names=task.metric_names(referable_grade=recipe.task.referable_grade),
        model_name=recipe.model.name,
    )
    if rank() == 0:
        splits = data.manifest.table[["case_id", "patient_id", "split"]]
        splits.to_csv(out / "splits.csv", index=False)
        (out / "recipe.json").write_text(json.dumps(recipe.model_dump(), indent=2))
    barrier()  # every process returns with the run folder complete
    return result
