"""Inference: trained models rebuilt from their package spec, predicting on new data.

Public names are imported on first use (see :mod:`medsight.core.lazy`): the torch-free runtime
(:mod:`medsight.inference.runtime`) lives here without importing PyTorch.
"""

from typing import TYPE_CHECKING

from medsight.core.lazy import lazy_exports

if TYPE_CHECKING:
    from medsight.inference.predictor import Predictor
    from medsight.inference.uncertainty import Uncertainty
    from medsight.io.inputs import expand_inputs, image_facts

__all__ = ["Predictor", "Uncertainty", "expand_inputs", "image_facts"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "medsight.inference.predictor": ("Predictor",),
        "medsight.inference.uncertainty": ("Uncertainty",),
        "medsight.io.inputs": ("expand_inputs", "image_facts"),
    },
)
