"""One image's heat map for a reader: the Grad-CAM map of a 2D model's most probable finding, on the
image's own grid (what a heat-map secondary capture draws over it)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from medsight.core.errors import ConfigError, MedsightError
from medsight.core.volume import Volume
from medsight.explain.explainer import explain
from medsight.inference import Predictor
from medsight.io.inputs import read_image_input
from medsight.transforms.image2d import map_to_image

__all__ = ["HeatMap", "explainer_of", "image_heat_map"]


@dataclass(frozen=True)
class HeatMap:
    """A heat map on an image's grid: what it explains, with which probability."""

    target: str
    probability: float
    heat: np.ndarray  # (H, W), the image's grid
    image: Volume  # the image, as read

    @property
    def title(self) -> str:
        """``effusion 0.87``: the finding and its probability."""
        return f"{self.target} {self.probability:.2f}"


def explainer_of(predictor: Predictor) -> Predictor:
    """The predictor whose network Grad-CAM can read: itself on PyTorch, else the same package's
    weights on PyTorch (an ONNX network has no gradients).

    Raises:
        ConfigError: a model that is not a 2D image model.
    """
    if predictor.task.spatial_dims != 2:
        raise ConfigError("heat maps are drawn for 2D image models (3D models have label-map overlays)")
    return predictor if predictor.backend == "torch" else Predictor.from_run(predictor.run_dir, backend="torch")


def image_heat_map(explainer: Predictor, path: str | os.PathLike[str]) -> HeatMap:
    """The Grad-CAM map of the most probable finding of the image at ``path`` (a file read as
    ``predict`` reads it), brought back from the network's padded square onto the image's grid.

    Raises:
        InputError: the image cannot be read or prepared (a 3D volume among them).
        ConfigError: the explainer's network cannot be explained (see :func:`explainer_of`).
    """
    image = read_image_input(path)
    try:
        prepared = explainer.task.input_array(image, explainer.preprocess)
    except MedsightError as exc:
        raise type(exc)(f"{path}: {exc}") from exc
    (item,) = explain(explainer, [prepared], [str(path)], methods=("gradcam",), faithfulness=False,
                      sanity=False).images  # fmt: skip
    heat = map_to_image(item.maps["gradcam"], image.spatial_shape[-2:])
    return HeatMap(item.target, item.probability, heat, image)
