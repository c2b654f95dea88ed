"""Screening mammography: per-view scores fused to breast and exam level (laterality-aware)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pandas as pd

from medsight.core.errors import ConfigError

__all__ = ["fuse_views"]

Method = Literal["max", "mean"]


def fuse_views(
    table: pd.DataFrame,
    score: str,
    *,
    breast: Sequence[str] = ("study_id", "laterality"),
    exam: Sequence[str] = ("study_id",),
    method: Method = "max",
    target: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Combine one score per image into one per breast (CC + MLO) and one per exam (L + R).

    A breast's score is the max (or mean) of its views; an exam's is the max of its
    breasts — an exam is as suspicious as its worse breast. ``target``, when given, is
    combined with ``max`` at both levels (a malignant breast makes a malignant exam).

    Returns:
        ``(breasts, exams)`` tables with the key columns, ``score`` and, if asked, ``target``.
    """
    if method not in ("max", "mean"):
        raise ConfigError(f"fusion method must be 'max' or 'mean', got {method!r}")
    needed = {score, *breast, *exam} | ({target} if target else set())
    missing = sorted(needed - set(table.columns))
    if missing:
        raise ConfigError(f"cannot fuse views: columns {missing} are missing; columns: {list(table.columns)}")
    agg = {score: method} | ({target: "max"} if target else {})
    breasts = table.groupby(list(breast), as_index=False).agg(agg)
    exams = breasts.groupby(list(exam), as_index=False).agg({score: "max"} | ({target: "max"} if target else {}))
    return breasts, exams
