"""Validation: metrics with confidence intervals, model comparison, reports.

Public names are imported on first use (see :mod:`medsight.core.lazy`).
"""

from typing import TYPE_CHECKING

from medsight.core.lazy import lazy_exports

if TYPE_CHECKING:
    from medsight.validation.classification import compare_runs, evaluate_run, predictions_of


__all__ = [
    "compare_runs",
    "evaluate_run",
    "predictions_of",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "medsight.validation.classification": ("compare_runs", "evaluate_run", "predictions_of"),
    },
)
