"""Discrimination of risk scores for time-to-event outcomes (right-censored): Harrell's and Uno's
concordance indices and the cumulative/dynamic time-dependent AUC, with the Kaplan-Meier estimates
they rest on.

Conventions (those of scikit-survival, which the tests check against): a higher risk score means an
earlier event; at a time where events and censorings tie, the censorings are taken to happen just
after the events; tied risk scores count half. Past the last time the censoring distribution was
estimated from, it is held at its last value (scikit-survival refuses such times).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from medsight.core.errors import InputError

__all__ = ["censoring_survival", "cumulative_dynamic_auc", "harrell_c", "kaplan_meier", "uno_c"]

_TIED = 1e-8  # risk scores this close count as tied
_ROWS = 2048  # comparisons are made this many subjects at a time (memory stays ~n x 2048)


def _survival_data(time: Sequence[float], event: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event).reshape(-1)
    if len(t) != len(e):
        raise InputError(f"times and event indicators differ in length ({len(t)} and {len(e)})")
    if not np.all(np.isfinite(t)):
        raise InputError("survival times must be finite numbers (a missing follow-up time: drop the case)")
    if np.any(t < 0):
        raise InputError("survival times must not be negative")
    if e.dtype != bool:
        values = set(np.unique(e.astype(np.float64)).tolist()) if len(e) else set()
        if not values <= {0.0, 1.0}:
            raise InputError(f"event indicators must be 0/1 or True/False, got values {sorted(values)[:5]}")
        e = e.astype(np.float64) == 1.0
    return t, e


def _risk(risk: Sequence[float], n: int) -> np.ndarray:
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    if len(r) != n:
        raise InputError(f"{len(r)} risk scores for {n} subjects")
    if not np.all(np.isfinite(r)):
        raise InputError("risk scores hold NaN or infinite values")
    return r


def _counts(time: Sequence[float], event: Sequence[object]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct time: the time, the events there, the subjects leaving there, and those at risk."""
    t, e = _survival_data(time, event)
    if len(t) == 0:
        raise InputError("no subjects to estimate survival from")
    times, index = np.unique(t, return_inverse=True)
    deaths = np.bincount(index, weights=e.astype(np.float64), minlength=len(times))
    exits = np.bincount(index, minlength=len(times)).astype(np.float64)
    return times, deaths, exits, exits[::-1].cumsum()[::-1]


