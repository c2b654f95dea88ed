"""Metrics as plain functions, each checked against an independent reference in the tests.

Public names are imported on first use (see :mod:`medsight.core.lazy`).
"""

from typing import TYPE_CHECKING

from medsight.core.lazy import lazy_exports

if TYPE_CHECKING:
    from medsight.metrics.bootstrap import bootstrap_ci
    from medsight.metrics.classification import (
        average_precision,
        confusion_at,
        delong_test,
        quadratic_weighted_kappa,
        roc_auc,
        threshold_for_sensitivity,
        threshold_for_specificity,
        threshold_youden,
    )


__all__ = [
    "average_precision",
    "bootstrap_ci",
    "confusion_at",
    "delong_test",
    "quadratic_weighted_kappa",
    "roc_auc",
    "threshold_for_sensitivity",
    "threshold_for_specificity",
    "threshold_youden",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "medsight.metrics.classification": (
            "average_precision",
            "confusion_at",
            "delong_test",
            "quadratic_weighted_kappa",
            "roc_auc",
            "threshold_for_sensitivity",
            "threshold_for_specificity",
            "threshold_youden",
        ),
        "medsight.metrics.bootstrap": ("bootstrap_ci",),
    },
)
