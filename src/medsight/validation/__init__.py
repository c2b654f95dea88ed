"""Validation: metrics with confidence intervals, model comparison, reports."""

from medsight.validation.evaluate import compare_runs, evaluate_run
from medsight.validation.report import build_report, write_report

__all__ = ["build_report", "compare_runs", "evaluate_run", "write_report"]
