"""Validation: metrics with confidence intervals, model comparison, reports."""

from medsight.validation.classification import compare_runs, evaluate_run, predictions_of

__all__ = ["compare_runs", "evaluate_run", "predictions_of"]
