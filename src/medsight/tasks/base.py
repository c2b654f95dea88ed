"""The seam: a registered :class:`Task` per recipe kind, which every layer above dispatches through.

A task knows its recipe section (``spec_type``), how a manifest's cases become network inputs
and targets, its network's outputs and loss, how a batch is scored during validation, how
outputs become a :class:`~medsight.tasks.results.Prediction`, and how predictions of a split
become an :class:`~medsight.tasks.results.Evaluation`. The engine (``fit``), the predictor,
evaluation and the CLI are written once; a new task is a new module registered here.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel
from torch import nn
from torch.utils.data import Dataset

from medsight.core.errors import ConfigError, InputError
from medsight.core.progress import Progress
from medsight.core.volume import Volume
from medsight.data.manifest import Manifest, parse_boxes
from medsight.models.predict import run_model
from medsight.models.registry import ModelChoice
from medsight.tasks.results import BoxFinding, Estimate, Finding, Prediction

__all__ = [
    "Task",
    "TaskData",
    "Training",
    "VolumeView",
    "as_model",
    "register_task",
    "registered_tasks",
    "task_for",
    "task_spec_types",
]


@dataclass(frozen=True)
class TaskData:
    """A split manifest with its cases made ready for the network.

    Attributes:
        manifest: The cases, with a ``split`` column.
        inputs: The task's preprocessed inputs (e.g. a memory-mapped image cache), in manifest order.
        targets: The task's per-case targets in manifest order (empty for tasks whose targets
            are images, such as label maps).
        preprocess: The preprocessing as resolved for this data (the recipe's section, or for
            segmentation the plan made from the data); the model package records it.
        in_channels: The network's input channels.
    """

    manifest: Manifest
    inputs: Any
    targets: np.ndarray
    preprocess: BaseModel
    in_channels: int

    def indices(self, split: str) -> np.ndarray:
        """Row numbers of a split's cases."""
        return np.flatnonzero(self.manifest.table["split"].to_numpy() == split)


@dataclass(frozen=True)
class Training:
    """What the training loop needs from a task for one run.

    Attributes:
        loss: ``loss(outputs, targets)`` (with the run's class weights, if any).
        train_set: Items ``(input, target)`` of the training split (augmented per item if asked).
        sample_weights: Per-item sampling weights (class-balanced batches), or None.
        augment_batch: Augmentation of whole batches on the device, or None.
        batch_size, epochs: What the task's preprocessing chose (a segmentation plan), used where
            the recipe does not set them.
    """

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    train_set: Dataset
    sample_weights: np.ndarray | None = None
    augment_batch: Callable[..., Any] | None = None
    batch_size: int | None = None
    epochs: int | None = None


@dataclass(frozen=True)
class VolumeView:
    """A whole volume as a 3D task's network sees it, for explanations.

    Attributes:
        image: ``(C, Z, Y, X)`` the preprocessed volume (the plan's grid).
        evidence: ``(K, Z, Y, X)`` per explanation target, where the whole-volume prediction finds it
            (a probability per voxel) on the same grid.
        patch: The network's patch size (what one explanation covers).
        to_source: A map ``(Z, Y, X)`` on that grid -> the same map on the input's own grid.
    """

    image: np.ndarray
    evidence: np.ndarray
    patch: tuple[int, ...]
    to_source: Callable[[np.ndarray], np.ndarray]


