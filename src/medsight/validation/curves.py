"""ROC and precision-recall curves with 95 % bands (patients resampled), and confusion matrices, as
the validation report draws them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medsight.metrics.bootstrap import bootstrap_cis

__all__ = ["GRID", "confusion_matrix", "pr_band", "pr_on_grid", "roc_band", "roc_on_grid"]

GRID = np.linspace(0.0, 1.0, 101)
"""False-positive rates (ROC) and recalls (PR) the curves and their bands are read at."""


def roc_on_grid(labels: np.ndarray, scores: np.ndarray) -> list[float]:
    """Sensitivity at each false-positive rate of :data:`GRID` (NaN with one class only)."""
    from sklearn.metrics import roc_curve

    if labels.min() == labels.max():
        return [float("nan")] * len(GRID)
    fpr, tpr, _ = roc_curve(labels, scores)
    return np.interp(GRID, fpr, tpr).tolist()


def pr_on_grid(labels: np.ndarray, scores: np.ndarray) -> list[float]:
    """Interpolated precision (the best precision at this recall or above) at each recall of the grid."""
    from sklearn.metrics import precision_recall_curve

    if labels.max() == 0:
        return [float("nan")] * len(GRID)
    precision, recall, _ = precision_recall_curve(labels, scores)
    order = np.argsort(recall)
    recall, precision = recall[order], np.maximum.accumulate(precision[order][::-1])[::-1]
    position = np.searchsorted(recall, GRID, side="left")
    return [float(precision[p]) if p < len(recall) else float("nan") for p in position]


def _band(
    curve: Any, labels: np.ndarray, scores: np.ndarray, groups: Sequence[object] | None, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels, int), np.asarray(scores, float)
    blocks = bootstrap_cis(curve, labels, scores, names=[f"{g:.2f}" for g in GRID], groups=groups, n_resamples=n)
    pick = lambda key: np.array([np.nan if b.get(key) is None else b[key] for b in blocks], float)  # noqa: E731
    return pick("estimate"), pick("low"), pick("high")


def roc_band(
    labels: np.ndarray, scores: np.ndarray, *, groups: Sequence[object] | None = None, n: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sensitivity at each false-positive rate of :data:`GRID`, with its 95 % band over ``n`` patient
    resamples: ``(estimate, low, high)``."""
    return _band(roc_on_grid, labels, scores, groups, n)


def pr_band(
    labels: np.ndarray, scores: np.ndarray, *, groups: Sequence[object] | None = None, n: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interpolated precision at each recall of :data:`GRID`, with its 95 % band over ``n`` patient
    resamples: ``(estimate, low, high)``."""
    return _band(pr_on_grid, labels, scores, groups, n)


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """``(classes, classes)`` counts: rows the true class, columns the predicted one."""
    out = np.zeros((classes, classes), dtype=int)
    np.add.at(out, (np.asarray(truth, int), np.asarray(predicted, int)), 1)
    return out
