"""A baseline that must not work: classify phantom images from global intensity statistics alone.

Per image: ten percentiles per channel and a 16-bin histogram of the grey values (no spatial
information); a standardised logistic regression, scored by 5-fold cross-validated AUC. On real
data such statistics reach about 0.75 at most; a phantom where they reach more gives a shortcut
that no real image has, so a model's figures on it mean little.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

CEILING = 0.75  # about what global statistics reach on real photographs and radiographs


def global_statistics(path: Path, size: int = 256) -> np.ndarray:
    """Percentiles per channel and a grey histogram of one image, resized to ``size`` (no positions)."""
    from medsight.io import read

    volume = read(path, invert_monochrome1=True) if path.suffix.lower() in (".dcm", ".dicom") else read(path)
    planes = volume.array[:, 0].astype(np.float32)  # (C, H, W)
    lo, hi = np.percentile(planes, [0.0, 100.0])
    scaled = ((planes - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
    channels = []
    for plane in scaled:
        image = Image.fromarray(plane)
        image.thumbnail((size, size))
        channels.append(np.asarray(image, np.float32) / 255.0)
    array = np.stack(channels, axis=-1)
    grey = array.mean(axis=-1).ravel()
    percentiles = np.percentile(array.reshape(-1, array.shape[-1]), np.linspace(5, 95, 10), axis=0).ravel()
    histogram = np.histogram(grey, bins=16, range=(0.0, 1.0))[0] / grey.size
    return np.concatenate([percentiles, histogram])


def global_statistics_auc(paths: Sequence[Path], labels: Sequence[int], *, seed: int = 0) -> float:
    """Cross-validated AUC of a logistic regression on :func:`global_statistics` (out-of-fold scores)."""
    features = np.stack([global_statistics(p) for p in paths])
    y = np.asarray(labels, int)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, features, y, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))
