"""Grad-CAM maps for a validation report's failure gallery (the report layer cannot import this
one: the command line hands :class:`GalleryMaps` to :func:`~medsight.validation.report.write_report`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medsight.core.errors import MedsightError
from medsight.core.volume import Volume

__all__ = ["GalleryMaps"]

log = logging.getLogger(__name__)


class GalleryMaps:
    """``maps(images, name)``: per image (as read for the gallery), the network's input as a picture (grey ``(H, W)`` or
    RGB ``(H, W, 3)`` in [0, 1]) and the run's Grad-CAM map of probability ``name`` over it as RGBA
    (:func:`~medsight.explain.overlay.heat_rgba`), with the target explained; None where the run's
    model cannot be loaded, reads no 2D images, or has no such target (logged: the gallery stands
    without). The model is loaded once, when first needed."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir, self.predictor, self.failed = Path(run_dir), None, False

    def __call__(self, images: Sequence[Volume], name: str) -> tuple[str, list[tuple[np.ndarray, np.ndarray]]] | None:
        if self.failed or not images:
            return None
        from medsight.explain.explainer import explain
        from medsight.explain.overlay import heat_rgba
        from medsight.inference import Predictor

        try:
            if self.predictor is None:
                self.predictor = Predictor.from_run(self.run_dir, precision="fp32", backend="torch")
            predictor = self.predictor
            if predictor.task.spatial_dims != 2:
                self.failed = True
                return None
            arrays = [predictor.task.input_array(volume, predictor.preprocess) for volume in images]
            names = [f"image {i + 1}" for i in range(len(images))]
            result = explain(predictor, arrays, names, target=None if name == "score" else name,
                             methods=["gradcam"], faithfulness=False, sanity=False)  # fmt: skip
        except (MedsightError, OSError, ValueError, RuntimeError) as exc:
            log.info("failure gallery without explanations of %s: %s", name, exc)
            self.failed = self.predictor is None  # a model that would not load is not tried again
            return None
        pictures = []
        for item in result.images:
            image = np.clip(np.nan_to_num(item.image.astype(np.float64)), 0, 1)
            picture = np.moveaxis(image, 0, -1) if image.shape[0] == 3 else image[0]
            pictures.append((picture, heat_rgba(item.maps["gradcam"])))
        return (result.images[0].target if result.images else name), pictures
