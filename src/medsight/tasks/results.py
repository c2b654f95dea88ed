"""Typed results every task returns: predictions, estimates with CIs, and an evaluation.

The CLI, the demo and (later) the validation report read these objects by attribute; the
full per-task detail is kept as the JSON-ready ``details`` of an :class:`Evaluation`, which
is what ``metrics_<split>.json`` holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["BoxFinding", "Estimate", "Evaluation", "Finding", "Prediction", "json_ready"]


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95 % CI (bootstrap by patient); ``nan`` where it is undefined.

    Attributes:
        estimate: On all cases.
        low, high: Percentile interval over the defined resamples.
        n_valid: Resamples where the figure was defined.
        n_undefined: Resamples where it was not (e.g. AUC on a resample of one class).
        undefined: Why the figure itself is undefined, when it is.
    """

    estimate: float
    low: float
    high: float
    n_valid: int = 0
    n_undefined: int = 0
    undefined: str | None = None

    @classmethod
    def of(cls, value: Mapping[str, Any]) -> Estimate:
        """From a :func:`~medsight.metrics.bootstrap_ci` result (``None`` read as undefined)."""

        def number(key: str) -> float:
            x = value.get(key)
            return float("nan") if x is None else float(x)

        return cls(number("estimate"), number("low"), number("high"), int(value.get("n_valid", 0)),
                   int(value.get("n_undefined", 0)), value.get("undefined"))  # fmt: skip

    @property
    def defined(self) -> bool:
        return not math.isnan(self.estimate)

    def text(self) -> str:
        """``0.912 [0.871, 0.944]``, or ``undefined`` (with the reason when one is known)."""
        if not self.defined:
            return f"undefined ({self.undefined})" if self.undefined else "undefined"

        def show(x: float) -> str:
            return "undefined" if math.isnan(x) else f"{x:.3f}"

        return f"{show(self.estimate)} [{show(self.low)}, {show(self.high)}]"


@dataclass(frozen=True)
class Finding:
    """A finding a model located in a volume (e.g. a lung nodule), as a report states it.

    Attributes:
        name: What it is (the task's finding, e.g. ``nodule``).
        centre_mm: Its centre ``(x, y, z)`` in patient coordinates (LPS, mm: DICOM's frame).
        diameter_mm: Its diameter.
        probability: The model's probability that it is one.
    """

    name: str
    centre_mm: tuple[float, float, float]
    diameter_mm: float
    probability: float


@dataclass(frozen=True)
class BoxFinding:
    """A finding a model located in a 2D image (e.g. a mass on a mammogram, an opacity on a chest
    X-ray), as a report states it.

    Attributes:
        name: What it is (the task's finding).
        box_px: ``(x0, y0, x1, y1)``: the box's edges in the image's pixels, column then row, the
            top-left corner of the first pixel at ``(0, 0)`` (DICOM's SCOORD convention).
        probability: The model's probability that it is one.
    """

    name: str
    box_px: tuple[float, float, float, float]
    probability: float


@dataclass(frozen=True)
class Prediction:
    """What a model predicted for a set of cases, in the task's own form.

    Attributes:
        cases: One row per case (``case_id``, ``patient_id``, targets and attributes when they
            come from a manifest; ``input`` and DICOM facts when they come from files).
        scores: The task's per-case outputs as named columns (``prob`` or ``prob_<class>``
            for classification), aligned with ``cases``.
        provenance: Which model made them (name, recipe, version, run or package).
    """

    cases: pd.DataFrame
    scores: pd.DataFrame
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.cases) != len(self.scores):
            raise ValueError(f"{len(self.scores)} score rows for {len(self.cases)} cases")

    def __len__(self) -> int:
        return len(self.cases)

    def table(self) -> pd.DataFrame:
        """Cases and scores side by side (what ``predictions_<split>.csv`` and ``predict --out`` hold)."""
        cases = self.cases.reset_index(drop=True)
        scores = self.scores.reset_index(drop=True)
        return pd.concat([cases.drop(columns=[c for c in scores.columns if c in cases.columns]), scores], axis=1)


@dataclass(frozen=True)
class Evaluation:
    """A model's figures on one split, each with its CI.

    Attributes:
        recipe: The recipe's name.
        kind: The task kind (``ordinal``, ``multilabel``...).
        split: The split evaluated.
        cases, patients: How many of each the split holds.
        figures: The headline figures by name (``qwk``, ``referable auc``, ``exam auc``,
            ``auc Effusion``, ``sensitivity @ youden``...), in display order.
        details: Everything the task computed, JSON-ready (``metrics_<split>.json``).
        warnings: What makes some figures meaningless on this split.
    """

    recipe: str
    kind: str
    split: str
    cases: int
    patients: int
    figures: dict[str, Estimate]
    details: dict[str, Any]
    warnings: tuple[str, ...] = ()

    def figure(self, name: str) -> Estimate:
        """One headline figure; the error lists the figures there are."""
        try:
            return self.figures[name]
        except KeyError:
            raise KeyError(f"no figure {name!r}; this evaluation has {', '.join(self.figures)}") from None


def json_ready(value: Any) -> Any:
    """``value`` with NaN and infinite floats as ``None`` (JSON null: undefined) and NumPy
    scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
