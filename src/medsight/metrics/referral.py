"""Referral curves: how a model performs on the cases it keeps when the most uncertain ones are
referred to a human (Leibig et al. 2017, diabetic retinopathy)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from medsight.core.errors import InputError
from medsight.metrics.bootstrap import bootstrap_cis
from medsight.metrics.classification import roc_auc

__all__ = ["DEFAULT_RATES", "ambiguity", "referral_curve", "referral_curve_ci"]

DEFAULT_RATES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
"""Shares of the cases referred, most uncertain first."""


def ambiguity(scores: np.ndarray) -> np.ndarray:
    """How close a probability is to a coin toss: ``1 - |2 p - 1|`` (1 at 0.5, 0 at 0 or 1) — the
    uncertainty a single prediction already states, the baseline a spread must beat."""
    p = np.asarray(scores, np.float64)
    return 1.0 - np.abs(2.0 * p - 1.0)


def _check(labels: np.ndarray, scores: np.ndarray, uncertainty: np.ndarray, rates: Sequence[float]) -> None:
    if not (len(labels) == len(scores) == len(uncertainty)):
        raise InputError(f"labels, scores and uncertainty differ in length ({len(labels)}, {len(scores)}, "
                         f"{len(uncertainty)})")  # fmt: skip
    if not np.all(np.isfinite(uncertainty)):
        raise InputError("the uncertainty holds NaN or infinite values")
    if any(not 0 <= r < 1 for r in rates):
        raise InputError(f"referral rates must lie in [0, 1), got {list(rates)}")


def referral_curve(
    labels: np.ndarray,
    scores: np.ndarray,
    uncertainty: np.ndarray,
    *,
    rates: Sequence[float] = DEFAULT_RATES,
    metric: Callable[[np.ndarray, np.ndarray], float] = roc_auc,
) -> list[float]:
    """``metric(labels, scores)`` on the cases kept when the ``rate`` share with the highest
    ``uncertainty`` is referred (``round(rate * n)`` cases; ties referred in case order), one value
    per rate (NaN where the kept cases hold one class only).

    Raises:
        InputError: arrays of different lengths, a non-finite uncertainty, or a rate outside [0, 1).
    """
    labels, scores, uncertainty = (np.asarray(a) for a in (labels, scores, uncertainty))
    _check(labels, scores, uncertainty, rates)
    order = np.argsort(-uncertainty.astype(np.float64), kind="stable")  # most uncertain first
    values = []
    for rate in rates:
        kept = np.sort(order[round(rate * len(order)) :])
        values.append(float(metric(labels[kept], scores[kept])) if len(kept) else float("nan"))
    return values


def referral_curve_ci(
    labels: np.ndarray,
    scores: np.ndarray,
    uncertainty: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    rates: Sequence[float] = DEFAULT_RATES,
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[dict[str, float]]:
    """:func:`referral_curve` of the AUC with a 95 % CI per rate, resampling patients (``groups``);
    each entry carries its ``rate``."""
    _check(np.asarray(labels), np.asarray(scores), np.asarray(uncertainty), rates)
    names = [f"{r:g}" for r in rates]
    found = bootstrap_cis(lambda y, p, u: referral_curve(y, p, u, rates=rates), labels, scores, uncertainty,
                          names=names, groups=groups, n_resamples=n_resamples, seed=seed)  # fmt: skip
    return [{"rate": float(r), **block} for r, block in zip(rates, found, strict=True)]
