"""Inference: trained models loaded from their run folders, predicting on new data."""

from medsight.inference.classifier import Classifier

__all__ = ["Classifier"]
