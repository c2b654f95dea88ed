"""Inference: trained models loaded from their run folders, predicting on new data.

Public names are imported on first use (see :mod:`medsight.core.lazy`).
"""

from typing import TYPE_CHECKING

from medsight.core.lazy import lazy_exports

if TYPE_CHECKING:
    from medsight.inference.classifier import FUSION_FILE, Classifier, expand_inputs, image_facts


__all__ = [
    "FUSION_FILE",
    "Classifier",
    "expand_inputs",
    "image_facts",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "medsight.inference.classifier": ("Classifier", "FUSION_FILE", "expand_inputs", "image_facts"),
    },
)
