"""Prediction without PyTorch: a model package's ONNX network on onnxruntime, with the package's
preprocessing done in NumPy and Pillow. Today: 2D classifiers (``binary``, ``multiclass``,
``multilabel``, ``ordinal``), the same rows ``Predictor.predict_files`` gives on onnxruntime."""

from medsight.runtime.classify import RUNTIME_KINDS, class_probabilities, predict_images, runs_without_torch

__all__ = ["RUNTIME_KINDS", "class_probabilities", "predict_images", "runs_without_torch"]
