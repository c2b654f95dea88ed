"""Screening mammography: per-view scores fused to breast and exam level (laterality-aware)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from medsight.core.errors import ConfigError, InputError

__all__ = ["attention_pool", "fit_attention_temperature", "fuse_views"]

Method = Literal["max", "mean", "attention"]

_EPS = 1e-6
# candidate temperatures, in logit units: small = close to max, large = close to the mean
TEMPERATURES = tuple(float(t) for t in np.geomspace(0.05, 50.0, 31))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def attention_pool(scores: np.ndarray, temperature: float) -> float:
    """Softmax-attention mean of probabilities: weights ``exp(logit(s) / temperature)``, normalised.

    The most suspicious view gets the most weight; a small temperature tends to the max, a
    large one to the mean, so one view with a finding is not averaged away by a clear one.
    """
    if temperature <= 0:
        raise ConfigError(f"attention temperature must be > 0, got {temperature}")
    scores = np.asarray(scores, dtype=np.float64)
    z = _logit(scores) / temperature
    weights = np.exp(z - z.max())
    return float(np.sum(weights * scores) / np.sum(weights))


def fuse_views(
    table: pd.DataFrame,
    score: str,
    *,
    breast: Sequence[str] = ("study_id", "laterality"),
    exam: Sequence[str] = ("study_id",),
    method: Method = "max",
    temperature: float = 1.0,
    target: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Combine one score per image into one per breast (CC + MLO) and one per exam (L + R).

    A breast's score is the max, mean or attention-weighted mean (:func:`attention_pool` with
    ``temperature``) of its views; an exam's is the max of its breasts — an exam is as
    suspicious as its worse breast. ``target``, when given, is combined with ``max`` at both
    levels (a malignant breast makes a malignant exam).

    Returns:
        ``(breasts, exams)`` tables with the key columns, ``score`` and, if asked, ``target``.
    """
    if method not in ("max", "mean", "attention"):
        raise ConfigError(f"fusion method must be 'max', 'mean' or 'attention', got {method!r}")
    needed = {score, *breast, *exam} | ({target} if target else set())
    missing = sorted(needed - set(table.columns))
    if missing:
        raise ConfigError(f"cannot fuse views: columns {missing} are missing; columns: {list(table.columns)}")
    if table[score].isna().any():
        raise InputError(f"{int(table[score].isna().sum())} view(s) have no {score}; cannot fuse them")
    _require_keys(table, [*breast, *exam])
    pool = (lambda s: attention_pool(s.to_numpy(), temperature)) if method == "attention" else method
    agg = {score: pool} | ({target: "max"} if target else {})
    breasts = table.groupby(list(breast), as_index=False).agg(agg)
    exams = breasts.groupby(list(exam), as_index=False).agg({score: "max"} | ({target: "max"} if target else {}))
    return breasts, exams


def _require_keys(table: pd.DataFrame, keys: Sequence[str]) -> None:
    """A view without its study or laterality would silently drop out of its breast: refuse it."""
    for key in dict.fromkeys(keys):
        blank = table[key].isna() | table[key].astype(str).str.strip().isin(["", "nan", "None"])
        if blank.any():
            raise InputError(
                f"{int(blank.sum())} view(s) have no {key} (e.g. rows {blank[blank].index[:3].tolist()}), so "
                f"they cannot be assigned to a breast or exam; fill {key} in the manifest (or DICOM "
                "ImageLaterality/StudyInstanceUID) or leave those views out"
            )


def fit_attention_temperature(
    table: pd.DataFrame,
    score: str,
    target: str,
    *,
    breast: Sequence[str] = ("study_id", "laterality"),
    candidates: Sequence[float] = TEMPERATURES,
) -> float:
    """The temperature whose breast-level scores fit the breast labels best (log-loss), e.g. on
    the validation split; 1.0 when the split has one breast class only (nothing to fit)."""
    _require_keys(table, breast)
    missing = table[target].isna() | table[score].isna()
    if missing.any():
        raise InputError(
            f"fitting the attention temperature needs a {target} and a {score} for every view; "
            f"{int(missing.sum())} view(s) lack one (rows {missing[missing].index[:3].tolist()})"
        )
    keys = table.groupby(list(breast), sort=False).ngroup().to_numpy()  # group once, then one pass per candidate
    y = np.zeros(keys.max() + 1)
    np.maximum.at(y, keys, table[target].to_numpy(dtype=np.float64))
    if len(np.unique(y)) < 2:
        return 1.0
    p = table[score].to_numpy(dtype=np.float64)
    z = _logit(p)
    top = np.full(len(y), -np.inf)
    np.maximum.at(top, keys, z)
    losses = []
    for t in candidates:  # attention_pool per breast, vectorised over the breasts
        w = np.exp((z - top[keys]) / t)
        fused = np.clip(np.bincount(keys, w * p) / np.bincount(keys, w), _EPS, 1 - _EPS)
        losses.append(float(-np.mean(y * np.log(fused) + (1 - y) * np.log(1 - fused))))
    return float(candidates[int(np.argmin(losses))])
