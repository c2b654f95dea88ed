"""The model package spec: everything prediction needs to rebuild a trained model, and where it came from.

``fit`` writes ``package.json`` into the run folder beside the weights; the predictor is built
from it alone (never from the training code's recipe objects). Weights are loaded with
``torch.load(..., weights_only=True)``: a model file a user downloads is never unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medsight.core.errors import InputError
from medsight.io.atomic import atomic_file
from medsight.models.registry import ModelChoice
from medsight.tasks.base import Task, task_for, task_spec_types

__all__ = ["PACKAGE_FILE", "ModelPackage", "Provenance", "TaskSpec"]

PACKAGE_FILE = "package.json"
FORMAT_VERSION = 1


def _task_spec_annotation() -> Any:
    """The recipe ``task`` section of every registered task, told apart by ``kind``.

    The built-in task modules are imported (and so registered) first.
    """
    types = task_spec_types()
    if len(types) == 1:
        return types[0]
    return Annotated[Union[types], Field(discriminator="kind")]  # noqa: UP007 - a runtime tuple of types


TaskSpec = _task_spec_annotation()
"""The type of a recipe's (and a package's) ``task`` section: a union of the registered tasks' specs."""


class Provenance(BaseModel):
    """Where a model came from."""

    model_config = ConfigDict(extra="forbid")
    versions: dict[str, str | None] = {}
    git_commit: str | None = None
    data_hash: str | None = None  # of the manifest the model was trained on (cases, files, targets, splits)
    manifest: str | None = None
    created: str | None = None  # ISO 8601, UTC
    seed: int | None = None


class ModelPackage(BaseModel):
    """A trained model's typed spec (``package.json``).

    Attributes:
        recipe: The recipe's name.
        task: The task section (kind, classes, target...).
        model: The network and its options.
        in_channels: The network's input channels.
        preprocess: How an input is made ready (the task's preprocessing spec, as saved).
        weights: The weights file beside ``package.json``.
        onnx: The network as ONNX beside it (``medsight export --format onnx``), which the predictor
            can run on onnxruntime instead; None when there is none.
        augment: The 2D augmentation the model was trained with, which test-time augmentation draws
            from (None for 3D models, and packages made before it was kept).
        provenance: Versions, git commit, data hash, seed.
    """

    model_config = ConfigDict(extra="forbid")
    format_version: int = FORMAT_VERSION
    recipe: str
    task: TaskSpec  # type: ignore[valid-type]
    model: ModelChoice
    in_channels: int = Field(ge=1)
    preprocess: dict[str, Any]
    weights: str = "best.pt"
    onnx: str | None = None
    augment: dict[str, Any] | None = None  # the 2D augmentation it was trained with (test-time augmentation draws it)
    provenance: Provenance = Provenance()

    def task_object(self) -> Task:
        """The :class:`~medsight.tasks.base.Task` this package predicts."""
        return task_for(self.task)

    def preprocessing(self) -> BaseModel:
        """The preprocessing spec, typed by the task."""
        cls = type(self.task_object())
        return (cls.package_preprocess_type or cls.preprocess_type).model_validate(self.preprocess)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``folder/package.json`` atomically."""
        path = Path(folder) / PACKAGE_FILE
        with atomic_file(path) as tmp:
            tmp.write_text(self.model_dump_json(indent=2))
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> ModelPackage:
        """Read ``folder/package.json``; a run made before packages existed is read from its
        ``config.json`` recipe.

        Raises:
            InputError: ``folder`` is no run or package, or its spec is unreadable or invalid.
        """
        folder = Path(folder)
        path = folder / PACKAGE_FILE
        if path.is_file():
            try:
                return cls.model_validate_json(path.read_text())
            except (OSError, ValidationError) as exc:
                raise InputError(f"{path} is not a valid model package spec: {_first_line(exc)}") from exc
        config = folder / "config.json"
        if not config.is_file():
            raise InputError(
                f"{folder} is not a medsight run folder (no {PACKAGE_FILE} or config.json); "
                "give the --out of a training run"
            )
        try:
            recipe = json.loads(config.read_text()).get("recipe")
        except (OSError, ValueError) as exc:
            raise InputError(f"{config} is unreadable: {exc}") from exc
        if not recipe:
            raise InputError(f"{config} records no recipe; was the run made by `medsight train`?")
        try:
            return cls.from_recipe(recipe)
        except ValidationError as exc:
            raise InputError(f"{config} holds a recipe this version cannot read: {_first_line(exc)}") from exc

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], provenance: Provenance | None = None) -> ModelPackage:
        """The package of a resolved recipe (as ``config.json`` saves it)."""
        task = task_for(recipe["task"])
        preprocess = type(task).preprocess_type.model_validate(recipe.get("preprocess", {}))
        return cls(
            recipe=recipe["name"],
            task=recipe["task"],
            model=ModelChoice.model_validate(recipe.get("model", {})),
            in_channels=int(getattr(preprocess, "channels", 1)),
            preprocess=preprocess.model_dump(),
            provenance=provenance or Provenance(),
        )


def _first_line(error: Exception) -> str:
    return " ".join(str(error).split())[:300]
