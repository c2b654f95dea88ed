"""``fit``: train any recipe on a manifest, through its task (the one entry point of the engine).

Everything task-specific (inputs, targets, network, loss, validation figures) is asked of the
recipe's :class:`~medsight.tasks.base.Task`; this module splits the data by patient, runs the
loop, and writes the run folder with its :class:`~medsight.tasks.package.ModelPackage`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import torch

from medsight.core.errors import ConfigError, InputError
from medsight.core.progress import Progress
from medsight.data.cache import default_cache_dir
from medsight.data.manifest import Manifest
from medsight.data.splits import assign_splits
from medsight.engine.config import TrainConfig, choose_device
from medsight.engine.distributed import barrier, gather, rank, world_size
from medsight.engine.loop import TrainResult, seed_everything, train
from medsight.engine.recipe import Recipe
from medsight.engine.run import git_commit, versions
from medsight.models import backbone_parameters, load_checkpoint, load_pretrained, registered_models
from medsight.models.predict import predicting_in, run_model, trained_dtype
from medsight.tasks import ModelPackage, Provenance, Task, TaskData, Training, task_for

__all__ = ["fit", "prepare_data", "split_manifest"]

log = logging.getLogger(__name__)


def split_manifest(manifest: Manifest, task: Task, *, seed: int) -> Manifest:
    """The manifest with a patient-level split: made (stratified as the task says) when it has none;
    cases without one join training when others have one (an official test split is kept)."""
    unsplit = manifest.table["split"] == ""
    if unsplit.all():
        stratify = task.stratify_by
        log.info("the manifest has no split: splitting by patient (stratified by %s, seed %d)", stratify, seed)
        return assign_splits(manifest, stratify=stratify, seed=seed)
    if unsplit.any():
        table = manifest.table.copy()
        table.loc[unsplit, "split"] = "train"
        log.info("%d case(s) without a split are used for training (official test kept)", int(unsplit.sum()))
        return assign_splits(manifest.with_table(table), respect_official=True, seed=seed)
    return manifest


def prepare_data(
    recipe: Recipe,
    manifest_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> TaskData:
    """Load the manifest, split it by patient if it has no split yet, and prepare its cases for the task.

    Raises:
        InputError: the split has no train or no val case (before any case is preprocessed).
    """
    task = task_for(recipe.task)
    manifest = split_manifest(Manifest.load(manifest_path), task, seed=seed)
    _require_train_and_val(manifest)
    folder = (
        Path(cache_dir) if cache_dir else default_cache_dir(manifest, recipe.name, task.cache_spec(recipe.preprocess))
    )
    return task.prepare(manifest, recipe.preprocess, folder, progress=progress)


def _require_train_and_val(manifest: Manifest) -> None:
    splits = manifest.table["split"]
    train, val = int((splits == "train").sum()), int((splits == "val").sum())
    if train == 0 or val == 0:
        folds = (" (the data set's official folds, e.g. LUNA16 subsets, were kept and draw no val split)"
                 if manifest.info.get("split", {}).get("official_folds") else "")  # fmt: skip
        raise InputError(
            f"need train and val cases; the split has {train} train and {val} val{folds}: run `medsight data "
            "split MANIFEST --ignore-official` (or --val) to draw them, or set the split column"
        )


def data_hash(manifest: Manifest) -> str:
    """SHA-256 of a manifest's cases (ids, files, targets, splits): which data a model saw."""
    return hashlib.sha256(manifest.table.to_csv(index=False).encode()).hexdigest()


