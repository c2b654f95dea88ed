"""Inference: trained models rebuilt from their package spec, predicting on new data."""

from medsight.inference.predictor import Predictor, expand_inputs, image_facts

__all__ = ["Predictor", "expand_inputs", "image_facts"]
