"""Classification metrics as plain functions: AUCs, operating points, kappa, DeLong.

Scores are "higher means more likely positive". Labels are 0/1 (binary) or integer
classes/grades. Every function checks its inputs and says what is wrong; a metric that is
undefined for the data (e.g. AUC with one class) returns ``nan`` and logs why, so that
bootstrap resamples without both classes can be skipped rather than crash.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import cohen_kappa_score

from medsight.core.errors import InputError

__all__ = [
    "OperatingPoint",
    "average_precision",
    "confusion_at",
    "delong_test",
    "quadratic_weighted_kappa",
    "roc_auc",
    "threshold_for_sensitivity",
    "threshold_for_specificity",
    "threshold_youden",
]

log = logging.getLogger(__name__)

OperatingPoint = dict[str, float]


def _binary(y_true: Sequence[float] | np.ndarray, score: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(score, dtype=float)
    if y.ndim != 1 or s.ndim != 1 or len(y) != len(s):
        raise InputError(f"labels and scores must be 1D of equal length; got shapes {y.shape} and {s.shape}")
    if len(y) == 0:
        raise InputError("no cases to evaluate (empty labels)")
    if not np.all(np.isfinite(s)):
        raise InputError(f"scores hold {int((~np.isfinite(s)).sum())} NaN or infinite value(s); drop those cases first")
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise InputError(f"binary labels must be 0/1; found values {sorted(values)[:5]}")
    return y.astype(int), s


def roc_auc(y_true: Sequence[float] | np.ndarray, score: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve; ``nan`` when only one class is present. Ties count half."""
    y, s = _binary(y_true, score)
    if y.min() == y.max():
        log.debug("AUC undefined: only class %d present", y[0])
        return float("nan")
    # The Mann-Whitney identity (what roc_auc_score computes, without its per-call input checks,
    # which cost ~3 ms: a bootstrap calls this thousands of times): the chance that a positive
    # outscores a negative, from average ranks, so ties count half.
    positives = int(y.sum())
    negatives = len(y) - positives
    ranks = stats.rankdata(s)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def average_precision(y_true: Sequence[float] | np.ndarray, score: Sequence[float] | np.ndarray) -> float:
    """Area under the precision-recall curve (average precision); ``nan`` without positives."""
    y, s = _binary(y_true, score)
    if y.sum() == 0:
        return float("nan")
    # sum over distinct thresholds (high to low) of the recall gained times the precision there,
    # as average_precision_score, without its per-call input checks
    order = np.argsort(-s, kind="mergesort")
    ranked, hits = s[order], y[order]
    ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # last case of each distinct score
    true_positives = np.cumsum(hits)[ends]
    precision = true_positives / (ends + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def confusion_at(
    y_true: Sequence[float] | np.ndarray, score: Sequence[float] | np.ndarray, threshold: float
) -> OperatingPoint:
    """Sensitivity, specificity, PPV, NPV, accuracy and F1 when ``score >= threshold`` is positive.

    Ratios with an empty denominator (e.g. PPV when nothing is called positive) are ``nan``.
    F1 is ``2 TP / (2 TP + FP + FN)``: 0 when there are positives but no true positive, and
    ``nan`` only when there are neither positive labels nor positive calls (as scikit-learn's
    ``f1_score(zero_division=nan)``).
    """
    if not math.isfinite(threshold):
        raise InputError(f"threshold must be a finite number, got {threshold}")
    y, s = _binary(y_true, score)
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "threshold": float(threshold),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "accuracy": ratio(tp + tn, len(y)),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def _candidates(s: np.ndarray) -> np.ndarray:
    """Every distinct score, plus one above the maximum (call nothing positive)."""
    unique = np.unique(s)
    return np.append(unique, np.nextafter(unique[-1], np.inf))


def _counts(y: np.ndarray, s: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """True positives and true negatives at each threshold (exact integers), and P and N."""
    positives, negatives = s[y == 1], s[y == 0]
    if len(positives) == 0 or len(negatives) == 0:
        raise InputError("choosing an operating point needs both classes in the (validation) labels")
    tp = len(positives) - np.searchsorted(np.sort(positives), thresholds, side="left")
    tn = np.searchsorted(np.sort(negatives), thresholds, side="left")
    return tp, tn, len(positives), len(negatives)


def _rates(y: np.ndarray, s: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tp, tn, n_pos, n_neg = _counts(y, s, thresholds)
    return tp / n_pos, tn / n_neg


def threshold_youden(y_true: Sequence[float] | np.ndarray, score: Sequence[float] | np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (the highest such score on ties).

    Ties are found on exact counts (``J * P * N = TP * N + TN * P - P * N``), not on
    floating-point J, so equal J always counts as a tie.
    """
    y, s = _binary(y_true, score)
    thresholds = _candidates(s)
    tp, tn, n_pos, n_neg = _counts(y, s, thresholds)
    j = tp.astype(np.int64) * n_neg + tn.astype(np.int64) * n_pos  # J scaled by P*N, plus a constant
    return float(thresholds[np.flatnonzero(j == j.max())[-1]])


def threshold_for_sensitivity(
    y_true: Sequence[float] | np.ndarray, score: Sequence[float] | np.ndarray, target: float
) -> float:
    """The highest threshold whose sensitivity is at least ``target`` (e.g. 0.975, as in Gulshan 2016)."""
    if not 0.0 < target <= 1.0:
        raise InputError(f"target sensitivity must be in (0, 1], got {target}")
    y, s = _binary(y_true, score)
    thresholds = _candidates(s)
    sens, _ = _rates(y, s, thresholds)
    return float(thresholds[np.flatnonzero(sens >= target - 1e-12).max()])


def threshold_for_specificity(
    y_true: Sequence[float] | np.ndarray, score: Sequence[float] | np.ndarray, target: float
) -> float:
    """The lowest threshold whose specificity is at least ``target``."""
    if not 0.0 < target <= 1.0:
        raise InputError(f"target specificity must be in (0, 1], got {target}")
    y, s = _binary(y_true, score)
    thresholds = _candidates(s)
    _, spec = _rates(y, s, thresholds)
    return float(thresholds[np.flatnonzero(spec >= target - 1e-12).min()])


def _grades(values: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind in "iub":
        return array.astype(np.int64)
    if array.dtype.kind != "f":
        raise InputError(f"{name} must be integer grades; got values of type {array.dtype} (e.g. {array.ravel()[:3]})")
    bad = ~np.isfinite(array) | (np.mod(array, 1) != 0)
    if bad.any():
        raise InputError(
            f"{name} must be integer grades; {int(bad.sum())} value(s) are not (e.g. {array[bad][:3].tolist()}): "
            "round or argmax the predictions first"
        )
    return array.astype(np.int64)


def quadratic_weighted_kappa(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, *, n_classes: int | None = None
) -> float:
    """Cohen's kappa with quadratic weights for ordinal grades (the APTOS/Kaggle DR metric).

    The weights are the squared grade differences, so a grade missing from both raters still
    counts as a step between its neighbours. ``n_classes`` fixes the grades to
    ``0..n_classes-1`` (a grade outside is an error); without it, every grade between the
    lowest and the highest seen. ``nan`` when both raters used a single, identical grade
    throughout (kappa is undefined).
    """
    a, b = _grades(y_true, "y_true"), _grades(y_pred, "y_pred")
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise InputError(f"grades must be non-empty 1D arrays of equal length; got {a.shape} and {b.shape}")
    if n_classes is not None:
        if n_classes < 1:
            raise InputError(f"n_classes must be at least 1, got {n_classes}")
        for name, grades in (("y_true", a), ("y_pred", b)):
            outside = (grades < 0) | (grades >= n_classes)
            if outside.any():
                raise InputError(
                    f"{name} holds {int(outside.sum())} grade(s) outside 0..{n_classes - 1} "
                    f"(e.g. {grades[outside][:3].tolist()}): check the labels or n_classes"
                )
        labels = np.arange(n_classes)
    else:
        labels = np.arange(min(a.min(), b.min()), max(a.max(), b.max()) + 1)
    if len(np.union1d(a, b)) == 1:
        return float("nan")
    return float(cohen_kappa_score(a, b, labels=labels, weights="quadratic"))


def _placements(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong structural components via midranks (Sun & Xu 2014), O(n log n)."""
    m, n = len(positives), len(negatives)
    combined = np.concatenate([positives, negatives])
    ranks = stats.rankdata(combined)
    rank_pos = stats.rankdata(positives)
    rank_neg = stats.rankdata(negatives)
    v10 = (ranks[:m] - rank_pos) / n  # for each positive: share of negatives below it (ties half)
    v01 = 1.0 - (ranks[m:] - rank_neg) / m  # for each negative: share of positives above it
    return v10, v01


def delong_test(
    y_true: Sequence[float] | np.ndarray,
    score_a: Sequence[float] | np.ndarray,
    score_b: Sequence[float] | np.ndarray,
    *,
    clusters: Sequence[object] | np.ndarray | None = None,
) -> dict[str, Any]:
    """DeLong's test for two correlated ROC AUCs on the same cases, clustered by patient.

    Returns both AUCs and their standard errors, their difference, its standard error, the z
    statistic and the two-sided p-value. Without ``clusters``, or when no cluster holds more
    than one case, this is DeLong, DeLong & Clarke-Pearson (1988) (fast midrank algorithm, Sun &
    Xu 2014). When cases are nested in ``clusters`` (patients: views, breasts, eyes, follow-up
    images), the cases of a patient are correlated and DeLong's variance is too small; the
    structural components are then summed per patient and their (co)variances taken over
    patients, as Obuchowski (1997, Biometrics 53:567) does for clustered ROC data, which equals
    DeLong's with one case per patient. ``method`` says which was used, ``clusters`` how many
    patients there were.
    """
    y, a = _binary(y_true, score_a)
    _, b = _binary(y_true, score_b)
    n_pos = int(y.sum())
    if min(n_pos, len(y) - n_pos) < 2:
        raise InputError(
            f"DeLong's test needs at least two cases of each class; got {n_pos} positive and "
            f"{len(y) - n_pos} negative case(s): its variance is undefined with fewer"
        )
    if clusters is None:
        cluster = np.arange(len(y))
    else:
        labels = np.asarray(clusters, dtype=object)
        if labels.shape != y.shape:
            raise InputError(f"clusters must give one patient per case; got {labels.shape[0]} for {len(y)} cases")
        cluster = np.unique(labels.astype(str), return_inverse=True)[1].reshape(-1)
    count = int(cluster.max()) + 1
    v10 = np.stack([_placements(s[y == 1], s[y == 0])[0] for s in (a, b)])  # (2, positives)
    v01 = np.stack([_placements(s[y == 1], s[y == 0])[1] for s in (a, b)])  # (2, negatives)
    aucs = v10.mean(axis=1)
    m, n = v10.shape[1], v01.shape[1]
    if count == len(y):  # one case per patient: DeLong
        method = "DeLong"
        covariance = np.cov(v10) / m + np.cov(v01) / n
    else:
        method = "Obuchowski"
        covariance = _clustered_covariance(v10, v01, cluster[y == 1], cluster[y == 0], count, aucs)
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    difference = float(aucs[0] - aucs[1])
    if variance <= 0:
        z, p = (0.0, 1.0) if difference == 0 else (math.copysign(math.inf, difference), 0.0)
    else:
        z = difference / math.sqrt(variance)
        p = float(2 * stats.norm.sf(abs(z)))
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "se_a": float(math.sqrt(max(covariance[0, 0], 0.0))),
        "se_b": float(math.sqrt(max(covariance[1, 1], 0.0))),
        "difference": difference,
        "se": float(math.sqrt(max(variance, 0.0))),
        "z": float(z),
        "p_value": p,
        "method": method,
        "clusters": count,
    }


def _clustered_covariance(
    v10: np.ndarray, v01: np.ndarray, positive_of: np.ndarray, negative_of: np.ndarray, count: int, aucs: np.ndarray
) -> np.ndarray:
    """Obuchowski's (1997) covariance of AUCs ``(R, R)`` from per-case structural components
    (``v10`` ``(R, positives)``, ``v01`` ``(R, negatives)``) and each case's cluster index."""
    m, n = v10.shape[1], v01.shape[1]
    per_pos = np.bincount(positive_of, minlength=count)  # positives per cluster
    per_neg = np.bincount(negative_of, minlength=count)
    # per cluster: its components' sum minus what its number of cases would give at the AUC
    x = np.stack([np.bincount(positive_of, row, count) for row in v10]) - aucs[:, None] * per_pos
    z = np.stack([np.bincount(negative_of, row, count) for row in v01]) - aucs[:, None] * per_neg
    with_pos, with_neg = int((per_pos > 0).sum()), int((per_neg > 0).sum())
    s10 = with_pos / ((with_pos - 1) * m) * (x @ x.T) if with_pos > 1 else np.zeros((len(x), len(x)))
    s01 = with_neg / ((with_neg - 1) * n) * (z @ z.T) if with_neg > 1 else np.zeros((len(z), len(z)))
    s11 = count / (count - 1) * (x @ z.T)
    return s10 / m + s01 / n + (s11 + s11.T) / (m * n)
