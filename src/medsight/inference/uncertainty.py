"""Predictive uncertainty: several predictions of each case, combined into their mean and spread.

Three ways to get the predictions, all through the same task code (the network is wrapped, the
task never knows):

- ``tta``: test-time augmentation (Wang et al. 2019) drawn from the augmentations the model was
  trained with (a 2D package's ``augment``, a 3D plan's ``augmentation``), so the network sees
  nothing it was not taught to be invariant to; the first prediction is the plain one. A 3D
  network's outputs are maps of its input's voxels, so only what can be undone on them is drawn:
  one mirroring per prediction (along the axes training flipped, undone on the output) and the
  intensity changes (blur, bias field, brightness, gamma, noise), drawn per window.
- ``mc-dropout``: Monte Carlo dropout (Gal and Ghahramani 2016): the network's dropout stays on at
  prediction. Only for networks trained with dropout (``model.dropout`` in the recipe, or
  EfficientNet's own).
- ``ensemble``: one prediction per run of a deep ensemble (Lakshminarayanan et al. 2017): runs of
  the same recipe trained with other seeds.

Every numeric score column becomes the mean over the predictions, with its standard deviation
beside it as ``sd_<column>``; other columns (detections, CAM boxes) are the first prediction's.
Where the cases carry their labels, each of the task's binary scores (the ones it is compared by,
some derived: referable DR is the sum of the grades from 2 up) also gets its spread over the
predictions, ``spread_<score>``, which referral curves rank cases by.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import torch
from torch import nn

from medsight.core.errors import ConfigError, InputError

__all__ = [
    "METHODS",
    "SPREAD_PREFIX",
    "Uncertainty",
    "UncertaintyMethod",
    "combine",
    "sampled_models",
    "spread_column",
    "spreads",
]

log = logging.getLogger(__name__)

UncertaintyMethod = Literal["tta", "mc-dropout", "ensemble"]
METHODS: tuple[str, ...] = get_args(UncertaintyMethod)
SD_PREFIX = "sd_"
SPREAD_PREFIX = "spread_"


def spread_column(score: str) -> str:
    """The column holding the spread of one of a task's binary scores (its ``paired_scores`` key:
    ``auc`` -> ``spread_score``, ``referable_auc`` -> ``spread_referable``, ``auc_<finding>`` ->
    ``spread_<finding>``)."""
    name = score.removeprefix("auc_").removesuffix("_auc")
    return f"{SPREAD_PREFIX}{'score' if name == 'auc' else name}"


@dataclass(frozen=True)
class Uncertainty:
    """How predictions are repeated.

    Attributes:
        method: ``tta``, ``mc-dropout`` or ``ensemble``.
        samples: Predictions per case (``tta``, ``mc-dropout``; an ensemble has one per run).
        members: The ensemble's other runs (their folders); the predictor's own run is the first.
        seed: Seed of the augmentations and dropout masks (results are reproducible).
    """

    method: str
    samples: int = 8
    members: tuple[Path, ...] = field(default_factory=tuple)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown uncertainty method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.method != "ensemble" and self.samples < 2:
            raise ConfigError(
                f"--samples must be at least 2 for {self.method} (the spread needs two), got {self.samples}"
            )
        if self.method == "ensemble" and not self.members:
            raise ConfigError("an ensemble needs the other runs: --ensemble RUN2 --ensemble RUN3 ...")
        if self.method != "ensemble" and self.members:
            raise ConfigError(f"--ensemble runs are used with --uncertainty ensemble, not {self.method}")


class _Seeded(nn.Module):
    """A network whose randomness (augmentation, dropout) is drawn from its own seed, call after call."""

    def __init__(self, model: nn.Module, seed: int) -> None:
        super().__init__()
        self.model, self.seed, self.calls = model, seed, 0

    def draw(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 100_003 + self.calls)
            return self.draw(inputs)


class _Augmented(_Seeded):
    """The network on randomly augmented inputs (the training augmentation, drawn per image)."""

    def __init__(self, model: nn.Module, augmenter: Any, seed: int) -> None:
        super().__init__(model, seed)
        self.augmenter = augmenter

    def draw(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(self.augmenter(inputs.float()))


class _Augmented3D(_Seeded):
    """A 3D network on one mirroring of its input, undone on its output (each voxel's prediction stays
    where it belongs), after the training's intensity augmentations (drawn per window)."""

    def __init__(self, model: nn.Module, augmenter: Any, axes: tuple[int, ...], seed: int) -> None:
        super().__init__(model, seed)
        self.augmenter, self.dims = augmenter, tuple(axis + 2 for axis in axes)

    def draw(self, inputs: torch.Tensor) -> torch.Tensor:
        images = inputs.float().flip(self.dims) if self.dims else inputs.float()
        images = self.augmenter.intensity(images)
        outputs = self.model(images)
        return outputs.flip(self.dims) if self.dims else outputs


