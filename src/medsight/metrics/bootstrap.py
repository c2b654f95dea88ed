"""Confidence intervals by bootstrap, resampling whole patients (cluster bootstrap)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from medsight.core.errors import InputError

__all__ = ["bootstrap_ci", "bootstrap_cis"]

log = logging.getLogger(__name__)

UNDEFINED_WARNING = 0.10
UNDEFINED_NOTE = 0.02
"""Share of undefined resamples above which a warning is logged."""


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: Sequence[float] | np.ndarray,
    groups: Sequence[object] | np.ndarray | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Percentile bootstrap CI of ``metric(*arrays)``, resampling groups (patients) with replacement.

    Cases of one patient are correlated (two eyes, follow-up images, four mammography
    views): resampling cases would make intervals too narrow, so whole groups are drawn.
    Resamples where the metric is undefined (``nan``, e.g. AUC with one class) are skipped
    and counted (``n_undefined``); skipping them conditions the interval on the metric being
    defined, so it is logged when more than ``UNDEFINED_NOTE`` of them were (a warning above
    ``UNDEFINED_WARNING``: small subgroups lose a few resamples routinely, and ``n_undefined``
    keeps the count either way).

    Args:
        metric: Function of the arrays returning a float (e.g. :func:`roc_auc`).
        *arrays: Per-case arrays of equal length (labels, scores, ...).
        groups: Patient id per case; ``None`` treats every case as its own patient.
        n_resamples: Number of bootstrap resamples.
        confidence: Width of the interval (0.95 = 2.5th to 97.5th percentile).
        seed: Random seed (results are reproducible).

    Returns:
        ``estimate`` (on all cases), ``low``, ``high``, ``n_valid`` (usable resamples) and
        ``n_undefined`` (resamples where the metric was undefined).
    """
    name = getattr(metric, "__name__", None) or getattr(getattr(metric, "func", None), "__name__", "metric")
    return bootstrap_cis(lambda *a: [metric(*a)], *arrays, names=[name], groups=groups, n_resamples=n_resamples,
                         confidence=confidence, seed=seed)[0]  # fmt: skip


def bootstrap_cis(
    metrics: Callable[..., Sequence[float]],
    *arrays: Sequence[float] | np.ndarray,
    names: Sequence[str],
    groups: Sequence[object] | np.ndarray | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict[str, float]]:
    """:func:`bootstrap_ci` of several figures computed together (``metrics(*arrays)`` returns one
    value per name, e.g. the CPM and the sensitivity at each rate of one FROC curve): each resample is
    drawn once and every figure is read off it, so figures that share their costly part share it in
    the bootstrap too. With the same seed, each figure's interval is the one :func:`bootstrap_ci`
    gives for it alone. Returns one result per name, in order."""
    if not arrays:
        raise InputError("bootstrap_ci needs at least one array")
    data = [np.asarray(a) for a in arrays]
    n = len(data[0])
    if any(len(a) != n for a in data):
        raise InputError(f"arrays must have equal length; got {[len(a) for a in data]}")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    estimates = _values(metrics, data, len(names))
    ids = np.arange(n) if groups is None else np.asarray(groups)
    if len(ids) != n:
        raise InputError(f"groups has {len(ids)} entries for {n} cases")
    missing = pd.isna(ids) if ids.dtype.kind in "OfU" else np.zeros(n, bool)
    if missing.any():
        raise InputError(
            f"groups (patient ids) are missing for {int(missing.sum())} of {n} case(s): every case needs "
            "a patient id, or its resamples would mix patients"
        )
    if ids.dtype == object:
        ids = ids.astype(str)  # mixed types (1 and "1") compare as their text
    _, codes = np.unique(ids, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rng = np.random.default_rng(seed)
    draws = np.empty((n_resamples, len(names)))
    for r in range(n_resamples):
        chosen = rng.integers(0, len(counts), size=len(counts))
        # the chosen groups' cases, group after group (vectorised: no Python loop over groups)
        lengths = counts[chosen]
        ends = np.cumsum(lengths)
        index = order[np.arange(ends[-1]) + np.repeat(starts[chosen] - (ends - lengths), lengths)]
        draws[r] = _values(metrics, [a[index] for a in data], len(names))
    return [_interval(name, estimate, draws[:, k], confidence) for k, (name, estimate) in
            enumerate(zip(names, estimates, strict=True))]  # fmt: skip


def _values(metrics: Callable[..., Sequence[float]], data: list[np.ndarray], count: int) -> np.ndarray:
    values = np.asarray(metrics(*data), dtype=float).reshape(-1)
    if len(values) != count:
        raise InputError(f"the metrics gave {len(values)} value(s) for {count} name(s)")
    return values


def _interval(name: str, estimate: float, draws: np.ndarray, confidence: float) -> dict[str, float]:
    values = draws[~np.isnan(draws)]
    undefined = len(draws) - len(values)
    if undefined > UNDEFINED_NOTE * len(draws):
        # undefined everywhere (e.g. PPV when nothing is called positive) is reported as nan, not warned
        level = logging.WARNING if len(values) and undefined > UNDEFINED_WARNING * len(draws) else logging.INFO
        log.log(level, "%s: %d of %d bootstrap resamples gave no defined value; the interval is over the other "
                "%d only", name, undefined, len(draws), len(values))  # fmt: skip
    if not len(values):
        return {"estimate": float(estimate), "low": float("nan"), "high": float("nan"), "n_valid": 0,
                "n_undefined": undefined}  # fmt: skip
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return {
        "estimate": float(estimate),
        "low": float(low),
        "high": float(high),
        "n_valid": len(values),
        "n_undefined": undefined,
    }
