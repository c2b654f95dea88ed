"""Calibration of predicted probabilities: expected calibration error, calibration slope and
intercept, and the reliability diagram's bins.

A well-calibrated model's cases predicted at 0.3 are positive 30 % of the time. The figures here
are the ones the TRIPOD+AI and CLAIM checklists ask for:

- **ECE**: cases binned by predicted probability (``bins`` equal-width bins over [0, 1], a
  probability of exactly 1 in the last), the mean over bins, weighted by their share of cases, of
  |observed rate - mean probability|.
- **Calibration slope**: ``b`` in the logistic regression ``logit P(y = 1) = a + b logit(p)``
  (1 ideal; below 1 the predictions are too extreme, as in an overfitted model).
- **Calibration intercept** (calibration-in-the-large): ``a`` in ``logit P(y = 1) = a + logit(p)``,
  the slope held at 1 (0 ideal; above 0 the model predicts too low on average).

Probabilities are clipped to [1e-6, 1 - 1e-6] before the logit. The regressions are fitted by
Newton's method; both are undefined (NaN) with one class, and the slope also when the classes are
separated by ``p`` (the fit diverges).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import special

from medsight.core.errors import InputError

__all__ = ["apply_temperature", "calibration_figures", "calibration_intercept", "calibration_slope",
           "expected_calibration_error", "fit_temperature", "reliability_bins"]  # fmt: skip

log = logging.getLogger(__name__)

_EPS = 1e-6
_ITERATIONS = 100


def _checked(y_true: Sequence[float] | np.ndarray, prob: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(prob, dtype=float)
    if y.ndim != 1 or p.ndim != 1 or len(y) != len(p):
        raise InputError(f"labels and probabilities must be 1D of equal length; got shapes {y.shape} and {p.shape}")
    if len(y) == 0:
        raise InputError("no cases to assess calibration on (empty labels)")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise InputError("probabilities must be finite and within [0, 1]; calibration is a property of probabilities")
    if not set(np.unique(y).tolist()) <= {0.0, 1.0}:
        raise InputError(f"binary labels must be 0/1; found values {sorted(set(np.unique(y).tolist()))[:5]}")
    return y, p


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _EPS, 1 - _EPS)
    return np.log(q / (1 - q))


def reliability_bins(
    y_true: Sequence[float] | np.ndarray, prob: Sequence[float] | np.ndarray, bins: int = 10
) -> dict[str, list[float]]:
    """Per non-empty equal-width bin: ``low``, ``high`` (its edges), ``cases``, ``mean_probability``
    and ``observed`` (share positive): the points of a reliability diagram."""
    y, p = _checked(y_true, prob)
    if bins < 1:
        raise InputError(f"bins must be >= 1, got {bins}")
    which = np.minimum((p * bins).astype(int), bins - 1)
    cases = np.bincount(which, minlength=bins)
    kept = cases > 0
    edges = np.linspace(0.0, 1.0, bins + 1)
    return {
        "low": edges[:-1][kept].tolist(),
        "high": edges[1:][kept].tolist(),
        "cases": cases[kept].astype(int).tolist(),
        "mean_probability": (np.bincount(which, p, bins)[kept] / cases[kept]).tolist(),
        "observed": (np.bincount(which, y, bins)[kept] / cases[kept]).tolist(),
    }


def expected_calibration_error(
    y_true: Sequence[float] | np.ndarray, prob: Sequence[float] | np.ndarray, bins: int = 10
) -> float:
    """The ECE over ``bins`` equal-width bins (see the module)."""
    table = reliability_bins(y_true, prob, bins)
    cases = np.asarray(table["cases"], float)
    gaps = np.abs(np.asarray(table["observed"]) - np.asarray(table["mean_probability"]))
    return float(np.sum(cases * gaps) / cases.sum())


def _newton(x: np.ndarray, y: np.ndarray, offset: np.ndarray) -> np.ndarray | None:
    """Maximum-likelihood coefficients of ``logit P(y) = offset + x @ beta`` (None if it diverges)."""
    beta = np.zeros(x.shape[1])
    for _ in range(_ITERATIONS):
        mu = special.expit(offset + x @ beta)
        weight = mu * (1 - mu)
        hessian = x.T @ (x * weight[:, None])
        try:
            step = np.linalg.solve(hessian, x.T @ (y - mu))
        except np.linalg.LinAlgError:
            return None
        beta = beta + step
        if not np.all(np.isfinite(beta)) or np.abs(beta).max() > 1e4:
            return None
        if np.abs(step).max() < 1e-10:
            return beta
    return None


def calibration_slope(y_true: Sequence[float] | np.ndarray, prob: Sequence[float] | np.ndarray) -> float:
    """``b`` in ``logit P(y = 1) = a + b logit(p)`` (NaN with one class or separated classes)."""
    y, p = _checked(y_true, prob)
    if y.min() == y.max():
        return float("nan")
    beta = _newton(np.column_stack([np.ones(len(p)), _logit(p)]), y, np.zeros(len(p)))
    if beta is None:
        log.debug("calibration slope undefined: the logistic fit does not converge (separated classes?)")
        return float("nan")
    return float(beta[1])


def calibration_intercept(y_true: Sequence[float] | np.ndarray, prob: Sequence[float] | np.ndarray) -> float:
    """``a`` in ``logit P(y = 1) = a + logit(p)``: calibration-in-the-large (NaN with one class)."""
    y, p = _checked(y_true, prob)
    if y.min() == y.max():
        return float("nan")
    beta = _newton(np.ones((len(p), 1)), y, _logit(p))
    return float("nan") if beta is None else float(beta[0])


def calibration_figures(y_true: Sequence[float] | np.ndarray, prob: Sequence[float] | np.ndarray) -> list[float]:
    """``[ECE, slope, intercept]`` at once (what a bootstrap resamples together)."""
    return [expected_calibration_error(y_true, prob), calibration_slope(y_true, prob),
            calibration_intercept(y_true, prob)]  # fmt: skip


_T_BOUNDS = (0.05, 20.0)  # temperatures searched (log-uniformly)


def _scaled_logits(probabilities: np.ndarray, softmax: bool) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, np.float64), _EPS, 1 - _EPS)
    return np.log(p) if softmax else _logit(p)


def apply_temperature(probabilities: np.ndarray, temperature: float, *, softmax: bool = False) -> np.ndarray:
    """Probabilities with their logits divided by ``temperature`` (Guo et al. 2017): for independent
    sigmoids (``(N,)`` or ``(N, K)``, each column on its own), or a softmax over the classes (``(N, K)``,
    the log-probabilities scaled, which is the same up to a constant per row). T > 1 softens, T < 1
    sharpens; the order of the cases (AUC) and the most probable class never change."""
    if not np.isfinite(temperature) or temperature <= 0:
        raise InputError(f"a temperature must be a positive number, got {temperature}")
    z = _scaled_logits(probabilities, softmax) / temperature
    return special.softmax(z, axis=1) if softmax else special.expit(z)


def fit_temperature(labels: np.ndarray, probabilities: np.ndarray, *, softmax: bool = False) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (0/1 for a sigmoid, class
    indices for a softmax) under :func:`apply_temperature`, searched in [0.05, 20].

    Raises:
        InputError: lengths differ, a label is not usable, or the labels hold one class only (any
            temperature would do).
    """
    from scipy.optimize import minimize_scalar

    y = np.asarray(labels)
    p = np.asarray(probabilities, np.float64)
    if len(y) != len(p) or len(y) == 0:
        raise InputError(f"{len(y)} labels for {len(p)} predictions")
    if len(np.unique(y)) < 2:
        raise InputError("temperature scaling needs both outcomes (or several classes) among the labels")
    z = _scaled_logits(p, softmax)
    if softmax:
        index = y.astype(int)
        if p.ndim != 2 or index.min() < 0 or index.max() >= p.shape[1]:
            raise InputError(f"class indices 0..{p.shape[1] - 1 if p.ndim == 2 else '?'} expected for a softmax")

        def loss(log_t: float) -> float:
            scaled = z / np.exp(log_t)
            return float(np.mean(special.logsumexp(scaled, axis=1) - scaled[np.arange(len(index)), index]))
    else:
        if not set(np.unique(y).tolist()) <= {0, 1}:
            raise InputError("labels for a sigmoid must be 0 or 1")

        def loss(log_t: float) -> float:
            scaled = z / np.exp(log_t)
            return float(np.mean(np.logaddexp(0.0, scaled) - y * scaled))

    low, high = np.log(_T_BOUNDS[0]), np.log(_T_BOUNDS[1])
    found = minimize_scalar(loss, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(found.x))