def kaplan_meier(time: Sequence[float], event: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    """The Kaplan-Meier estimate of survival: the distinct times and S(t) just after each."""
    times, deaths, _, at_risk = _counts(time, event)
    return times, np.cumprod(1.0 - deaths / at_risk)


def censoring_survival(time: Sequence[float], event: Sequence[object]) -> Callable[[np.ndarray], np.ndarray]:
    """G(t), the probability of being still uncensored at t, by Kaplan-Meier on the censorings (the
    subjects with an event at a time leave the risk set before those censored then); a step
    function, 1 before the first time."""
    times, deaths, exits, at_risk = _counts(time, event)
    censored = exits - deaths
    at_risk = at_risk - deaths  # the events at a time leave before the censorings then
    ratio = np.divide(censored, at_risk, out=np.zeros_like(censored), where=censored > 0)
    values = np.cumprod(1.0 - ratio)

    def g(at: np.ndarray) -> np.ndarray:
        position = np.searchsorted(times, np.asarray(at, np.float64), side="right") - 1
        return np.where(position >= 0, values[np.clip(position, 0, None)], 1.0)

    return g


def _concordance(t: np.ndarray, e: np.ndarray, r: np.ndarray, weights: np.ndarray) -> float:
    """Weighted concordance over comparable pairs (i had an event, j outlived i or was censored at
    i's time); ``weights`` per i. NaN without comparable pairs."""
    numerator = denominator = 0.0
    cases = np.flatnonzero(e & (weights > 0))
    for start in range(0, len(cases), _ROWS):
        i = cases[start : start + _ROWS]
        later = (t[None, :] > t[i, None]) | ((t[None, :] == t[i, None]) & ~e[None, :])
        difference = r[i, None] - r[None, :]
        tied = np.abs(difference) <= _TIED
        score = np.where(tied, 0.5, (difference > 0).astype(np.float64))
        numerator += float((weights[i] * (score * later).sum(axis=1)).sum())
        denominator += float((weights[i] * later.sum(axis=1)).sum())
    return numerator / denominator if denominator > 0 else float("nan")


def harrell_c(time: Sequence[float], event: Sequence[object], risk: Sequence[float]) -> float:
    """Harrell's concordance index: over the pairs whose order of events is known, the share the
    risk scores order correctly (ties in risk count half). NaN when no pair is comparable (no event).

    Raises:
        InputError: arrays of different lengths, negative or missing times, non-0/1 events, non-finite risks.
    """
    t, e = _survival_data(time, event)
    r = _risk(risk, len(t))
    return _concordance(t, e, r, np.ones(len(t)))


def uno_c(
    time: Sequence[float],
    event: Sequence[object],
    risk: Sequence[float],
    *,
    train_time: Sequence[float] | None = None,
    train_event: Sequence[object] | None = None,
    tau: float | None = None,
) -> float:
    """Uno's concordance index (Uno et al. 2011): Harrell's with each pair weighted by 1 / G(T_i)^2,
    G the censoring distribution (estimated on the training subjects, else on these), which removes
    the dependence on how much follow-up the cohort had; only events before ``tau`` count.

    Raises:
        InputError: as :func:`harrell_c`; or G is 0 at an event time (censoring ends before it: set tau).
    """
    t, e = _survival_data(time, event)
    r = _risk(risk, len(t))
    g = censoring_survival(t if train_time is None else train_time, e if train_event is None else train_event)
    counted = e & (t < tau) if tau is not None else e
    at_events = g(t[counted])
    if np.any(at_events <= 0):
        raise InputError("the censoring distribution reaches 0 before an event time: give tau (the end of the "
                         "follow-up that most subjects had)")  # fmt: skip
    weights = np.zeros(len(t))
    weights[counted] = 1.0 / at_events**2
    return _concordance(t, e, r, weights)


def cumulative_dynamic_auc(
    time: Sequence[float],
    event: Sequence[object],
    risk: Sequence[float],
    times: Sequence[float],
    *,
    train_time: Sequence[float] | None = None,
    train_event: Sequence[object] | None = None,
) -> tuple[np.ndarray, float]:
    """The cumulative/dynamic AUC at each of ``times`` (Uno et al. 2007; Hung and Chiang 2010): how
    well the risk separates subjects with an event by t (weighted by 1 / G(T_i)) from those still
    event-free after t; and its mean over ``times`` weighted by the Kaplan-Meier drop in survival
    between them (one time: that AUC).

    Raises:
        InputError: as :func:`harrell_c`; ``times`` empty, unsorted, or outside the follow-up (every
            time needs a subject with an event by it and one event-free after it).
    """
    t, e = _survival_data(time, event)
    r = _risk(risk, len(t))
    at = np.asarray(times, np.float64).reshape(-1)
    if len(at) == 0 or np.any(np.diff(at) <= 0):
        raise InputError("times must be a non-empty, increasing sequence")
    g = censoring_survival(t if train_time is None else train_time, e if train_event is None else train_event)
    weights = np.zeros(len(t))
    at_events = g(t[e])
    if np.any(at_events <= 0):
        raise InputError("the censoring distribution reaches 0 before an event time: choose earlier times")
    weights[e] = 1.0 / at_events
    aucs = np.empty(len(at))
    for k, moment in enumerate(at):
        cases = np.flatnonzero(e & (t <= moment))
        controls = np.flatnonzero(t > moment)
        if len(cases) == 0 or len(controls) == 0:
            raise InputError(f"time {moment:g} has no subject with an event by it or none event-free after it; "
                             f"choose times within the follow-up ({t[e].min() if e.any() else 'no events'} to "
                             f"{t.max():g})")  # fmt: skip
        difference = r[cases, None] - r[None, controls]
        score = np.where(np.abs(difference) <= _TIED, 0.5, (difference > 0).astype(np.float64))
        aucs[k] = float((weights[cases] * score.sum(axis=1)).sum() / (weights[cases].sum() * len(controls)))
    if len(at) == 1:
        return aucs, float(aucs[0])
    km_times, km = kaplan_meier(t, e)
    position = np.searchsorted(km_times, at, side="right") - 1
    survival = np.where(position >= 0, km[np.clip(position, 0, None)], 1.0)
    drops = -np.diff(np.r_[1.0, survival])
    mean = float((aucs * drops).sum() / (1.0 - survival[-1])) if survival[-1] < 1 else float("nan")
    return aucs, mean
