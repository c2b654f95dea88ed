"""Decision-curve analysis (Vickers & Elkin 2006): the net benefit of acting on a model's
probability at each threshold probability, against acting on every case or on none.

At threshold probability ``t`` (the risk at which a clinician would act: the harm of a needless
action weighed against the benefit of a needed one as ``t / (1 - t)``), acting on the cases with
``p >= t`` has net benefit ``TP / N - FP / N * t / (1 - t)``; acting on all has
``prevalence - (1 - prevalence) * t / (1 - t)``; acting on none has 0. A model is worth using at
the thresholds where its curve lies above both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medsight.core.errors import InputError

__all__ = ["DEFAULT_THRESHOLDS", "net_benefit", "net_benefit_all"]

DEFAULT_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)
"""Threshold probabilities 0.01 ... 0.99."""


def _checked(
    y_true: Sequence[float] | np.ndarray, prob: Sequence[float] | np.ndarray, thresholds: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, p, t = np.asarray(y_true, float), np.asarray(prob, float), np.asarray(thresholds, float)
    if y.ndim != 1 or p.shape != y.shape or len(y) == 0:
        raise InputError(f"labels and probabilities must be 1D, equal and not empty; got {y.shape} and {p.shape}")
    if not set(np.unique(y).tolist()) <= {0.0, 1.0}:
        raise InputError("binary labels must be 0/1")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise InputError("probabilities must be finite and within [0, 1]")
    if t.ndim != 1 or not np.all((t > 0) & (t < 1)):
        raise InputError("threshold probabilities must lie strictly between 0 and 1")
    return y, p, t


def net_benefit(
    y_true: Sequence[float] | np.ndarray,
    prob: Sequence[float] | np.ndarray,
    thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
) -> np.ndarray:
    """Net benefit of acting on cases with ``prob >= t``, for each threshold probability ``t``."""
    y, p, t = _checked(y_true, prob, thresholds)
    acting = p[None, :] >= t[:, None]
    true_positive = (acting & (y[None, :] == 1)).sum(axis=1)
    false_positive = (acting & (y[None, :] == 0)).sum(axis=1)
    return true_positive / len(y) - false_positive / len(y) * t / (1 - t)


def net_benefit_all(
    y_true: Sequence[float] | np.ndarray, thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS
) -> np.ndarray:
    """Net benefit of acting on every case, for each threshold probability."""
    y, _, t = _checked(y_true, np.zeros(len(np.asarray(y_true))), thresholds)
    prevalence = y.mean()
    return prevalence - (1 - prevalence) * t / (1 - t)
