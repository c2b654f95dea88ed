"""Inference: trained models loaded from their run folders, predicting on new data."""

from medsight.inference.classifier import FUSION_FILE, Classifier, expand_inputs, image_facts

__all__ = ["FUSION_FILE", "Classifier", "expand_inputs", "image_facts"]
