"""The report's curves and confusion matrix against brute force and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import roc_auc_score

from medsight.validation.curves import GRID, confusion_matrix, pr_band, pr_on_grid, roc_band, roc_on_grid


def _data(seed: int, n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.round(np.clip(labels * 0.35 + rng.normal(0.35, 0.2, n), 0, 1), 2)  # ties
    return labels, scores


@pytest.mark.parametrize("seed", range(3))
def test_the_roc_on_the_grid_keeps_the_auc_and_rises_to_one(seed):
    labels, scores = _data(seed)
    curve = np.asarray(roc_on_grid(labels, scores))
    assert np.all(np.diff(curve) >= -1e-12) and curve[-1] == pytest.approx(1.0)
    area = float(np.sum((curve[1:] + curve[:-1]) / 2 * np.diff(GRID)))
    assert area == pytest.approx(roc_auc_score(labels, scores), abs=0.01)


@pytest.mark.parametrize("seed", range(3))
def test_interpolated_precision_matches_brute_force(seed):
    labels, scores = _data(seed)
    points = [(1.0, 0.0)]  # (precision, recall) before any case is called positive, as scikit-learn adds
    for threshold in np.unique(scores):
        called = scores >= threshold
        tp = int((called & (labels == 1)).sum())
        points.append((tp / called.sum(), tp / labels.sum()))
    expected = [max(p for p, r in points if r >= level - 1e-12) for level in GRID]
    np.testing.assert_allclose(pr_on_grid(labels, scores), expected)


def test_bands_hold_their_curve_and_undefined_cases_are_nan():
    labels, scores = _data(5)
    patients = np.repeat(np.arange(40), 2)
    for band in (roc_band, pr_band):
        estimate, low, high = band(labels, scores, groups=patients, n=100)
        assert estimate.shape == low.shape == high.shape == GRID.shape
        assert np.all(low <= high + 1e-12) and np.mean((low <= estimate + 1e-9) & (estimate <= high + 1e-9)) > 0.9
    assert np.isnan(roc_on_grid(np.zeros(5, int), np.linspace(0, 1, 5))).all()
    assert np.isnan(pr_on_grid(np.zeros(5, int), np.linspace(0, 1, 5))).all()


def test_confusion_matrix_matches_scikit_learn():
    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    np.testing.assert_array_equal(
        confusion_matrix(truth, predicted, 4), sk_confusion(truth, predicted, labels=range(4))
    )
    assert confusion_matrix(np.array([0]), np.array([0]), 3).sum() == 1