def _volume_samples(model: nn.Module, plan: Any, uncertainty: Uncertainty) -> list[nn.Module]:
    """The plain 3D network, then ``samples - 1`` augmented ones (:class:`_Augmented3D`) drawn from the
    plan's training augmentation.

    Raises:
        ConfigError: no plan, or a plan whose training drew neither flips nor intensity changes.
    """
    spec = getattr(plan, "augmentation", None)
    if spec is None:
        raise ConfigError("the model package holds no plan to draw test-time augmentations from; train it again")
    from medsight.transforms.batch3d import BatchAugmenter3D

    allowed = tuple(a for a in range(3) if a != plan.anisotropic_axis)
    changes = (spec.blur_p, spec.bias_field_p, spec.gamma_p, spec.noise_p)
    if spec.flip_p <= 0 and not any(p > 0 for p in changes):
        raise ConfigError("this model was trained without flips or intensity augmentation, which test-time "
                          "augmentation of a 3D model draws from: use --uncertainty ensemble or "
                          "mc-dropout")  # fmt: skip
    augmenter = BatchAugmenter3D(spacing=plan.spacing, thick_axis=plan.anisotropic_axis, rotation_p=0.0, scale_p=0.0,
                                 elastic_p=0.0, flip_p=0.0, blur_p=spec.blur_p, bias_field_p=spec.bias_field_p,
                                 gamma_p=spec.gamma_p, noise_p=spec.noise_p)  # fmt: skip
    out: list[nn.Module] = [model]
    for i in range(1, uncertainty.samples):
        draws = np.random.default_rng([uncertainty.seed, i]).random(len(allowed))
        axes = tuple(a for a, d in zip(allowed, draws, strict=True) if d < spec.flip_p)
        out.append(_Augmented3D(model, augmenter, axes, uncertainty.seed + i))
    return out


class _Dropping(_Seeded):
    """The network with its dropout layers on (the rest, e.g. batch norm, stays in evaluation mode)."""

    def draw(self, inputs: torch.Tensor) -> torch.Tensor:
        layers = [m for m in self.model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        for layer in layers:
            layer.train()
        try:
            return self.model(inputs)
        finally:
            for layer in layers:
                layer.eval()


def _dropout_layers(model: nn.Module) -> int:
    return sum(
        1 for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and float(getattr(m, "p", 0)) > 0
    )


def training_augmentation(run_dir: Path, package_augment: dict[str, Any] | None) -> dict[str, Any]:
    """The 2D augmentation a run was trained with: its package's, else its ``config.json`` recipe's.

    Raises:
        ConfigError: neither says (a package made before packages kept it).
    """
    if package_augment:
        return dict(package_augment)
    config = run_dir / "config.json"
    try:
        augment = (json.loads(config.read_text()).get("recipe") or {}).get("augment") if config.is_file() else None
    except (OSError, ValueError):
        augment = None
    if not augment:
        raise ConfigError(f"{run_dir} does not say which augmentations it was trained with; test-time augmentation "
                          "draws from them: train the model again, or use --uncertainty ensemble")  # fmt: skip
    return dict(augment)


def sampled_models(
    model: nn.Module,
    uncertainty: Uncertainty,
    *,
    spatial_dims: int,
    augment: dict[str, Any] | None = None,
    members: Sequence[nn.Module] = (),
    plan: Any = None,
) -> list[nn.Module]:
    """The networks whose predictions are combined: augmented copies (``tta``, from a 2D run's
    ``augment`` or a 3D run's ``plan``; the plain network first), dropout draws (``mc-dropout``) or
    the ensemble's members (``ensemble``: ``model`` first).

    Raises:
        ConfigError: TTA of a model of features or of one trained without augmentation, MC dropout
            of a network without dropout.
    """
    if uncertainty.method == "ensemble":
        return [model, *members]
    if uncertainty.method == "mc-dropout":
        if not _dropout_layers(model):
            raise ConfigError(
                "this network has no dropout to sample: train it with `--set model.dropout=0.2` (MC dropout "
                "draws the dropout a network was trained with), or use --uncertainty "
                + ("tta" if spatial_dims == 2 else "ensemble")
            )
        return [_Dropping(model, uncertainty.seed + i) for i in range(uncertainty.samples)]
    if spatial_dims == 0:
        raise ConfigError("test-time augmentation augments images; a model of a table of features has none: use "
                          "--uncertainty ensemble or mc-dropout")  # fmt: skip
    if spatial_dims == 3:
        return _volume_samples(model, plan, uncertainty)
    from medsight.transforms.batch2d import BatchAugmenter
    from medsight.transforms.image2d import Augment2D

    augmenter = BatchAugmenter(Augment2D.model_validate(augment or {}))
    return [model, *(_Augmented(model, augmenter, uncertainty.seed + i) for i in range(1, uncertainty.samples))]


def combine(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Score tables of the same rows from several predictions: numeric columns averaged, with their
    standard deviation as ``sd_<column>`` after them; other columns as the first table has them.

    Raises:
        InputError: the tables disagree on rows or columns.
    """
    if not tables:
        raise InputError("no predictions to combine")
    first = tables[0]
    for other in tables[1:]:
        if list(other.columns) != list(first.columns) or len(other) != len(first):
            raise InputError("the predictions to combine differ in their rows or columns (models of another task?)")
    out = first.copy()
    numeric = [c for c in first.columns if pd.api.types.is_numeric_dtype(first[c]) and not c.startswith(SD_PREFIX)]
    for column in numeric:
        stack = np.stack([t[column].to_numpy(dtype=np.float64) for t in tables])
        out[column] = stack.mean(axis=0)
        out[f"{SD_PREFIX}{column}"] = stack.std(axis=0)
    return out


def spreads(task: Any, cases: pd.DataFrame, tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per row, the standard deviation over the predictions of each of the task's binary scores
    (:meth:`~medsight.tasks.base.Task.paired_scores`), as ``spread_<score>`` columns; none where the
    task has no binary score or the cases carry no labels."""
    try:
        per = [task.paired_scores(pd.concat([cases.reset_index(drop=True), t.reset_index(drop=True)], axis=1))
               for t in tables]  # fmt: skip
    except (ConfigError, KeyError) as exc:
        log.debug("no spreads of binary scores: %s", exc)
        return pd.DataFrame(index=range(len(cases)))
    return pd.DataFrame({spread_column(key): np.stack([np.asarray(p[key][1], np.float64) for p in per]).std(axis=0)
                         for key in per[0]})  # fmt: skip
