"""Agreement between a measurement and its reference: mean absolute error and Bland-Altman limits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsight.core.errors import InputError

__all__ = ["BlandAltman", "bland_altman", "mean_absolute_error"]


def _pairs(measured: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m, r = np.asarray(measured, dtype=float).reshape(-1), np.asarray(reference, dtype=float).reshape(-1)
    if m.shape != r.shape:
        raise InputError(f"{m.size} measurements for {r.size} references")
    if np.isinf(m).any() or np.isinf(r).any():
        raise InputError("measurements must be finite (NaN marks a missing one)")
    known = ~(np.isnan(m) | np.isnan(r))
    return m[known], r[known]


def mean_absolute_error(measured: np.ndarray, reference: np.ndarray) -> float:
    """Mean of ``|measured - reference|`` over the pairs where both are known (NaN: missing); ``nan``
    when there are none."""
    m, r = _pairs(measured, reference)
    return float(np.mean(np.abs(m - r))) if m.size else float("nan")


@dataclass(frozen=True)
class BlandAltman:
    """Bias (mean difference, measured minus reference) and 95 % limits of agreement
    (bias +- 1.96 standard deviations of the differences), over ``n`` pairs."""

    bias: float
    lower: float
    upper: float
    n: int


def bland_altman(measured: np.ndarray, reference: np.ndarray) -> BlandAltman:
    """Bland & Altman (1986) agreement over the pairs where both are known; limits need two pairs
    (``nan`` below that), the bias one."""
    m, r = _pairs(measured, reference)
    differences = m - r
    if differences.size == 0:
        nan = float("nan")
        return BlandAltman(nan, nan, nan, 0)
    bias = float(differences.mean())
    if differences.size < 2:
        return BlandAltman(bias, float("nan"), float("nan"), 1)
    spread = 1.96 * float(differences.std(ddof=1))
    return BlandAltman(bias, bias - spread, bias + spread, int(differences.size))