class Task(ABC):
    """What the engine, the predictor and evaluation ask of a kind of prediction.

    Subclasses set ``spec_type`` (the pydantic model of their recipe ``task`` section, whose
    ``kind`` field is a ``Literal`` of the kinds they serve) and ``preprocess_type`` (the
    recipe's ``preprocess`` section), and are made from a spec with :meth:`from_spec`.
    """

    spec_type: ClassVar[type[BaseModel]]
    preprocess_type: ClassVar[type[BaseModel]]
    package_preprocess_type: ClassVar[type[BaseModel] | None] = None  # resolved form, when it differs
    preprocess_file: ClassVar[str | None] = None  # where fit also writes the resolved preprocessing
    fits_on_validation: ClassVar[bool] = True  # evaluation chooses thresholds (or more) on the val split

    @classmethod
    def from_spec(cls, spec: BaseModel) -> Task:
        """The task a recipe's ``task`` section describes (by default ``cls(spec)``, the spec
        validated as ``spec_type``)."""
        return cls(as_model(spec, cls.spec_type))  # type: ignore[call-arg]

    @property
    @abstractmethod
    def spec(self) -> BaseModel:
        """The recipe ``task`` section this task was made from."""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.spec == self.spec  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.spec.model_dump_json()))

    @property
    @abstractmethod
    def stratify_by(self) -> str | None:
        """The manifest column a patient-level split is stratified by (None: not stratified)."""

    # --- data -----------------------------------------------------------------------------
    @abstractmethod
    def prepare(
        self, manifest: Manifest, preprocess: BaseModel, folder: str | os.PathLike[str], *, progress: Progress | None
    ) -> TaskData:
        """Preprocess every case of ``manifest`` (cached in ``folder``) and read its targets.

        Raises:
            InputError: a case cannot be read or has a target the task cannot use (named).
        """

    def cache_spec(self, preprocess: BaseModel) -> BaseModel | None:
        """What the folder of a manifest's prepared cases depends on besides its cases: the
        preprocessing spec by default. None where :meth:`prepare` keys its own subfolders by what
        preprocessing does (3D: the plan's preprocessing key), so that training (given the recipe's
        plan request) and evaluation (given the plan it made) share one cache instead of building
        it twice."""
        return preprocess

    @abstractmethod
    def check(self, data: TaskData, splits: Mapping[str, np.ndarray]) -> None:
        """Refuse splits the task cannot learn from or be scored on (e.g. one class only)."""

    @abstractmethod
    def dataset(self, data: TaskData, indices: np.ndarray) -> Dataset:
        """Items ``(input, target)`` of ``indices``, unaugmented (validation, evaluation)."""

    @abstractmethod
    def training(self, data: TaskData, indices: np.ndarray, *, balance: str, augment: BaseModel, seed: int) -> Training:
        """The training split's items, sampling, loss weights and augmentation."""

    def input_array(self, volume: Volume, preprocess: BaseModel, *, slice_index: int | None = None) -> np.ndarray:
        """One image read from a file, made ready for the network as in training (tasks that predict
        whole volumes override :meth:`predict_volumes` instead)."""
        raise ConfigError(f"{type(self).__name__} predicts whole volumes, not single prepared images")

    # --- network ----------------------------------------------------------------------------
    @property
    @abstractmethod
    def spatial_dims(self) -> int:
        """2 or 3: the network's convolutions; 0 for a network of a feature vector per case (a table)."""

    @abstractmethod
    def network(self, model: ModelChoice, in_channels: int, preprocess: BaseModel) -> nn.Module:
        """The untrained network, with the outputs this task reads (``preprocess``: the resolved
        preprocessing, e.g. a plan that shapes the network)."""

    def label_classes(self) -> tuple[tuple[int, str], ...]:
        """The codes and names of the classes in the label maps :meth:`predict_volumes` makes (none
        for tasks that make none): what a DICOM segmentation of them lists as segments."""
        return ()

    def example_input(self, preprocess: BaseModel, in_channels: int) -> torch.Tensor:
        """One input of the shape the network reads in prediction (batch of 1, zeros): what an
        export traces it with (an image at the prepared size, a sliding window of the plan's patch,
        a row of features).

        Raises:
            ConfigError: the task's networks cannot be exported (none of today's).
        """
        raise ConfigError(f"{type(self).__name__} does not say what its network reads, so it cannot be exported")

    @abstractmethod
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch."""

    @abstractmethod
    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Validation figures of a set of outputs (what early stopping watches)."""

    @abstractmethod
    def metric_names(self) -> tuple[str, ...]:
        """The names :meth:`score` returns."""

    # --- predictions ------------------------------------------------------------------------
    @abstractmethod
    def scores(self, outputs: torch.Tensor) -> pd.DataFrame:
        """Network outputs as named per-case score columns (e.g. ``prob_<class>``)."""

    def predict_split(
        self, model: nn.Module, data: TaskData, indices: np.ndarray, *, batch_size: int = 64
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Cases and their scores for manifest rows ``indices`` of prepared data (by default the
        network over :meth:`dataset`, then :meth:`scores`)."""
        outputs = run_model(model, self.dataset(data, indices), batch_size=batch_size)
        return data.manifest.table.iloc[indices].reset_index(drop=True), self.scores(outputs)

    def predict_volumes(
        self, model: nn.Module, volumes: Sequence[Volume], preprocess: BaseModel, *, slice_index: int | None = None
    ) -> tuple[pd.DataFrame, list[Volume] | None]:
        """Scores for images read from files, and the images the task makes of them (label maps
        on each input's grid), if any. By default each volume is prepared with
        :meth:`input_array` and scored in one batch."""
        arrays = [self.input_array(v, preprocess, slice_index=slice_index) for v in volumes]
        with torch.no_grad():
            outputs = model(torch.from_numpy(np.stack(arrays)))
        return self.scores(outputs), None

    def predict_table(self, model: nn.Module, table: pd.DataFrame, preprocess: BaseModel) -> pd.DataFrame:
        """Scores for the cases of a table (one row per case holding the columns the model reads), for
        tasks whose inputs are features rather than images (``spatial_dims`` 0).

        Raises:
            ConfigError: the task predicts on images (the default).
        """
        raise ConfigError(f"{type(self).__name__} predicts on images, not on a table of features")

    def case_files(self, folder: Path, preprocess: BaseModel) -> list[Path] | None:
        """The files of ``folder`` that together make one input (a case's channels, in the model's
        order), or None when the folder is not one such case; none by default."""
        return None

    @abstractmethod
    def evaluate(
        self, val: Prediction, test: Prediction, *, split: str, operating_points: Sequence[str], bootstrap: int
    ) -> tuple[dict[str, Estimate], dict[str, Any], list[str]]:
        """Figures of ``test`` with patient-level CIs (thresholds chosen on ``val``): the headline
        figures by name, the full JSON-ready detail, and warnings."""

    def settle(
        self, model: nn.Module, data: TaskData, indices: np.ndarray, *, progress: Progress | None = None
    ) -> BaseModel:
        """Once training ends, what the trained model's results on the validation rows ``indices``
        decide about prediction (segmentation: postprocessing); returns the preprocessing the model
        package keeps. ``data.preprocess`` unchanged by default."""
        return data.preprocess

    def save_fitted(self, details: Mapping[str, Any], run_dir: Path) -> None:
        """Keep in ``run_dir`` what :meth:`evaluate` fitted on the validation split and prediction
        reuses (e.g. a fusion temperature); nothing by default."""
        return None

    def fitted(self, run_dir: Path) -> dict[str, Any]:
        """What :meth:`save_fitted` kept in ``run_dir``; ``{}`` by default."""
        return {}

    def probability_structures(self) -> tuple[str, ...]:
        """The structures whose probability maps :meth:`predict_volumes` can keep (its
        ``probabilities`` list, one channel each, in this order), e.g. for a fractional DICOM SEG;
        none by default (then ``probabilities`` is never passed)."""
        return ()

    def findings(self, row: Mapping[str, Any]) -> Sequence[Finding | BoxFinding]:
        """The findings one prediction row locates, for a report to place them (a DICOM SR draws each
        as a region: a ball in the volume, or a box in the image's pixels); none by default (tasks
        that locate nothing, or whose findings a label map already carries)."""
        return []

    def grouped(self, table: pd.DataFrame, fitted: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
        """Per-input predictions combined to higher levels (e.g. mammography views to breasts and
        exams), by level name; ``{}`` by default.

        Raises:
            MedsightError: the inputs lack what combining them needs (the per-input rows stand).
        """
        return {}

    def paired_scores(self, table: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Binary (labels, scores) per headline score, one per row of ``table`` (labels NaN where
        unknown), for the comparison of two runs (DeLong's test clustered by patient)."""
        raise ConfigError(f"{type(self).__name__} has no binary scores to compare with DeLong's test")

    def calibration_groups(self, table: pd.DataFrame) -> list[tuple[str, list[str], bool, np.ndarray]]:
        """What temperature scaling can fit on a prediction table (scores beside the cases' labels):
        per group ``(name, score columns, softmax, labels)`` — one sigmoid column with 0/1 labels, or
        a softmax over several columns with class indices; labels NaN where unknown. None by default."""
        return []

    # --- explanations -----------------------------------------------------------------------
    def explain_targets(self) -> tuple[str, ...]:
        """What an explanation can be asked about: one score per name (:meth:`explain_logits`).

        Raises:
            ConfigError: the task has no scores to explain (the default).
        """
        raise ConfigError(f"{type(self).__name__} cannot be explained yet (no explanation targets)")

    def explain_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` differentiable logits of :meth:`explain_targets` from the network's outputs
        (what attribution methods take the gradient of, or perturb the input against)."""
        raise ConfigError(f"{type(self).__name__} cannot be explained yet (no explanation targets)")

    def explain_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` probabilities of :meth:`explain_logits` (independent sigmoids by default)."""
        return torch.sigmoid(logits.float())

    def explain_default(self, probabilities: np.ndarray) -> int:
        """The target explained when none is named, from its ``(K,)`` probabilities: the most probable."""
        return int(np.argmax(probabilities))

    def explain_volume(self, model: nn.Module, volume: Volume, preprocess: BaseModel) -> VolumeView:
        """For tasks that predict whole volumes: the volume on the network's grid, where each target
        is found in it, and the way back to the input's grid (what a 3D explanation is placed by).

        Raises:
            ConfigError: the task explains prepared images instead (2D; the default).
        """
        raise ConfigError(f"{type(self).__name__} explains prepared images (input_array), not whole volumes")

    def explain_mask(self, labels: np.ndarray, target: int) -> np.ndarray | None:
        """Where target ``target`` truly is in a label map of codes (a 3D explanation is scored against
        it), or None for a task whose truth is not a label map (the default)."""
        return None

    def explain_case(self, manifest: Manifest, row: pd.Series) -> tuple[Volume, np.ndarray | None]:
        """A 3D case of a manifest as its explanation reads it: the image, and the case's reference as a
        label map on the image's grid (what :meth:`explain_mask` reads; None where the case has none).

        Raises:
            ConfigError: the task does not read its cases' references from a manifest (the default).
            InputError: the case cannot be read.
        """
        raise ConfigError(f"{type(self).__name__} does not explain the cases of a manifest; explain the files "
                          "instead: medsight explain RUN scan.nii.gz")  # fmt: skip

    def explain_boxes(self, cell: Any, case: str, target: int) -> np.ndarray:
        """``(n, 4)`` boxes ``x0, y0, x1, y1`` (source pixels) that show target ``target`` in a
        manifest's ``boxes`` cell: those labelled with its name (case-insensitive), or every box
        when the task explains one target only.

        Raises:
            InputError: the cell is not a list of ``x, y, w, h`` boxes (naming ``case``).
        """
        names = self.explain_targets()
        rows = []
        for n, box in enumerate(parse_boxes(cell, case)):
            try:
                x, y, w, h = (float(box[k]) for k in ("x", "y", "w", "h"))
            except (KeyError, TypeError, ValueError):
                raise InputError(f"case {case}: box {n + 1} is {box!r}; a 2D box needs x, y, w, h in pixels") from None
            if len(names) > 1 and str(box.get("label", "")).strip().lower() != names[target].lower():
                continue
            rows.append((x, y, x + max(w, 0.0), y + max(h, 0.0)))
        return np.array(rows, float).reshape(-1, 4)


M = TypeVar("M", bound=BaseModel)


def as_model(value: BaseModel, cls: type[M]) -> M:
    """``value`` as a ``cls`` (validated again from its fields when it is some other model, e.g. a
    spec read back from a saved recipe)."""
    return value if isinstance(value, cls) else cls.model_validate(value.model_dump())


_REGISTRY: dict[str, type[Task]] = {}
_BUILTIN = ("classification", "detection", "detection2d", "risk", "segmentation")


def _registry() -> dict[str, type[Task]]:
    """The registry, with the built-in tasks in it (their modules register themselves on import)."""
    for name in _BUILTIN:
        importlib.import_module(f"medsight.tasks.{name}")
    return _REGISTRY


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make ``cls`` serve the kinds its ``spec_type.kind`` allows."""
    kinds = getattr(cls.spec_type.model_fields["kind"].annotation, "__args__", ())
    if not kinds:
        raise ConfigError(f"{cls.__name__}.spec_type.kind must be a Literal of task kinds")
    for kind in kinds:
        if kind in _REGISTRY and _REGISTRY[kind] is not cls:
            raise ConfigError(f"task kind {kind!r} is already served by {_REGISTRY[kind].__name__}")
        _REGISTRY[kind] = cls
    return cls


def registered_tasks() -> dict[str, type[Task]]:
    """Task class by kind."""
    return dict(_registry())


def task_spec_types() -> tuple[type[BaseModel], ...]:
    """The recipe ``task`` sections of every registered task (for the recipe's union)."""
    return tuple(dict.fromkeys(cls.spec_type for cls in _registry().values()))


def task_for(spec: BaseModel | Mapping[str, Any]) -> Task:
    """The task a recipe ``task`` section (a spec, or a dict as saved in a run) describes."""
    kind = spec.get("kind") if isinstance(spec, Mapping) else getattr(spec, "kind", None)
    registry = _registry()
    if kind not in registry:
        raise ConfigError(f"unknown task kind {kind!r}; kinds: {', '.join(sorted(registry))}")
    cls = registry[kind]
    if isinstance(spec, Mapping):
        spec = cls.spec_type(**spec)
    return cls.from_spec(spec)