def fit(
    recipe: Recipe,
    manifest_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train ``recipe`` on the manifest's train split, validate on its val split, write the run ``out``.

    The run folder holds ``config.json``, ``environment.json``, ``metrics.jsonl``, ``best.pt`` and
    ``last.pt`` (:func:`~medsight.engine.loop.train`), ``splits.csv``, ``recipe.json`` and
    ``package.json`` (what the predictor is built from).

    Raises:
        ConfigError: the recipe names an unknown model, or asks for what its task cannot do.
        InputError: the data cannot be read, or a split cannot be learnt from or scored on.
    """
    if recipe.model.name not in registered_models():
        raise ConfigError(f"unknown model {recipe.model.name!r}; models: {', '.join(registered_models())}")
    if recipe.model.freeze_epochs and not recipe.model.pretrained:
        raise ConfigError(
            "model.freeze_epochs keeps a pretrained backbone fixed while the head warms up; without "
            "model.pretrained the backbone is random. Set model.pretrained or model.freeze_epochs=0"
        )
    task = task_for(recipe.task)
    if rank() != 0:
        barrier()  # rank 0 prepares the inputs; the others then open its cache
    data = prepare_data(recipe, manifest_path, cache_dir=cache_dir, seed=recipe.train.seed, progress=progress)
    if rank() == 0:
        barrier()
    train_idx, val_idx = data.indices("train"), data.indices("val")
    task.check(data, {"train": train_idx, "val": val_idx})
    training = task.training(data, train_idx, balance=recipe.balance, augment=recipe.augment, seed=recipe.train.seed)
    seed_everything(recipe.train.seed)  # the initial weights are part of what the seed reproduces
    model = task.network(recipe.model, data.in_channels, data.preprocess)
    config = _resolved(recipe, training)
    spec = registered_models()[recipe.model.name]
    if recipe.model.pretrained:
        load_pretrained(model, recipe.model.pretrained, spec)
    val_shard = val_idx[rank() :: world_size()]  # each process scores its share; metrics use them all
    val_set = task.dataset(data, val_shard)
    device = choose_device(recipe.train.device)
    val_targets = gather(_targets(val_set))  # in the order gather() concatenates the ranks' outputs

    def validate(scored: torch.nn.Module) -> dict[str, float]:
        # the loop calls this in its numeric mode (autocast and channels-last weights)
        outputs = gather(run_model(scored, val_set, batch_size=config.batch_size, device=device))
        return {"loss": float(training.loss(outputs, val_targets)), **task.score(outputs, val_targets)}

    out = Path(out)
    result = train(
        model,
        training.loss,
        training.train_set,
        config=config,
        run_dir=out,
        validate=validate,
        sample_weights=training.sample_weights,
        augment_batch=training.augment_batch,
        frozen=backbone_parameters(model, spec),
        freeze_epochs=recipe.model.freeze_epochs,
        resume=resume,
        progress=progress,
        extra_config={"recipe": recipe.model_dump(), "manifest": str(Path(manifest_path).resolve())},
        metric_names=task.metric_names(),
        model_name=recipe.model.name,
    )
    if rank() == 0:
        data = _settled(task, model, data, val_idx, out / "best.pt", progress)
        data.manifest.table[["case_id", "patient_id", "split"]].to_csv(out / "splits.csv", index=False)
        (out / "recipe.json").write_text(json.dumps(recipe.model_dump(), indent=2))
        package_of(recipe, data, manifest_path).save(out)
        if task.preprocess_file:  # e.g. the plan made from the data, for the user to read or reuse
            (out / task.preprocess_file).write_text(data.preprocess.model_dump_json(indent=2))
    barrier()  # every process returns with the run folder complete
    return result


def _settled(
    task: Task, model: torch.nn.Module, data: TaskData, val_idx: object, best: Path, progress: Progress | None
) -> TaskData:
    """``data`` with the preprocessing the task settles with the best weights on the validation split
    (:meth:`~medsight.tasks.base.Task.settle`; e.g. segmentation's postprocessing)."""
    if type(task).settle is Task.settle:
        return data
    state = load_checkpoint(best)  # the package's weights (EMA ones where the run kept them)
    model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    # in the mode the run's predictions are made in, so that what is fitted meets the outputs it was fitted on
    # (the lung detector's second stage: 892 s in fp32, 483 s in bf16 on a 2-core AVX-512 BF16 EPYC)
    network = predicting_in(model.float().eval(), trained_dtype(task.spatial_dims, best.parent))
    settled = task.settle(network, data, val_idx, progress=progress)  # type: ignore[arg-type]
    return dataclasses.replace(data, preprocess=settled)


def _resolved(recipe: Recipe, training: Training) -> TrainConfig:
    """The recipe's training options, with the batch size and epochs the task chose (a segmentation
    plan) wherever the recipe, ``--epochs`` or ``--set`` did not set them."""
    given = recipe.train.model_fields_set
    updates = {k: v for k, v in (("batch_size", training.batch_size), ("epochs", training.epochs))
               if v is not None and k not in given}  # fmt: skip
    if updates:
        log.info("training with %s from the %s's plan", updates, recipe.task.kind)
    return recipe.train.model_copy(update=updates)


def _targets(data: torch.utils.data.Dataset) -> torch.Tensor:
    """The targets of a dataset's items, in order (what validation scores outputs against)."""
    return torch.stack([torch.as_tensor(data[i][1]) for i in range(len(data))]) if len(data) else torch.empty(0)


def package_of(recipe: Recipe, data: TaskData, manifest_path: str | os.PathLike[str]) -> ModelPackage:
    """The model package spec of a run of ``recipe`` on prepared ``data``."""
    provenance = Provenance(
        versions=versions(),
        git_commit=git_commit(),
        data_hash=data_hash(data.manifest),
        manifest=str(Path(manifest_path).resolve()),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        seed=recipe.train.seed,
    )
    augment = recipe.augment.model_dump(mode="json") if task_for(recipe.task).spatial_dims == 2 else None
    return ModelPackage(recipe=recipe.name, task=recipe.task, model=recipe.model, in_channels=data.in_channels,
                        preprocess=data.preprocess.model_dump(mode="json"), augment=augment,
                        provenance=provenance)  # fmt: skip
