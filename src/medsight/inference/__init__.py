"""Inference: trained models rebuilt from their package spec, predicting on new data."""

from medsight.inference.predictor import Predictor, expand_inputs, image_facts
from medsight.inference.uncertainty import Uncertainty

__all__ = ["Predictor", "Uncertainty", "expand_inputs", "image_facts"]
