"""Recipes: validated YAML describing a task end to end (task, model, preprocessing, training)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, model_validator

from medsight.core.errors import ConfigError
from medsight.engine.builtin import builtin_recipes
from medsight.engine.config import TrainConfig
from medsight.models.registry import ModelChoice
from medsight.tasks import registered_tasks
from medsight.tasks.package import TaskSpec
from medsight.transforms.image2d import Augment2D, Preprocess2D

__all__ = ["Recipe", "apply_overrides", "builtin_recipes", "explain", "load_recipe"]


class EvaluationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    operating_points: list[str] = ["youden"]
    bootstrap: int = Field(1000, ge=0)


class Recipe(BaseModel):
    """A complete, validated training recipe (saved resolved with every run)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    task: TaskSpec  # type: ignore[valid-type]  # the section of the task its ``kind`` names
    model: ModelChoice = ModelChoice()
    # the task's own section: image size and channels for classification, planning for segmentation
    preprocess: SerializeAsAny[BaseModel] = Preprocess2D()
    augment: Augment2D = Augment2D()  # 2D augmentation (segmentation's is in its plan)
    balance: Literal["none", "sampler", "weights"] = "none"
    train: TrainConfig = TrainConfig()
    evaluation: EvaluationSpec = EvaluationSpec()

    @model_validator(mode="before")
    @classmethod
    def _preprocess_of_the_task(cls, data: Any) -> Any:
        """Read ``preprocess`` as the section of the task ``task.kind`` names."""
        if not isinstance(data, dict):
            return data
        task = data.get("task")
        kind = task.get("kind") if isinstance(task, dict) else getattr(task, "kind", None)
        owner = registered_tasks().get(kind) if isinstance(kind, str) else None
        if owner is None:  # the task section's own error names the problem
            return {**data, "preprocess": Preprocess2D()}
        raw = data.get("preprocess") or {}
        if isinstance(raw, BaseModel):
            raw = raw.model_dump()
        try:
            return {**data, "preprocess": owner.preprocess_type.model_validate(raw)}
        except ValidationError as exc:
            raise ValueError(explain(exc, owner.preprocess_type, "preprocess.")) from None


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set ``key.sub=value`` overrides (values parsed as YAML) in ``data``, in place; returns it.

    Raises:
        ConfigError: an override is not ``KEY=VALUE``, or walks into a value as if it were a section.
    """
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes KEY=VALUE (e.g. train.epochs=3), got {item!r}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({exc})") from exc
        _set(data, key.strip(), parsed)
    return data


def _models_in(annotation: Any) -> list[Any]:
    """The sub-models a field's annotation holds: a model, a union's models, or a list or mapping of
    them (returned as ``("items", models)``: the next key of a location is an index or a name)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    args = getattr(annotation, "__args__", ())
    if getattr(annotation, "__origin__", None) in (list, tuple, set, frozenset, dict):
        inner = [m for a in args[-1:] for m in _models_in(a)]  # a mapping's values, a sequence's items
        return [("items", inner)] if inner else []
    return [m for a in args for m in _models_in(a)]


def _fields_at(model: type[BaseModel], location: Sequence[str | int]) -> list[str]:
    """Field names of the sub-model at ``location`` (for 'did you mean' suggestions)."""
    current: list[Any] = [model]  # the models a union (the task sections) may be
    for part in location[:-1]:
        found: list[Any] = []
        for m in current:
            if isinstance(m, tuple):  # a list's index or a mapping's key: step into its items
                found += m[1]
            elif (field := m.model_fields.get(part)) is not None:
                found += _models_in(field.annotation)
        if not found:
            return []
        current = found
    return list(dict.fromkeys(name for m in current if not isinstance(m, tuple) for name in m.model_fields))


def read_yaml_mapping(path: Path, holding: str) -> dict[str, Any]:
    """A YAML file's top-level mapping (empty for an empty file).

    Raises:
        ConfigError: not YAML, or not a mapping (of ``holding``, as the message says).
    """
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of {holding}, got {type(data).__name__}")
    return data


def explain(error: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """A validation error of ``model`` as one line: each problem with its dotted key (after
    ``prefix``, the section ``model`` is read from, e.g. ``"preprocess."``), unknown keys with the
    closest known one."""
    problems = []
    kinds = set(registered_tasks())
    for item in error.errors():
        location = list(item["loc"])
        if len(location) >= 2 and location[0] == "task" and location[1] in kinds:  # the union's tag, not a key
            del location[1]
        item = {**item, "loc": tuple(location)}
        where = prefix + ".".join(str(p) for p in item["loc"]) if item["loc"] else prefix.rstrip(".")
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(item["loc"][-1]), _fields_at(model, item["loc"]), n=1)
            problems.append(f"unknown key {where!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def load_recipe(name_or_path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Load a built-in recipe by name or a YAML file, apply ``key.sub=value`` overrides, validate.

    Values in overrides are parsed as YAML (``train.epochs=3``, ``task.classes=[a, b]``).
    """
    recipes = builtin_recipes()
    path = recipes.get(str(name_or_path), Path(name_or_path))
    if not path.is_file():
        raise ConfigError(
            f"unknown recipe {str(name_or_path)!r}: not a built-in ({', '.join(sorted(recipes))}) and no such file"
        )
    data = read_yaml_mapping(path, "recipe sections")
    apply_overrides(data, overrides)
    try:
        return Recipe(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid recipe {path.name}: {explain(exc, Recipe)}") from None
