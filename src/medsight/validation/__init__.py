"""Validation: metrics with confidence intervals, model comparison, reports."""

from medsight.validation.evaluate import compare_runs, evaluate_run

__all__ = ["compare_runs", "evaluate_run"]
