"""Metrics as plain functions, each checked against an independent reference in the tests."""

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
