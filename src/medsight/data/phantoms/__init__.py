"""Phantoms with known ground truth for every recipe, written in public data set layouts.

Importing this package registers the built-in generators (explicitly listed).
"""

from medsight.data.phantoms import (  # noqa: F401  (importing registers each generator)
    brain_tumor_seg,
    cardiac_function,
    cxr_findings,
    dr_grading,
    lung_nodule_det,
    mammo_screening,
)
from medsight.data.phantoms.base import make_phantom, phantoms

__all__ = ["make_phantom", "phantoms"]
